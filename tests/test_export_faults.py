"""Input the model cannot score and outputs that cannot be written: one clear error, never garbage.

- Waveforms: integer PCM and 1-D arrays are refused with a hint; NaN or Inf samples, or samples so
  far beyond [-1, 1] that the log-mel overflows float32, raise in Keras (eager and traced) and in
  the SavedModel, and give NaN (never finite scores) from a float32 TFLite file, whatever kernels
  run it (XNNPACK passes NaN on; TFLite's builtin kernels saturate Inf at the largest float).
- Writes: export, convert and finetune into a read-only folder, onto a file or onto a full disk
  exit with status 2 and one error line, and leave nothing they created; names cannot leave
  --out; staging folders of killed exports are removed by the next export into the same place.

One tiny model (width 0.1, 3 classes) serves the module: a Keras tagger, its model folder, a
SavedModel and a 1 s float32 TFLite file. A read-only folder and a full disk are tmpfs mounts in a
private mount namespace (``unshare -rm``) around the command; without user namespaces, a full disk
is RLIMIT_FSIZE (EFBIG) and a read-only folder chmod 555 (skipped as root, whom it does not stop).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from cli_process import run_cli
from eat_keras.cli import main
from eat_keras.errors import AudioError, ConfigError
from eat_keras.export import tflite as T
from eat_keras.export.saved_model import check_version, export_saved_model
from eat_keras.models import AudioTagger, ModelConfig
from eat_keras.errors import OutputError
from eat_keras.tagging import tag_waveform
from eat_keras.models.saving import load_tagger_dir, save_tagger
from eat_keras.models.tagger import LOG_MEL_CEILING
from eat_keras.runners import (
    NON_FINITE_LOG_MEL,
    NON_FINITE_WAVEFORM,
    OVERFLOWING_LOG_MEL,
    SavedModelRunner,
    TFLiteRunner,
)

SR = 32000
NAMES = ["dog", "rain", "crying baby"]
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tagger, its model folder, a SavedModel (loaded) and a 1 s float32 TFLite file."""
    root = tmp_path_factory.mktemp("faults")
    tagger = AudioTagger(ModelConfig(width_mult=0.1, num_classes=3), class_names=NAMES).build_for_inference()
    # a head that tells the inputs apart: the default N(0, 0.01) one scores everything ~0.5
    head = tagger.net.head.trainable_variables
    for variable, seed in zip(head, range(len(head))):
        variable.assign(tf.random.stateless_normal(variable.shape, [seed, 1]))
    saved_model = export_saved_model(tagger, root / "exported", "tiny")
    (tflite,) = T.export_tflite(
        tagger, root / "exported", "tiny", window_seconds=(1.0,), quantizations=("float32",),
        log_mel=False, metadata=False,
    )
    return {
        "tagger": tagger,
        "folder": save_tagger(tagger, root / "tiny"),
        "saved_model": saved_model,
        "loaded": tf.saved_model.load(str(saved_model)),
        "tflite": tflite.path,
        "root": root,
    }


def _waveform(scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(0).normal(0, scale, (1, SR))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# dtype and shape


@pytest.mark.parametrize(
    ("dtype", "hint"),
    [
        (np.int16, "waveform.astype(np.float32) / 32768"),
        (np.int32, "waveform.astype(np.float32) / 2147483648"),
        (np.uint8, "(waveform.astype(np.float32) - 128) / 128"),
    ],
)
def test_integer_pcm_is_refused_with_how_to_scale_it(tiny, dtype, hint):
    pcm = (np.random.default_rng(0).integers(-100, 100, (1, SR)) + (128 if dtype == np.uint8 else 0)).astype(dtype)
    predict = tiny["tagger"].predict_function_for_waveforms()
    name = np.dtype(dtype).name
    for given in (pcm, tf.constant(pcm)):
        with pytest.raises(ConfigError) as caught:
            predict(given)
        assert str(caught.value) == f"got {name} samples; pass float32 in [-1, 1]: {hint}"
    with pytest.raises(ConfigError, match=f"got {name} samples"):  # the Keras call too
        tiny["tagger"](pcm, training=False)
    with pytest.raises(ConfigError, match=f"got {name} samples"):  # and tagging, windowed or not
        tag_waveform(tiny["tagger"], pcm[0])
    with pytest.raises(ConfigError, match=f"got {name} samples"):
        tag_waveform(tiny["tagger"], pcm[0], window_s=1.0)


def test_non_numeric_samples_are_refused(tiny):
    predict = tiny["tagger"].predict_function_for_waveforms()
    with pytest.raises(ConfigError, match=r"^got bool samples; pass float32 in \[-1, 1\]$"):
        predict(np.zeros((1, SR), bool))
    with pytest.raises(ConfigError, match=r"^got complex64 samples"):
        predict(np.zeros((1, SR), np.complex64))


def test_one_dimensional_input_gets_a_shape_hint(tiny):
    predict = tiny["tagger"].predict_function_for_waveforms()
    waveform = _waveform()[0]
    with pytest.raises(ConfigError) as caught:
        predict(waveform)
    assert str(caught.value) == f"expected [batch, samples]; got shape ({SR},): add a batch axis with waveform[None]"
    with pytest.raises(ConfigError, match=r"expected \[batch, samples\]; got shape"):
        tiny["tagger"](waveform, training=False)
    with pytest.raises(ConfigError, match=r"\(for \[samples, channels\] audio: waveform.mean\(axis=1\)\[None\]\)"):
        predict(np.stack([waveform, waveform], axis=1))  # soundfile's [samples, channels]


def test_float64_is_taken_as_float32(tiny):
    predict = tiny["tagger"].predict_function_for_waveforms()
    waveform = _waveform()
    want = predict(waveform)["scores"].numpy()
    assert np.array_equal(predict(waveform.astype(np.float64))["scores"].numpy(), want)


# ---------------------------------------------------------------------------------------------------
# non-finite input: an error where the runtime can raise, NaN where it cannot, never finite scores


def _partly_inf() -> np.ndarray:
    waveform = _waveform()
    waveform[0, 1000:1100] = np.inf
    waveform[0, 20000] = -np.inf
    return waveform


def _one_nan() -> np.ndarray:
    waveform = _waveform()
    waveform[0, 777] = np.nan
    return waveform


UNSCORABLE = {
    "all NaN": (lambda: np.full((1, SR), np.nan, np.float32), NON_FINITE_WAVEFORM),
    "partly Inf": (_partly_inf, NON_FINITE_WAVEFORM),
    "one NaN sample": (_one_nan, NON_FINITE_WAVEFORM),
    # finite samples whose power spectrum overflows float32
    "samples of 1e19": (lambda: _waveform(1e19), OVERFLOWING_LOG_MEL),
}


@pytest.mark.parametrize("case", list(UNSCORABLE))
def test_keras_raises_on_unscorable_input(tiny, case):
    make, message = UNSCORABLE[case]
    waveform = make()
    with pytest.raises(AudioError) as caught:
        tiny["tagger"].predict_function_for_waveforms()(waveform)
    assert str(caught.value) == message
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        tiny["tagger"](tf.constant(waveform), training=False)  # eager
    # one bad example spoils the batch: no scores that look fine for it
    batch = np.concatenate([_waveform(), waveform])
    with pytest.raises(AudioError):
        tiny["tagger"].predict_function_for_waveforms()(batch)


@pytest.mark.parametrize("case", list(UNSCORABLE))
def test_saved_model_signatures_raise_on_unscorable_input(tiny, case):
    make, message = UNSCORABLE[case]
    waveform = tf.constant(make())
    signatures = tiny["loaded"].signatures
    for name in ("serving_default", "log_mel", "frame_scores"):
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            signatures[name](waveform=waveform)
        assert message in caught.value.message, name
    with pytest.raises(AudioError) as caught:
        SavedModelRunner(tiny["saved_model"]).logits(waveform.numpy())
    assert str(caught.value) == message


def test_saved_model_refuses_a_non_finite_log_mel(tiny):
    from_log_mel = tiny["loaded"].signatures["from_log_mel"]
    log_mel = from_log_mel.structured_input_signature[1]["log_mel"]
    good = np.zeros((1, log_mel.shape[1], 100), np.float32)
    assert np.isfinite(from_log_mel(log_mel=tf.constant(good))["scores"].numpy()).all()
    for bad_value in (np.nan, np.inf, LOG_MEL_CEILING):
        bad = good.copy()
        bad[0, 5, 50] = bad_value
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(NON_FINITE_LOG_MEL)):
            from_log_mel(log_mel=tf.constant(bad))


def _tflite_scores(model: bytes | Path, waveform: np.ndarray, kernels: str) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:  # T.interpreter_class() is tf.lite.Interpreter then
        OpResolverType = tf.lite.experimental.OpResolverType  # noqa: N806

    resolver = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[kernels]
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interpreter = T.interpreter_class()(**source, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], waveform)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


@pytest.mark.parametrize("kernels", ["xnnpack", "builtin"])
@pytest.mark.parametrize("case", list(UNSCORABLE))
def test_tflite_gives_nan_for_unscorable_input(tiny, case, kernels):
    make, message = UNSCORABLE[case]
    scores = _tflite_scores(tiny["tflite"], make(), kernels)
    assert np.isnan(scores).all(), scores
    with pytest.raises(AudioError) as caught:  # the runner words it as Keras and the SavedModel do
        TFLiteRunner(tiny["tflite"]).scores(make())
    assert message in str(caught.value)


@pytest.fixture(scope="module")
def gate_pair(tiny) -> dict[bool, bytes]:
    """The 1 s float32 conversion with and without the NaN gate."""
    module = T._ConversionModule(tiny["tagger"])
    return {
        gate: T._base_converter(module.waveform_function(SR, ("scores",), gate=gate), module).convert()
        for gate in (True, False)
    }


def test_the_nan_gate_leaves_normal_scores_bit_for_bit(gate_pair):
    """Without the gate, TFLite's builtin kernels (as installed here) score partly-Inf and overflowing
    audio as plausible numbers; with it they give NaN, and normal scores do not change at all."""
    for case in ("partly Inf", "samples of 1e19"):
        waveform = UNSCORABLE[case][0]()
        print(case, "without the gate:", _tflite_scores(gate_pair[False], waveform, "builtin"))
        assert np.isnan(_tflite_scores(gate_pair[True], waveform, "builtin")).all(), case
    for kernels in ("xnnpack", "builtin"):
        normal = [_tflite_scores(gate_pair[g], _waveform(), kernels) for g in (True, False)]
        assert np.array_equal(*normal) and np.isfinite(normal[0]).all()
    assert {"REDUCE_MAX", "MEAN", "SELECT_V2"} <= set(T.operator_names(gate_pair[True]))
    T.check_builtin_only(gate_pair[True])


def test_a_float16_file_scores_mostly_silent_audio(tiny):
    """float16 files store the gate's infinity as 65504: a test on the log-mel's sum (128 mels x 500
    frames of silence at -1.4 is -89 600) would turn quiet clips into NaN; its mean stays small."""
    module = T._ConversionModule(tiny["tagger"])
    model = T._convert(module, "waveform", 5 * SR, "float16", ("scores",))
    quiet = np.zeros((1, 5 * SR), np.float32)
    quiet[0, :SR // 4] = 0.05 * np.random.default_rng(0).standard_normal(SR // 4)
    for kernels in ("xnnpack", "builtin"):
        assert np.isfinite(_tflite_scores(model, quiet, kernels)).all(), kernels
    quiet[0, 100] = np.nan
    assert np.isnan(_tflite_scores(model, quiet, "builtin")).all()


def test_loud_but_representable_audio_is_still_scored(tiny):
    """Audio far beyond [-1, 1] whose log-mel still fits float32 is not refused by any path."""
    waveform = _waveform(1e9)
    keras = tiny["tagger"].predict_function_for_waveforms()(waveform)["scores"].numpy()
    saved = tiny["loaded"].signatures["serving_default"](waveform=tf.constant(waveform))["scores"].numpy()
    tflite = _tflite_scores(tiny["tflite"], waveform, "builtin")
    for scores in (keras, saved, tflite):
        assert np.isfinite(scores).all()
    # the same numbers, to float32 round-off of scores in [0, 1]
    assert np.abs(keras - saved).max() <= 1e-5 and np.abs(keras - tflite).max() <= 1e-3


@pytest.mark.parametrize("artifact", ["folder", "saved_model", "tflite"])
def test_tag_refuses_an_overflowing_file_in_one_line_and_tags_the_rest(tiny, tmp_path, capsys, artifact):
    """Float audio at 1e19 is finite, so the decoder takes it; every model path then refuses it."""
    loud, fine = tmp_path / "loud.wav", tmp_path / "fine.wav"
    sf.write(loud, _waveform(1e19)[0], SR, subtype="FLOAT")
    sf.write(fine, _waveform()[0], SR, subtype="FLOAT")
    code = main(["tag", str(loud), str(fine), "--model", str(tiny[artifact]), "--top-k", "1"])
    captured = capsys.readouterr()
    assert code == 1
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"eat-keras: error: {loud}: ") and OVERFLOWING_LOG_MEL in line
    assert str(fine) in captured.out and str(loud) not in captured.out


# ---------------------------------------------------------------------------------------------------
# names, versions and staging folders (in process: refused before anything is loaded)


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b", "/tmp/eat_abs_name", "a\\b"])
@pytest.mark.parametrize("command", ["convert", "export"])
def test_names_cannot_leave_the_output_folder(tiny, tmp_path, capsys, command, name):
    out = tmp_path / "deep" / "out"
    code = main([command, str(tiny["folder"]), "--out", str(out), "--name", name])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("eat-keras: error: a model name must be one folder name"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even --out was made
    assert not Path("/tmp/eat_abs_name").exists()


@pytest.mark.parametrize("version", ["-3", "-1", str(2**63)])
def test_impossible_versions_are_refused(tiny, tmp_path, capsys, version):
    code = main(["export", str(tiny["folder"]), "--out", str(tmp_path / "out"), "--version", version])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0] == (
        f"eat-keras: error: a SavedModel version must be a whole number from 0 to 2^63 - 1; got {version}"
    )
    assert not (tmp_path / "out").exists()


def test_version_zero_is_a_version_tf_serving_serves():
    """TF Serving reads any non-negative int64 folder name as a version, 0 included."""
    assert check_version(0) == 0 and check_version(2**63 - 1) == 2**63 - 1 and check_version(None) is None


def _killed_export_leftovers(model_root: Path) -> list[Path]:
    """What a kill during export leaves: a SavedModel and a TFLite staging folder, partly written."""
    saved = model_root / ".1.partial.k1ll3d"
    (saved / "model" / "variables").mkdir(parents=True)
    (saved / "model" / "saved_model.pb").write_bytes(b"\x08half")
    tflite = model_root / ".tflite.partial.x9y8z7"
    tflite.mkdir()
    (tflite / "tiny_1s_float32.tflite").write_bytes(b"TFL3 cut")
    return [saved, tflite]


def test_next_saved_model_export_removes_a_killed_exports_staging(tiny, tmp_path):
    model_root = tmp_path / "out" / "tiny"
    leftovers = _killed_export_leftovers(model_root)
    path = export_saved_model(tiny["tagger"], tmp_path / "out", "tiny")
    assert path == model_root / "1" and (path / "saved_model.pb").is_file()
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in model_root.iterdir()) == ["1"]


def test_next_tflite_export_removes_a_killed_exports_staging_but_not_a_live_one(tiny, tmp_path, monkeypatch):
    import fcntl

    model_root = tmp_path / "out" / "tiny"
    leftovers = _killed_export_leftovers(model_root)
    live = model_root / ".2.partial.running"  # another export at work: it holds its lock
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        monkeypatch.setattr(T, "_convert", lambda *args, **kwargs: b"model bytes")
        monkeypatch.setattr(T, "_with_settings", lambda model, tagger: model)
        T.export_tflite(tiny["tagger"], tmp_path / "out", "tiny", window_seconds=(1,), quantizations=("float32",),
                        log_mel=False, metadata=False)
    finally:
        os.close(fd)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in model_root.iterdir()) == [".2.partial.running", "tflite"]


def test_save_tagger_clears_a_killed_saves_checkpoint_folder(tiny, tmp_path):
    """TF writes a checkpoint through ``<prefix>_temp/``; a kill leaves it, the next save removes it."""
    folder = save_tagger(tiny["tagger"], tmp_path / "m")
    orphan = folder / "weights-0123456789ab_temp"
    orphan.mkdir()
    (orphan / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"cut")
    save_tagger(tiny["tagger"], folder)
    assert not orphan.exists()
    assert load_tagger_dir(folder).class_names == NAMES


def test_a_failed_save_leaves_the_earlier_model_whole(tiny, tmp_path, monkeypatch):
    folder = save_tagger(tiny["tagger"], tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def full_disk(self, filepath, *args, **kwargs):
        Path(f"{filepath}.index").write_bytes(b"half")  # as far as TF got
        raise tf.errors.ResourceExhaustedError(None, None, f"{filepath}_temp/part-0; No space left on device")

    monkeypatch.setattr(AudioTagger, "save_weights", full_disk)
    with pytest.raises(OutputError) as caught:
        save_tagger(tiny["tagger"], folder)
    assert str(caught.value) == f"cannot write {folder}: No space left on device"
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    monkeypatch.undo()
    assert load_tagger_dir(folder).class_names == NAMES


# ---------------------------------------------------------------------------------------------------
# read-only folders, files in the way, full disks: through the command, in a child process

_ISOLATED = r"""
import json, resource, shutil, signal, subprocess, sys
from pathlib import Path

spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["tests_dir"])
from cli_process import run_cli

for path, options in spec["tmpfs"]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
for source, target in spec["copies"]:
    shutil.copytree(source, target)
for path in spec["read_only"]:
    subprocess.run(["mount", "-o", "remount,ro", path], check=True)
if spec["file_size_limit"]:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited through exec: EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_size_limit"],) * 2)
results = []
for args in spec["commands"]:
    result = run_cli(args, timeout=240)
    listing = {w: sorted(str(p.relative_to(w)) for p in Path(w).rglob("*")) for w in spec["watch"]}
    manifests = {str(p): p.read_text() for w in spec["watch"] for p in Path(w).rglob("eat_keras.json")}
    results.append({"returncode": result.returncode, "stderr": result.stderr, "errors": result.error_lines,
                    "listing": listing, "manifests": manifests})
print(json.dumps(results))
"""


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _isolated(commands, *, tmpfs=(), copies=(), read_only=(), watch=(), file_size_limit=0, unshare=True):
    spec = {
        "tests_dir": str(TESTS_DIR), "commands": commands, "tmpfs": list(tmpfs), "copies": list(copies),
        "read_only": list(read_only), "watch": [str(w) for w in watch], "file_size_limit": file_size_limit,
    }
    prefix = ["unshare", "-rm"] if unshare else []
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _ISOLATED, json.dumps(spec)], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_one_line(result: dict, *words: str) -> None:
    assert result["returncode"] == 2, result["stderr"][-3000:]
    assert len(result["errors"]) == 1 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    for word in words:
        assert word in result["errors"][0], result["errors"][0]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    for label in ("dog", "rain"):
        (root / label).mkdir()
        for i in range(3):
            sf.write(root / label / f"{i}.wav", rng.normal(0, 0.1, SR).astype(np.float32), SR)
    return root


def test_read_only_output_folder(tiny, data_folder, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    commands = [
        ["convert", str(tiny["folder"]), "--out", str(ro)],
        ["export", str(tiny["folder"]), "--out", str(ro), "--format", "saved_model", "tflite"],
        ["finetune", str(data_folder), "--model", str(tiny["folder"]), "--out", str(ro / "run"), "--epochs", "1"],
    ]
    if _can_unshare():  # a read-only mount: refuses root too
        results = _isolated(commands, tmpfs=[(str(ro), "size=1m")], read_only=[str(ro)], watch=[ro])
        reason = "Read-only file system"
    elif os.geteuid() != 0:
        ro.chmod(0o555)
        results = _isolated(commands, watch=[ro], unshare=False)
        reason = "Permission denied"
    else:
        pytest.skip("root without user namespaces: nothing makes a folder read-only for this process")
    for result in results:
        _assert_one_line(result, str(ro), reason)
        assert result["listing"][str(ro)] == []


def test_full_disk(tiny, tmp_path):
    """A new folder on a full disk is removed again; a model folder being replaced keeps its model."""
    full, existing = tmp_path / "full", tmp_path / "existing"
    full.mkdir()
    existing.mkdir()
    model = existing / "tiny"
    model_size = sum(p.stat().st_size for p in tiny["folder"].iterdir())
    commands = [
        ["convert", str(tiny["folder"]), "--out", str(full)],
        ["export", str(tiny["folder"]), "--out", str(full), "--format", "saved_model"],
        ["export", str(tiny["folder"]), "--out", str(full), "--format", "tflite", "--window-seconds", "1",
         "--quantization", "float32", "--no-logmel", "--no-metadata"],
        ["convert", str(tiny["folder"]), "--out", str(existing)],  # over the model copied in
    ]
    if _can_unshare():  # a small tmpfs: ENOSPC
        tmpfs = [(str(full), "size=64k"), (str(existing), f"size={model_size + 64 * 1024}")]
        results = _isolated(commands, tmpfs=tmpfs, copies=[(str(tiny["folder"]), str(model))], watch=[full, existing])
        reason = "No space left on device"
    else:  # every file capped at 64 KiB: EFBIG
        shutil.copytree(tiny["folder"], model)
        results = _isolated(commands, watch=[full, existing], file_size_limit=64 * 1024, unshare=False)
        reason = "File too large"
        # the cap hits the TFLite converter's own temporary files first
        _assert_one_line(results.pop(2), "TFLite converter", "temporary SavedModel")
    for result in results:
        _assert_one_line(result, "cannot write", reason)
        assert result["listing"][str(full)] == []
    old = sorted(p.name for p in tiny["folder"].iterdir())
    assert results[-1]["listing"][str(existing)] == ["tiny"] + [f"tiny/{name}" for name in old]
    assert results[-1]["manifests"] == {str(model / "eat_keras.json"): (tiny["folder"] / "eat_keras.json").read_text()}


def test_finetune_on_a_full_disk(tiny, data_folder, tmp_path):
    """The run folder fills the disk mid-run: one line, and no best/ that could pass for a model."""
    full = tmp_path / "full"
    full.mkdir()
    command = ["finetune", str(data_folder), "--model", str(tiny["folder"]), "--out", str(full / "run"), "--epochs", "1"]
    if _can_unshare():
        (result,) = _isolated([command], tmpfs=[(str(full), "size=64k")], watch=[full])
        reason = "No space left on device"
    else:
        (result,) = _isolated([command], watch=[full], file_size_limit=64 * 1024, unshare=False)
        reason = "File too large"
    _assert_one_line(result, "cannot write", reason)
    assert not any(name.startswith("run/best") for name in result["listing"][str(full)])


def test_a_file_in_the_way(tiny, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    result = run_cli(["export", str(tiny["folder"]), "--out", str(blocker / "models")], timeout=240)
    assert result.returncode == 2 and len(result.error_lines) == 1, result.stderr[-3000:]
    want = f"eat-keras: error: cannot write {blocker}/models/tiny: {blocker} is a file, not a folder"
    assert result.error_lines[0] == want
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_convert_onto_a_file(tiny, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    assert main(["convert", str(tiny["folder"]), "--out", str(blocker)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"eat-keras: error: cannot write {blocker}/tiny: {blocker} is a file, not a folder"]
    assert blocker.read_text() == "not a folder"
