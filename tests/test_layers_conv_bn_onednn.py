"""The models under oneDNN, TensorFlow's default on recent Intel CPUs (AVX512-VNNI, AMX).

oneDNN is chosen when TensorFlow starts (``TF_ENABLE_ONEDNN_OPTS``), so each check runs in a fresh
process. On oneDNN, grappler fuses depthwise convolution and bias into one kernel that aborts the
process on explicit paddings; the graph (tf.function) path must neither abort nor drift from golden.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIPS

TOL = 1e-4  # the parity maximum of the golden tests

SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
from eat_keras.weights.loader import load_tagger_from_file

weights, golden, out = sys.argv[1:4]
clips = json.loads(sys.argv[4])
tagger = load_tagger_from_file(weights)
predict = tagger.predict_function_for_waveforms()  # a tf.function: grappler's fusions apply
waves = np.stack([np.load(f"{golden}/clips/{c}_wav32k.npy")[:320000] for c in clips])
logits = predict(tf.constant(waves))["logits"].numpy()
np.save(out, logits)
print("onednn", _pywrap_util_port.IsMklEnabled())
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("weights", "folder"),
    [("../weights/mn04_as_mAP_432.pt", "mn04_as"), ("dymn04_synth/state_dict.pt", "dymn04_synth")],
)
def test_graph_mode_under_onednn_matches_golden(weights: str, folder: str, golden_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "logits.npy"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(golden_dir / weights), str(golden_dir), str(out), json.dumps(CLIPS)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onednn True" in done.stdout, "oneDNN was not switched on in the child process"
    logits = np.load(out)
    for row, clip in enumerate(CLIPS):
        golden = np.load(golden_dir / folder / f"{clip}_logits.npy").reshape(-1)
        assert np.abs(logits[row] - golden).max() <= TOL, clip
        assert list(np.argsort(-logits[row])[:10]) == list(np.argsort(-golden)[:10]), clip
