"""Evaluation of any artifact on labelled files, and the ACC1 ≈ ACC2 check between two artifacts.

A file's prediction averages the logits of its full-length windows (see ``data.make_dataset``), the
same way for every artifact, so two artifacts of one model should agree file by file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from eat_keras.audio import SAMPLE_RATE
from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.labels import short_list
from eat_keras.progress import ProgressLine
from eat_keras.train.config import MAX_CLIP_SECONDS
from eat_keras.train.data import AudioCache, Example, average_per_file, make_dataset
from eat_keras.train.metrics import ClassificationReport, classification_report
from eat_keras.train.prepare import PreparedData
from eat_keras.train.shards import prepared_dataset

PredictFn = Callable[[np.ndarray], np.ndarray]  # [batch, samples] → [batch, classes] logits



def check_clip_samples(clip_samples: int, batch_size: int) -> None:
    """Raise :class:`ConfigError` for a clip length or batch size no evaluation can use."""
    if not 1 <= clip_samples <= MAX_CLIP_SECONDS * SAMPLE_RATE:
        raise ConfigError(
            f"the clip length must be positive and at most {MAX_CLIP_SECONDS:g} s; "
            f"got {clip_samples / SAMPLE_RATE:g} s"
        )
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1; got {batch_size}")


class NonFiniteLogitsError(EatKerasError):
    """A model gave NaN or infinite logits: its weights are broken (e.g. a diverged training run),
    and an argmax over them would still name a class."""


@dataclasses.dataclass(frozen=True)
class PreparedSide:
    """One side (``train``, ``val`` or ``test``) of a prepared folder, as evaluation data."""

    prepared: PreparedData
    side: str

    @property
    def examples(self) -> list[Example]:
        return self.prepared.examples(self.side)


EvaluationData = Sequence[Example] | PreparedSide


def evaluation_files(data: EvaluationData) -> list[Example]:
    """The files of evaluation data, in the order of the logits."""
    return data.examples if isinstance(data, PreparedSide) else list(data)


def file_logits(
    predict: PredictFn,
    data: EvaluationData,
    class_names: Sequence[str],
    clip_samples: int,
    batch_size: int = 16,
    cache: AudioCache | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """``[files, classes]``: logits averaged over each file's windows of ``clip_samples``, for
    audio files (decoded as they come) or a side of a prepared folder (read from its shards); with
    ``progress``, a progress line of that name on stderr."""
    check_clip_samples(clip_samples, batch_size)
    examples = evaluation_files(data)
    unlabelled = sum(e.label is None for e in examples)
    if unlabelled:
        raise EatKerasError(f"{unlabelled} of the {len(examples)} files have no label: evaluation needs labelled files")
    unknown = sorted({e.label for e in examples} - set(class_names))
    if unknown:
        raise EatKerasError(
            f"{len(unknown)} data label(s) not among the model's {len(class_names)} classes: "
            f"{short_list(unknown)} (the model's: {short_list(class_names)})"
        )
    if isinstance(data, PreparedSide):
        dataset = prepared_dataset(
            data.prepared, data.side, mode="eval", clip_samples=clip_samples, batch_size=batch_size, class_names=class_names
        )
    else:
        dataset = make_dataset(examples, class_names, mode="eval", clip_samples=clip_samples, batch_size=batch_size, cache=cache)
    return dataset_logits(predict, dataset, examples, progress)


def dataset_logits(
    predict: PredictFn, dataset: tf.data.Dataset, examples: Sequence[Example], progress: str | None = None
) -> np.ndarray:
    """``[files, classes]``: the logits of an evaluation data set's windows (``mode="eval"`` of
    ``make_dataset`` or ``prepared_dataset``, whose ``index`` counts ``examples``) averaged per file."""
    logits, index, files_seen = [], [], np.zeros(len(examples), dtype=bool)
    line = ProgressLine(progress, len(examples), unit="files") if progress else None
    for batch in dataset:
        logits.append(np.asarray(predict(batch["waveform"].numpy())))
        index.append(batch["index"].numpy())
        if line:  # a file counts once its first window is done
            before = int(files_seen.sum())
            files_seen[index[-1]] = True
            line.advance(int(files_seen.sum()) - before)
    if line:
        line.finish()
    averaged = average_per_file(tf.constant(np.concatenate(logits)), tf.constant(np.concatenate(index)), len(examples)).numpy()
    broken = [e.path for e, row in zip(examples, averaged) if not np.isfinite(row).all()]
    if broken:
        raise NonFiniteLogitsError(
            f"the model gives non-finite logits for {len(broken)} of {len(examples)} file(s) (e.g. {broken[0]}): "
            "its weights are broken"
        )
    return averaged


def report_of(logits: np.ndarray, examples: Sequence[Example], class_names: Sequence[str]) -> ClassificationReport:
    """The classification report of per-file ``logits`` against the files' labels."""
    return classification_report(true_ids(examples, class_names), logits.argmax(axis=1), list(class_names))


def true_ids(examples: Sequence[Example], class_names: Sequence[str]) -> np.ndarray:
    ids = {n: i for i, n in enumerate(class_names)}
    return np.array([ids[e.label] for e in examples])


def evaluate(
    predict: PredictFn, examples: EvaluationData, class_names: Sequence[str], clip_samples: int, **options: Any
) -> tuple[ClassificationReport, np.ndarray]:
    """Report and the per-file logits it was computed from; ``options`` (``batch_size``, ``cache``,
    ``progress``) as :func:`file_logits`."""
    logits = file_logits(predict, examples, class_names, clip_samples, **options)
    return report_of(logits, evaluation_files(examples), class_names), logits


@dataclasses.dataclass
class Verification:
    accuracy_a: float
    accuracy_b: float
    agreement: float  # fraction of files with the same top-1 class
    max_abs_logit_difference: float | None  # None: the two ran at different windows
    num_files: int
    rows_centred: bool = False  # the difference was taken after removing each file's mean logit
    # the scores of each file's mean logits; None: different windows, or no label type known
    max_abs_score_difference: float | None = None

    @property
    def accuracy_difference(self) -> float:
        return self.accuracy_b - self.accuracy_a

    def summary(self, name_a: str, name_b: str) -> str:
        if self.max_abs_logit_difference is None:
            difference = "max |logit A - logit B|: not compared (the two ran at different windows)"
        else:
            difference = f"max |logit A - logit B|: {self.max_abs_logit_difference:.3g}" + (
                " (each file's mean removed: softmax scores give logits up to a constant)" if self.rows_centred else ""
            )
        lines = [
            f"A {name_a}: accuracy {self.accuracy_a:.4f}",
            f"B {name_b}: accuracy {self.accuracy_b:.4f}",
            f"difference B - A: {self.accuracy_difference:+.4f}",
            f"top-1 agreement: {self.agreement:.4f} ({self.num_files} files)",
            difference,
        ]
        if self.max_abs_score_difference is not None:
            # an int8 file's scores that round to 0 are far apart as logits, not as scores
            lines.append(f"max |score A - score B|: {self.max_abs_score_difference:.3g} (scores of each file's mean logits)")
        return "\n".join(lines)


def verify(
    predict_a: PredictFn,
    predict_b: PredictFn,
    examples: EvaluationData,
    class_names: Sequence[str],
    clip_samples: int | tuple[int, int],
    batch_size: int = 16,
    cache: AudioCache | None = None,
    centre_rows: bool = False,
    progress: bool = False,
    label_type: str | None = None,
) -> Verification:
    """Each artifact evaluated as :func:`evaluate` does, at its own window when ``clip_samples``
    is a pair. ``centre_rows``: compare logits after removing each file's mean, for an artifact
    whose logits are only known up to a per-file constant (softmax scores turned back into logits).
    ``label_type`` (softmax or sigmoid scores) adds the largest difference of the scores."""
    clip_a, clip_b = clip_samples if isinstance(clip_samples, tuple) else (clip_samples, clip_samples)
    options = {"batch_size": batch_size, "cache": cache}  # without a cache each side decodes as it goes
    report_a, logits_a = evaluate(predict_a, examples, class_names, clip_a, progress="A" if progress else None, **options)
    report_b, logits_b = evaluate(predict_b, examples, class_names, clip_b, progress="B" if progress else None, **options)
    agreement = float(np.mean(logits_a.argmax(axis=1) == logits_b.argmax(axis=1)))
    same_window = clip_a == clip_b
    score_difference = None
    if same_window and label_type is not None:
        score_difference = float(np.abs(_scores(logits_a, label_type) - _scores(logits_b, label_type)).max())
    if centre_rows:
        logits_a = logits_a - logits_a.mean(axis=1, keepdims=True)
        logits_b = logits_b - logits_b.mean(axis=1, keepdims=True)
    difference = float(np.abs(logits_a - logits_b).max()) if same_window else None
    return Verification(
        report_a.accuracy, report_b.accuracy, agreement, difference, len(logits_a), centre_rows, score_difference
    )


def _scores(logits: np.ndarray, label_type: str) -> np.ndarray:
    """Softmax (``single_label``) or sigmoid scores of ``[files, classes]`` logits, in float64."""
    logits = logits.astype(np.float64)
    if label_type == "single_label":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the sigmoid, without overflow for large |logits|
