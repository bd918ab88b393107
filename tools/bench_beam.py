"""Windows per second of ``eat-keras tag-corpus`` on Beam against the plain ``eat-keras tag`` loop
(run by hand, not a test).

Inputs: the 320 ESC-10 clips (5 s FLAC at 44.1 kHz, each tagged whole: one window per file) and a
1-hour 16-bit WAV at 44.1 kHz made from the ``../shared/audio`` clips (``--window 10``: 360 windows).
Model: mn04_as exported once as a SavedModel, which every row runs, so the rows differ only in how
the work is driven:

- ``tag``: the ``eat-keras tag FILES --model SAVEDMODEL --json`` loop (one process, files in turn);
- ``beam``: ``eat-keras tag-corpus PATTERN --model SAVEDMODEL`` on Beam's in-process FnApiRunner;
- ``beam x2``: the same with ``--direct_num_workers=2 --direct_running_mode=multi_processing``.

Two measurements, each the best of ``--repeats`` rounds with the rows in turn, in wall time and in
CPU time (the process's and its children's: on a shared machine, other users' load stretches the
wall time far more than the CPU time; the load average is printed with the tables):

- *whole command*: each row a child process timed from start to exit. It includes each command's
  imports: TensorFlow's, and Beam's for the Beam rows (without torch, which Beam's RunInference
  module imports wherever it is installed: :mod:`eat_keras.beam.runinference` keeps it out);
- *after imports*: the ``tag`` loop (``load_runner`` + ``open_for_tagging`` + ``tag_with``, as the
  command runs them) and ``run_tag_corpus`` called in this process once TensorFlow and Beam are
  imported: model load, decoding, scoring and writing, what grows with the corpus. Two worker
  processes still start (and import) inside the Beam x2 row.

The target: Beam in-process within 20 % of the ``tag`` loop, in wall and in CPU time.

    EAT_WEIGHTS_DIR=../shared/weights EAT_LABELS=../shared/golden/class_labels_indices.csv \\
        python tools/bench_beam.py --markdown bench_beam.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.paths import shared_dir  # noqa: E402
from tools.bench_tag_memory import make_recording  # noqa: E402

ROWS = ("tag", "beam", "beam x2")
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
TOP_K = 5


def _cli() -> str:
    script = Path(sys.executable).with_name("eat-keras")
    return str(script) if script.is_file() else "eat-keras"


def export_model(work: Path, env: dict[str, str]) -> Path:
    out = work / "export"
    if not (out / "mn04_as" / "1" / "saved_model.pb").is_file():
        subprocess.run(
            [_cli(), "export", "mn04_as", "--format", "saved_model", "--out", str(out)],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return out / "mn04_as" / "1"


def inputs(work: Path) -> dict[str, tuple[list[str], str, float | None]]:
    """name: (files, the pattern that matches them, window)"""
    esc10 = shared_dir() / "data" / "esc10" / "audio"
    hour = str(make_recording(work, 44100, 3600.0))
    return {
        "ESC-10 (320 x 5 s, whole)": (sorted(map(str, esc10.glob("*.flac"))), str(esc10 / "*.flac"), None),
        "1 h recording (--window 10)": ([hour], hour, 10.0),
    }


# --- whole commands ----------------------------------------------------------------------------


def command_of(row: str, model: Path, files: list[str], pattern: str, window: float | None, out: Path) -> list[str]:
    flags = ["--top-k", str(TOP_K)] + (["--window", f"{window:g}"] if window else [])
    if row == "tag":
        return [_cli(), "tag", *files, "--model", str(model), "--json", *flags]
    workers = TWO_WORKERS if row == "beam x2" else []
    return [_cli(), "tag-corpus", pattern, "--model", str(model), "--out", str(out), *flags, *workers]


def run_command(row: str, command: list[str], env: dict[str, str]) -> int:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{row} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if row == "tag":
        return sum(len(d.get("windows", [])) for d in json.loads(done.stdout)["results"])
    return int(re.search(r"\((\d+) windows\)", done.stdout).group(1))


# --- after imports -----------------------------------------------------------------------------


def tag_loop(model: Path, files: list[str], window: float | None) -> int:
    """What ``eat-keras tag --json`` does with a SavedModel, files in turn; the records serialised."""
    from eat_keras.audio import SAMPLE_RATE
    from eat_keras.runners import load_runner
    from eat_keras.tagging import open_for_tagging, prepare_waveform, tag_with

    runner = load_runner(model)
    records = []
    for path in files:
        with open_for_tagging(path, SAMPLE_RATE, windowed=window is not None) as signal:
            waveform = prepare_waveform(signal, SAMPLE_RATE, path, False)
            results = tag_with(runner.scores, runner.class_names, SAMPLE_RATE, waveform, TOP_K, window)
        records += [{"file": path, "start": r.start, "labels": [(t.label, t.score) for t in r.top]} for r in results]
    json.dumps(records)
    return len(records)


def beam_job(model: Path, pattern: str, window: float | None, out: Path, workers: bool) -> int:
    from eat_keras.beam.jobs import TagCorpusJob, run_tag_corpus
    from eat_keras.beam.tag_audio import TagSettings

    job = TagCorpusJob([pattern], str(model), str(out), TagSettings(window_s=window, top_k=TOP_K))
    return run_tag_corpus(job, None, TWO_WORKERS if workers else []).windows


def in_process(row: str, model: Path, files: list[str], pattern: str, window: float | None, out: Path) -> int:
    if row == "tag":
        return tag_loop(model, files, window)
    return beam_job(model, pattern, window, out, workers=row == "beam x2")


# --- the rounds and the tables -----------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and of the child processes it waited for (commands, Beam workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rounds(measure: Callable[[str, str], int], names: list[str], repeats: int) -> list[dict]:
    """Each input's rows in turn (each row first once), ``repeats`` rounds; per row the least wall
    time and the least CPU time over the rounds."""
    results = []
    for name in names:
        runs: dict[str, list[tuple[float, float, int]]] = {row: [] for row in ROWS}
        for round_ in range(repeats):
            for row in ROWS[round_ % len(ROWS) :] + ROWS[: round_ % len(ROWS)]:
                start, cpu = time.perf_counter(), cpu_seconds()
                windows = measure(row, name)
                runs[row].append((time.perf_counter() - start, cpu_seconds() - cpu, windows))
                print(name, row, runs[row][-1], file=sys.stderr, flush=True)
        for row in ROWS:
            results.append({
                "input": name, "row": row, "windows": runs[row][0][2], "seconds": min(r[0] for r in runs[row]),
                "cpu": min(r[1] for r in runs[row]), "rounds": [round(r[0], 1) for r in runs[row]],
            })  # fmt: skip
    return results


def markdown(title: str, results: list[dict]) -> str:
    header = "| input | row | windows | wall | windows/s | wall vs tag | CPU | CPU vs tag | wall per round (s) |"
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|---|"]
    base = {r["input"]: r for r in results if r["row"] == "tag"}
    for r in results:
        wall, cpu = r["seconds"] / base[r["input"]]["seconds"] - 1, r["cpu"] / base[r["input"]]["cpu"] - 1
        lines.append(
            f"| {r['input']} | {r['row']} | {r['windows']} | {r['seconds']:.1f} s | {r['windows'] / r['seconds']:.1f} "
            f"| {wall:+.0%} | {r['cpu']:.1f} s | {cpu:+.0%} | {', '.join(map(str, r['rounds']))} |"
        )
    return "\n".join(lines)


def benchmark(work: Path, repeats: int) -> str:
    shared = shared_dir()
    env = {
        **os.environ,
        "EAT_WEIGHTS_DIR": os.environ.get("EAT_WEIGHTS_DIR", str(shared / "weights")),
        "EAT_LABELS": os.environ.get("EAT_LABELS", str(shared / "golden" / "class_labels_indices.csv")),
    }
    model, cases, out = export_model(work, env), inputs(work), work / "out"
    load = [os.getloadavg()[0]]

    def whole(row: str, name: str) -> int:
        shutil.rmtree(out, ignore_errors=True)
        return run_command(row, command_of(row, model, *cases[name], out), env)

    def after_imports(row: str, name: str) -> int:
        shutil.rmtree(out, ignore_errors=True)
        return in_process(row, model, *cases[name], out)

    commands = rounds(whole, list(cases), repeats)
    load.append(os.getloadavg()[0])
    import tensorflow  # noqa: F401  (imported before the timing, as in a running worker)

    import eat_keras.beam.jobs  # noqa: F401

    logging.getLogger().setLevel(logging.ERROR)  # Beam's notices
    imported = rounds(after_imports, list(cases), repeats)
    load.append(os.getloadavg()[0])
    return "\n\n".join([
        markdown(f"Whole commands (child processes; load average {load[0]:.2f} -> {load[1]:.2f})", commands),
        markdown(f"After imports (in this process; load average {load[1]:.2f} -> {load[2]:.2f})", imported),
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three rows (default: 2)")
    parser.add_argument("--work-dir", type=Path, help="keep the recording and the export here (default: a temp folder)")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_beam_")))
        work.mkdir(parents=True, exist_ok=True)
        tables = benchmark(work, args.repeats)
    print(tables)
    if args.markdown:
        args.markdown.write_text(tables + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
