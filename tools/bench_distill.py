"""Distillation benchmark on ESC-10 (run by hand, not a test).

The user's situation: few labels for some classes, more recordings without labels. The labelled
data are tools/bench_finetune.py's imbalanced folds 1-3 (two classes each keep 32, 24, 16, 8 and 4
clips); the clips it leaves out of folds 1-3 are the unlabelled audio; fold 4 is the test set.

1. ``base`` (3 seeds): the plain ``eat-keras finetune LABELLED --model mn04_as --seed S``.
2. The teacher: the ensemble of the three base runs (their logits averaged), clearly stronger than
   one run; scored on fold 4 the same way.
3. ``kd`` (3 seeds): ``eat-keras prepare`` of the labelled and unlabelled rows, ``eat-keras
   teacher-logits`` of the ensemble over it (timed), then ``eat-keras finetune PREPARED
   --teacher-logits FILE --seed S``, the other settings the defaults.
4. Wall time per epoch and per training step: three-epoch runs with precomputed logits and with
   the three teachers online (``--teacher`` three times), one after the other; epochs after the
   first (which traces). ``--timing-only`` runs this part alone, on the folders of an earlier run.

Fold-4 macro-F1 and accuracy for every run, mean and spread (sample standard deviation, min, max)
over the seeds, and each kd student's top-1 agreement with the teacher on fold 4::

    python tools/bench_distill.py --out runs/bench_distill   # --shared: ../shared or $EAT_SHARED_DIR

Writes ``results.json`` and ``results.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools importable
    sys.path.insert(0, str(REPO_ROOT))

from eat_keras.train.data import Example  # noqa: E402
from tools.bench.machine import cpu_model, git_commit  # noqa: E402
from tools.bench.paths import default_shared_dir  # noqa: E402
from tools.bench.peak_rss import run_measured  # noqa: E402
from tools.bench_finetune import cli, esc10_examples, imbalanced, run, write_manifest  # noqa: E402

SEEDS = (0, 1, 2)
_EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+: .*; ([0-9.]+) s\)$", re.MULTILINE)
_STEP_TIME = re.compile(r" - \d+s (\d+)(m?)s/batch")


def write_distillation_manifest(labelled: list[Example], unlabelled: list[Example], path: Path) -> Path:
    """The labelled rows and, with an empty label, the unlabelled ones."""
    rows = [f"{e.path},{e.label}\n" for e in labelled] + [f"{e.path},\n" for e in unlabelled]
    path.write_text("path,label\n" + "".join(rows))
    return path


def _checked(name: str, measured: dict, log: Path) -> dict:
    if measured["exit_code"] != 0:
        raise SystemExit(f"{name} failed, see {log}")
    return measured


def ensemble_predictions(models: list[str], data: Path, out: Path) -> np.ndarray:
    """Each file's class id by the models' averaged logits (windows of the files' clip length)."""
    from eat_keras.train.teacher import compute_teacher_logits, read_teacher_logits

    compute_teacher_logits(models, str(data), str(out))
    archive = read_teacher_logits([str(out)])
    return np.stack([archive.file_logits(i).mean(axis=0) for i in range(len(archive.paths))]).argmax(axis=1)


def fold4_scores(predicted: np.ndarray, fold4: list[Example], class_names: list[str]) -> dict:
    from eat_keras.train.metrics import classification_report

    truth = np.array([class_names.index(e.label) for e in fold4])
    report = classification_report(truth, predicted, class_names)
    return {"fold4_accuracy": report.accuracy, "fold4_macro_f1": report.macro_f1}


def epoch_seconds(log: Path) -> list[float]:
    """Wall time of each epoch after the first, from a finetune log."""
    return [float(s) for epoch, s in _EPOCH_LINE.findall(log.read_text()) if int(epoch) > 1]


def step_seconds(log: Path) -> list[float]:
    """Keras' time per training step of each epoch after the first, from a finetune log."""
    return [int(value) / (1000.0 if milli else 1.0) for value, milli in _STEP_TIME.findall(log.read_text())][1:]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values), "min": min(values), "max": max(values)}


def _teacher_runs(
    labelled: Path, fold4_csv: Path, fold4: list[Example], out: Path, model: str
) -> tuple[list[dict], dict, list[str], np.ndarray]:
    base = [run(f"base_s{s}", labelled, fold4_csv, out, model, ["--seed", str(s)]) for s in SEEDS]
    teachers = [str(out / f"base_s{s}" / "best") for s in SEEDS]
    class_names = sorted({e.label for e in fold4})
    teacher_ids = ensemble_predictions(teachers, fold4_csv, out / "teacher_fold4.npz")
    teacher = {"members": teachers, **fold4_scores(teacher_ids, fold4, class_names)}
    print(json.dumps({"teacher": teacher}), flush=True)
    return base, teacher, teachers, teacher_ids


def _student_runs(prepared: Path, logits: Path, fold4_csv: Path, teacher_ids: np.ndarray, out: Path, model: str) -> list[dict]:
    rows = []
    for s in SEEDS:
        row = run(f"kd_s{s}", prepared, fold4_csv, out, model, ["--teacher-logits", str(logits), "--seed", str(s)])
        student_ids = ensemble_predictions([str(out / f"kd_s{s}" / "best")], fold4_csv, out / f"kd_s{s}_fold4.npz")
        row["agreement_with_teacher"] = float(np.mean(student_ids == teacher_ids))
        row["epoch_seconds"] = epoch_seconds(out / f"kd_s{s}.finetune.log")
        rows.append(row)
    return rows


def epoch_timings(prepared: Path, teachers: list[str], logits: Path, out: Path, model: str) -> dict:
    """Median seconds per epoch and per step of three-epoch runs, precomputed then online."""
    timings = {}
    for name, flags in (("precomputed", ["--teacher-logits", str(logits)]),
                        ("online", [flag for t in teachers for flag in ("--teacher", t)])):  # fmt: skip
        log, run_dir = out / f"timing_{name}.finetune.log", out / f"timing_{name}"
        command = cli("finetune", str(prepared), "--model", model, "--out", str(run_dir), "--epochs", "3", *flags)
        _checked(f"{name} finetune", run_measured(command, log), log)
        timings[f"epoch_seconds_{name}"] = statistics.median(epoch_seconds(log))
        timings[f"step_seconds_{name}"] = statistics.median(step_seconds(log))
    timings["load_average"] = list(os.getloadavg())
    print(json.dumps(timings), flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(default_shared_dir()))
    parser.add_argument("--out", default="runs/bench_distill")
    parser.add_argument("--timing-only", action="store_true", help="only the per-epoch timing, on --out's earlier results")
    args = parser.parse_args()
    examples = esc10_examples(args.shared)
    out = Path(args.out).resolve()
    model = os.environ.get("BENCH_MODEL", "mn04_as")
    folds123 = [e for e in examples if e.fold in ("1", "2", "3")]
    fold4 = [e for e in examples if e.fold == "4"]
    fold4_csv = write_manifest(fold4, out / "fold4.csv")
    kept = imbalanced(folds123)
    unlabelled = [e for e in folds123 if e.path not in {k.path for k in kept}]
    labelled_csv = write_manifest(kept, out / "labelled.csv")
    if args.timing_only:
        result = json.loads((out / "results.json").read_text())
        result["summary"].update(epoch_timings(out / "prepared", result["summary"]["teacher"]["members"], out / "teacher_logits.npz", out, model))
        (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "results.md").write_text(_markdown(result["summary"]) + "\n")
        print(_markdown(result["summary"]))
        return
    base, teacher, teachers, teacher_ids = _teacher_runs(labelled_csv, fold4_csv, fold4, out, model)

    prepared = out / "prepared"
    log = out / "prepare.log"
    _checked("prepare", run_measured(cli("prepare", str(write_distillation_manifest(kept, unlabelled, out / "with_unlabelled.csv")), "--out", str(prepared)), log), log)
    logits = out / "teacher_logits.npz"
    log = out / "teacher_logits.log"
    timed = _checked("teacher-logits", run_measured(cli("teacher-logits", *teachers, str(prepared), "--out", str(logits)), log), log)
    kd = _student_runs(prepared, logits, fold4_csv, teacher_ids, out, model)
    summary = {
        "labelled_files": len(kept), "unlabelled_files": len(unlabelled), "teacher": teacher,
        "base_macro_f1": spread([r["fold4_macro_f1"] for r in base]), "kd_macro_f1": spread([r["fold4_macro_f1"] for r in kd]),
        "base_accuracy": spread([r["fold4_accuracy"] for r in base]), "kd_accuracy": spread([r["fold4_accuracy"] for r in kd]),
        "kd_agreement": spread([r["agreement_with_teacher"] for r in kd]),
        "teacher_logits_seconds": round(timed["wall_s"], 1),
        **epoch_timings(prepared, teachers, logits, out, model),
    }  # fmt: skip
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "git_commit": git_commit(), "load_average_at_end": list(os.getloadavg()),
              "model": model, "finished": time.strftime("%Y-%m-%d %H:%M"), "summary": summary, "base": base, "kd": kd}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(_markdown(summary) + "\n")
    print(_markdown(summary))


def _markdown(s: dict) -> str:
    def cell(d: dict) -> str:
        return f"{d['mean']:.4f} ± {d['sd']:.4f} ({d['min']:.4f}-{d['max']:.4f})"

    return "\n".join([
        f"{s['labelled_files']} labelled and {s['unlabelled_files']} unlabelled clips; fold 4 (80 clips) for testing; 3 seeds",
        "",
        "| student mn04_as | fold-4 macro-F1 | fold-4 accuracy | top-1 agreement with the teacher |",
        "|---|---:|---:|---:|",
        f"| without distillation | {cell(s['base_macro_f1'])} | {cell(s['base_accuracy'])} | |",
        f"| with distillation | {cell(s['kd_macro_f1'])} | {cell(s['kd_accuracy'])} | {cell(s['kd_agreement'])} |",
        f"| teacher (ensemble of the 3 runs without) | {s['teacher']['fold4_macro_f1']:.4f} | {s['teacher']['fold4_accuracy']:.4f} | |",
        "",
        "| teacher | seconds per epoch | seconds per training step |",
        "|---|---:|---:|",
        f"| precomputed logits | {s['epoch_seconds_precomputed']:.1f} | {s['step_seconds_precomputed']:.2f} |",
        f"| three teachers online | {s['epoch_seconds_online']:.1f} | {s['step_seconds_online']:.2f} |",
        "",
        f"Epochs after the first, of three-epoch runs one after the other (load average at the end "
        f"{', '.join(f'{x:.1f}' for x in s['load_average'])}); writing the teacher logits took {s['teacher_logits_seconds']:.0f} s.",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
