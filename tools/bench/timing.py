"""Round-robin timing and summary statistics.

All cells (route × input) of one model are timed in one loop that visits each cell once per round,
in the same order every round: drift of the machine (other processes, thermal state) then hits
every route alike instead of whichever happened to run during a busy minute.

A visit is a pause, one untimed call, then ``block`` timed calls back to back. Runtimes leave threads
busy after a call: onnxruntime's intra-op workers spin at 100 % of a core for about 50 ms after each
run (measured here: the next call of another runtime on this 2-core machine took up to twice as
long). Alternating call by call, each route paid for the runtime before it (e.g. the onnxruntime
route measured slower than the seed pipeline, which runs onnxruntime *and* a front-end). The pause
lets those threads go idle; the untimed call wakes the visited runtime's own threads and caches, so
the timed calls see it as a program that calls it back to back would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Cell = tuple[str, str]  # (route, input)


#: pause before each visit; onnxruntime's idle workers spin for about 50 ms after a run
SETTLE_SECONDS = 0.1
#: timed calls per visit
BLOCK = 3


def round_robin(
    calls: Mapping[Cell, Callable[[], Any]],
    runs: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
    block: int = BLOCK,
    settle_s: float = SETTLE_SECONDS,
) -> dict[Cell, list[float]]:
    """``warmup`` untimed calls per cell, then rounds that visit every cell in turn until each has
    ``runs`` timed calls: per visit, ``settle_s`` of sleep, one untimed call, up to ``block`` timed
    calls. Returns seconds per timed call, per cell."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[Cell, list[float]] = {cell: [] for cell in calls}
    rounds = -(-runs // block)
    report_every = max(1, rounds // 10)
    for r in range(rounds):
        for cell, call in calls.items():
            if settle_s:
                time.sleep(settle_s)
            call()
            for _ in range(min(block, runs - len(times[cell]))):
                start = time.perf_counter()
                call()
                times[cell].append(time.perf_counter() - start)
        if progress and (r + 1) % report_every == 0:
            progress(f"round {r + 1}/{rounds}")
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
