"""Round-robin timing and summary statistics.

All cells (route × input) of one model are timed in one loop that calls each cell once per round,
in the same order every round: drift of the machine (other processes, thermal state) then hits
every route alike instead of whichever happened to run during a busy minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Cell = tuple[str, str]  # (route, input)


def round_robin(
    calls: Mapping[Cell, Callable[[], Any]],
    runs: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[Cell, list[float]]:
    """``warmup`` untimed rounds, then ``runs`` timed rounds; seconds per call, per cell."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[Cell, list[float]] = {cell: [] for cell in calls}
    report_every = max(1, runs // 10)
    for r in range(runs):
        for cell, call in calls.items():
            start = time.perf_counter()
            call()
            times[cell].append(time.perf_counter() - start)
        if progress and (r + 1) % report_every == 0:
            progress(f"round {r + 1}/{runs}")
    return times


def summarize(seconds: list[float], batch: int) -> dict[str, float]:
    """Milliseconds: median, mean, min, max, p10/p90, quartiles; clips/s from the median."""
    ms = np.asarray(seconds) * 1e3
    median = float(np.median(ms))
    return {
        "n": int(ms.size),
        "median_ms": median,
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "q1_ms": float(np.percentile(ms, 25)),
        "q3_ms": float(np.percentile(ms, 75)),
        "clips_per_s": batch / (median / 1e3),
    }
