"""Load time and peak RSS of one route on one input, in a fresh process.

Peak RSS is per process, and a process that already holds every other route says nothing about
one of them, so the orchestrator starts ``python -m tools.bench.probe '<json>'`` per (route, input).
The child imports the route's runtime (timed apart), loads the artifact as a single-purpose app
would (LiteRT without TensorFlow, see ``LiteRTRoute``), makes a first call and a few more, and
prints one JSON line. Peak RSS is the child's ``VmHWM`` (see :mod:`tools.bench.peak_rss`: its
``ru_maxrss`` would start at this process's peak).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from tools.bench.paths import REPO_ROOT
from tools.bench.peak_rss import peak_rss_mb

TIMEOUT_S = 900


def probe(route_spec: dict[str, Any], input_name: str, calls: int) -> dict[str, Any]:
    """Run the child; returns its measurements, or ``{"error": ...}``."""
    payload = json.dumps({"route": route_spec, "input": input_name, "calls": calls})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tools.bench.probe", payload],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {TIMEOUT_S} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"error": f"probe exited {result.returncode}: {result.stderr.strip()[-1500:]}"}
    return json.loads(lines[-1])


def _child(payload: dict[str, Any]) -> dict[str, Any]:
    from tools.bench.inputs import load_input
    from tools.bench.routes import route_from_spec

    inp = load_input(payload["input"])
    route = route_from_spec(payload["route"])
    rss_start = peak_rss_mb()
    started = time.perf_counter()
    for module in route.runtime_modules(standalone=True):
        importlib.import_module(module)
    import_s = time.perf_counter() - started
    rss_imported = peak_rss_mb()
    started = time.perf_counter()
    route.load([inp], standalone=True)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    route.run(inp)
    first_s = time.perf_counter() - started
    times = []
    for _ in range(payload["calls"]):
        started = time.perf_counter()
        route.run(inp)
        times.append(time.perf_counter() - started)
    return {
        "runtime": route.runtime,
        "import_s": import_s,
        "load_s": load_s,
        "first_call_s": first_s,
        "later_calls_s": times,
        "rss_before_import_mb": rss_start,
        "rss_after_import_mb": rss_imported,
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
