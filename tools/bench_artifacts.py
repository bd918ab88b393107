"""Sizes and load times of the deployable artifacts of one model (default: mn04_as).

Exports the SavedModel (``eat_keras.export.saved_model``) and every TFLite file (windows 1 s and
10 s, four quantizations, waveform and log-mel input; full int8 calibrated on 8 ESC-10 fold-1 clips)
into a temporary folder, then measures each artifact in a fresh Python process:

- size on disk (SavedModel: the whole version folder);
- load: ``tf.saved_model.load`` / LiteRT ``Interpreter(...)`` + ``allocate_tensors()`` (XNNPACK,
  2 threads), runtime import excluded (reported separately);
- first inference and the median of 10 further ones, batch 1, on the file's window (SavedModel:
  ``serving_default`` on a 10 s and a 1 s waveform).

With ``--compare-dft`` it also times the RFFT2D front-end against an exact DFT-as-matmul front-end
(800 window samples × 513 one-sided bins, window folded into the cos/sin basis) in float32 TFLite.

    python tools/bench_artifacts.py --markdown bench.md [--compare-dft]
"""

from __future__ import annotations

import argparse
import json
import math
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


def compare_dft(tagger, repeats: int = 30) -> list[dict]:
    """Float32 TFLite, RFFT2D front-end vs exact DFT matmul front-end, same network, 2 threads."""
    import tensorflow as tf

    from eat_keras.export import tflite as T
    from eat_keras.frontend import LOG_OFFSET, PREEMPHASIS, kaldi_mel_banks, normalize

    c = tagger.config.frontend
    left = (c.n_fft - c.win_length) // 2
    n = np.arange(left, left + c.win_length, dtype=np.float64)
    m = np.arange(c.win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * m / (c.win_length - 1))
    k = np.arange(c.n_fft // 2 + 1, dtype=np.float64)
    angle = 2.0 * math.pi * np.outer(n, k) / c.n_fft
    basis = np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1).astype(np.float32)
    banks_t = np.ascontiguousarray(
        kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, c.fmin, c.effective_fmax).numpy().T
    )
    bins = c.n_fft // 2 + 1

    def dft_log_mel(waveform):
        emphasised = waveform[:, 1:] - PREEMPHASIS * waveform[:, :-1]
        padded = tf.pad(emphasised, [[0, 0], [c.n_fft // 2, c.n_fft // 2]], mode="REFLECT")
        frames = tf.signal.frame(padded[:, left : padded.shape[1] - left], c.win_length, c.hop_length)
        y = tf.linalg.matmul(frames, tf.constant(basis))
        power = tf.square(y[..., :bins]) + tf.square(y[..., bins:])
        mel = tf.linalg.matmul(tf.constant(banks_t), power, transpose_b=True)
        return normalize(tf.math.log(mel + LOG_OFFSET))

    module = T._ConversionModule(tagger)
    rows = []
    for seconds in (1, 10):
        samples = seconds * c.sample_rate
        models = {}
        for kind, frontend in (("rfft", lambda w: tagger.frontend(w, training=False)[..., 0]), ("dft_matmul", dft_log_mel)):
            @tf.function(input_signature=[tf.TensorSpec([1, samples], tf.float32, name="waveform")])
            def serve(waveform, frontend=frontend):
                mel = frontend(waveform)[..., tf.newaxis]
                return {"scores": tagger.scores_from_logits(tagger.net(mel, training=False)["logits"])}

            @tf.function(input_signature=[tf.TensorSpec([1, samples], tf.float32, name="waveform")])
            def front_only(waveform, frontend=frontend):
                return {"log_mel": frontend(waveform)}

            for part, fn in (("whole model", serve), ("front-end only", front_only)):
                models[(kind, part)] = T._base_converter(fn.get_concrete_function(), module).convert()
        x = np.random.RandomState(0).uniform(-0.5, 0.5, (1, samples)).astype(np.float32)
        reference = tagger.frontend(tf.constant(x), training=False).numpy()[..., 0]
        for part in ("whole model", "front-end only"):
            interpreters = {kind: T.make_interpreter(models[(kind, part)]) for kind in ("rfft", "dft_matmul")}
            times = {kind: [] for kind in interpreters}
            for _ in range(repeats):  # interleaved, so that load from other processes hits both alike
                for kind, it in interpreters.items():
                    d = it.get_input_details()[0]
                    start = time.perf_counter()
                    it.set_tensor(d["index"], x)
                    it.invoke()
                    times[kind].append(time.perf_counter() - start)
            for kind in interpreters:
                row = {"window_s": seconds, "part": part, "front_end": kind,
                       "size_mb": len(models[(kind, part)]) / 1e6,
                       "median_ms": 1000 * float(np.median(times[kind])), "min_ms": 1000 * float(np.min(times[kind]))}
                if part == "front-end only":
                    got = T.run_tflite(interpreters[kind], x)["log_mel"]
                    row["max_abs_log_mel_diff"] = float(np.abs(got - reference).max())
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from tflite_agreement import add_model_arguments, calibration_subset, esc10_clips

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--compare-dft", action="store_true")
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
        f"| artifact | size (MB) | load (ms) | first inference (ms) | inference, median of 10 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        infer = f"{1000 * r['median_s']:.1f}"
        first = f"{1000 * r['first_s']:.1f}"
        if "median_1s" in r:
            infer += f" (10 s), {1000 * r['median_1s']:.1f} (1 s)"
            first += f" (10 s), {1000 * r['first_1s']:.1f} (1 s)"
        lines.append(f"| {r['artifact']} | {r['size_mb']:.2f} | {1000 * r['load_s']:.0f} | {first} | {infer} |")
    runtimes = sorted({(r["runtime"], round(r["import_s"], 2)) for r in rows}, key=lambda t: t[0])
    imports = {}
    for runtime, seconds in runtimes:
        imports.setdefault(runtime, []).append(seconds)
    lines.append("")
    lines.append("Runtime import (not in the load column): " + ", ".join(
        f"{k} {1000 * float(np.median(v)):.0f} ms" for k, v in imports.items()))
    dft_rows = []
    if args.compare_dft:
        dft_rows = compare_dft(tagger)
        lines += ["", "| window | part | front-end | size (MB) | median (ms) | min (ms) | max abs log-mel diff vs RFFT export |",
                  "|---:|---|---|---:|---:|---:|---:|"]
        for r in dft_rows:
            diff = f"{r['max_abs_log_mel_diff']:.1e}" if "max_abs_log_mel_diff" in r else ""
            lines.append(f"| {r['window_s']} s | {r['part']} | {r['front_end']} | {r['size_mb']:.2f} | "
                         f"{r['median_ms']:.2f} | {r['min_ms']:.2f} | {diff} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"artifacts": rows, "dft": dft_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
