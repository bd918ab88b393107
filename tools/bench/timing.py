"""Round-robin timing and summary statistics.

All cells (route × input) of one model are timed in one loop that calls each cell once per round,
in the same order every round: drift of the machine (other processes, thermal state) then hits
every route alike instead of whichever happened to run during a busy minute.

Each timed call comes after untimed calls of the same cell that last at least ``lead_in_s``.
Runtimes can leave threads busy after a call: onnxruntime's intra-op workers spin at 100 % of a core
for about 50 ms after each run (measured here; LiteRT's and TensorFlow's threads go idle at once).
Timing the first call after another runtime's, as a plain round-robin does, made that call run on
one free core of this 2-core machine and take up to twice as long (the onnxruntime route measured
slower than the seed pipeline, which runs onnxruntime *and* a front-end). A sleep instead of the
lead-in calls is no cure: the first LiteRT call after 0.1 s idle took about twice its steady time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Cell = tuple[str, str]  # (route, input)


#: untimed calls of a cell before each timed one last at least this long (onnxruntime's idle workers
#: spin for about 50 ms after a run)
LEAD_IN_SECONDS = 0.08


def round_robin(
    calls: Mapping[Cell, Callable[[], Any]],
    runs: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
    lead_in_s: float = LEAD_IN_SECONDS,
) -> dict[Cell, list[float]]:
    """``warmup`` untimed rounds, then ``runs`` timed rounds; in a timed round each cell makes
    untimed calls for at least ``lead_in_s`` (one at least), then one timed call. Seconds per timed
    call, per cell."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[Cell, list[float]] = {cell: [] for cell in calls}
    report_every = max(1, runs // 10)
    for r in range(runs):
        for cell, call in calls.items():
            lead_in_start = time.perf_counter()
            call()
            while time.perf_counter() - lead_in_start < lead_in_s:
                call()
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
