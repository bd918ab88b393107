"""Linear-probe baseline (run by hand, not a test): what the frozen backbone gives without fine-tuning.

Each file's embedding is the ``embedding`` output of the pretrained tagger averaged over the file's
full-length windows, as ``eat-keras evaluate`` averages logits. A multinomial logistic regression
(L2, on standardised embeddings) is fitted on the train side; its L2 strength is the one with the
best validation macro-F1 (ties: lower validation loss), and it is scored on the test side.

    python tools/bench_linear_probe.py /tmp/speech_domain/manifest.csv --out runs/probe_speech
    python tools/bench_linear_probe.py ../shared/data/esc10/esc10.csv --test-folds 4 --out runs/probe_esc10

The data and its split are read as ``eat-keras finetune`` reads them (a manifest's split column, else
``--test-folds`` and a validation share of the remaining groups). Writes ``results.json`` and
``results.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# the probe's matrices are tiny: OpenBLAS threads only contend (8x slower on a busy 2-core machine)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from eat_keras.audio import SAMPLE_RATE  # noqa: E402
from eat_keras.loading import load_tagger  # noqa: E402
from eat_keras.train.data import AudioCache, class_names_of, read_dataset, split_examples  # noqa: E402
from eat_keras.train.evaluate import file_logits  # noqa: E402
from eat_keras.train.metrics import classification_report  # noqa: E402

L2_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 3))  # 1e-4 ... 10
MAX_STEPS = 3000


def window_seconds(examples, asked: float | None) -> float:
    """The asked window, else the median file length (at least 1 s, at most 10 s, to 0.1 s)."""
    if asked:
        return asked
    median = float(np.median([sf.info(e.path).duration for e in examples]))
    return float(np.clip(np.ceil(median * 10) / 10, 1.0, 10.0))


def embed(model: str, sides: dict, class_names: list[str], clip_samples: int) -> dict[str, np.ndarray]:
    """Each side's per-file embeddings, averaged over full-length windows."""
    tagger = load_tagger(model, with_class_names=False)
    predict_fn = tagger.predict_function_for_waveforms()
    predict = lambda waveform: predict_fn(waveform)["embedding"].numpy()  # noqa: E731
    cache = AudioCache()
    return {
        side: file_logits(predict, examples, class_names, clip_samples, cache=cache, progress=f"embed {side}")
        for side, examples in sides.items() if examples
    }  # fmt: skip


def loss_and_gradients(weights, bias, x, onehot, l2):
    """Mean cross-entropy plus ``l2 / 2 * |weights|^2``, and its gradients."""
    logits = x @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -np.mean(np.sum(onehot * log_p, axis=1)) + 0.5 * l2 * np.sum(weights**2)
    residual = (np.exp(log_p) - onehot) / len(x)
    return loss, x.T @ residual + l2 * weights, residual.sum(axis=0)


def fit_probe(x, labels, num_classes, l2, start=None):
    """Multinomial logistic regression by Nesterov-accelerated gradient descent (the loss is convex;
    the step is 1 / its Lipschitz bound)."""
    onehot = np.eye(num_classes)[labels]
    weights, bias = start if start else (np.zeros((x.shape[1], num_classes)), np.zeros(num_classes))
    step = 1.0 / (0.5 * np.linalg.norm(x, 2) ** 2 / len(x) + 0.5 + l2)  # +0.5: the bias column
    previous, momentum = (weights, bias), 1.0
    for _ in range(MAX_STEPS):
        _, grad_w, grad_b = loss_and_gradients(weights, bias, x, onehot, l2)
        if np.sqrt(np.sum(grad_w**2) + np.sum(grad_b**2)) < 1e-6:
            break
        new = (weights - step * grad_w, bias - step * grad_b)
        next_momentum = (1 + np.sqrt(1 + 4 * momentum**2)) / 2
        blend = (momentum - 1) / next_momentum
        weights = new[0] + blend * (new[0] - previous[0])
        bias = new[1] + blend * (new[1] - previous[1])
        previous, momentum = new, next_momentum
    return previous


def scored(probe, x, labels, class_names):
    weights, bias = probe
    logits = x @ weights + bias
    loss, _, _ = loss_and_gradients(weights, bias, x, np.eye(len(class_names))[labels], 0.0)
    report = classification_report(labels, logits.argmax(axis=1), class_names)
    return {"accuracy": report.accuracy, "macro_f1": report.macro_f1, "loss": float(loss)}


def select_probe(features, labels, class_names):
    """Fit for every L2 strength (strongest first, each warm-started from the last); keep the one with
    the best validation macro-F1, ties to the lower validation loss."""
    tried, best, probe = [], None, None
    for l2 in sorted(L2_GRID, reverse=True):
        probe = fit_probe(features["train"], labels["train"], len(class_names), l2, probe)
        row = {"l2": l2, "train": scored(probe, features["train"], labels["train"], class_names),
               "val": scored(probe, features["val"], labels["val"], class_names)}  # fmt: skip
        tried.append(row)
        rank = (row["val"]["macro_f1"], -row["val"]["loss"])
        if best is None or rank > best[0]:
            best = (rank, row, probe)
    return best[1], best[2], tried


def standardised(embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mean, std = embeddings["train"].mean(axis=0), embeddings["train"].std(axis=0) + 1e-6
    return {side: (x - mean) / std for side, x in embeddings.items()}


def write_results(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    test, chosen = result["test"], result["chosen"]
    lines = [
        "| data | train / val / test files | window | L2 | val macro-F1 | test accuracy | test macro-F1 | wall time |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['data']} | {' / '.join(str(n) for n in result['files'].values())} | {result['window_seconds']:g} s "
        f"| {chosen['l2']:.0e} | {chosen['val']['macro_f1']:.4f} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} "
        f"| {result['seconds']['total']:.0f} s |",
    ]  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="class folders, CSV manifest or ESC-50-style meta CSV")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="mn04_as")
    parser.add_argument("--test-folds", nargs="+")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="used when the data has no split column")
    parser.add_argument("--window-seconds", type=float, help="default: the median file length")
    args = parser.parse_args()
    started = time.time()
    examples = read_dataset(args.data)
    sides = split_examples(examples, args.val_fraction, 0.0, 0, args.test_folds)
    class_names = class_names_of(examples)
    window = window_seconds(examples, args.window_seconds)
    embeddings = embed(args.model, sides, class_names, int(round(window * SAMPLE_RATE)))
    embedded = time.time()
    features = standardised(embeddings)
    labels = {side: np.array([class_names.index(e.label) for e in sides[side]]) for side in features}
    chosen, probe, tried = select_probe(features, labels, class_names)
    result = {
        "data": args.data, "model": args.model, "window_seconds": window,
        "files": {side: len(sides[side]) for side in ("train", "val", "test")},
        "embedding_size": int(features["train"].shape[1]), "chosen": chosen,
        "test": scored(probe, features["test"], labels["test"], class_names), "l2_grid": tried,
        "seconds": {"embeddings": round(embedded - started, 1), "probe": round(time.time() - embedded, 1),
                    "total": round(time.time() - started, 1)},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }  # fmt: skip
    write_results(Path(args.out), result)


if __name__ == "__main__":
    main()
