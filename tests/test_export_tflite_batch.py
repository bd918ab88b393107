"""TFLite files that take a batch of any size: one invoke gives each example the batch-1 file's
answer, with builtin operators only; the runner resizes them to its number of windows."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from eat_keras.export import tflite as T
from eat_keras.frontend import FrontendConfig
from eat_keras.models import AudioTagger, ModelConfig
from eat_keras.runners import TFLiteRunner

SR = 32000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny MN's 1 s float32 waveform files, batch 1 and any batch."""
    config = ModelConfig(width_mult=0.1, num_classes=3, frontend=FrontendConfig(n_mels=32))
    tagger = AudioTagger(config, class_names=["a", "b", "c"]).build_for_inference()
    # a head that tells inputs apart: the default N(0, 0.01) one scores everything ~0.5
    for seed, variable in enumerate(tagger.net.head.trainable_variables):
        variable.assign(tf.random.stateless_normal(variable.shape, [seed, 3]))
    artifacts = T.export_tflite(
        tagger, tmp_path_factory.mktemp("batch"), "tiny", window_seconds=(1.0,), quantizations=("float32",),
        outputs=("scores", "logits"), log_mel=False, metadata=False, any_batch=True,
    )  # fmt: skip
    return {a.any_batch: a for a in artifacts} | {"tagger": tagger}


def _waveforms(count: int) -> np.ndarray:
    t = np.arange(SR) / SR
    rows = [0.05 * (i + 1) * np.sin(2 * np.pi * (300 + 450 * i) * t) for i in range(count)]
    return (np.stack(rows) + 0.01 * np.random.default_rng(0).standard_normal((count, SR))).astype(np.float32)


def _run(path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    interpreter = T.make_interpreter(path)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(inputs.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, inputs)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def test_each_example_of_one_invoke_gets_the_batch_1_answer(files):
    batch, single = files[True], files[False]
    assert batch.path.name == "tiny_1s_float32_batch.tflite" and single.path.name == "tiny_1s_float32.tflite"
    waveforms = _waveforms(3)
    got = _run(batch.path, waveforms)["logits"]
    want = np.concatenate([_run(single.path, w[np.newaxis])["logits"] for w in waveforms])
    assert got.shape == (3, 3)
    # every example runs the batch-1 graph's operators on its own rows: the same arithmetic
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got[0], got[1])  # the examples did not share one answer


def test_a_non_finite_example_gives_nan_in_its_own_row_only(files):
    waveforms = _waveforms(3)
    waveforms[1, 100] = np.nan
    scores = _run(files[True].path, waveforms)["scores"]
    assert np.isnan(scores).any(axis=1).tolist() == [False, True, False]


def test_files_for_any_batch_use_builtin_operators_only(files):
    ops = T.check_builtin_only(files[True].path)
    assert {"WHILE", "CONV_2D"} <= set(ops) and not {"RFFT2D", "GATHER"} & set(ops)
    assert T.check_frontend_float(files[True].path.read_bytes()) >= 20  # found inside the loop's body


def test_the_runner_runs_all_windows_of_a_call_in_one_invoke(files):
    waveforms = _waveforms(3)
    runner = TFLiteRunner(files[True].path)
    np.testing.assert_array_equal(runner.logits(waveforms), TFLiteRunner(files[False].path).logits(waveforms))
    assert runner._interpreter.get_input_details()[0]["shape"].tolist() == [3, SR]  # resized, not looped


def test_a_log_mel_graph_for_any_batch_scores_each_example(files):
    """The log-mel files take the same loop (traced here; the conversion is the waveform one's)."""
    module = T._ConversionModule(files["tagger"])
    function = module.log_mel_function(100, ("logits",), any_batch=True)
    assert function.inputs[0].shape.as_list() == [None, 32, 100]
    log_mel = np.random.default_rng(1).standard_normal((2, 32, 100)).astype(np.float32)
    got = function(tf.constant(log_mel))["logits"].numpy()
    single = module.log_mel_function(100, ("logits",))
    want = np.concatenate([single(tf.constant(m[np.newaxis]))["logits"] for m in log_mel])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
