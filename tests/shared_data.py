"""Where the read-only reference material (golden outputs, checkpoints, audio, ESC-10) lives.

``$EAT_SHARED_DIR`` when set, else ``../shared`` next to the clone. The tests (through conftest's
fixtures) and the benchmark tools (through ``tools/bench/paths.py``) both ask this one function, so
the two can never look in different places. Plain Python, no pytest: the tools import it too.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_dir() -> Path | None:
    """The first candidate holding ``golden/``, or None when there is none."""
    env = os.environ.get("EAT_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for candidate in candidates:
        if (candidate / "golden").is_dir():
            return candidate
    return None
