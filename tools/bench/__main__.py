"""Benchmark of eat-keras against the seed pipeline, onnxruntime and onnx2tf (issue 6). Run by hand
from the repo root (not in CI); it needs ../shared (or $EAT_SHARED_DIR) and, for the onnx2tf route,
the onnx2tf virtualenv (/work/o2t-venv or $EAT_O2T_VENV)::

    python -m tools.bench --rebuild            # everything, fresh conversions: docs/benchmarks.{json,md}
    python -m tools.bench --models mn04 dymn04 --routes savedmodel seed --runs 3 --warmup 1
    python -m tools.bench --routes tag_hour --tag-seconds 300 --runs 3

With ``--runs`` below 30 a run is a smoke run: unless ``--json``/``--markdown`` are given it writes
``<work-dir>/smoke.{json,md}``, and the report says so. Artifacts are cached in ``--work-dir``
(default ``build/bench``) and rebuilt when eat-keras' sources or the weights change; ``--rebuild``
rebuilds them all, so that every conversion time is from this run.

Models: mn04 (release weights), dymn04 (golden synthetic), mn10 and dymn10 (synthetic weights and
upstream-style ONNX made with the PyTorch reference in tests/upstream_reference). Inputs: real audio, batch 1 × 2 s,
batch 1 × 10 s, batch 8 × 10 s. Routes (``--routes``, groups ``tflite`` and ``all``):

- ``savedmodel``: eat-keras SavedModel ``serving_default`` (waveform → scores); ``savedmodel_frontend``:
  its ``log_mel`` signature alone;
- ``tflite_float32`` / ``tflite_float16`` / ``tflite_int8``: eat-keras TFLite end to end on LiteRT
  (XNNPACK, ``--threads``); ``tflite_frontend``: the front-end alone; ``tflite_model_only``: the
  log-mel-input file. Batch 8 runs resized when the file allows it, else as 8 invokes (reported);
- ``seed``: TF ``tf.signal.stft`` front-end + onnxruntime on the upstream ONNX;
- ``onnxruntime``: upstream ONNX alone (log-mel in); ``onnx2tf``: onnx2tf's float32 TFLite of it
  (conversion timed, error vs onnxruntime checked);
- ``tflite_float32_batch``: the float32 file for any batch (``--tflite-batch``), resized to the batch;
- ``tag_hour``: ``eat-keras tag`` on a one-hour recording with mn10: × real time and peak RSS;
- ``agreement``: mn04's quantized files against Keras on ESC-10, zero-shot top-1 (:mod:`tools.bench.agreement`).

For each model, artifacts are built (or reused from ``--work-dir``) in a subprocess that times every
conversion; then all routes are loaded in this process and timed round-robin, call by call
(``--warmup`` untimed rounds, ``--runs`` timed ones; each timed call comes after at least 0.08 s of
untimed calls of its own), so that machine drift hits every route alike and no route pays for the
spinning idle threads of the one before it (see :mod:`tools.bench.timing`).
Finally each (route, input) is loaded again in a fresh process for load time and peak RSS. The JSON
keeps every raw time; the markdown report has the tables and the issue's targets with pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tools.bench import agreement, machine, paths, probe, report, tag_hour, targets, timing  # noqa: E402
from tools.bench.catalog import (  # noqa: E402
    AGREEMENT, ALL_ROUTES, ROUTE_DEFS, ROUTE_GROUPS, TAG_HOUR, expand_routes, required_artifacts,
)
from tools.bench.inputs import INPUT_SPECS, BenchInput, load_inputs  # noqa: E402
from tools.bench.models import MODELS, BenchModel  # noqa: E402
from tools.bench.routes import Route, route_from_spec  # noqa: E402
from tools.bench.timing import round_robin, summarize  # noqa: E402

MIN_FINAL_RUNS = 30  # below this, output goes to the work dir unless --json/--markdown say otherwise


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Benchmark of eat-keras against the seed pipeline, onnxruntime and onnx2tf (issue 6); "
        "see the module docstring of tools/bench/__main__.py.",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--inputs", nargs="+", default=list(INPUT_SPECS), choices=list(INPUT_SPECS))
    parser.add_argument("--routes", nargs="+", default=["all"], metavar="ROUTE",
                        help=f"routes {ALL_ROUTES} or groups {['all', *ROUTE_GROUPS]}")
    parser.add_argument("--runs", type=int, default=MIN_FINAL_RUNS, help="timed calls per route and input")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per route and input first")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT and onnxruntime intra-op threads")
    parser.add_argument("--probe-calls", type=int, default=3, help="calls after the first in each fresh-process probe")
    parser.add_argument("--no-probe", action="store_true", help="skip the fresh-process load-time / peak-RSS probes")
    parser.add_argument("--tag-seconds", type=int, default=3600, help="length of the tag_hour recording")
    parser.add_argument("--tag-repeats", type=int, default=3,
                        help="tag_hour runs of the .tflite file; the median one is reported (the .pt runs once)")
    parser.add_argument("--work-dir", type=Path, default=paths.DEFAULT_WORK_DIR, help="artifacts, cached between runs")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every artifact (fresh conversion times)")
    parser.add_argument("--onednn", choices=["default", "on", "off"], default="default",
                        help="TensorFlow's oneDNN kernels (TF_ENABLE_ONEDNN_OPTS) for this run and its child processes; "
                        "TF turns them on by itself only on CPUs with AVX512-VNNI, AVX-VNNI or AMX")
    parser.add_argument("--o2t-venv", type=Path, default=paths.DEFAULT_O2T_VENV, help="virtualenv with onnx2tf, onnxsim")
    parser.add_argument("--json", type=Path, default=None, help=f"raw results (default {paths.DEFAULT_JSON})")
    parser.add_argument("--markdown", type=Path, default=None, help=f"report (default {paths.DEFAULT_MARKDOWN})")
    args = parser.parse_args(argv)
    args.routes = expand_routes(args.routes)
    args.work_dir = args.work_dir.resolve()
    smoke = args.runs < MIN_FINAL_RUNS
    if args.json is None:
        args.json = args.work_dir / "smoke.json" if smoke else paths.DEFAULT_JSON
    if args.markdown is None:
        args.markdown = args.work_dir / "smoke.md" if smoke else paths.DEFAULT_MARKDOWN
    if smoke:
        log(f"--runs {args.runs} < {MIN_FINAL_RUNS}: a smoke run; writing {args.json} and {args.markdown}")
    return args


# ---------------------------------------------------------------------------------------------------
# per model


def build_artifacts(model: BenchModel, keys: list[str], args: argparse.Namespace, rebuild: bool) -> dict[str, Any]:
    """Run tools.bench.build in a subprocess (Keras, converters and torch stay out of this process)."""
    command = [sys.executable, "-m", "tools.bench.build", "--model", model.name, "--work-dir", str(args.work_dir),
               "--o2t-venv", str(args.o2t_venv), "--keys", *keys] + (["--rebuild"] if rebuild else [])
    started = time.perf_counter()
    result = subprocess.run(command, cwd=paths.REPO_ROOT)  # its progress goes to our stderr
    manifest_path = args.work_dir / model.name / "manifest.json"
    if result.returncode != 0 or not manifest_path.is_file():
        raise RuntimeError(f"build of {model.name} failed with exit code {result.returncode} (see its output above)")
    manifest = json.loads(manifest_path.read_text())
    manifest["build_wall_s"] = time.perf_counter() - started
    return manifest


def _open_route(name: str, model: BenchModel, inputs: dict[str, BenchInput], artifacts: dict[str, Any],
                threads: int) -> tuple[dict[str, Any], Route | None, list[BenchInput]]:
    """Result skeleton of one route, the loaded route (None where nothing could be loaded) and its inputs."""
    d = ROUTE_DEFS[name]
    files: dict[str, str] = {}
    problems = []
    keys = {}
    for inp in (i for i in inputs.values() if d.applies(i.spec)):
        key = keys[inp.name] = d.artifact(model, inp.spec)
        entry = artifacts.get(key) or {}
        if entry.get("path") and not entry.get("error"):
            files[inp.name] = entry["path"]
        else:
            problems.append(f"{inp.name}: {key}: {entry.get('error') or 'not built'}")
    result: dict[str, Any] = {"label": d.label, "scope": d.scope, "artifacts": keys, "inputs": {},
                              "error": "; ".join(problems) or None}
    usable = [inp for inp in inputs.values() if inp.name in files]
    if not usable:
        return result, None, []
    route = route_from_spec({"class": d.route_class, "files": files, "num_threads": threads, **d.options})
    result["runtime"] = route.runtime
    started = time.perf_counter()
    try:
        route.load(usable)
    except Exception as exc:  # a file that does not load is a result too
        result["error"] = f"load failed: {type(exc).__name__}: {str(exc)[:1500]}"
        return result, None, []
    result["load_in_process_s"] = time.perf_counter() - started
    return result, route, usable


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.reshape(-1) - b.reshape(-1))))


def numeric_checks(loaded: dict[str, tuple[Route, list[BenchInput]]]) -> dict[str, dict[str, float]]:
    """Max |difference| on the same input: front-ends vs upstream's log-mel (golden), onnx2tf logits
    and eat-keras TFLite scores (log-mel input) vs onnxruntime."""
    checks: dict[str, dict[str, float]] = {}

    def add(name: str, inp: BenchInput, a: np.ndarray, b: np.ndarray) -> None:
        checks.setdefault(name, {})[inp.name] = _max_abs(a, b)

    def inputs_of(route: str) -> dict[str, BenchInput]:
        return {i.name: i for i in loaded[route][1]} if route in loaded else {}

    for route in ("tflite_frontend", "savedmodel_frontend"):
        for inp in inputs_of(route).values():
            add(f"{route}_vs_upstream_log_mel", inp, loaded[route][0].run(inp), inp.log_mel)
    for inp in inputs_of("onnxruntime").values():
        logits = loaded["onnxruntime"][0].run(inp)
        if inp.name in inputs_of("onnx2tf"):
            add("onnx2tf_vs_onnxruntime_logits", inp, loaded["onnx2tf"][0].run(inp), logits)
        if inp.name in inputs_of("tflite_model_only"):
            scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            add("tflite_model_only_vs_onnxruntime_scores", inp, loaded["tflite_model_only"][0].run(inp), scores)
    return checks


def bench_model(model: BenchModel, inputs: dict[str, BenchInput], args: argparse.Namespace) -> dict[str, Any]:
    timed_routes = [r for r in args.routes if r in ROUTE_DEFS]
    keys = required_artifacts(model, timed_routes, [i.spec for i in inputs.values()])
    log(f"{model.name}: building {len(keys)} artifacts (cached ones are reused)")
    manifest = build_artifacts(model, keys, args, args.rebuild)
    out: dict[str, Any] = {**model.describe(args.work_dir), "inputs_run": list(inputs), "build": manifest,
                           "routes": {}}
    loaded: dict[str, tuple[Route, list[BenchInput]]] = {}
    for name in timed_routes:
        log(f"{model.name}: loading {name}")
        out["routes"][name], route, usable = _open_route(name, model, inputs, manifest["artifacts"], args.threads)
        if route is not None:
            loaded[name] = (route, usable)
    try:
        out["checks"] = numeric_checks(loaded)
    except Exception as exc:
        out["checks"] = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}

    calls = {}
    for name, (route, usable) in loaded.items():
        for inp in usable:
            try:
                route.run(inp)  # a call that fails must not stop the round-robin loop
            except Exception as exc:
                out["routes"][name]["inputs"][inp.name] = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
                continue
            calls[(name, inp.name)] = lambda route=route, inp=inp: route.run(inp)
    log(f"{model.name}: timing {len(calls)} cells, {args.warmup} warm-up + {args.runs} rounds")
    times = round_robin(calls, args.runs, args.warmup, progress=lambda m: log(f"{model.name}: {m}"))
    for (name, inp_name), seconds in times.items():
        route = loaded[name][0]
        out["routes"][name]["inputs"][inp_name] = {
            "stats": summarize(seconds, inputs[inp_name].batch),
            "times_ms": [s * 1e3 for s in seconds],
            "batch_mode": route.batch_modes.get(inp_name),
            "artifact_path": route.files[inp_name],
        }
    specs = {name: route.spec() for name, (route, _) in loaded.items()}
    del loaded, calls
    gc.collect()

    if not args.no_probe:
        for name, spec in specs.items():
            for inp_name, cell in out["routes"][name]["inputs"].items():
                if "stats" not in cell:
                    continue
                log(f"{model.name}: fresh-process probe {name} {inp_name}")
                cell["probe"] = probe.probe({**spec, "files": {inp_name: spec["files"][inp_name]}}, inp_name,
                                            args.probe_calls)
    return out


# ---------------------------------------------------------------------------------------------------


def write_outputs(results: dict[str, Any], args: argparse.Namespace) -> None:
    results["targets"] = targets.evaluate(results)
    for path, text in ((args.json, json.dumps(results, indent=1) + "\n"), (args.markdown, report.render(results))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(text)
        os.replace(tmp, path)


#: routes that cannot run without a package of the ``dev`` extra
ROUTE_PACKAGES = {"seed": "onnxruntime", "onnxruntime": "onnxruntime"}


def check_packages(routes: list[str]) -> None:
    """Refuse to start rather than publish a report whose anchors all read "not run"."""
    missing = sorted(
        (ROUTE_PACKAGES[r], r) for r in routes if r in ROUTE_PACKAGES and not importlib.util.find_spec(ROUTE_PACKAGES[r])
    )
    if missing:
        needs = ", ".join(f"{route} needs {package}" for package, route in missing)
        raise SystemExit(f"{needs}: pip install -e '.[dev]', or leave the route out (--routes)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    check_packages(args.routes)
    if args.onednn != "default":  # read once, when TensorFlow starts: set before any import of it
        if "tensorflow" in sys.modules:
            raise SystemExit("--onednn must be chosen before TensorFlow is imported")
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": 1,
        "machine": machine.describe(args.o2t_venv, argv),
        "settings": {
            # models and inputs only matter to the timed routes (tag_hour always uses mn10)
            "models": args.models if any(r in ROUTE_DEFS for r in args.routes) else [],
            "inputs": args.inputs, "routes": args.routes, "runs": args.runs,
            "warmup": args.warmup, "lead_in_s": timing.LEAD_IN_SECONDS, "threads": args.threads, "probe_calls": 0 if args.no_probe else args.probe_calls,
            "tag_seconds": args.tag_seconds, "work_dir": str(args.work_dir), "smoke": args.runs < MIN_FINAL_RUNS,
            "onednn": args.onednn, "onednn_enabled": machine.tensorflow_onednn_enabled(),
        },
        "inputs": {},
        "models": {},
    }
    inputs = load_inputs(args.inputs)
    results["inputs"] = {
        name: {"batch": i.batch, "seconds": i.spec.seconds, "samples": i.spec.samples, "frames": i.spec.frames,
               "clips": list(i.clips)}
        for name, i in inputs.items()
    }
    if any(r in ROUTE_DEFS for r in args.routes):
        for name in args.models:
            model = MODELS[name]
            try:
                results["models"][name] = bench_model(model, inputs, args)
            except Exception as exc:
                log(f"{name}: failed: {type(exc).__name__}: {exc}")
                results["models"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:3000]}"}
            if "error" not in results["models"][name]:
                results["models"][name]["frontend_share"] = targets.frontend_shares(results, name)
            write_outputs(results, args)  # partial results survive a crash in a later model
    if TAG_HOUR in args.routes:
        mn10 = MODELS["mn10"]
        key = "tflite_float32/10s"
        manifest = build_artifacts(mn10, [key], args, rebuild=False)  # also makes the synthetic weights
        log(f"tag_hour: tagging a {args.tag_seconds} s recording with mn10 (.tflite, then .pt)")
        tflite_file = Path(manifest["artifacts"][key]["path"])
        results["tag_hour"] = tag_hour.benchmark(args.tag_seconds, tflite_file, args.work_dir, args.tag_repeats)
        results["tag_hour_keras"] = tag_hour.benchmark(args.tag_seconds, mn10.weight_file(args.work_dir), args.work_dir)
    if AGREEMENT in args.routes:
        log("agreement: mn04's quantized TFLite files vs Keras on ESC-10 (zero-shot)")
        results["agreement"] = agreement.run(args.work_dir)
    results["total_wall_s"] = time.perf_counter() - started
    write_outputs(results, args)
    log(f"wrote {args.json} and {args.markdown} ({results['total_wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
