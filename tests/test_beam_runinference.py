"""The corpus jobs import Beam's RunInference without torch: Beam's module would import it wherever it
is installed, for a model manager these jobs do not use."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")


def test_the_jobs_import_runinference_and_leave_torch_out():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: there is nothing to leave out")
    child = (
        "import json, sys\n"
        "import eat_keras.beam.tag_audio as tag_audio\n"
        "from apache_beam.ml.inference import base\n"
        "print(json.dumps([sorted(m for m in ('torch', 'apache_beam.ml.inference.model_manager') if m in sys.modules),\n"
        "                  base.RunInference is tag_audio.RunInference]))\n"
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
    imported, same_class = json.loads(result.stdout.splitlines()[-1])
    assert imported == []  # nor is torch left marked missing: it imports as usual afterwards
    assert same_class
