"""Top-1 agreement of the quantized TFLite files with Keras on ESC-10 (folds 1-4, 320 clips).

Zero-shot: the 527 AudioSet classes of the tagger, no ESC-10 head. For each clip and each window
length, the clip is cut into non-overlapping windows of the file's input length (the last one, or a
clip shorter than one window, zero-padded), both Keras and the TFLite file score every window, the
scores are averaged over the windows and the top-1 classes are compared. Full int8 is calibrated on
a few fold-1 clips (``--calibration-clips``); agreement is reported on all 320 clips and on the clips
not used for calibration.

    python tools/tflite_agreement.py                       # mn04_as from ../shared, windows 10 s and 1 s
    python tools/tflite_agreement.py --json agreement.json --windows 10

Needs ../shared (or $EAT_SHARED_DIR): weights/mn04_as_mAP_432.pt, golden/class_labels_indices.csv
and data/esc10/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools.bench importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.paths import default_shared_dir  # noqa: E402


def esc10_clips(esc10: Path) -> list[tuple[Path, int]]:
    """``(path, fold)`` for every clip of esc10.csv, in file order."""
    with open(esc10 / "esc10.csv", newline="") as f:
        return [(esc10 / "audio" / row["filename"], int(row["fold"])) for row in csv.DictReader(f)]


def calibration_subset(clips: list[tuple[Path, int]], count: int) -> list[Path]:
    """``count`` fold-1 clips spread over the fold (sorted by name: the classes interleave)."""
    fold1 = sorted(p for p, fold in clips if fold == 1)
    if count >= len(fold1):
        return fold1
    return [fold1[i] for i in np.linspace(0, len(fold1) - 1, count).round().astype(int)]


def windows_of(audio: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping windows ``[n, size]``; the tail (or a short clip) zero-padded."""
    n = max(1, -(-len(audio) // size))
    padded = np.zeros(n * size, np.float32)
    padded[: len(audio)] = audio
    return padded.reshape(n, size)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --name, --labels, --esc10 with defaults from ../shared (shared by the tools)."""
    shared = default_shared_dir()
    parser.add_argument("--model", default=str(shared / "weights" / "mn04_as_mAP_432.pt"))
    parser.add_argument("--name", default="mn04_as")
    parser.add_argument("--labels", default=str(shared / "golden" / "class_labels_indices.csv"))
    parser.add_argument("--esc10", default=str(shared / "data" / "esc10"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--windows", nargs="+", type=float, default=[10.0, 1.0])
    parser.add_argument("--quantizations", nargs="+", default=["float32", "float16", "dynamic_int8", "int8"])
    parser.add_argument("--calibration-clips", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N clips (quick runs)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from eat_keras.audio import load_audio
    from eat_keras.export.tflite import export_tflite, make_interpreter, run_tflite
    from eat_keras.loading import load_tagger

    tagger = load_tagger(args.model, labels_file=args.labels)
    sr = tagger.config.frontend.sample_rate
    clips = esc10_clips(Path(args.esc10))
    if args.limit:
        clips = clips[: args.limit]
    calibration = calibration_subset(esc10_clips(Path(args.esc10)), args.calibration_clips)
    calibration_names = {p.name for p in calibration}
    print(f"{len(clips)} clips; int8 calibrated on {len(calibration)} fold-1 clips", file=sys.stderr)

    audio = {p: load_audio(str(p), sr) for p, _ in clips}
    keras_fn = tagger.predict_function_for_waveforms()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        artifacts = export_tflite(
            tagger, tmp, args.name, window_seconds=args.windows, quantizations=args.quantizations,
            calibration_files=calibration if "int8" in args.quantizations else (), log_mel=False, metadata=False,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
        print(f"exported {len(artifacts)} files in {time.time() - started:.0f} s", file=sys.stderr)
        for seconds in args.windows:
            size = int(round(seconds * sr))
            keras_top = {}
            for p, _ in clips:
                scores = keras_fn(windows_of(audio[p], size))["scores"].numpy()
                keras_top[p] = scores.mean(axis=0)
            for artifact in (a for a in artifacts if a.window_seconds == seconds):
                interpreter = make_interpreter(artifact.path)
                agree = agree_held_out = held_out = 0
                max_diff = 0.0
                for p, _ in clips:
                    tfl = np.mean([run_tflite(interpreter, w[np.newaxis])["scores"][0] for w in windows_of(audio[p], size)], axis=0)
                    same = int(tfl.argmax() == keras_top[p].argmax())
                    agree += same
                    max_diff = max(max_diff, float(np.abs(tfl - keras_top[p]).max()))
                    if p.name not in calibration_names:
                        held_out += 1
                        agree_held_out += same
                row = {
                    "file": artifact.path.name,
                    "window_seconds": seconds,
                    "quantization": artifact.quantization,
                    "clips": len(clips),
                    "top1_agreement": agree / len(clips),
                    "top1_agreement_held_out": agree_held_out / max(held_out, 1),
                    "held_out_clips": held_out,
                    "max_abs_score_diff": max_diff,
                }
                results.append(row)
                print(
                    f"{row['file']:40s} top-1 agreement {agree}/{len(clips)} = {row['top1_agreement']:.4f}"
                    f"  (held out {agree_held_out}/{held_out})  max |Δscore| {max_diff:.4f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.name, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
