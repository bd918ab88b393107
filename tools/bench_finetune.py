"""Fine-tuning benchmark on ESC-10 with the plain command (run by hand, not a test).

Each run is what a new user types, with no tuning flags:

    eat-keras finetune DATA --model mn04_as --out RUN
    eat-keras evaluate RUN/best FOLD4 --out RUN/fold4

1. ``balanced``: DATA = ESC-10 folds 1-3 (240 clips); fold-4 accuracy and the finetune wall time
   (target: >= 0.95 within 15 minutes on 2 cores).
2. ``imbalanced``: folds 1-3 thinned so that two classes each keep 32, 24, 16, 8 and 4 clips;
   fold-4 macro-F1 (target: >= 0.95). ``--ablate-losses`` adds the same run with ``--loss ce``
   and ``--loss cb`` (flags other than the defaults, marked as such in the results).

    python tools/bench_finetune.py --out runs/bench_finetune   # --shared: ../shared or $EAT_SHARED_DIR

Writes ``results.json`` and ``results.md`` into --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from eat_keras.train.data import Example, read_esc50_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools.bench importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.machine import cpu_model, git_commit  # noqa: E402
from tools.bench.paths import default_shared_dir  # noqa: E402
from tools.bench.peak_rss import run_measured  # noqa: E402

# training clips kept, two classes per value; folds 1-3 hold 24 clips per class, so "32" keeps all
IMBALANCE = (32, 24, 16, 8, 4)
ABLATIONS = {"ce": ["--loss", "ce"], "cb": ["--loss", "cb"]}


def imbalanced(examples: list[Example], seed: int = 0) -> list[Example]:
    """Folds 1-3 thinned per class (classes in sorted order get 32, 32, 24, 24, ...)."""
    classes = sorted({e.label for e in examples})
    keep = {c: IMBALANCE[i // 2] for i, c in enumerate(classes)}
    kept, seen = [], {c: 0 for c in classes}
    order = lambda e: hashlib.blake2b(f"{seed}:{e.path}".encode(), digest_size=8).digest()  # noqa: E731
    for e in sorted(examples, key=order):
        if seen[e.label] < keep[e.label]:
            kept.append(e)
            seen[e.label] += 1
    return sorted(kept, key=lambda e: e.path)


def esc10_examples(shared: str) -> list[Example]:
    """ESC-10 (folds 1-4) from the shared folder."""
    data = Path(shared) / "data" / "esc10"
    return read_esc50_manifest(data / "esc10.csv", data / "audio")


def write_manifest(examples: list[Example], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label\n" + "".join(f"{e.path},{e.label}\n" for e in examples))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "eat_keras.cli", *args]


def run(name: str, train: Path, fold4: Path, out: Path, model: str, flags: list[str]) -> dict:
    """``eat-keras finetune`` (timed, peak RSS) and ``eat-keras evaluate`` of its best model on fold 4."""
    run_dir = out / name
    tuned = run_measured(cli("finetune", str(train), "--model", model, "--out", str(run_dir), *flags), out / f"{name}.finetune.log")
    if tuned["exit_code"] != 0:
        raise SystemExit(f"{name}: finetune failed, see {out / f'{name}.finetune.log'}")
    scored = run_measured(cli("evaluate", str(run_dir / "best"), str(fold4), "--out", str(run_dir / "fold4")), out / f"{name}.evaluate.log")
    if scored["exit_code"] != 0:
        raise SystemExit(f"{name}: evaluate failed, see {out / f'{name}.evaluate.log'}")
    metrics = json.loads((run_dir / "fold4" / "metrics.json").read_text())
    config = json.loads((run_dir / "finetune.json").read_text())
    row = {
        "run": name, "flags": flags, "finetune_seconds": round(tuned["wall_s"], 1), "finetune_peak_rss_mb": tuned["peak_rss_mb"],
        "fold4_accuracy": metrics["accuracy"], "fold4_macro_f1": metrics["macro_f1"],
        "clip_seconds": config["clip_seconds"], "epochs": config["epochs"],
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(default_shared_dir()))
    parser.add_argument("--out", default="runs/bench_finetune")
    parser.add_argument("--only", choices=("balanced", "imbalanced"))
    parser.add_argument("--ablate-losses", action="store_true", help="also run the imbalanced set with --loss ce and --loss cb")
    args = parser.parse_args()
    examples = esc10_examples(args.shared)
    out = Path(args.out).resolve()
    model = os.environ.get("BENCH_MODEL", "mn04_as")
    folds123 = [e for e in examples if e.fold in ("1", "2", "3")]
    fold4 = write_manifest([e for e in examples if e.fold == "4"], out / "fold4.csv")
    rows = []
    if args.only != "imbalanced":
        rows.append(run("balanced", write_manifest(folds123, out / "balanced.csv"), fold4, out, model, []))
    if args.only != "balanced":
        thinned = write_manifest(imbalanced(folds123), out / "imbalanced.csv")
        rows.append(run("imbalanced", thinned, fold4, out, model, []))
        for loss, flags in ABLATIONS.items() if args.ablate_losses else ():
            rows.append(run(f"imbalanced_{loss}", thinned, fold4, out, model, flags))
    (out / "results.json").write_text(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "git_commit": git_commit(), "load_average_at_start": list(os.getloadavg()), "model": model, "runs": rows}, indent=1) + "\n")
    lines = ["| run | flags | fold-4 accuracy | fold-4 macro-F1 | finetune wall time | peak RSS |", "|---|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['run']} | {' '.join(r['flags']) or '(defaults)'} | {r['fold4_accuracy']:.4f} | {r['fold4_macro_f1']:.4f} "
        f"| {r['finetune_seconds'] / 60:.1f} min | {r['finetune_peak_rss_mb']:.0f} MiB |"
        for r in rows
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
