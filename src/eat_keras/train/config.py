"""FinetuneConfig: every choice of a fine-tuning run, with the help text of its command-line flag.

``eat-keras finetune`` makes one flag per field from this class (the field's metadata holds the
help text and, where it is not ``--field-name``, the flag) and one per loss setting from the loss
table, so the defaults live here alone. The module imports no TensorFlow: the command line reads it
to build its parser.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from eat_keras.errors import ConfigError
from eat_keras.models.config import LABEL_TYPES
from eat_keras.presets import PRESETS
from eat_keras.tagging import MIN_SECONDS
from eat_keras.train.loss_table import (
    DEFAULT_DISTILLATION_LOSS_TERMS,
    DEFAULT_LOSS_TERMS,
    check_loss_settings,
    check_loss_terms,
    default_loss_settings,
)

__all__ = ["LABEL_TYPES", "MAX_CLIP_SECONDS", "MONITORS", "FinetuneConfig", "absolute_paths", "data_clip_seconds"]

# monitored metric → which of two values is better
MONITORS = {"val_accuracy": max, "val_macro_f1": max, "val_loss": min}
#: The longest evaluation or training clip: a batch of clips is held in memory at once.
MAX_CLIP_SECONDS = 60.0
#: The longest clip length chosen from the data: longer recordings are cropped at random.
MAX_DATA_CLIP_SECONDS = 10.0

# Numeric settings and their lower bound (all must also be finite): a bad one fails at once, in
# one line, instead of deep inside TensorFlow or as a silently empty run (patience 0, epochs 0).
_POSITIVE = ("batch_size", "epochs", "learning_rate", "head_lr_factor", "layer_decay", "patience")
_NON_NEGATIVE = (
    "warmup_fraction", "last_lr_factor", "mixup_alpha", "gain_db",
    "roll_samples", "freqm", "timem", "freeze_backbone_epochs",
)  # fmt: skip
# Settings that name files or folders (or presets): recorded as absolute paths, see absolute_paths.
_PATHS = ("model", "weights", "teachers", "teacher_logits", "unlabelled")
# Counts: a fraction would fail deep inside tf.data or Python's range().
_INTEGER = (
    "batch_size", "epochs", "gain_db", "roll_samples",
    "freqm", "timem", "freeze_backbone_epochs", "patience", "seed",
)  # fmt: skip


def _option(default: Any = None, help: str = "", *, factory: Any = None, **cli: Any) -> Any:
    """A field with its command-line help; ``cli`` may name the flag (``flag="--lr"``) or give
    its ``choices``."""
    metadata = {"help": help, **cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class FinetuneConfig:
    """Every choice of a fine-tuning run (saved as ``finetune.json``)."""

    model: str = _option("mn04_as", "preset, .pt/.onnx, or model folder to start from")
    weights: str | None = _option(None, "explicit path to the preset's weight file")
    clip_seconds: float | None = _option(
        None, "training clip length in seconds, cropped at random (default: the median length of the training "
        "files, rounded up to 0.5 s, between 1 and 10 s)",
    )  # fmt: skip
    batch_size: int = _option(32, "global batch size, split across replicas")
    epochs: int = _option(30, "number of training epochs")
    learning_rate: float = _option(3e-4, "peak learning rate of Adam", flag="--lr")
    # the schedule is a function of the run's progress (step / all steps), so it fits any length
    warmup_fraction: float = _option(0.1, "share of the run spent in the exponential learning-rate warm-up")
    last_lr_factor: float = _option(0.01, "learning-rate factor reached at the end of the run's linear decay")
    loss_terms: dict[str, float] = _option(
        help="weighted loss terms, NAME=WEIGHT (a NAME alone weighs 1); with a teacher and no --loss: "
        + " ".join(f"{k}={v:g}" for k, v in DEFAULT_DISTILLATION_LOSS_TERMS.items()),
        flag="--loss", factory=lambda: dict(DEFAULT_LOSS_TERMS),
    )  # fmt: skip
    # the loss terms' own settings (cb_beta, ...): one flag each, from the loss table
    loss_settings: dict[str, float] = _option(help="loss term settings", factory=default_loss_settings)
    teachers: list[str] | None = _option(
        None, "teacher for distillation: a model folder (a run's best/), preset, weight file or SavedModel, run "
        "on the student's augmented clips; repeat the flag for an ensemble (logits averaged)", flag="--teacher",
        repeatable=True,
    )  # fmt: skip
    teacher_logits: list[str] | None = _option(
        None, "precomputed teacher logits instead of --teacher: FILE.npz from eat-keras teacher-logits, or "
        "upstream's ARRAY.npy FILE_LIST",
    )  # fmt: skip
    unlabelled: str | None = _option(
        None, "folder of unlabelled audio (any depth) added to the training side; it trains through the kd term only"
    )
    label_type: str = _option(
        "single_label", "softmax scores (one class per file) or sigmoid scores", choices=LABEL_TYPES
    )
    mixup_alpha: float = _option(0.3, "mixup Beta(alpha, alpha) parameter; 0 disables mixup")
    gain_db: int = _option(12, "random gain in [-N, N) dB; 0 disables")
    roll_samples: int = _option(4000, "random circular time shift of up to N samples; 0 disables")
    freqm: int = _option(0, "SpecAugment frequency-mask width in mel bins; 0 disables")
    timem: int = _option(0, "SpecAugment time-mask width in frames; 0 disables")
    freeze_backbone_epochs: int = _option(0, "train only the new head for the first N epochs")
    head_lr_factor: float = _option(10.0, "learning-rate factor of the head (its last layer is new) over the backbone's")
    layer_decay: float = _option(1.0, "learning-rate factor per depth level below the head; 1 disables")
    freeze_batchnorm: bool = _option(False, "keep BatchNorm statistics and affine parameters fixed")
    val_fraction: float = _option(0.1, "share of each class held out for validation")
    test_fraction: float = _option(0.0, "share of each class held out for testing")
    val_folds: list[str] | None = _option(None, "folds for validation (manifests with a fold column)")
    test_folds: list[str] | None = _option(None, "folds held out for testing")
    group_pattern: str | None = _option(
        None, "take each file's group (its source recording, kept on one side of the split) from its name: a "
        "template where {group} marks the recording and any other {name} any other part, e.g. "
        "'{fold}-{group}-{take}-{class}' for ESC-50's 1-100038-A-14.wav, or a regex with (?P<group>...)",
    )  # fmt: skip
    seed: int = _option(0, "seed of the split, the data order, the new head and the augmentations")
    monitor: str = _option("val_macro_f1", "validation metric that picks the best epoch", choices=tuple(MONITORS))
    patience: int = _option(10, "early stopping: epochs without improvement")
    tensorboard: bool = _option(False, "also write TensorBoard summaries into the run folder")

    def __post_init__(self) -> None:
        self.loss_settings = {**default_loss_settings(), **self.loss_settings}
        for name, value in absolute_paths({name: getattr(self, name) for name in _PATHS}).items():
            setattr(self, name, value)
        if self.has_teacher and self.loss_terms == dict(DEFAULT_LOSS_TERMS):
            self.loss_terms = dict(DEFAULT_DISTILLATION_LOSS_TERMS)  # the default loss, with its kd term
        self.validate()

    @property
    def has_teacher(self) -> bool:
        return bool(self.teachers) or bool(self.teacher_logits)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting no run can use; :func:`finetune` calls it
        again, as the fields can be changed."""
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.label_type not in LABEL_TYPES:
            raise ConfigError(f"label_type must be single_label or multi_label, got {self.label_type!r}")
        for name in _INTEGER:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
        for name in (*_POSITIVE, *_NON_NEGATIVE):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if name in _POSITIVE else value >= 0)):
                bound = "> 0" if name in _POSITIVE else ">= 0"
                raise ConfigError(f"{name} must be finite and {bound}, got {value}")
        if self.warmup_fraction > 1:
            raise ConfigError(f"warmup_fraction must be at most 1, got {self.warmup_fraction}")
        # The models are validated for clips of 1 s upward (as tagging's windows); None: the data's.
        if self.clip_seconds is not None and not (
            isinstance(self.clip_seconds, (int, float)) and MIN_SECONDS <= self.clip_seconds <= MAX_CLIP_SECONDS
        ):
            raise ConfigError(
                f"clip_seconds must be between {MIN_SECONDS:g} and {MAX_CLIP_SECONDS:g} s, got {self.clip_seconds}"
            )
        check_loss_terms(self.loss_terms)
        self._check_teacher()
        # the pattern itself is checked against the file names, when the data are read
        if self.group_pattern is not None and not isinstance(self.group_pattern, str):
            raise ConfigError(f"group_pattern must be a string, got {self.group_pattern!r}")
        check_loss_settings(self.loss_settings)

    def _check_teacher(self) -> None:
        """A teacher needs the kd term and the kd term a teacher; one kind of teacher at a time."""
        if self.teachers and self.teacher_logits:
            raise ConfigError("give --teacher or --teacher-logits, not both")
        if self.teacher_logits is not None and not 1 <= len(self.teacher_logits) <= 2:
            raise ConfigError("--teacher-logits takes FILE.npz, or ARRAY.npy and its FILE_LIST")
        uses_kd = self.loss_terms.get("kd", 0) > 0
        if self.has_teacher and not uses_kd:
            raise ConfigError("a teacher is given, but --loss has no kd term: add kd=WEIGHT (e.g. kd=0.5)")
        if uses_kd and not self.has_teacher:
            raise ConfigError("the kd loss term needs a teacher: --teacher MODEL or --teacher-logits FILE")

    def with_clip_seconds(self, num_samples: list[int], sample_rate: int) -> FinetuneConfig:
        """This configuration with its clip length fixed: ``clip_seconds`` when given, else the
        training files' (their lengths in samples at ``sample_rate``, see :func:`data_clip_seconds`)."""
        if self.clip_seconds is not None:
            return self
        return dataclasses.replace(self, clip_seconds=data_clip_seconds(num_samples, sample_rate))

    @property
    def loss_form(self) -> str:
        return "softmax" if self.label_type == "single_label" else "sigmoid"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def absolute_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (fields of :class:`FinetuneConfig`) with the existing files and folders they
    name as absolute paths: ``finetune.json`` then names the same teacher (or data) whatever folder
    a run is resumed from, and ``--teacher t`` resumes a run started with ``--teacher ./t``. A
    preset's name stays a name."""

    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if isinstance(value, str) and value not in PRESETS and Path(value).exists():
            return os.path.abspath(value)
        return value

    return {k: absolute(v) if k in _PATHS else v for k, v in settings.items()}


def data_clip_seconds(num_samples: list[int], sample_rate: int) -> float:
    """The training clip length that fits files of these lengths: their median rounded up to
    0.5 s, between 1 and 10 s. A clip as long as the typical file trains on all of it (a 5 s
    ESC-50 clip cropped to 2 s may miss its event); longer recordings are cropped at random."""
    median = float(np.median(num_samples)) / sample_rate if len(num_samples) else MIN_SECONDS
    return min(max(math.ceil(median * 2.0) / 2.0, MIN_SECONDS), MAX_DATA_CLIP_SECONDS)
