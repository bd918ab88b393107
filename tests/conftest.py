"""Shared fixtures: where ../shared is, and session-scoped models so that no test rebuilds them.

The read-only reference material (golden outputs, checkpoints, audio) lives in ``../shared`` next to
the clone, or wherever ``$EAT_SHARED_DIR`` points. On a user's fresh clone it is absent and the tests
that need it skip with a reason; under ``CI=true`` a missing ``shared/`` is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared() -> Path | None:
    env = os.environ.get("EAT_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for candidate in candidates:
        if (candidate / "golden").is_dir():
            return candidate
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    found = _find_shared()
    if found is None:
        reason = "../shared (or $EAT_SHARED_DIR) with golden/ is not present next to this clone"
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "golden"


CLIPS = ("metro_station-paris", "music", "speech", "typing")


@pytest.fixture(scope="session")
def golden_logmel(golden_dir: Path):
    """``{key: [1, 128, T, 1]}`` NHWC golden log-mel for every clip, 10 s and 2 s keys."""
    import numpy as np

    mels = {}
    for clip in CLIPS:
        for key in (clip, f"{clip}_2s"):
            mels[key] = np.load(golden_dir / "clips" / f"{key}_logmel.npy")[:, 0, :, :, None]
    return mels


@pytest.fixture(scope="session")
def golden_waveforms(golden_dir: Path):
    """``{clip: float32 [N]}`` 32 kHz waveforms exactly as upstream inference loads them."""
    import numpy as np

    return {clip: np.load(golden_dir / "clips" / f"{clip}_wav32k.npy") for clip in CLIPS}
