"""Fine-tuning: a pretrained MN/DyMN backbone, a new head, the seed's loss recipe, resumable runs.

One run lives in one output folder:

- ``finetune.json``: the configuration; once an epoch is checkpointed, a start with a different
  one is refused;
- ``split.csv`` / ``split_report.txt``: every file's side and per-class counts (leak-checked); a
  resumed start whose data give another split is refused;
- ``checkpoints/``: model, optimizers, RNG, data-epoch and early-stopping state after each epoch.
  Starting the same command again after a kill resumes from the last one and loses at most the
  epoch in flight; starting a finished (or early-stopped) run again trains nothing;
- ``log.csv`` (and ``tensorboard/`` when asked): per-epoch loss terms, learning rate, validation
  accuracy, macro-F1 and loss;
- ``best/``: the eat-keras model folder of the best epoch by the monitored validation metric, with
  the class names: ``eat-keras export`` / ``tag`` / ``evaluate`` take it as it is.

Every input (settings, data, split, model, audio) is checked before the folder is written, so a
start that fails on bad input leaves nothing that blocks the corrected retry.

Training runs under a ``tf.distribute`` strategy (the default one on a single device), so the same
code trains on several GPUs (``MirroredStrategy``) or workers (``MultiWorkerMirroredStrategy`` with
``TF_CONFIG``); the global batch is split across replicas and losses are averaged over it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from eat_keras.audio import seconds_to_samples
from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.frontend import FrontendConfig
from eat_keras.loading import load_tagger
from eat_keras.models import AudioTagger, build_tagger
from eat_keras.models.saving import save_tagger
from eat_keras.train import augment
from eat_keras.train.data import (
    AudioCache,
    Example,
    check_no_leakage,
    class_counts,
    class_names_of,
    make_dataset,
    split_examples,
    split_report,
)
from eat_keras.tagging import MIN_SECONDS
from eat_keras.train.evaluate import MAX_CLIP_SECONDS, NonFiniteLogitsError, evaluate, true_ids
from eat_keras.train.losses import (
    CombinedLoss,
    check_cb_beta,
    check_loss_terms,
    class_balanced_weights,
    cross_entropy,
)
from eat_keras.train.metrics import ClassificationReport

# monitored metric → which of two values is better
MONITORS = {"val_accuracy": max, "val_macro_f1": max, "val_loss": min}

# Numeric settings and their lower bound (all must also be finite): a bad one fails at once, in
# one line, instead of deep inside TensorFlow or as a silently empty run (patience 0, epochs 0).
_POSITIVE = (
    "clip_seconds", "batch_size", "epochs", "learning_rate", "supcon_temperature", "layer_decay",
    "patience",
)  # fmt: skip
_NON_NEGATIVE = (
    "warmup_epochs", "rampdown_start", "rampdown_epochs", "last_lr_factor", "focal_gamma",
    "mixup_alpha", "gain_db", "roll_samples", "freqm", "timem", "freeze_backbone_epochs",
)  # fmt: skip
# Counts: a fraction would fail deep inside tf.data or Python's range().
_INTEGER = (
    "batch_size", "epochs", "warmup_epochs", "rampdown_start", "rampdown_epochs", "gain_db", "roll_samples",
    "freqm", "timem", "freeze_backbone_epochs", "patience", "seed",
)  # fmt: skip


@dataclasses.dataclass
class FinetuneConfig:
    """Every choice of a fine-tuning run (saved as ``finetune.json``)."""

    model: str = "mn04_as"  # preset, .pt/.onnx, or model folder to start from
    weights: str | None = None
    clip_seconds: float = 2.0  # the seed's clip length
    batch_size: int = 32
    epochs: int = 30
    learning_rate: float = 6e-5
    # upstream schedule: exponential warm-up, then linear decay to last_lr_factor (per epoch)
    warmup_epochs: int = 10
    rampdown_start: int = 10
    rampdown_epochs: int = 65
    last_lr_factor: float = 0.01
    loss_terms: dict[str, float] = dataclasses.field(default_factory=lambda: {"cb": 0.8, "supcon": 0.2})
    cb_beta: float = 0.9999
    focal_gamma: float = 0.0
    supcon_temperature: float = 0.07
    label_type: str = "single_label"
    mixup_alpha: float = 0.3  # 0 disables
    gain_db: int = 12  # random gain in [-gain_db, gain_db) dB; 0 disables
    roll_samples: int = 4000  # random circular time shift; 0 disables
    freqm: int = 0  # SpecAugment widths of the front-end (upstream default: off)
    timem: int = 0
    freeze_backbone_epochs: int = 0  # train only the new head for the first epochs
    layer_decay: float = 1.0  # learning-rate factor per depth level, head = 1 (1.0: off)
    freeze_batchnorm: bool = False  # BN layers run on their stored statistics and stay fixed
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    val_folds: list[str] | None = None
    test_folds: list[str] | None = None
    seed: int = 0
    monitor: str = "val_macro_f1"
    patience: int = 10  # early stopping: epochs without improvement
    tensorboard: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting no run can use; :func:`finetune` calls it
        again, as the fields can be changed."""
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.label_type not in ("single_label", "multi_label"):
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
        # The models are validated for clips of 1 s upward (as tagging's windows).
        if not MIN_SECONDS <= self.clip_seconds <= MAX_CLIP_SECONDS:
            raise ConfigError(
                f"clip_seconds must be between {MIN_SECONDS:g} and {MAX_CLIP_SECONDS:g} s, got {self.clip_seconds:g}"
            )
        check_loss_terms(self.loss_terms)
        check_cb_beta(self.cb_beta)

    @property
    def loss_form(self) -> str:
        return "softmax" if self.label_type == "single_label" else "sigmoid"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate_factor(epoch: int, config: FinetuneConfig) -> float:
    """Upstream ``exp_warmup_linear_down`` (ex_esc50.py), evaluated at a 0-based epoch."""
    if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
        phase = 1.0 - min(max(epoch, 0.5), config.warmup_epochs) / config.warmup_epochs
        warm = math.exp(-5.0 * phase * phase)
    else:
        warm = 1.0
    if epoch <= config.rampdown_start:
        down = 1.0
    elif epoch >= config.rampdown_start + config.rampdown_epochs:
        down = config.last_lr_factor
    else:
        progress = (epoch - config.rampdown_start) / config.rampdown_epochs
        down = config.last_lr_factor + (1.0 - config.last_lr_factor) * (1.0 - progress)
    return warm * down


def build_finetune_model(base: AudioTagger, class_names: list[str], config: FinetuneConfig) -> AudioTagger:
    """A tagger with ``base``'s front-end settings and backbone weights and a fresh N-class head."""
    frontend: FrontendConfig = dataclasses.replace(base.config.frontend, freqm=config.freqm, timem=config.timem)
    model_config = base.config.replace(
        num_classes=len(class_names), label_type=config.label_type, frontend=frontend
    )
    tagger = build_tagger(model_config, class_names)
    for src, dst in zip(backbone_levels(base), backbone_levels(tagger)):
        for s, d in zip(src, dst):
            d.set_weights(s.get_weights())
    if config.freeze_batchnorm:
        for layer in tagger.net.submodules:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.trainable = False  # Keras runs a non-trainable BN in inference mode
    return tagger


def backbone_levels(tagger: AudioTagger) -> list[list[tf_keras.layers.Layer]]:
    """The backbone by depth: stem, each block, last conv (layer-wise learning-rate decay units)."""
    net = tagger.net
    return [[net.stem], *[[b] for b in net.blocks], [net.last_conv]]


def _variable_groups(tagger: AudioTagger) -> list[list[tf.Variable]]:
    """Trainable variables by depth level, head last."""
    levels = [*backbone_levels(tagger), [tagger.net.head]]
    return [[v for layer in level for v in layer.trainable_variables] for level in levels]


_SPLIT_HEADER = ["path", "label", "group", "side"]
_MAX_LISTED = 3  # split differences named in one error message


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Word a failed write into the run folder (read-only, a file in the way, a full disk) as one
    line; TensorFlow's checkpoint and summary writers raise their own error types."""
    try:
        yield
    except OSError as exc:
        raise EatKerasError(f"{folder}: cannot write the run folder ({exc.strerror or exc})") from exc
    except tf.errors.OpError as exc:
        raise EatKerasError(f"{folder}: cannot write the run folder ({exc.message})") from exc


class _RunFolder:
    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir
        self.config = out_dir / "finetune.json"
        self.split = out_dir / "split.csv"
        self.checkpoints = out_dir / "checkpoints"
        self.log = out_dir / "log.csv"
        self.best = out_dir / "best"

    def latest_checkpoint(self) -> str | None:
        """The checkpoint a start resumes from; ``None`` while no epoch has finished."""
        return tf.train.latest_checkpoint(str(self.checkpoints)) if self.checkpoints.is_dir() else None

    def holds_training(self) -> bool:
        """Whether any epoch of this folder's run finished: a checkpoint, a logged epoch or ``best/``
        (a finished run whose checkpoints were deleted still holds its results)."""
        return self.latest_checkpoint() is not None or self.log.exists() or self.best.exists()

    def claim(self, config: FinetuneConfig) -> None:
        """Record the configuration; once the folder holds training, check it against the run's.

        Before the first epoch finishes the folder holds no training, so a start that failed (or was
        stopped) then may be retried with other settings: the new configuration replaces the old.
        """
        if self.root.exists() and not self.root.is_dir():
            raise EatKerasError(f"{self.root}: a file is in the way of the run folder; use another --out")
        with _writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        wanted = config.to_dict()
        if self.holds_training() and self.config.exists():
            try:
                earlier = json.loads(self.config.read_text())
            except (OSError, ValueError) as exc:
                raise EatKerasError(f"{self.config}: cannot read the run's configuration ({exc}); use a new --out folder") from exc
            if earlier != wanted:
                changed = sorted(k for k in set(earlier) | set(wanted) if earlier.get(k) != wanted.get(k))
                raise EatKerasError(
                    f"{self.root} holds a run with another configuration (differs in {', '.join(changed)}); "
                    "use a new --out folder"
                )
            return
        with _writing(self.root):
            self.config.write_text(json.dumps(wanted, indent=1) + "\n")

    def record_split(self, splits: dict[str, list[Example]], resuming: bool) -> str:
        """Write ``split.csv`` and the report; when resuming, first check that the data give the
        stored split: other data would move files between sides (a former training file into
        validation) and change the class weights halfway through a run."""
        rows = _split_rows(splits)
        if resuming and self.split.exists():
            with self.split.open(newline="") as f:
                stored = list(csv.reader(f))[1:]  # without the header
            if stored != rows:
                raise EatKerasError(
                    f"{self.split}: the data given now split differently from the run's "
                    f"({_split_differences(stored, rows)}); resume with the same data, or use a new --out folder"
                )
        report = split_report(splits)
        with _writing(self.root):
            (self.root / "split_report.txt").write_text(report + "\n")
            with self.split.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(_SPLIT_HEADER)
                writer.writerows(rows)
        return report

    def log_rows(self, upto_epoch: int) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        with self.log.open() as f:
            return [row for row in csv.DictReader(f) if int(row["epoch"]) <= upto_epoch]

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fields = list(rows[0])
        tmp = self.log.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.log)


def _split_rows(splits: dict[str, list[Example]]) -> list[list[str]]:
    """``split.csv`` rows (as ``csv.reader`` reads them back): path, label, group, side."""
    return [[e.path, e.label, e.group or "", side] for side, examples in splits.items() for e in examples]


def _split_differences(stored: list[list[str]], now: list[list[str]]) -> str:
    """The first few files whose side, label or group differ, or that one of the splits lacks."""
    before = {row[0]: row[1:] for row in stored}
    after = {row[0]: row[1:] for row in now}
    changes = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old is None:
            changes.append(f"{path} is new ({new[2]})")
        elif new is None:
            changes.append(f"{path} is gone ({old[2]})")
        elif old[2] != new[2]:
            changes.append(f"{path} moves {old[2]} -> {new[2]}")
        elif old != new:
            changes.append(f"{path} has another label or group")
    if not changes:
        return "same files in another order"
    more = f" and {len(changes) - _MAX_LISTED} more" if len(changes) > _MAX_LISTED else ""
    return f"{len(changes)} file(s): " + "; ".join(changes[:_MAX_LISTED]) + more


def _checked_splits(
    examples: Sequence[Example], config: FinetuneConfig
) -> tuple[dict[str, list[Example]], list[str], np.ndarray]:
    """The leak-checked split, the class names and the training counts; refuses a split that
    cannot train (a class without training files) or select a best epoch (no validation files)."""
    splits = split_examples(
        examples, config.val_fraction, config.test_fraction, config.seed, config.test_folds, config.val_folds
    )
    check_no_leakage(splits)
    class_names = class_names_of(examples)
    counts = class_counts(splits["train"], class_names)
    if (counts == 0).any():
        missing = [n for n, c in zip(class_names, counts) if c == 0]
        raise EatKerasError(f"no training files for class(es) {missing}")
    if not splits["val"]:
        raise EatKerasError("the validation side is empty: set --val-fraction or --val-folds")
    return splits, class_names, counts


def is_improvement(value: float, val_loss: float, best: float, best_loss: float, better: Any) -> bool:
    """Whether an epoch's monitored ``value`` beats ``best`` (NaN: no best yet); ``better`` is
    :data:`MONITORS`' ``max`` or ``min``.

    Small validation sets saturate (accuracy 1.0 from an early epoch on): a tie on the monitored
    metric goes to the lower validation loss, not to the first epoch that reached it. A non-finite
    value never improves: ``max(nan, x)`` is NaN, so NaN would otherwise win every comparison.
    """
    if not math.isfinite(value):
        return False
    if math.isnan(best):
        return True
    return better(value, best) != best or (value == best and val_loss < best_loss)


def _diverged(run: _RunFolder, epoch: int, what: str, learning_rate: float) -> EatKerasError:
    """The error for a run whose loss or weights stopped being finite in ``epoch`` (0-based):
    nothing of that epoch is saved, and the message says how to retry."""
    if run.holds_training():
        kept = f"{run.root} keeps the earlier epochs and best/; start again with a lower --lr and a new --out folder"
    else:
        kept = f"nothing was saved; start again with a lower --lr (in the same --out folder {run.root})"
    return EatKerasError(
        f"training diverged in epoch {epoch + 1}: {what} (learning rate {learning_rate:g}); {kept}"
    )


@dataclasses.dataclass
class FinetuneResult:
    out_dir: Path
    best_dir: Path
    best_epoch: int
    best_metric: float
    history: list[dict[str, Any]]
    test_report: ClassificationReport | None


def finetune(
    examples: Sequence[Example],
    out_dir: str | Path,
    config: FinetuneConfig,
    strategy: tf.distribute.Strategy | None = None,
    cache: AudioCache | None = None,
    verbose: bool = True,
) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``examples``; resumes when ``out_dir`` holds the same run."""
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    strategy = strategy or tf.distribute.get_strategy()
    cache = cache or AudioCache()

    # Check every input before the run folder is written (see the module docstring).
    config.validate()
    splits, class_names, counts = _checked_splits(examples, config)
    loss_fn = CombinedLoss(
        class_balanced_weights(counts, config.cb_beta) if "cb" in config.loss_terms else None,
        config.loss_terms,
        gamma=config.focal_gamma,
        form=config.loss_form,
        temperature=config.supcon_temperature,
    )
    base = load_tagger(config.model, config.weights, with_class_names=False)
    sample_rate = base.config.frontend.sample_rate
    clip_samples = seconds_to_samples(config.clip_seconds, sample_rate)
    cache.load_all(e.path for side in splits.values() for e in side)  # an undecodable file fails now

    run = _RunFolder(Path(out_dir))
    resuming = run.latest_checkpoint() is not None
    run.claim(config)
    say(run.record_split(splits, resuming))

    with strategy.scope():
        tagger = build_finetune_model(base, class_names, config)
        groups = _variable_groups(tagger)
        depth = len(groups) - 1
        multipliers = [config.layer_decay ** (depth - i) for i in range(len(groups))]
        optimizers = [tf_keras.optimizers.Adam(config.learning_rate) for _ in groups]
        for opt, variables in zip(optimizers, groups):
            opt.build(variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)  # completed epochs
        best_var = tf.Variable(np.nan, dtype=tf.float64, trainable=False)
        best_loss_var = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        best_epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        bad_epochs_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        rng = tf.random.Generator.from_seed(config.seed)
    del base

    checkpoint = tf.train.Checkpoint(
        model=tagger, epoch=epoch_var, best=best_var, best_loss=best_loss_var, best_epoch=best_epoch_var,
        bad_epochs=bad_epochs_var, rng=rng, **{f"optimizer_{i}": o for i, o in enumerate(optimizers)},
    )
    manager = tf.train.CheckpointManager(checkpoint, str(run.checkpoints), max_to_keep=2)
    if resuming:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        say(f"resuming from {manager.latest_checkpoint}: {int(epoch_var)} epoch(s) done")
    history = run.log_rows(int(epoch_var))
    first_epoch = int(epoch_var)
    if int(bad_epochs_var) >= config.patience:
        say(f"early stopping fired after epoch {first_epoch}: nothing left to train")
        first_epoch = config.epochs
    elif first_epoch >= config.epochs:
        say(f"all {config.epochs} epochs are done: nothing left to train")
    # The data set's epoch counter starts where the run stands: epoch e of a resumed run gets the
    # order and crops that epoch e of an uninterrupted run gets.
    train_ds = make_dataset(
        splits["train"], class_names, mode="train", clip_samples=clip_samples,
        batch_size=config.batch_size, seed=config.seed, cache=cache,
        drop_remainder=len(splits["train"]) >= 2 * config.batch_size, first_epoch=first_epoch,
    )
    steps_per_epoch = int(train_ds.cardinality())
    with _writing(run.root):
        writer = tf.summary.create_file_writer(str(run.root / "tensorboard")) if config.tensorboard else None

    replicas = strategy.num_replicas_in_sync

    def step_fn(batch: dict[str, tf.Tensor], train_backbone: bool) -> dict[str, tf.Tensor]:
        waveform, target = batch["waveform"], batch["target"]
        if config.gain_db:
            waveform = augment.random_gain(waveform, config.gain_db, rng)
        if config.roll_samples:
            waveform = augment.time_roll(waveform, config.roll_samples, rng)
        active = groups if train_backbone else groups[-1:]
        variables = [v for g in active for v in g]
        with tf.GradientTape() as tape:
            mel = tagger.frontend(waveform, training=True)
            if config.mixup_alpha > 0:
                mixed = augment.mixup(mel, target, config.mixup_alpha, rng)
                mel, target = mixed.x, mixed.targets
            out = tagger.net(mel, training=True)
            total, terms = loss_fn(target, out["logits"], out["embedding"])
            scaled = total / replicas
        grads = tape.gradient(scaled, variables)
        start = 0
        for opt, group in zip(optimizers[-len(active):], active):
            opt.apply_gradients(zip(grads[start : start + len(group)], group))
            start += len(group)
        return {"loss": total, **terms}

    @tf.function
    def train_step(batch: dict[str, tf.Tensor], train_backbone: bool) -> dict[str, tf.Tensor]:
        per_replica = strategy.run(step_fn, args=(batch, train_backbone))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    predict_fn = tf.function(
        lambda w: tagger(w, training=False)["logits"],
        input_signature=[tf.TensorSpec([None, clip_samples], tf.float32)],
    )

    def predict(waveforms: np.ndarray) -> np.ndarray:
        return predict_fn(tf.constant(waveforms)).numpy()
    better = MONITORS[config.monitor]
    distributed = strategy.experimental_distribute_dataset(train_ds)

    for epoch in range(first_epoch, config.epochs):
        factor = learning_rate_factor(epoch, config)
        for opt, mult in zip(optimizers, multipliers):
            opt.learning_rate.assign(config.learning_rate * factor * mult)
        train_backbone = epoch >= config.freeze_backbone_epochs
        progbar = tf_keras.utils.Progbar(steps_per_epoch, verbose=1 if verbose else 0, unit_name="batch")
        started = time.time()
        sums: dict[str, float] = {}
        lr = config.learning_rate * factor
        for step, batch in enumerate(distributed):
            values = {k: float(v) for k, v in train_step(batch, train_backbone).items()}
            if not math.isfinite(values["loss"]):
                raise _diverged(run, epoch, f"the training loss became {values['loss']} at step {step + 1}", lr)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            progbar.update(step + 1, [(k, v) for k, v in values.items()])
        try:
            report, val_logits = evaluate(predict, splits["val"], class_names, clip_samples, config.batch_size, cache)
        except NonFiniteLogitsError:
            raise _diverged(run, epoch, "the model's validation logits became non-finite", lr) from None
        val_targets = tf.one_hot(true_ids(splits["val"], class_names), len(class_names))
        val_loss = float(cross_entropy(val_targets, tf.constant(val_logits), config.loss_form))
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "backbone_trained": int(train_backbone),
            **{f"train_{k}": v / max(step + 1, 1) for k, v in sums.items()},
            "val_loss": val_loss,
            "val_accuracy": report.accuracy,
            "val_macro_f1": report.macro_f1,
            "seconds": round(time.time() - started, 2),
        }
        history.append(row)
        value = row[config.monitor]
        if is_improvement(value, val_loss, float(best_var), float(best_loss_var), better):
            best_var.assign(value)
            best_loss_var.assign(val_loss)
            best_epoch_var.assign(epoch + 1)
            bad_epochs_var.assign(0)
            with _writing(run.root):
                save_tagger(
                    tagger, run.best, source=f"fine-tuned from {config.model}, epoch {epoch + 1}",
                    training={"clip_seconds": config.clip_seconds, "epoch": epoch + 1, config.monitor: value},
                )
        else:
            bad_epochs_var.assign_add(1)
        say(
            f"epoch {epoch + 1}/{config.epochs}: loss {row.get('train_loss', float('nan')):.4f} "
            f"val_acc {report.accuracy:.4f} val_f1 {report.macro_f1:.4f} val_loss {val_loss:.4f}"
            f" (best {config.monitor} {float(best_var):.4f} @ {int(best_epoch_var)})"
        )
        epoch_var.assign(epoch + 1)
        with _writing(run.root):
            if writer is not None:
                with writer.as_default(step=epoch + 1):
                    for k, v in row.items():
                        if k != "epoch":
                            tf.summary.scalar(k, v)
            run.write_log(history)
            manager.save(checkpoint_number=epoch + 1)
        if int(bad_epochs_var) >= config.patience:
            say(f"early stop: no {config.monitor} improvement for {config.patience} epochs")
            break

    if history and int(best_epoch_var) == 0:
        raise EatKerasError(f"no epoch gave a finite {config.monitor}: nothing was saved as {run.best}")
    test_report = None
    if splits["test"]:
        from eat_keras.models.saving import load_tagger_dir

        best_fn = load_tagger_dir(run.best).predict_function_for_waveforms()
        test_report, _ = evaluate(
            lambda w: best_fn(tf.constant(w))["logits"].numpy(), splits["test"], class_names,
            clip_samples, config.batch_size, cache,
        )
        say("test (best checkpoint):\n" + test_report.summary())
    return FinetuneResult(run.root, run.best, int(best_epoch_var), float(best_var), history, test_report)
