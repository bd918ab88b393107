"""Do the quantized TFLite files keep the float model's answers? Zero-shot top-1 agreement with Keras
on every ESC-10 clip (mn04 with its AudioSet head; the 527 classes, no ESC-10 head).

For each window length (1 s and 10 s), each clip is cut into non-overlapping windows of the file's
input (the last one, or a clip shorter than one window, zero-padded), Keras and each file score
every window, the scores are averaged over the clip's windows and the top-1 classes compared
(:func:`tools.tflite_agreement.windows_of`, as ``tools/tflite_agreement.py`` does).

Full int8 is calibrated on a stated set that holds none of the evaluated clips: the ``../shared/audio``
recordings (4 × 10 s) and 96 spoken words made with espeak-ng (``tools/make_speech_domain.py``, when
espeak-ng is on PATH; 1 s files, zero-padded to the 10 s window as ESC-10's 5 s clips are). Run by ``python -m tools.bench --routes agreement`` in a subprocess (Keras and the converter
stay out of the timing process); on its own::

    python -m tools.bench.agreement --work-dir build/bench --json build/bench/agreement.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tools.bench import paths  # noqa: E402
from tools.tflite_agreement import esc10_clips, windows_of  # noqa: E402

SAMPLE_RATE = 32000
WINDOWS = (1.0, 10.0)
QUANTIZATIONS = ("float32", "float16", "dynamic_int8", "int8")
#: spoken-word files of the speech domain among the calibration files (with the 4 recordings: the
#: default 100 calibration windows, one per file)
SPEECH_FILES = 96


def speech_files(work_dir: Path, count: int = SPEECH_FILES) -> list[Path]:
    """``count`` of the spoken-word files of ``tools/make_speech_domain.py`` (1 s each, a word in
    low noise), spread over its speakers and words; made once into ``work_dir/speech_domain``, none
    where espeak-ng is missing."""
    domain = work_dir / "speech_domain"
    if not (domain / "manifest.csv").is_file():
        if shutil.which("espeak-ng") is None:
            return []
        command = [sys.executable, str(paths.REPO_ROOT / "tools" / "make_speech_domain.py"), "--out", str(domain)]
        subprocess.run(command, check=True, capture_output=True)
    words = sorted((domain / "audio").rglob("*.wav"))
    return [words[i] for i in np.linspace(0, len(words) - 1, min(count, len(words))).round().astype(int)]


def calibration_set(work_dir: Path) -> tuple[list[Path], str]:
    """The int8 calibration files and a line that states them."""
    shared = paths.audio_files()
    speech = speech_files(work_dir)
    summary = f"{len(shared)} ../shared/audio recordings (10 s each)"
    if speech:
        summary += f" and {len(speech)} espeak-ng words in 1 s of noise (tools/make_speech_domain.py)"
    return [*shared, *speech], summary + "; no ESC-10 clip"


def clip_scores(score_windows: Any, audio: list[np.ndarray], size: int) -> np.ndarray:
    """``[clips, classes]``: each clip's window scores averaged (``score_windows``: ``[n, size]`` → scores)."""
    return np.stack([np.asarray(score_windows(windows_of(a, size))).mean(axis=0) for a in audio])


def tflite_scorer(path: Path) -> Any:
    from eat_keras.runners import TFLiteRunner

    return TFLiteRunner(path).scores


def evaluate(work_dir: Path, windows: tuple[float, ...], quantizations: tuple[str, ...]) -> dict[str, Any]:
    """Export mn04's files for ``windows`` × ``quantizations`` and compare each with Keras on ESC-10."""
    from eat_keras.audio import load_audio
    from eat_keras.export.tflite import export_tflite
    from eat_keras.loading import load_tagger

    shared = paths.shared_dir()
    tagger = load_tagger(str(shared / "weights" / "mn04_as_mAP_432.pt"), labels_file=paths.labels_csv())
    clips = esc10_clips(shared / "data" / "esc10")
    audio = [load_audio(str(path), SAMPLE_RATE) for path, _ in clips]
    calibration, summary = calibration_set(work_dir)
    out = work_dir / "agreement"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    artifacts = export_tflite(
        tagger, out, "mn04", window_seconds=windows, quantizations=quantizations, calibration_files=calibration,
        log_mel=False, metadata=False,
    )  # fmt: skip
    result: dict[str, Any] = {
        "model": "mn04", "clips": len(clips), "calibration": [str(p) for p in calibration],
        "calibration_summary": summary, "export_s": time.perf_counter() - started, "files": {},
    }  # fmt: skip
    keras = tagger.predict_function_for_waveforms()
    for seconds in windows:
        size = int(round(seconds * SAMPLE_RATE))
        want = clip_scores(lambda w: keras(w)["scores"].numpy(), audio, size)
        for artifact in (a for a in artifacts if a.window_seconds == seconds):
            got = clip_scores(tflite_scorer(artifact.path), audio, size)
            agree = int((got.argmax(axis=1) == want.argmax(axis=1)).sum())
            result["files"][f"{artifact.quantization}/{seconds:g}s"] = {
                "file": artifact.path.name, "agree": agree, "clips": len(clips), "top1_agreement": agree / len(clips),
                "max_abs_score_diff": float(np.abs(got - want).max()),
            }  # fmt: skip
    return result


def run(work_dir: Path) -> dict[str, Any]:
    """:func:`evaluate` in a fresh process (what ``python -m tools.bench`` calls)."""
    target = work_dir / "agreement.json"
    command = [sys.executable, "-m", "tools.bench.agreement", "--work-dir", str(work_dir), "--json", str(target)]
    done = subprocess.run(command, cwd=paths.REPO_ROOT)
    if done.returncode != 0 or not target.is_file():
        return {"error": f"tools.bench.agreement exited {done.returncode}"}
    return json.loads(target.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=paths.DEFAULT_WORK_DIR)
    parser.add_argument("--windows", nargs="+", type=float, default=list(WINDOWS))
    parser.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS))
    parser.add_argument("--json", type=Path, help="write the results here (default: print them)")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate(args.work_dir.resolve(), tuple(args.windows), tuple(args.quantizations))
    text = json.dumps(result, indent=1) + "\n"
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    for key, cell in result["files"].items():
        print(f"{key:20s} top-1 agreement {cell['agree']}/{cell['clips']} = {cell['top1_agreement']:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
