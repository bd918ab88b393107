"""Input-pipeline benchmark at the user's scale (run by hand, not a test).

A synthetic data set with the user's shape: 20 classes holding the user's file counts divided by
``--scale`` (10 and 5 by default), two-second 16-bit WAV clips at 16, 22.05, 32 and 44.1 kHz (so that
``prepare`` resamples), a class-dependent tone burst in noise (so that the classes can be learnt). At
each scale, every measurement runs in its own child process:

1. ``eat-keras prepare DATA --out PREP --processes 2``: files/s, peak RSS of its process tree;
2. the input pipeline alone (:func:`eat_keras.train.shards.prepared_dataset` over the training side,
   batches of 32 two-second crops, one epoch): clips/s;
3. fine-tuning's own training step of mn04_as with its defaults (batch 32 x 2 s waveforms,
   augmentations, front-end, CB + SupCon, Adam) timed alone: the clips/s it consumes; the pipeline
   must deliver at least 5 times that (both timed under finetune's op determinism);
4. ``eat-keras finetune PREP --model mn04_as --out RUN --epochs 1``: peak RSS during the epoch
   (target below 3 GB, and within 10 % between the two scales, so memory does not grow with the data).

    python tools/bench_pipeline.py --out runs/bench_pipeline          # --scale 10 --scale 5: the default

The data sets, prepared folders and runs stay in ``--work`` (default /tmp/bench_pipeline) and the
clips are reused by the next run; prepare and the epoch run afresh every time. Writes
``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools.bench importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench import machine  # noqa: E402
from tools.bench.paths import DEFAULT_O2T_VENV, shared_dir  # noqa: E402
from tools.bench.timing import summarize  # noqa: E402

#: files per class in the user's data set (about 143,000 two-second clips)
USER_COUNTS = (14562, 9007, 8266, 15027, 6334, 11761, 5067, 3827, 9314, 7505,
               5938, 7138, 4332, 3196, 4524, 5127, 2942, 3482, 3019, 9261)  # fmt: skip
SAMPLE_RATES = (16000, 22050, 32000, 44100)
CLIP_SECONDS = 2.0
CLIP_SAMPLES = 64000  # two seconds at the model's 32 kHz
BATCH_SIZE = 32
MODEL = "mn04_as"
RSS_TARGET_BYTES = 3e9
RSS_SPREAD = 0.10  # peak RSS at the scales within 10 % of each other
RATIO_TARGET = 5.0  # pipeline clips/s over the training step's
MB = 1 << 20


# --- the synthetic data set ------------------------------------------------------------------


def class_frequency(class_index: int) -> float:
    """A tone per class, geometrically spaced from 150 Hz to 6 kHz (below every file's Nyquist)."""
    return 150.0 * 40.0 ** (class_index / (len(USER_COUNTS) - 1))


def synth_clip(class_index: int, file_index: int) -> tuple[np.ndarray, int]:
    """One clip, a function of its class and index only: a tone burst with its octave, at a random
    onset, length and level, in white noise at a random SNR. int16 samples and the sample rate."""
    rng = np.random.default_rng([20240, class_index, file_index])
    rate = SAMPLE_RATES[(7 * class_index + file_index) % len(SAMPLE_RATES)]
    t = np.arange(int(CLIP_SECONDS * rate)) / rate
    f0 = class_frequency(class_index) * rng.uniform(0.97, 1.03)
    tone = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2 * f0 * t + rng.uniform(0, np.pi))
    onset, length = rng.uniform(0.0, 1.2), rng.uniform(0.3, 0.8)
    inside = np.clip((t - onset) / length, 0.0, 1.0)
    envelope = np.where((t >= onset) & (t <= onset + length), np.sin(np.pi * inside) ** 2, 0.0)
    noise = rng.standard_normal(t.size) * 10 ** (-rng.uniform(0.0, 20.0) / 20) * 0.7
    clip = envelope * tone + noise
    clip *= rng.uniform(0.1, 0.9) / np.max(np.abs(clip))
    return np.round(clip * 32767).astype(np.int16), rate


def clip_path(pool: Path, class_index: int, file_index: int) -> Path:
    return pool / f"c{class_index:02d}" / f"c{class_index:02d}_{file_index:05d}.wav"


def fill_pool(pool: Path, counts: list[int]) -> int:
    """Write every clip not yet in ``pool`` (each under a temporary name, then moved into place, so
    an interrupted run leaves only whole files); the number written."""
    import soundfile as sf

    written = 0
    for c, count in enumerate(counts):
        clip_path(pool, c, 0).parent.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = clip_path(pool, c, i)
            if path.is_file():
                continue
            samples, rate = synth_clip(c, i)
            partial = path.with_name(path.name + ".partial")
            sf.write(str(partial), samples, rate, subtype="PCM_16", format="WAV")
            os.replace(partial, path)
            written += 1
        print(f"synthesis: class {c + 1}/{len(counts)} ({written} clips written so far)", file=sys.stderr, flush=True)
    return written


def scaled_counts(scale: int) -> list[int]:
    return [round(n / scale) for n in USER_COUNTS]


def data_set(work: Path, scale: int, pool_counts: list[int]) -> tuple[Path, int]:
    """``work/data_1_SCALE``: class folders of hard links to the first clips of the pool (a smaller
    scale's folder holds a larger one's files, so the pool is written once); the number of files."""
    folder = work / f"data_1_{scale}"
    counts = scaled_counts(scale)
    fill_pool(work / "pool", pool_counts)
    for c, count in enumerate(counts):
        target = folder / f"c{c:02d}"
        target.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            source = clip_path(work / "pool", c, i)
            link = target / source.name
            if not link.exists():
                try:
                    os.link(source, link)
                except OSError:  # another file system
                    shutil.copyfile(source, link)
    return folder, sum(counts)


# --- measuring a child process ---------------------------------------------------------------


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_rss_bytes(root: int) -> int:
    """Summed RSS of ``root`` and all its descendants now (shared pages count once per process)."""
    children, pending, total = _children_of(), [root], 0
    page = os.sysconf("SC_PAGE_SIZE")
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass  # ended meanwhile
    return total


def run_measured(command: list[str], log_file: Path, env: dict[str, str], interval: float = 0.2) -> dict[str, Any]:
    """Run ``command`` (output to ``log_file``): wall time, exit code, CPU times, the largest single
    process's peak RSS (``wait4``, exact) and the process tree's summed RSS at its highest (polled).
    The launcher of :mod:`tools.bench.peak_rss` hides the pid, so the tree is polled here; this
    process imports no TensorFlow, so a child's ``ru_maxrss`` is its own."""
    peak = [0]
    done = threading.Event()
    started = time.perf_counter()
    with open(log_file, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)

        def poll() -> None:
            while not done.wait(interval):
                peak[0] = max(peak[0], tree_rss_bytes(process.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        poller.join()
    process.returncode = code = os.waitstatus_to_exitcode(status)  # reaped by wait4
    return {
        "exit_code": code, "wall_s": time.perf_counter() - started,
        "peak_rss_mb": usage.ru_maxrss / 1024, "peak_tree_rss_mb": peak[0] / MB,
        "user_cpu_s": usage.ru_utime, "system_cpu_s": usage.ru_stime,
    }  # fmt: skip


def last_json_line(log_file: Path) -> dict[str, Any]:
    """The last line of a child's output that is a JSON object (its result)."""
    for line in reversed(log_file.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def error_line(log_file: Path) -> str:
    lines = log_file.read_text().splitlines()
    errors = [line for line in lines if line.startswith("eat-keras: error:")]
    return errors[0] if errors else "\n".join(lines[-5:])


# --- what the children measure ---------------------------------------------------------------


def pipeline_throughput(prep: Path, batches: int | None) -> dict[str, Any]:
    """Iterate one training epoch of the prepared folder's input pipeline (or ``batches`` of it):
    the seconds to the first batch (the shuffle buffer filling) and clips/s after it."""
    from eat_keras.train.shards import prepared_dataset

    dataset = prepared_dataset(
        prep, "train", mode="train", clip_samples=CLIP_SAMPLES, batch_size=BATCH_SIZE, seed=0, epoch=0
    )
    if batches is not None:
        dataset = dataset.take(batches)
    started = time.perf_counter()
    iterator = iter(dataset)
    clips = int(next(iterator)["waveform"].shape[0])
    first = time.perf_counter()
    count = 0
    for batch in iterator:
        count += int(batch["waveform"].shape[0])
    end = time.perf_counter()
    return {
        "batches_per_epoch": int(dataset.cardinality()), "clips": clips + count,
        "first_batch_s": first - started, "seconds_after_first": end - first,
        "clips_per_s": count / (end - first), "clips_per_s_with_first": (clips + count) / (end - started),
    }  # fmt: skip


def training_step(num_classes: int) -> tuple[Any, dict[str, Any]]:
    """Fine-tuning's own training step (``eat_keras.train.fit``) of mn04_as with a fresh
    ``num_classes`` head and the default settings (augmentations, training front-end, mixup,
    CB + SupCon, one Adam per depth level); the step and a batch of 32 two-second waveforms."""
    import tensorflow as tf

    from eat_keras.loading import load_tagger
    from eat_keras.train import fit
    from eat_keras.train.config import FinetuneConfig
    from eat_keras.train.losses import CombinedLoss

    config = FinetuneConfig(model=MODEL, clip_seconds=CLIP_SECONDS, batch_size=BATCH_SIZE)
    base = load_tagger(MODEL, with_class_names=False)
    strategy = tf.distribute.get_strategy()
    state = fit._training_state(base, [f"c{c:02d}" for c in range(num_classes)], config, strategy)
    loss = CombinedLoss(
        terms=config.loss_terms, form=config.loss_form, settings=config.loss_settings,
        class_counts=np.asarray(USER_COUNTS[:num_classes]),
    )  # fmt: skip
    train_step = fit._train_step_function(state, loss, config, strategy)
    batch = {
        "waveform": tf.random.stateless_normal([BATCH_SIZE, CLIP_SAMPLES], [1, 2]) * 0.1,
        "target": tf.one_hot(tf.range(BATCH_SIZE) % num_classes, num_classes),
    }
    return lambda: float(train_step(batch, True)["loss"]), {"loss_terms": config.loss_terms}


def training_step_throughput(steps: int, warmup: int) -> dict[str, Any]:
    """Median time of a training step after ``warmup`` untimed ones; the clips/s it consumes."""
    step, settings = training_step(len(USER_COUNTS))
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()  # the loss as a float: the step has finished
        seconds.append(time.perf_counter() - started)
    return {**summarize(seconds, BATCH_SIZE), **settings}


# --- the measurements at one scale -----------------------------------------------------------


def _cli() -> str:
    script = Path(sys.executable).with_name("eat-keras")
    return str(script) if script.is_file() else "eat-keras"


def child_env() -> dict[str, str]:
    shared = shared_dir()
    return {
        **os.environ,
        "EAT_WEIGHTS_DIR": os.environ.get("EAT_WEIGHTS_DIR", str(shared / "weights")),
        "EAT_LABELS": os.environ.get("EAT_LABELS", str(shared / "golden" / "class_labels_indices.csv")),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def disk_mb(folder: Path) -> float:
    """Space the files under ``folder`` take on disk, each hard-linked file once."""
    seen, total = set(), 0
    for path in folder.rglob("*") if folder.exists() else []:
        stat = path.lstat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
    return total / MB


def measure_prepare(data: Path, prep: Path, files: int, env: dict[str, str]) -> dict[str, Any]:
    """A fresh ``eat-keras prepare`` with 2 decoding processes: files/s and the tree's peak RSS."""
    shutil.rmtree(prep, ignore_errors=True)
    log = prep.with_name(prep.name + ".log")
    command = [_cli(), "prepare", str(data), "--out", str(prep), "--processes", "2"]
    usage = run_measured(command, log, env)
    row = {"command": shlex.join(command), "files": files, **usage, "files_per_s": files / usage["wall_s"]}
    if usage["exit_code"] != 0:
        row["error"] = error_line(log)
    return {**row, "disk_mb": disk_mb(prep)}


def run_child(kind: str, options: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """One measurement of this script in a child process: its result and its own usage."""
    usage = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", kind, *options], log, env)
    result = last_json_line(log)
    if usage["exit_code"] != 0 or not result:
        result["error"] = error_line(log)
    return {**result, "process": usage}


def step_limit_flags(steps: int | None, env: dict[str, str]) -> list[str]:
    """``finetune``'s flag that cuts an epoch to ``steps`` batches, if it has one; the whole epoch
    (no flags) when ``steps`` is None."""
    if steps is None:
        return []
    help_text = subprocess.run([_cli(), "finetune", "--help"], capture_output=True, text=True, env=env).stdout
    for flag in ("--max-steps", "--steps-per-epoch"):
        if flag in help_text:
            return [flag, str(steps)]
    raise SystemExit("--epoch-steps: eat-keras finetune has no flag that limits an epoch's steps")


def measure_epoch(prep: Path, run: Path, env: dict[str, str], limit: list[str]) -> dict[str, Any]:
    """A fresh one-epoch ``eat-keras finetune`` of the prepared folder: its peak RSS and times."""
    shutil.rmtree(run, ignore_errors=True)
    log = run.with_name(run.name + ".log")
    command = [_cli(), "finetune", str(prep), "--model", MODEL, "--out", str(run), "--epochs", "1", *limit]
    usage = run_measured(command, log, env)
    row: dict[str, Any] = {"command": shlex.join(command), **usage}
    row["peak_mb"] = max(usage["peak_rss_mb"], usage["peak_tree_rss_mb"])
    text = log.read_text()
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch 1/1")]
    row["epoch_line"] = epoch_lines[-1] if epoch_lines else None
    per_batch = re.findall(r"\d+s (\d+)ms/batch", text)  # the progress bar's last mean step time
    row["ms_per_batch"] = int(per_batch[-1]) if per_batch else None
    if usage["exit_code"] != 0:
        row["error"] = error_line(log)
    return row


def measure_scale(
    scale: int, work: Path, pool_counts: list[int], env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Synthesis (reused), prepare, the input pipeline and one finetune epoch at one scale."""
    data, files = data_set(work, scale, pool_counts)
    prep = work / f"prepared_1_{scale}"
    row: dict[str, Any] = {"scale": scale, "files": files, "data_disk_mb": disk_mb(data)}
    print(f"scale 1/{scale}: {files} files; prepare ...", file=sys.stderr, flush=True)
    row["prepare"] = measure_prepare(data, prep, files, env)
    if row["prepare"]["exit_code"] != 0:
        return row
    print(f"scale 1/{scale}: input pipeline ...", file=sys.stderr, flush=True)
    batches = ["--batches", str(args.pipeline_batches)] if args.pipeline_batches else []
    row["pipeline"] = run_child("pipeline", ["--prep", str(prep), *batches], work / f"pipeline_1_{scale}.log", env)
    if not args.skip_epoch:
        print(f"scale 1/{scale}: one finetune epoch ...", file=sys.stderr, flush=True)
        limit = step_limit_flags(args.epoch_steps, env)
        row["epoch"] = measure_epoch(prep, work / f"run_1_{scale}", env, limit)
        row["run_disk_mb"] = disk_mb(work / f"run_1_{scale}")
    return row


# --- targets and the report ------------------------------------------------------------------


def pipeline_ratio(row: dict[str, Any], step: dict[str, Any]) -> float | None:
    """The input pipeline's clips/s over the training step's."""
    pipeline, consumed = row.get("pipeline", {}).get("clips_per_s"), step.get("clips_per_s")
    return pipeline / consumed if pipeline and consumed else None


def epoch_peak_mb(row: dict[str, Any]) -> float | None:
    epoch = row.get("epoch", {})
    return epoch.get("peak_mb") if epoch.get("exit_code") == 0 else None


def verdicts(rows: list[dict[str, Any]], step: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value and whether it is met (None: not measured)."""
    checks = []
    for row in rows:
        ratio, peak = pipeline_ratio(row, step), epoch_peak_mb(row)
        checks.append({"target": f"1/{row['scale']}: pipeline clips/s over the training step's >= {RATIO_TARGET:g}",
                       "unit": "x", "value": ratio, "passed": None if ratio is None else ratio >= RATIO_TARGET})
        checks.append({"target": f"1/{row['scale']}: peak RSS of a finetune epoch < {RSS_TARGET_BYTES / 1e9:g} GB",
                       "unit": "MiB", "value": peak, "passed": None if peak is None else peak * MB < RSS_TARGET_BYTES})
    peaks = [epoch_peak_mb(row) for row in rows if epoch_peak_mb(row) is not None]
    spread = max(peaks) / min(peaks) - 1 if len(peaks) >= 2 else None
    checks.append({"target": f"peak RSS of the epoch within {RSS_SPREAD:.0%} across scales", "unit": "%",
                   "value": spread, "passed": None if spread is None else spread <= RSS_SPREAD})
    return checks  # fmt: skip


def _f(value: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if value is None else format(value, fmt) + suffix


def _scale_row(r: dict[str, Any], step: dict[str, Any]) -> str:
    prep, pipe, epoch = r.get("prepare", {}), r.get("pipeline", {}), r.get("epoch", {})
    epoch_s = epoch.get("wall_s") if epoch.get("exit_code") == 0 else None
    cells = [
        f"1/{r['scale']}", str(r["files"]),
        f"{_f(prep.get('files_per_s'), '.1f')} files/s ({_f(prep.get('wall_s'), '.0f')} s)",
        _f(prep.get("peak_tree_rss_mb"), ".0f", " MiB"), _f(pipe.get("clips_per_s"), ".0f", " clips/s"),
        _f(pipe.get("first_batch_s"), ".1f", " s"), _f(pipeline_ratio(r, step), ".1f", "×"),
        f"{_f(epoch_s, '.0f', ' s')} ({_f(epoch.get('ms_per_batch'), '.0f', ' ms/batch')})",
        _f(epoch_peak_mb(r), ".0f", " MiB"),
        " / ".join(_f(mb, ".0f") for mb in (r.get("data_disk_mb"), prep.get("disk_mb"), r.get("run_disk_mb"))) + " MiB",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _header(results: dict[str, Any]) -> list[str]:
    m, step = results["machine"], results["training_step"]
    rates = ", ".join(f"{r / 1000:g}" for r in SAMPLE_RATES)
    return [
        "# Input pipeline at the user's scale", "", "Produced by:", "", "```", m["command"], "```", "",
        f"- date {m['date']}, commit {m['git_commit']}; {m['cpu']}, {m['usable_cores']} usable cores, "
        f"{m['ram_gib']:.1f} GiB RAM; load average (1, 5, 15 min) at start "
        f"{' '.join(f'{x:.1f}' for x in m['load_average_at_start'])}, at end "
        f"{' '.join(f'{x:.1f}' for x in results['load_average_at_end'])}",
        "- **the machine is shared with other engineers' jobs**: timings are lower bounds of what an idle "
        "machine gives, and vary from run to run",
        f"- data: {len(USER_COUNTS)} classes, the user's counts ({sum(USER_COUNTS)} files) divided by the scale; "
        f"{CLIP_SECONDS:g} s 16-bit WAV clips at {rates} kHz; the work folder takes "
        f"{results['work_disk_mb'] / 1024:.1f} GiB on disk (the clips {results['clip_pool_disk_mb'] / 1024:.1f} GiB)",
        "",
        f"Training step of {MODEL} alone (finetune's, batch {BATCH_SIZE} × {CLIP_SECONDS:g} s, augmentations, "
        f"front-end, loss {step.get('loss_terms')}, Adam): median {_f(step.get('median_ms'), '.0f')} ms "
        f"(p10 {_f(step.get('p10_ms'), '.0f')}, p90 {_f(step.get('p90_ms'), '.0f')}; {step.get('n', 0)} steps) = "
        f"{_f(step.get('clips_per_s'), '.0f')} clips/s.",
        "",
    ]  # fmt: skip


def _target_row(check: dict[str, Any]) -> str:
    value, unit = check["value"], check["unit"]
    shown = _f(value, ".1%") if unit == "%" else _f(value, ".0f", " MiB") if unit == "MiB" else _f(value, ".1f", "×")
    met = "not measured" if check["passed"] is None else "yes" if check["passed"] else "**no**"
    return f"| {check['target']} | {shown} | {met} |"


def markdown(results: dict[str, Any]) -> str:
    step = results["training_step"]
    lines = _header(results)
    lines += ["| scale | files | prepare | prepare peak RSS (tree) | pipeline alone | first batch | pipeline / step "
              "| finetune epoch | epoch peak RSS | disk: clips / prepared / run |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [_scale_row(r, step) for r in results["scales"]] + [""]
    lines += ["| target | value | met |", "|---|---:|---|"] + [_target_row(c) for c in results["targets"]]
    errors = [f"- 1/{r['scale']} {what}: {r[what]['error']}"
              for r in results["scales"] for what in ("prepare", "pipeline", "epoch") if r.get(what, {}).get("error")]
    if step.get("error"):
        errors.insert(0, f"- training step: {step['error']}")
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"  # fmt: skip


# --- command line ----------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    """A measurement in this process (run by the parent as a child), under finetune's op
    determinism: its result as one JSON line."""
    from eat_keras.train import fit

    with fit._deterministic_ops():  # as finetune runs both: op determinism on where no GPU is
        if args.child == "pipeline":
            result = pipeline_throughput(Path(args.prep), args.batches)
        else:
            result = training_step_throughput(args.steps, args.warmup)
    print(json.dumps(result), flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, action="append", help="divide the user's counts by N (default: 10 and 5)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_pipeline"), help="clips, prepared folders, runs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_pipeline/results"), help="for results.json/.md")
    parser.add_argument("--pipeline-batches", type=int, help="batches the pipeline is timed over (default: one epoch)")
    parser.add_argument("--step-runs", type=int, default=20, help="timed training steps (default: 20)")
    parser.add_argument("--skip-epoch", action="store_true", help="leave the finetune epoch out")
    parser.add_argument("--epoch-steps", type=int, help="cut the epoch to N steps, if finetune has a flag for it")
    # a measurement in a child process
    parser.add_argument("--child", choices=("pipeline", "step"), help=argparse.SUPPRESS)
    parser.add_argument("--prep", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scale = sorted(set(args.scale or [10, 5]), reverse=True)
    if any(s < 1 for s in args.scale):
        parser.error("--scale must be at least 1")
    if args.work.resolve().is_relative_to(REPO_ROOT):
        parser.error("--work must lie outside the repository")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    env = child_env()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    described = machine.describe(DEFAULT_O2T_VENV, argv)
    described["command"] = "python tools/bench_pipeline.py " + shlex.join(argv)
    kept = ("eat-keras", "tensorflow", "numpy")
    described["versions"] = {k: v for k, v in described["versions"].items() if k in kept}
    print("training step alone ...", file=sys.stderr, flush=True)
    step = run_child("step", ["--steps", str(args.step_runs)], args.work / "training_step.log", env)
    pool_counts = scaled_counts(min(args.scale))
    rows = [measure_scale(scale, args.work, pool_counts, env, args) for scale in args.scale]
    results = {
        "machine": described, "load_average_at_end": list(os.getloadavg()), "training_step": step,
        "scales": rows, "targets": verdicts(rows, step), "clip_pool_disk_mb": disk_mb(args.work / "pool"),
        "work_disk_mb": disk_mb(args.work),
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    (args.out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
