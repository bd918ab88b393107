"""Single-label classification metrics and their files: accuracy, macro-F1, per-class precision and
recall, confusion matrix (CSV and PNG). Plain NumPy, so the numbers do not depend on a framework."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eat_keras.errors import EatKerasError


@dataclasses.dataclass
class ClassificationReport:
    class_names: list[str]
    confusion: np.ndarray  # [true, predicted] counts

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else 0.0

    @property
    def precision(self) -> np.ndarray:
        predicted = self.confusion.sum(axis=0)
        return np.divide(np.diag(self.confusion), predicted, out=np.zeros(len(predicted)), where=predicted > 0)

    @property
    def recall(self) -> np.ndarray:
        support = self.support
        return np.divide(np.diag(self.confusion), support, out=np.zeros(len(support)), where=support > 0)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return np.divide(2 * p * r, p + r, out=np.zeros(len(p)), where=(p + r) > 0)

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes present in the evaluation set (support > 0)."""
        present = self.support > 0
        return float(self.f1[present].mean()) if present.any() else 0.0

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "num_examples": int(self.confusion.sum()),
            "per_class": {
                name: {
                    "precision": float(self.precision[i]),
                    "recall": float(self.recall[i]),
                    "f1": float(self.f1[i]),
                    "support": int(self.support[i]),
                }
                for i, name in enumerate(self.class_names)
            },
        }

    def summary(self) -> str:
        width = max(len(n) for n in self.class_names)
        lines = [f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   ({int(self.confusion.sum())} files)"]
        lines.append(f"{'class':<{width}}  precision  recall     f1  support")
        for i, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}  {self.precision[i]:9.4f}  {self.recall[i]:6.4f}  {self.f1[i]:6.4f}  {int(self.support[i]):7d}"
            )
        return "\n".join(lines)


def classification_report(
    true_ids: Sequence[int] | np.ndarray, predicted_ids: Sequence[int] | np.ndarray, class_names: list[str]
) -> ClassificationReport:
    true_ids, predicted_ids = np.asarray(true_ids, int), np.asarray(predicted_ids, int)
    if true_ids.shape != predicted_ids.shape:
        raise ValueError("true and predicted ids differ in length")
    n = len(class_names)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (true_ids, predicted_ids), 1)
    return ClassificationReport(list(class_names), confusion)


def write_report_files(report: ClassificationReport, out_dir: str | Path) -> list[Path]:
    """``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv`` and ``confusion_matrix.png``;
    a folder that cannot be written (read-only, a file in the way, a full disk) is one error line."""
    try:
        return _write_report_files(report, Path(out_dir))
    except OSError as exc:
        raise EatKerasError(f"{out_dir}: cannot write the evaluation report ({exc.strerror or exc})") from exc


def _write_report_files(report: ClassificationReport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json", out_dir / "per_class.csv", out_dir / "confusion_matrix.csv"]
    written[0].write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    with written[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for i, name in enumerate(report.class_names):
            writer.writerow([name, f"{report.precision[i]:.6f}", f"{report.recall[i]:.6f}", f"{report.f1[i]:.6f}", int(report.support[i])])
    with written[2].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *report.class_names])
        for name, row in zip(report.class_names, report.confusion):
            writer.writerow([name, *map(int, row)])
    written.append(plot_confusion_matrix(report, out_dir / "confusion_matrix.png"))
    return written


def plot_confusion_matrix(report: ClassificationReport, path: str | Path) -> Path:
    """Row-normalised confusion matrix with counts in the cells (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the dev and train extras
        raise ImportError("the confusion-matrix plot needs matplotlib: pip install 'eat-keras[train]'") from exc
    n = len(report.class_names)
    support = np.maximum(report.support, 1)[:, None]
    fraction = report.confusion / support
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), report.class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}")
    for i in range(n):
        for j in range(n):
            if report.confusion[i, j]:
                ax.text(j, i, int(report.confusion[i, j]), ha="center", va="center",
                        color="white" if fraction[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
