"""Where the benchmark finds its inputs: the repo, ``../shared`` and the onnx2tf virtualenv."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORK_DIR = REPO_ROOT / "build" / "bench"  # build/ is git-ignored
DEFAULT_JSON = REPO_ROOT / "docs" / "benchmarks.json"
DEFAULT_MARKDOWN = REPO_ROOT / "docs" / "benchmarks.md"
# onnx2tf pins tensorflow 2.19 / numpy 1.26, so it lives in its own virtualenv
DEFAULT_O2T_VENV = Path(os.environ.get("EAT_O2T_VENV", "/work/o2t-venv"))


def shared_dir() -> Path:
    """``$EAT_SHARED_DIR``, else ``../shared`` next to the clone (as tests/conftest.py looks)."""
    env = os.environ.get("EAT_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for candidate in candidates:
        if (candidate / "golden").is_dir():
            return candidate
    raise SystemExit("../shared (or $EAT_SHARED_DIR) with golden/ not found: the benchmark needs it")


def golden_dir() -> Path:
    return shared_dir() / "golden"


def labels_csv() -> Path:
    return golden_dir() / "class_labels_indices.csv"


def audio_files() -> list[Path]:
    """The real recordings of ``../shared/audio`` (int8 calibration, the one-hour recording)."""
    return sorted((shared_dir() / "audio").glob("*.wav"))
