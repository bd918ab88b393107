"""Full int8: the ranges read by hard-swish start at its floor, and a fine-tuned model calibrates on
its run's training files when no calibration audio is named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eat_keras.export import formats
from eat_keras.export import tflite as T
from eat_keras.export.calibration import run_training_files
from eat_keras.frontend import FrontendConfig
from eat_keras.models import AudioTagger, ModelConfig
from tiny_training import SR, write_class_folders


def _hard_swish_inputs(model: bytes) -> list[tuple[float, float]]:
    """``(low, scale)`` of every int8 tensor that only a HARD_SWISH reads."""
    from tensorflow.lite.python import schema_py_generated as schema

    obj = T.read_model(model)
    subgraph = obj.subgraphs[0]
    readers: dict[int, list[str]] = {}
    for op in subgraph.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(T.operator_code_name(obj.operatorCodes[op.opcodeIndex]))
    found = []
    for index, names in readers.items():
        tensor = subgraph.tensors[index]
        if names == ["HARD_SWISH"] and tensor.type == schema.TensorType.INT8:
            scale, zero_point = float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])
            found.append(((-128 - zero_point) * scale, scale))
    return found


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> bytes:
    """A tiny MN's 1 s full-int8 file, calibrated on loud noise (wide activation ranges)."""
    root = tmp_path_factory.mktemp("int8")
    for i in range(3):
        sf.write(root / f"noise{i}.wav", (0.5 * np.random.default_rng(i).standard_normal(SR)).astype(np.float32), SR)
    config = ModelConfig(width_mult=0.1, num_classes=3, frontend=FrontendConfig(n_mels=32))
    tagger = AudioTagger(config, class_names=["a", "b", "c"]).build_for_inference()
    (artifact,) = T.export_tflite(
        tagger, root, "tiny", window_seconds=(1.0,), quantizations=("int8",), calibration_files=sorted(root.glob("*.wav")),
        log_mel=False, metadata=False,
    )  # fmt: skip
    return artifact.path.read_bytes()


def test_int8_inputs_of_hard_swish_start_at_its_floor(int8_model):
    """Hard-swish is 0 at and below -3: the int8 range of its inputs starts there, not lower, so their
    step is as fine as the values that matter allow."""
    inputs = _hard_swish_inputs(int8_model)
    assert len(inputs) >= 5  # the stem, the expansions and depthwise convs of the HS blocks, the last conv
    for low, scale in inputs:
        assert low >= T.HARD_SWISH_FLOOR - scale, (low, scale)
    assert any(abs(low - T.HARD_SWISH_FLOOR) <= scale for low, scale in inputs)  # calibration reached below -3
    assert T.check_builtin_only(int8_model)


def test_narrowing_leaves_ranges_that_start_above_the_floor(int8_model):
    again = T.narrow_pre_hard_swish_ranges(int8_model)
    assert _hard_swish_inputs(again) == _hard_swish_inputs(int8_model)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A fine-tuning run folder as ``eat-keras finetune`` leaves it: finetune.json, prepared/, best/."""
    from eat_keras.train.data import read_dataset
    from eat_keras.train.prepare import PrepareSettings, prepare

    root = tmp_path_factory.mktemp("run")
    data = write_class_folders(root / "data", per_class=4)
    folder = root / "run"
    (folder / "best").mkdir(parents=True)
    (folder / "finetune.json").write_text(json.dumps({"model": "mn04_as"}))
    prepare(read_dataset(data), folder / "prepared", PrepareSettings(val_fraction=0.25), processes=1, log=lambda m: None)
    return folder


def test_a_runs_training_files_calibrate_int8_by_default(run):
    prepared, files = run_training_files(run / "best")
    assert prepared == run / "prepared"
    assert len(files) == 6 and all(Path(f).is_file() for f in files)  # 8 files, 2 on the validation side
    assert run_training_files(run) == (prepared, files)  # the run folder itself
    assert run_training_files(run.parent / "data") is None  # not a run
    lines: list[str] = []
    options = argparse.Namespace(calibration=None, model=str(run / "best"))
    request = formats.ExportRequest(None, run, "m", options, lines.append)
    assert formats.tflite_calibration(request) == files
    assert lines == [f"full int8: calibrating on the run's 6 training files ({prepared})"]
    named = argparse.Namespace(calibration=["a.wav"], model=str(run / "best"))
    assert formats.tflite_calibration(formats.ExportRequest(None, run, "m", named, lines.append)) == ["a.wav"]
