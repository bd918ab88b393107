"""Tag a long recording with the ``eat-keras`` CLI: speed vs real time and the child's peak RSS.

The recording is the ``../shared/audio`` clips, loaded at 32 kHz with ``eat_keras.audio``,
concatenated and repeated up to the wanted length and written (streamed, 16-bit PCM) as a 32 kHz WAV
into the work dir. The CLI runs as ``eat-keras tag FILE --model MODEL --window 10 --hop 10`` with
MODEL the exported mn10 float32 10 s ``.tflite`` file (LiteRT, no TensorFlow import) and, for
comparison, the mn10 ``.pt`` (the Keras model in TensorFlow): the wall time includes the CLI's
start-up (imports, weight loading), as a user would see it.
Wall time, CPU time and peak RSS are the CLI process's own (:func:`tools.bench.peak_rss.run_measured`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tools.bench import paths
from tools.bench.peak_rss import run_measured

SAMPLE_RATE = 32000
WINDOW_S = 10.0
HOP_S = 10.0


def make_recording(seconds: int, out_dir: Path) -> Path:
    """``<out_dir>/recording_<seconds>s_32k.wav``, made once."""
    import soundfile as sf

    from eat_keras.audio import load_audio

    path = out_dir / f"recording_{seconds}s_32k.wav"
    if path.is_file():
        return path
    clips = [load_audio(str(p), SAMPLE_RATE) for p in paths.audio_files()]
    total = seconds * SAMPLE_RATE
    partial = path.with_suffix(".partial.wav")
    out_dir.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(partial), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        written = 0
        while written < total:
            for clip in clips:
                piece = clip[: total - written]
                f.write(piece)
                written += len(piece)
                if written >= total:
                    break
    os.replace(partial, path)
    return path


def _cli_executable() -> str:
    script = Path(sys.executable).with_name("eat-keras")  # the console script of this venv
    return str(script) if script.is_file() else "eat-keras"


def run_tag(recording: Path, model: Path, log_file: Path) -> dict[str, Any]:
    """Run the CLI once; returns wall time, peak RSS, windows tagged, exit code."""
    command = [_cli_executable(), "tag", str(recording), "--model", str(model),
               "--window", f"{WINDOW_S:g}", "--hop", f"{HOP_S:g}"]
    env = {**os.environ, "EAT_LABELS": str(paths.labels_csv()), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = run_measured(command, log_file, env)
    windows = sum(1 for line in log_file.read_text().splitlines() if line.lstrip().startswith("["))
    return {"command": " ".join(command), **result, "windows": windows, "log": str(log_file)}


def benchmark(seconds: int, model: Path, work_dir: Path, repeats: int = 1) -> dict[str, Any]:
    """The long recording ``repeats`` times (the run with the median wall time is reported, with all
    wall times and the highest peak RSS: one run is at the mercy of this shared machine's drift), then
    (for context, not a target) one 10 s window: about the CLI's fixed start-up cost, which the long
    run's speed-up includes."""
    out_dir = work_dir / "tag_hour"
    recording = make_recording(seconds, out_dir)
    kind = model.suffix.lstrip(".")
    runs = [run_tag(recording, model, out_dir / f"tag_{seconds}s_{kind}.log") for _ in range(max(repeats, 1))]
    ok = [r for r in runs if r["exit_code"] == 0]
    failed = [r for r in runs if r["exit_code"] != 0]
    # a failed run is reported as such; otherwise the median run by wall time (the upper one of two)
    result = dict(failed[0] if failed else sorted(ok, key=lambda r: r["wall_s"])[len(ok) // 2])
    result["wall_s_runs"] = [r["wall_s"] for r in runs]
    if ok:
        result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    short = run_tag(make_recording(int(WINDOW_S), out_dir), model, out_dir / f"tag_{int(WINDOW_S)}s_{kind}.log")
    result.update(
        model=str(model),
        recording=str(recording),
        audio_s=float(seconds),
        realtime_factor=seconds / result["wall_s"],
        expected_windows=-(-seconds // int(HOP_S)),
        one_window_wall_s=short["wall_s"] if short["exit_code"] == 0 else None,
    )
    return result
