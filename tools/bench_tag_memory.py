"""Peak RSS of ``eat-keras tag`` on a long recording (run by hand, not a test).

Writes a 2-hour 16-bit mono WAV at 32 kHz and one at 44.1 kHz (the ``../shared/audio`` clips, tiled;
460 and 635 MB) into a work folder, exports mn04_as as a 10 s float32 ``.tflite`` file, then runs
``eat-keras tag`` on each recording, with and without ``--window 10``, through the Keras model
(``--model mn04_as``, weights from ``$EAT_WEIGHTS_DIR``) and through the ``.tflite`` file (LiteRT;
its 10 s window is fixed, so both rows run windows). Each run is one child process: its own peak
RSS (``wait4``), wall time, exit status, windows printed and error line. Without ``--window`` the
Keras path refuses a 2-hour file from its header in one line (whole-file tagging is capped); that
refusal's peak is what the row shows. Prints a markdown table; the target is below 1 GB per run.

    EAT_WEIGHTS_DIR=../shared/weights python tools/bench_tag_memory.py --markdown tag_memory.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools.bench importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.paths import shared_dir  # noqa: E402
from tools.bench.peak_rss import run_measured  # noqa: E402
MIB = 1 << 20
TARGET_BYTES = 10**9  # 1 GB


def _cli() -> str:
    script = Path(sys.executable).with_name("eat-keras")
    return str(script) if script.is_file() else "eat-keras"


def make_recording(folder: Path, sample_rate: int, seconds: float) -> Path:
    """The shared clips at ``sample_rate``, repeated to ``seconds``, written block by block."""
    import soundfile as sf

    from eat_keras.audio import load_audio

    path = folder / f"recording_{seconds:g}s_{sample_rate}.wav"
    if path.is_file():
        return path
    pattern = np.concatenate([load_audio(p, sample_rate) for p in sorted((shared_dir() / "audio").glob("*.wav"))])
    total = int(seconds * sample_rate)
    with sf.SoundFile(str(path), "w", sample_rate, 1, subtype="PCM_16") as f:
        for start in range(0, total, len(pattern)):
            f.write(pattern[: total - start])
    return path


def export_tflite(folder: Path, env: dict[str, str]) -> Path:
    out = folder / "export"
    if not list(out.rglob("*_10s_float32.tflite")):
        subprocess.run(
            [_cli(), "export", "mn04_as", "--format", "tflite", "--window-seconds", "10",
             "--quantization", "float32", "--no-metadata", "--no-logmel", "--out", str(out)],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )
    return next(out.rglob("*_10s_float32.tflite"))


def run_tag(command: list[str], env: dict[str, str], log_file: Path) -> dict:
    """Run one command through the bench's launcher (its own peak RSS, not this script's); the
    windows it printed and its error line."""
    usage = run_measured(command, log_file, env)
    lines = log_file.read_text().splitlines()
    errors = [line for line in lines if line.startswith("eat-keras: error:")]
    return {
        "exit": usage["exit_code"], "wall_s": usage["wall_s"], "peak_mib": usage["peak_rss_mb"],
        "windows": sum(1 for line in lines if line.lstrip().startswith("[")),
        "error": errors[0] if errors else ("" if usage["exit_code"] == 0 else "\n".join(lines[-3:])),
    }


def benchmark(work: Path, seconds: float, rates: list[int], paths: list[str]) -> list[dict]:
    shared = shared_dir()
    env = {
        **os.environ,
        "EAT_WEIGHTS_DIR": os.environ.get("EAT_WEIGHTS_DIR", str(shared / "weights")),
        "EAT_LABELS": os.environ.get("EAT_LABELS", str(shared / "golden" / "class_labels_indices.csv")),
    }
    models = {"keras": "mn04_as"}
    if "tflite" in paths:
        models["tflite"] = str(export_tflite(work, env))
    rows = []
    for rate in rates:
        recording = make_recording(work, rate, seconds)
        for path in paths:
            for window in ([], ["--window", "10"]):
                command = [_cli(), "tag", str(recording), "--model", models[path], "--top-k", "3", *window]
                row = {"rate": rate, "path": path, "window": " ".join(window) or "(none)", "file": str(recording),
                       **run_tag(command, env, work / f"tag_{rate}_{path}_{len(window)}.log")}
                print(row, file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def markdown(rows: list[dict], seconds: float) -> str:
    lines = [
        f"Peak RSS of `eat-keras tag` on a {seconds / 3600:g} h 16-bit mono WAV (mn04_as; target < 1 GB)",
        "",
        "| input | path | --window | exit | windows | peak RSS | < 1 GB | wall | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        below = "yes" if r["peak_mib"] * MIB < TARGET_BYTES else "**no**"
        note = r["error"].removeprefix("eat-keras: error: ").replace(r["file"], "FILE")
        lines.append(
            f"| {r['rate'] / 1000:g} kHz | {r['path']} | {r['window']} | {r['exit']} | {r['windows']} | "
            f"{r['peak_mib']:.0f} MiB | {below} | {r['wall_s']:.1f} s | {note} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=7200.0, help="recording length (default 2 h)")
    parser.add_argument("--rates", type=int, nargs="+", default=[32000, 44100])
    parser.add_argument("--paths", nargs="+", choices=("keras", "tflite"), default=["keras", "tflite"])
    parser.add_argument("--work-dir", type=Path, help="keep recordings and the export here (default: a temp folder)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_tag_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        table = markdown(benchmark(work, args.seconds, args.rates, args.paths), args.seconds)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
