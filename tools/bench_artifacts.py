"""Sizes and load times of the deployable artifacts of one model (default: mn04_as).

Exports the SavedModel (``eat_keras.export.saved_model``) and every TFLite file (windows 1 s and
10 s, four quantizations, waveform and log-mel input; full int8 calibrated on 8 ESC-10 fold-1 clips)
into a temporary folder, then measures each artifact in a fresh Python process:

- size on disk (SavedModel: the whole version folder);
- load: ``tf.saved_model.load`` / LiteRT ``Interpreter(...)`` + ``allocate_tensors()`` (XNNPACK,
  2 threads), runtime import excluded (reported separately);
- first inference and the median of 10 further ones, batch 1, on the file's window (SavedModel:
  ``serving_default`` on a 10 s and a 1 s waveform).

The speed comparison against the other runtimes is ``python -m tools.bench``; this tool covers every
file ``eat-keras export`` writes for one model, including the 1 s windows and the int8 variants.

    python tools/bench_artifacts.py --markdown bench.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

_TFLITE_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
try:
    from ai_edge_litert.interpreter import Interpreter
    runtime = "ai_edge_litert"
except ImportError:
    import tensorflow as tf
    Interpreter, runtime = tf.lite.Interpreter, "tf.lite"
import numpy as np
t1 = time.perf_counter()
it = Interpreter(model_path=sys.argv[1], num_threads=2)
it.allocate_tensors()
t2 = time.perf_counter()
d = it.get_input_details()[0]
x = np.random.RandomState(0).uniform(-0.5, 0.5, d["shape"]).astype(np.float32)
it.set_tensor(d["index"], x); it.invoke()
t3 = time.perf_counter()
times = []
for _ in range(10):
    s = time.perf_counter(); it.set_tensor(d["index"], x); it.invoke(); times.append(time.perf_counter() - s)
print(json.dumps({"runtime": runtime, "import_s": t1 - t0, "load_s": t2 - t1, "first_s": t3 - t2,
                  "median_s": float(np.median(times))}))
"""

_SAVED_MODEL_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, tensorflow as tf
t1 = time.perf_counter()
m = tf.saved_model.load(sys.argv[1])
serve = m.signatures["serving_default"]
t2 = time.perf_counter()
out = {"runtime": "tensorflow", "import_s": t1 - t0, "load_s": t2 - t1}
for seconds in (10, 1):
    x = tf.constant(np.random.RandomState(0).uniform(-0.5, 0.5, (1, seconds * 32000)).astype(np.float32))
    s = time.perf_counter(); serve(waveform=x)["scores"].numpy(); first = time.perf_counter() - s
    times = []
    for _ in range(10):
        s = time.perf_counter(); serve(waveform=x)["scores"].numpy(); times.append(time.perf_counter() - s)
    out[f"first_{seconds}s"] = first
    out[f"median_{seconds}s"] = float(np.median(times))
print(json.dumps(out))
"""


def _probe(code: str, path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    from tflite_agreement import add_model_arguments, calibration_subset, esc10_clips

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--json", help="write the raw numbers here")
    args = parser.parse_args(argv)

    from eat_keras.export.saved_model import export_saved_model
    from eat_keras.export.tflite import export_tflite
    from eat_keras.loading import load_tagger

    tagger = load_tagger(args.model, labels_file=args.labels)
    calibration = calibration_subset(esc10_clips(Path(args.esc10)), 8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        saved = export_saved_model(tagger, tmp, args.name)
        print(f"SavedModel exported in {time.time() - started:.0f} s", file=sys.stderr)
        started = time.time()
        artifacts = export_tflite(tagger, tmp, args.name, calibration_files=calibration,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"{len(artifacts)} TFLite files exported in {time.time() - started:.0f} s", file=sys.stderr)
        probe = _probe(_SAVED_MODEL_PROBE, saved)
        rows.append({"artifact": f"SavedModel `{args.name}/{saved.name}/`", "size_mb": _size(saved) / 1e6,
                     "runtime": probe["runtime"], "import_s": probe["import_s"], "load_s": probe["load_s"],
                     "first_s": probe["first_10s"], "median_s": probe["median_10s"],
                     "first_1s": probe["first_1s"], "median_1s": probe["median_1s"]})
        for artifact in artifacts:
            probe = _probe(_TFLITE_PROBE, artifact.path)
            rows.append({"artifact": f"`{artifact.path.name}`", "size_mb": _size(artifact.path) / 1e6, **probe})
            print(rows[-1], file=sys.stderr, flush=True)
    lines = [
        "| artifact | size (MB) | load (ms) | first inference (ms) | inference, median of 10 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        infer = f"{1000 * r['median_s']:.1f}"
        first = f"{1000 * r['first_s']:.1f}"
        if "median_1s" in r:
            infer += f" (10 s), {1000 * r['median_1s']:.1f} (1 s)"
            first += f" (10 s), {1000 * r['first_1s']:.1f} (1 s)"
        lines.append(f"| {r['artifact']} | {r['size_mb']:.2f} | {1000 * r['load_s']:.0f} | {first} | {infer} |")
    imports: dict[str, list[float]] = {}  # every probe's import time, per runtime (no dedup, no rounding)
    for r in sorted(rows, key=lambda r: r["runtime"]):
        imports.setdefault(r["runtime"], []).append(r["import_s"])
    lines.append("")
    lines.append("Runtime import (not in the load column): " + ", ".join(
        f"{k} {1000 * float(np.median(v)):.0f} ms" for k, v in imports.items()))
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"artifacts": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
