"""Fine-tuning: a pretrained MN/DyMN backbone, a new head, the original loss recipe, resumable runs.

One run lives in one output folder:

- ``finetune.json``: the configuration; once an epoch is checkpointed, a start with a different
  one is refused;
- ``split.csv`` / ``split_report.txt``: every file's side and per-class counts (leak-checked); a
  resumed start whose data give another split is refused;
- ``checkpoints/``: model, optimizers, RNG, data-epoch and early-stopping state after each epoch.
  Starting the same command again after a kill resumes from the last one, redoes the epoch in
  flight and ends with the weights and log of an uninterrupted run; starting a finished (or
  early-stopped) run again trains nothing, unless ``epochs`` grew (:meth:`_RunFolder.claim`);
- ``log.csv`` (and ``tensorboard/`` when asked): per-epoch loss terms, learning rate, validation
  accuracy, macro-F1 and loss (no wall-clock times, so that reruns compare line by line);
- ``best/``: the eat-keras model folder of the best epoch by the monitored validation metric, with
  the class names: ``eat-keras export`` / ``tag`` / ``evaluate`` take it as it is.

Every input (settings, data, split, model, audio) is checked before the folder is written, so a
start that fails on bad input leaves nothing that blocks the corrected retry.

:func:`finetune` reads in order: check the inputs (``_checked_inputs``), claim the folder, make
the training state (``_training_state``) and restore it from the last checkpoint
(``_restored``), then ``_Training`` runs the epochs: ``train_epoch``, ``validate``,
``track_best`` (best epoch and early stopping), ``save_best`` and ``save_epoch``; last the test
side is evaluated on ``best/``. A non-finite training loss or validation logit stops the run
before anything of that epoch is saved.

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from eat_keras.audio import seconds_to_samples
from eat_keras.errors import EatKerasError
from eat_keras.frontend import FrontendConfig
from eat_keras.loading import load_tagger
from eat_keras.models import AudioTagger, build_tagger
from eat_keras.models.saving import save_tagger
from eat_keras.train import augment
from eat_keras.train.config import MONITORS, FinetuneConfig
from eat_keras.train.data import (
    AudioCache,
    Example,
    check_no_leakage,
    class_counts,
    class_names_of,
    groups_from_names,
    make_dataset,
    split_examples,
    split_report,
)
from eat_keras.train.evaluate import NonFiniteLogitsError, evaluate, true_ids
from eat_keras.train.losses import CombinedLoss, cross_entropy
from eat_keras.train.metrics import ClassificationReport

__all__ = [
    "MONITORS",
    "FinetuneConfig",
    "FinetuneResult",
    "backbone_levels",
    "build_finetune_model",
    "finetune",
    "is_improvement",
    "learning_rate_factor",
]


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

    def epochs_done(self) -> int | None:
        """The epochs the last checkpoint holds (checkpoints are numbered by epoch); ``None`` without one."""
        latest = self.latest_checkpoint()
        return None if latest is None else int(latest.rsplit("-", 1)[1])

    def claim(self, config: FinetuneConfig) -> int | None:
        """Record the configuration; once the folder holds training, check it against the run's.
        Returns the run's former number of epochs when ``config`` extends (or shortens) it.

        Before the first epoch finishes the folder holds no training, so a start that failed (or was
        stopped) then may be retried with other settings: the new configuration replaces the old.
        Afterwards only ``epochs`` may change (see :meth:`check_new_length`).
        """
        if self.root.exists() and not self.root.is_dir():
            raise EatKerasError(f"{self.root}: a file is in the way of the run folder; use another --out")
        with _writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        wanted, former_epochs = config.to_dict(), None
        if self.holds_training() and self.config.exists():
            try:
                earlier = json.loads(self.config.read_text())
            except (OSError, ValueError) as exc:
                raise EatKerasError(f"{self.config}: cannot read the run's configuration ({exc}); use a new --out folder") from exc
            if earlier == wanted:
                return None
            changed = sorted(k for k in set(earlier) | set(wanted) if earlier.get(k) != wanted.get(k))
            if changed != ["epochs"]:
                raise EatKerasError(
                    f"{self.root} holds a run with another configuration (differs in {', '.join(changed)}); "
                    "use a new --out folder"
                )
            former_epochs = earlier["epochs"]
            self.check_new_length(former_epochs, config)
        with _writing(self.root):
            self.config.write_text(json.dumps(wanted, indent=1) + "\n")
        return former_epochs

    def check_new_length(self, former_epochs: int, config: FinetuneConfig) -> None:
        """Refuse another ``--epochs`` unless the run can go on as if it had been started with it:
        its checkpoint must be there, hold no more epochs than asked for, and every finished epoch
        must have had the learning rate the new length gives it (a schedule that stretches with the
        run would otherwise jump back up). Epoch ``e``'s data depend on the seed and ``e`` alone."""
        done, root = self.epochs_done(), self.root
        if done is None:
            raise EatKerasError(f"{root} holds a finished run without checkpoints: it cannot train more; use a new --out folder")
        if config.epochs < done:
            raise EatKerasError(f"{root} has trained {done} epochs already: --epochs must be at least {done}")
        before = dataclasses.replace(config, epochs=former_epochs)
        for epoch in range(done):
            old, new = learning_rate_factor(epoch, before), learning_rate_factor(epoch, config)
            if old != new:
                raise EatKerasError(
                    f"{root} cannot go on to {config.epochs} epochs: its learning-rate schedule stretches with the "
                    f"run (epoch {epoch + 1} trained at {old * config.learning_rate:g}, would be "
                    f"{new * config.learning_rate:g}); train {config.epochs} epochs in a new --out folder, or continue "
                    f"from this run's best model with --model {self.best} --out NEW_FOLDER"
                )

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
    cannot train (a class without training files) or select a best epoch (no validation files).
    With ``config.group_pattern`` the files' groups come from their names."""
    examples = groups_from_names(list(examples), config.group_pattern)
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


@contextlib.contextmanager
def _deterministic_ops() -> Iterator[None]:
    """TensorFlow's op determinism for the length of a run on CPUs: tf.data keeps its order and a
    kernel without a deterministic implementation raises instead of varying from run to run. It
    stays off where a GPU is visible: TensorFlow has refused the filter gradient of a depthwise
    convolution (every MN block has one) on GPUs under op determinism, for want of a deterministic
    kernel. The switch is process-wide, so a run that turned it on turns it off after."""
    from tensorflow.python.framework import config as tf_config  # the only way to turn it off

    if tf_config.is_op_determinism_enabled() or tf.config.list_logical_devices("GPU"):
        yield
        return
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        tf_config.disable_op_determinism()


@dataclasses.dataclass
class FinetuneResult:
    out_dir: Path
    best_dir: Path
    best_epoch: int
    best_metric: float
    history: list[dict[str, Any]]
    test_report: ClassificationReport | None


# --- the inputs and the state of a run -------------------------------------------------------


@dataclasses.dataclass
class _RunInputs:
    """A run's checked inputs: the split, its class names, the loss and the clip length."""

    splits: dict[str, list[Example]]
    class_names: list[str]
    loss: CombinedLoss
    clip_samples: int


def _checked_inputs(
    examples: Sequence[Example], config: FinetuneConfig, cache: AudioCache
) -> tuple[_RunInputs, AudioTagger]:
    """Check every input (settings, data, split, model, audio) before the run folder is written,
    so that a start that fails on bad input leaves nothing that blocks the corrected retry; also
    returns the model to start from."""
    config.validate()
    splits, class_names, counts = _checked_splits(examples, config)
    loss = CombinedLoss(
        terms=config.loss_terms, form=config.loss_form, settings=config.loss_settings, class_counts=counts
    )
    base = load_tagger(config.model, config.weights, with_class_names=False)
    clip_samples = seconds_to_samples(config.clip_seconds, base.config.frontend.sample_rate)
    cache.load_all(e.path for side in splits.values() for e in side)  # an undecodable file fails now
    return _RunInputs(splits, class_names, loss, clip_samples), base


@dataclasses.dataclass
class _TrainingState:
    """What a checkpoint holds: the model, one optimizer per depth level (head last), the
    augmentations' RNG and the run's counters."""

    tagger: AudioTagger
    groups: list[list[tf.Variable]]  # trainable variables by depth level, as the optimizers
    optimizers: list[Any]
    rng: tf.random.Generator
    epoch: tf.Variable  # completed epochs
    best: tf.Variable  # best monitored value; NaN while there is none
    best_loss: tf.Variable  # validation loss of the best epoch (breaks ties)
    best_epoch: tf.Variable  # 1-based; 0 while there is none
    bad_epochs: tf.Variable  # epochs since the best one

    def checkpoint(self) -> tf.train.Checkpoint:
        optimizers = {f"optimizer_{i}": o for i, o in enumerate(self.optimizers)}
        return tf.train.Checkpoint(
            model=self.tagger, epoch=self.epoch, best=self.best, best_loss=self.best_loss,
            best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, rng=self.rng, **optimizers,
        )  # fmt: skip


def _training_state(
    base: AudioTagger, class_names: list[str], config: FinetuneConfig, strategy: tf.distribute.Strategy
) -> _TrainingState:
    """A fresh state, made in the strategy's scope: ``base`` with a new head, counters at zero.

    Python's, NumPy's and TensorFlow's global seeds are set from ``config.seed`` first: the new
    head's initialisers draw from them. Every draw of a training step (augmentations, the
    front-end's jitter and masks, dropout) comes from the checkpointed generator.
    """
    tf_keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        tagger = build_finetune_model(base, class_names, config)
        groups = _variable_groups(tagger)
        optimizers = [tf_keras.optimizers.Adam(config.learning_rate) for _ in groups]
        for opt, variables in zip(optimizers, groups):
            opt.build(variables)
        counters = dict(
            epoch=tf.Variable(0, dtype=tf.int64, trainable=False),
            best=tf.Variable(np.nan, dtype=tf.float64, trainable=False),
            best_loss=tf.Variable(np.inf, dtype=tf.float64, trainable=False),
            best_epoch=tf.Variable(0, dtype=tf.int64, trainable=False),
            bad_epochs=tf.Variable(0, dtype=tf.int64, trainable=False),
        )
        rng = tf.random.Generator.from_seed(config.seed)
    _draw_dropout_from(tagger, rng)
    return _TrainingState(tagger, groups, optimizers, rng, **counters)


def _draw_dropout_from(tagger: AudioTagger, rng: tf.random.Generator) -> None:
    """Swap each Keras ``Dropout`` of the network for one drawing its masks from ``rng``: Keras'
    keeps its state in the kernel, so a resumed run would replay the first epoch's masks."""
    for layer in [tagger.net, *tagger.net.submodules]:
        if not isinstance(layer, tf_keras.layers.Layer):
            continue
        for name, value in list(vars(layer).items()):
            if isinstance(value, tf_keras.layers.Dropout):
                setattr(layer, name, augment.GeneratorDropout(value.rate, rng, name=value.name))


def _restored(
    state: _TrainingState, run: _RunFolder, resuming: bool, say: Callable[[str], None]
) -> tf.train.CheckpointManager:
    """The run's checkpoint manager; when resuming, ``state`` is restored from its last checkpoint."""
    manager = tf.train.CheckpointManager(state.checkpoint(), str(run.checkpoints), max_to_keep=2)
    if resuming:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        say(f"resuming from {manager.latest_checkpoint}: {int(state.epoch)} epoch(s) done")
    return manager


def _first_epoch(state: _TrainingState, config: FinetuneConfig, say: Callable[[str], None]) -> int:
    """The 0-based epoch this start trains first; ``config.epochs`` when the run is finished or
    early stopping fired (a finished run started again trains nothing)."""
    done = int(state.epoch)
    if int(state.bad_epochs) >= config.patience:
        say(f"early stopping fired after epoch {done}: nothing left to train")
        return config.epochs
    if done >= config.epochs:
        say(f"all {config.epochs} epochs are done: nothing left to train (start it again with a larger --epochs to train more)")
    return done


def _train_step_function(
    state: _TrainingState, loss_fn: CombinedLoss, config: FinetuneConfig, strategy: tf.distribute.Strategy
) -> Callable[[dict[str, tf.Tensor], bool], dict[str, tf.Tensor]]:
    """One distributed training step: waveform augmentations, front-end, mixup, loss, and one
    update per trained depth level; returns the loss and its terms averaged over the replicas."""
    tagger, groups, optimizers, rng = state.tagger, state.groups, state.optimizers, state.rng
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
            mel = augment.training_log_mel(tagger.frontend.config, waveform, rng)
            if config.mixup_alpha > 0:
                mixed = augment.mixup(mel, target, config.mixup_alpha, rng)
                mel, target = mixed.x, mixed.targets
            out = tagger.net(mel, training=True)
            total, terms = loss_fn(target, out["logits"], out["embedding"])
            scaled = total / replicas  # the global batch's mean once the replicas' gradients sum
        grads = tape.gradient(scaled, variables)
        start = 0
        for opt, group in zip(optimizers[-len(active) :], active):
            opt.apply_gradients(zip(grads[start : start + len(group)], group))
            start += len(group)
        return {"loss": total, **terms}

    @tf.function
    def train_step(batch: dict[str, tf.Tensor], train_backbone: bool) -> dict[str, tf.Tensor]:
        per_replica = strategy.run(step_fn, args=(batch, train_backbone))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    return train_step


# --- the epochs ------------------------------------------------------------------------------


class _Training:
    """One start of a run, epoch by epoch: train, validate, track the best epoch and early
    stopping, save the epoch."""

    def __init__(
        self,
        config: FinetuneConfig,
        run: _RunFolder,
        inputs: _RunInputs,
        state: _TrainingState,
        strategy: tf.distribute.Strategy,
        cache: AudioCache,
        say: Callable[[str], None],
    ) -> None:
        self.config, self.run, self.inputs, self.state = config, run, inputs, state
        self.strategy, self.cache, self.say = strategy, cache, say
        self.train_step = _train_step_function(state, inputs.loss, config, strategy)
        predict_fn = tf.function(
            lambda w: state.tagger(w, training=False)["logits"],
            input_signature=[tf.TensorSpec([None, inputs.clip_samples], tf.float32)],
        )
        self.predict = lambda waveforms: predict_fn(tf.constant(waveforms)).numpy()

    def run_epochs(self, manager: tf.train.CheckpointManager, verbose: bool) -> list[dict[str, Any]]:
        """Train from where the run stands to its last epoch or early stop; the whole run's log."""
        config, state = self.config, self.state
        history: list[dict[str, Any]] = self.run.log_rows(int(state.epoch))
        first_epoch = _first_epoch(state, config, self.say)
        batches, steps = self._training_batches(first_epoch)
        with _writing(self.run.root):
            writer = tf.summary.create_file_writer(str(self.run.root / "tensorboard")) if config.tensorboard else None
        for epoch in range(first_epoch, config.epochs):
            started = time.time()
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch, batches, steps, verbose)}
            row.update(self.validate(epoch, row["lr"]))
            history.append(row)  # no wall-clock time: one command, data and seed give one log.csv
            if self.track_best(row):
                self.save_best(row)
            self.say(
                f"epoch {epoch + 1}/{config.epochs}: loss {row.get('train_loss', float('nan')):.4f} "
                f"val_acc {row['val_accuracy']:.4f} val_f1 {row['val_macro_f1']:.4f} val_loss {row['val_loss']:.4f}"
                f" (best {config.monitor} {float(state.best):.4f} @ {int(state.best_epoch)}; {time.time() - started:.1f} s)"
            )
            self.save_epoch(history, manager, writer)
            if int(state.bad_epochs) >= config.patience:
                self.say(f"early stop: no {config.monitor} improvement for {config.patience} epochs")
                break
        return history

    def _training_batches(self, first_epoch: int) -> tuple[Any, int]:
        """The distributed training data and its batches per epoch. The data set's epoch counter
        starts where the run stands: epoch e of a resumed run gets the order and crops that epoch e
        of an uninterrupted run gets."""
        config, train = self.config, self.inputs.splits["train"]
        dataset = make_dataset(
            train, self.inputs.class_names, mode="train", clip_samples=self.inputs.clip_samples,
            batch_size=config.batch_size, seed=config.seed, cache=self.cache,
            drop_remainder=len(train) >= 2 * config.batch_size, first_epoch=first_epoch,
        )  # fmt: skip
        return self.strategy.experimental_distribute_dataset(dataset), int(dataset.cardinality())

    def train_epoch(self, epoch: int, batches: Any, steps: int, verbose: bool) -> dict[str, Any]:
        """One pass over the training data at the epoch's learning rates; the mean loss and terms.
        A non-finite loss stops the run before anything of the epoch is saved."""
        config, optimizers = self.config, self.state.optimizers
        lr = config.learning_rate * learning_rate_factor(epoch, config)
        depth = len(optimizers) - 1  # the head's level; each level below gets layer_decay once more
        for level, opt in enumerate(optimizers):
            opt.learning_rate.assign(lr * config.layer_decay ** (depth - level))
        train_backbone = epoch >= config.freeze_backbone_epochs
        progbar = tf_keras.utils.Progbar(steps, verbose=1 if verbose else 0, unit_name="batch")
        sums: dict[str, float] = {}
        done = 0
        for step, batch in enumerate(batches):
            values = {k: float(v) for k, v in self.train_step(batch, train_backbone).items()}
            if not math.isfinite(values["loss"]):
                raise _diverged(self.run, epoch, f"the training loss became {values['loss']} at step {step + 1}", lr)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            progbar.update(step + 1, list(values.items()))
            done = step + 1
        means = {f"train_{k}": v / max(done, 1) for k, v in sums.items()}
        return {"lr": lr, "backbone_trained": int(train_backbone), **means}

    def validate(self, epoch: int, lr: float) -> dict[str, float]:
        """Validation loss, accuracy and macro-F1 on whole files; non-finite logits stop the run
        before anything of the epoch is saved."""
        inputs = self.inputs
        try:
            report, logits = evaluate(
                self.predict, inputs.splits["val"], inputs.class_names, inputs.clip_samples,
                batch_size=self.config.batch_size, cache=self.cache,
            )  # fmt: skip
        except NonFiniteLogitsError:
            raise _diverged(self.run, epoch, "the model's validation logits became non-finite", lr) from None
        targets = tf.one_hot(true_ids(inputs.splits["val"], inputs.class_names), len(inputs.class_names))
        val_loss = float(cross_entropy(targets, tf.constant(logits), self.config.loss_form))
        return {"val_loss": val_loss, "val_accuracy": report.accuracy, "val_macro_f1": report.macro_f1}

    def track_best(self, row: dict[str, Any]) -> bool:
        """Count the epoch for the best one or for early stopping; whether it is the new best."""
        state, monitor = self.state, self.config.monitor
        value = row[monitor]
        if not is_improvement(value, row["val_loss"], float(state.best), float(state.best_loss), MONITORS[monitor]):
            state.bad_epochs.assign_add(1)
            return False
        state.best.assign(value)
        state.best_loss.assign(row["val_loss"])
        state.best_epoch.assign(row["epoch"])
        state.bad_epochs.assign(0)
        return True

    def save_best(self, row: dict[str, Any]) -> None:
        config, epoch = self.config, row["epoch"]
        with _writing(self.run.root):
            save_tagger(
                self.state.tagger, self.run.best, source=f"fine-tuned from {config.model}, epoch {epoch}",
                training={"clip_seconds": config.clip_seconds, "epoch": epoch, config.monitor: row[config.monitor]},
            )  # fmt: skip

    def save_epoch(self, history: list[dict[str, Any]], manager: tf.train.CheckpointManager, writer: Any) -> None:
        """Log the epoch (CSV, TensorBoard) and checkpoint it: a later start resumes after it."""
        row = history[-1]
        self.state.epoch.assign(row["epoch"])
        with _writing(self.run.root):
            if writer is not None:
                with writer.as_default(step=row["epoch"]):
                    for k, v in row.items():
                        if k != "epoch":
                            tf.summary.scalar(k, v)
            self.run.write_log(history)
            manager.save(checkpoint_number=row["epoch"])

    def test_best(self) -> ClassificationReport | None:
        """The test side's report for the saved best model, when the split has a test side."""
        if not self.inputs.splits["test"]:
            return None
        from eat_keras.models.saving import load_tagger_dir

        best_fn = load_tagger_dir(self.run.best).predict_function_for_waveforms()
        report, _ = evaluate(
            lambda w: best_fn(tf.constant(w))["logits"].numpy(), self.inputs.splits["test"],
            self.inputs.class_names, self.inputs.clip_samples, batch_size=self.config.batch_size, cache=self.cache,
        )  # fmt: skip
        self.say("test (best checkpoint):\n" + report.summary())
        return report


def finetune(
    examples: Sequence[Example],
    out_dir: str | Path,
    config: FinetuneConfig,
    strategy: tf.distribute.Strategy | None = None,
    cache: AudioCache | None = None,
    verbose: bool = True,
) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``examples``; resumes when ``out_dir`` holds the same run.

    One command, data and seed give one ``log.csv`` and one set of weights on one CPU machine, and
    a resumed run ends as the uninterrupted one would: the call seeds the global RNGs and runs with
    TensorFlow's op determinism on (both process-wide; determinism is switched back off after). On
    a GPU determinism stays off (see ``_deterministic_ops``): reruns agree only approximately.
    """
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    strategy = strategy or tf.distribute.get_strategy()
    cache = cache or AudioCache()
    inputs, base = _checked_inputs(examples, config, cache)

    run = _RunFolder(Path(out_dir))
    resuming = run.latest_checkpoint() is not None
    former_epochs = run.claim(config)
    if former_epochs is not None:
        say(f"{run.root}: the run now trains {config.epochs} epochs instead of {former_epochs}")
    say(run.record_split(inputs.splits, resuming))
    with _deterministic_ops():
        state = _training_state(base, inputs.class_names, config, strategy)
        del base
        manager = _restored(state, run, resuming, say)
        training = _Training(config, run, inputs, state, strategy, cache, say)
        history = training.run_epochs(manager, verbose)
        if history and int(state.best_epoch) == 0:
            raise EatKerasError(f"no epoch gave a finite {config.monitor}: nothing was saved as {run.best}")
        test_report = training.test_best()
    return FinetuneResult(run.root, run.best, int(state.best_epoch), float(state.best), history, test_report)
