"""Where the benchmark finds its inputs: the repo, ``../shared``, the PyTorch reference and the onnx2tf virtualenv.

The finder of ``../shared`` and the PyTorch reference live with the tests (``tests/shared_data.py``,
``tests/upstream_reference/``); importing this module puts ``tests/`` on ``sys.path`` for them, so the
tools and the tests look for ``../shared`` in exactly one way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
TORCH_REFERENCE = TESTS_DIR / "upstream_reference" / "torch_reference.py"
DEFAULT_WORK_DIR = REPO_ROOT / "build" / "bench"  # build/ is git-ignored
DEFAULT_JSON = REPO_ROOT / "docs" / "benchmarks.json"
DEFAULT_MARKDOWN = REPO_ROOT / "docs" / "benchmarks.md"
# onnx2tf pins tensorflow 2.19 / numpy 1.26, so it lives in its own virtualenv
DEFAULT_O2T_VENV = Path(os.environ.get("EAT_O2T_VENV", "/work/o2t-venv"))

if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))

from shared_data import find_shared_dir  # noqa: E402


def shared_dir() -> Path:
    found = find_shared_dir()
    if found is None:
        raise SystemExit("../shared (or $EAT_SHARED_DIR) with golden/ not found: the benchmark needs it")
    return found


def default_shared_dir() -> Path:
    """For command-line defaults: ``--help`` must work without ``../shared``; a run fails on the file."""
    return find_shared_dir() or REPO_ROOT.parent / "shared"


def golden_dir() -> Path:
    return shared_dir() / "golden"


def labels_csv() -> Path:
    return golden_dir() / "class_labels_indices.csv"


def audio_files() -> list[Path]:
    """The real recordings of ``../shared/audio`` (int8 calibration, the one-hour recording)."""
    return sorted((shared_dir() / "audio").glob("*.wav"))
