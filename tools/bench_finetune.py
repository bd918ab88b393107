"""Fine-tuning benchmark on ESC-10 (run by hand, not a test).

1. mn04_as fine-tuned on folds 1-3 (10 % of their recordings, by source group, for validation),
   tested on fold 4: accuracy and wall time (target: >= 95 % within 15 minutes on 2 cores).
2. An imbalanced version of folds 1-3 (two classes each keep 32, 24, 16, 8 and 4 training clips):
   fold-4 macro-F1 with plain cross-entropy, class-balanced loss, and CB + SupCon (0.8 / 0.2).

    python tools/bench_finetune.py --out runs/bench_finetune   # --shared: ../shared or $EAT_SHARED_DIR

Writes ``results.json`` and ``results.md`` into --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from eat_keras.train.data import AudioCache, read_esc50_manifest, split_examples
from eat_keras.train.fit import FinetuneConfig, finetune

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools.bench importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.paths import default_shared_dir  # noqa: E402

# training clips kept, two classes per value; folds 1-3 hold 24 clips per class, so "32" keeps all
IMBALANCE = (32, 24, 16, 8, 4)
LOSSES = {"ce": {"ce": 1.0}, "cb": {"cb": 1.0}, "cb+supcon": {"cb": 0.8, "supcon": 0.2}}


def imbalanced(examples, seed: int):
    """Folds 1-3 thinned per class (classes in sorted order get 32, 32, 24, 24, ...)."""
    classes = sorted({e.label for e in examples})
    keep = {c: IMBALANCE[i // 2] for i, c in enumerate(classes)}
    kept, seen = [], {c: 0 for c in classes}
    order = lambda e: hashlib.blake2b(f"{seed}:{e.path}".encode(), digest_size=8).digest()  # noqa: E731
    for e in sorted(examples, key=order):
        if e.fold == "4" or seen[e.label] < keep[e.label]:
            kept.append(e)
            seen[e.label] += e.fold != "4"
    return kept, keep


def run(name, examples, out: Path, cache: AudioCache, **changes):
    config = FinetuneConfig(
        model=os.environ.get("BENCH_MODEL", "mn04_as"), clip_seconds=5.0, batch_size=32, epochs=15,
        learning_rate=3e-4, warmup_epochs=2, rampdown_start=3, rampdown_epochs=12, test_folds=["4"],
        val_fraction=0.1, patience=15, **changes,
    )
    started = time.time()
    result = finetune(examples, out / name, config, cache=cache, verbose=False)
    seconds = time.time() - started
    report = result.test_report
    row = {
        "run": name, "seconds": round(seconds, 1), "best_epoch": result.best_epoch,
        "test_accuracy": report.accuracy, "test_macro_f1": report.macro_f1,
        "train_files": len(split_examples(examples, config.val_fraction, 0, config.seed, config.test_folds)["train"]),
        "config": config.to_dict(),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(default_shared_dir()))
    parser.add_argument("--out", default="runs/bench_finetune")
    parser.add_argument("--only", choices=("balanced", "imbalanced"))
    args = parser.parse_args()
    data = Path(args.shared) / "data" / "esc10"
    examples = read_esc50_manifest(data / "esc10.csv", data / "audio")
    out = Path(args.out)
    cache = AudioCache(out / "audio_cache")
    rows = []
    if args.only != "imbalanced":
        rows.append(run("balanced_cb+supcon", examples, out, cache))
    if args.only != "balanced":
        thinned, keep = imbalanced(examples, seed=0)
        for loss_name, terms in LOSSES.items():
            rows.append(run(f"imbalanced_{loss_name}", thinned, out, cache, loss_terms=terms, mixup_alpha=0.3))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    (out / "results.json").write_text(json.dumps({"machine": machine, "runs": rows}, indent=1) + "\n")
    lines = ["| run | train files | test accuracy (fold 4) | test macro-F1 | best epoch | wall time |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['run']} | {r['train_files']} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | {r['best_epoch']} | {r['seconds'] / 60:.1f} min |"
        for r in rows
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
