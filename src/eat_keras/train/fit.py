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
from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.frontend import FrontendConfig
from eat_keras.loading import load_tagger
from eat_keras.models import AudioTagger, build_tagger
from eat_keras.models.heads import MLPHead
from eat_keras.models.saving import save_tagger
from eat_keras.train import augment
from eat_keras.train.config import MONITORS, FinetuneConfig, absolute_paths
from eat_keras.train.data import (
    SIDES,
    Example,
    class_counts,
    groups_from_names,
    read_unlabelled_folder,
    split_examples,
    split_report,
)
from eat_keras.train.evaluate import NonFiniteLogitsError, dataset_logits, report_of, true_ids
from eat_keras.train.losses import CombinedLoss, cross_entropy
from eat_keras.train.metrics import ClassificationReport
from eat_keras.train.prepare import PreparedData, PrepareSettings, prepared_for_run, read_prepared
from eat_keras.train.shards import prepared_dataset, worker_entries
from eat_keras.train.teacher import OnlineTeacher, PrecomputedTeacher, read_teacher_logits

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


def learning_rate_factor(progress: float, config: FinetuneConfig) -> float:
    """The learning-rate factor at ``progress`` (steps done / the run's steps, 0 to 1): upstream's
    shape (an exponential warm-up, then a linear decay to ``last_lr_factor``) stretched over the
    whole run, so that a run of any length or data size warms up and decays in full."""
    warm = config.warmup_fraction
    if progress < warm:
        phase = 1.0 - progress / warm
        return math.exp(-5.0 * phase * phase)
    if warm >= 1.0:
        return 1.0
    down = min(max((progress - warm) / (1.0 - warm), 0.0), 1.0)
    return 1.0 - (1.0 - config.last_lr_factor) * down


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
    _keep_hidden_layer(base.net.head, tagger.net.head)
    if config.freeze_batchnorm:
        for layer in tagger.net.submodules:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.trainable = False  # Keras runs a non-trainable BN in inference mode
    return tagger


def _keep_hidden_layer(pretrained: tf_keras.layers.Layer, fresh: tf_keras.layers.Layer) -> None:
    """As upstream's fine-tuning, replace only the head's last layer (``classifier.5``): the MLP
    head's hidden layer (``classifier.2``) keeps its pretrained weights. A head started whole from
    random weights learns slowly: after a short run its scores stay near uniform."""
    if isinstance(pretrained, MLPHead) and isinstance(fresh, MLPHead) and pretrained.hidden_units == fresh.hidden_units:
        fresh.hidden.set_weights(pretrained.hidden.get_weights())


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
        self.prepared = out_dir / "prepared"  # the files given as a list, prepared for the run
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

    def make(self) -> None:
        """Make the folder (nothing in it yet): a file in its way or a read-only parent fails here."""
        if self.root.exists() and not self.root.is_dir():
            raise EatKerasError(f"{self.root}: a file is in the way of the run folder; use another --out")
        with _writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)

    def claim(self, config: FinetuneConfig) -> int | None:
        """Record the configuration; once the folder holds training, check it against the run's.
        Returns the run's former number of epochs when ``config`` extends (or shortens) it.

        Before the first epoch finishes the folder holds no training, so a start that failed (or was
        stopped) then may be retried with other settings: the new configuration replaces the old.
        Afterwards only ``epochs`` may change (see :meth:`check_new_length`).
        """
        self.make()
        wanted, former_epochs = config.to_dict(), None
        if self.holds_training() and self.config.exists():
            try:
                earlier = json.loads(self.config.read_text())
            except (OSError, ValueError) as exc:
                raise EatKerasError(f"{self.config}: cannot read the run's configuration ({exc}); use a new --out folder") from exc
            if isinstance(earlier, dict):  # a run recorded with relative paths names them from its start folder
                earlier = absolute_paths(earlier)
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
            for part in (0.0, 0.5, 1.0):  # the schedule is smooth: a change shows at these points
                old = learning_rate_factor((epoch + part) / former_epochs, before)
                new = learning_rate_factor((epoch + part) / config.epochs, config)
                if not math.isclose(old, new, rel_tol=1e-9):
                    raise EatKerasError(
                        f"{root} cannot go on to {config.epochs} epochs: its learning-rate schedule stretches over "
                        f"the run (epoch {epoch + 1} trained at {old * config.learning_rate:g}, would be "
                        f"{new * config.learning_rate:g}); train {config.epochs} epochs in a new --out folder, or "
                        f"continue from this run's best model with --model {self.best} --out NEW_FOLDER"
                    )

    def record_split(self, splits: dict[str, list[Example]], resuming: bool) -> str:
        """Write ``split.csv`` and the report; when resuming, first check that the data give the
        stored split: other data would move files between sides (a former training file into
        validation) and change the class weights halfway through a run."""
        rows = _split_rows(splits)
        if resuming and self.split.exists():
            with self.split.open(newline="") as f:
                _refuse_another_split(self.split, list(csv.reader(f))[1:], rows)  # without the header
        report = split_report(splits)
        with _writing(self.root):
            (self.root / "split_report.txt").write_text(report + "\n")
            with self.split.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(_SPLIT_HEADER)
                writer.writerows(rows)
        return report

    def check_split_before_preparing(self, splits: dict[str, list[Example]]) -> None:
        """Refuse files that split differently from the run's before they are decoded: preparing
        them would rewrite the run's prepared folder (hours for a large data set) only for
        :meth:`record_split` to refuse them. The stored split is the run's ``prepared.json``, whose
        entries (skipped files included) keep each side's order."""
        if self.latest_checkpoint() is None:
            return
        try:
            manifest = read_prepared(self.prepared).manifest
        except EatKerasError:
            return  # not prepared yet (or interrupted): record_split checks after preparing
        entries = sorted([*manifest["examples"], *manifest["skipped"]], key=lambda e: (SIDES.index(e["split"]), e["id"]))
        stored = [[e["path"], e["label"] or "", e["group"] or "", e["split"]] for e in entries]
        _refuse_another_split(self.prepared / "prepared.json", stored, _split_rows(splits))

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
    return [[e.path, e.label or "", e.group or "", side] for side, examples in splits.items() for e in examples]


def _refuse_another_split(where: Path, stored: list[list[str]], rows: list[list[str]]) -> None:
    if stored != rows:
        raise EatKerasError(
            f"{where}: the data given now split differently from the run's ({_split_differences(stored, rows)}); "
            "resume with the same data, or use a new --out folder"
        )


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
    """A run's checked inputs: the prepared data and their split, the class names, the loss, the
    clip length and the teacher."""

    prepared: PreparedData
    splits: dict[str, list[Example]]
    class_names: list[str]
    loss: CombinedLoss
    clip_samples: int
    teacher: OnlineTeacher | PrecomputedTeacher | None = None
    has_unlabelled: bool = False  # training files without a label: they train through kd alone


def _checked_inputs(
    prepared: PreparedData, config: FinetuneConfig, base: AudioTagger
) -> tuple[_RunInputs, FinetuneConfig]:
    """Check the data and the split before the run folder is claimed, so that a start that fails
    on bad input leaves nothing that blocks the corrected retry; also returns the configuration
    with its clip length fixed (the data's by default)."""
    splits = {side: prepared.examples(side) for side in SIDES}
    class_names = prepared.class_names
    counts = class_counts(splits["train"], class_names)
    if (counts == 0).any():
        missing = [n for n, c in zip(class_names, counts) if c == 0]
        raise EatKerasError(f"no training files for class(es) {missing}")
    if not splits["val"]:
        raise EatKerasError("the validation side is empty: set --val-fraction or --val-folds")
    config = config.with_clip_seconds([e["num_samples"] for e in prepared.entries("train")], prepared.sample_rate)
    loss = CombinedLoss(
        terms=config.loss_terms, form=config.loss_form, settings=config.loss_settings, class_counts=counts
    )
    if base.config.frontend.sample_rate != prepared.sample_rate:
        raise EatKerasError(
            f"{prepared.folder} holds audio at {prepared.sample_rate} Hz, the model takes {base.config.frontend.sample_rate} Hz"
        )
    clip_samples = seconds_to_samples(config.clip_seconds, base.config.frontend.sample_rate)
    unlabelled = _unlabelled_count(splits["train"], config)
    teacher = _teacher(config, prepared, class_names)
    return _RunInputs(prepared, splits, class_names, loss, clip_samples, teacher, unlabelled > 0), config


def _unlabelled_count(examples: Sequence[Example], config: FinetuneConfig) -> int:
    """The files without a label; refused without a teacher, as they would train nothing."""
    unlabelled = sum(e.label is None for e in examples)
    if unlabelled and not config.has_teacher:
        raise EatKerasError(
            f"{unlabelled} training file(s) have no label: they train only through distillation (--teacher or "
            "--teacher-logits); label them or leave them out"
        )
    return unlabelled


def _teacher(config: FinetuneConfig, prepared: PreparedData, class_names: list[str]) -> OnlineTeacher | PrecomputedTeacher | None:
    if config.teachers:
        return OnlineTeacher(config.teachers, class_names)
    if config.teacher_logits:
        return PrecomputedTeacher(read_teacher_logits(config.teacher_logits), prepared, class_names, prepared.sample_rate)
    return None


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
        rng = tf.random.Generator.from_seed(config.seed)
    # the counters are read and set in Python between steps: plain variables, not mirrored ones
    # (int() of a MirroredVariable raises)
    counters = dict(
        epoch=tf.Variable(0, dtype=tf.int64, trainable=False),
        best=tf.Variable(np.nan, dtype=tf.float64, trainable=False),
        best_loss=tf.Variable(np.inf, dtype=tf.float64, trainable=False),
        best_epoch=tf.Variable(0, dtype=tf.int64, trainable=False),
        bad_epochs=tf.Variable(0, dtype=tf.int64, trainable=False),
    )
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
    state: _TrainingState, inputs: _RunInputs, config: FinetuneConfig, strategy: tf.distribute.Strategy
) -> Callable[[dict[str, tf.Tensor], bool], dict[str, tf.Tensor]]:
    """One distributed training step: waveform augmentations, front-end, mixup, the teacher's
    targets, loss, and one update per trained depth level; returns the loss and its terms averaged
    over the replicas."""
    tagger, groups, optimizers, rng = state.tagger, state.groups, state.optimizers, state.rng
    replicas, loss_fn = strategy.num_replicas_in_sync, inputs.loss

    def step_fn(batch: dict[str, tf.Tensor], train_backbone: bool) -> dict[str, tf.Tensor]:
        waveform, target = batch["waveform"], batch["target"]
        if config.gain_db:
            waveform = augment.random_gain(waveform, config.gain_db, rng)
        if config.roll_samples:
            waveform = augment.time_roll(waveform, config.roll_samples, rng)
        active = groups if train_backbone else groups[-1:]
        variables = [v for g in active for v in g]
        mel = augment.training_log_mel(tagger.frontend.config, waveform, rng)  # no weights: outside the tape
        mix = None
        if config.mixup_alpha > 0:
            mixed = augment.mixup(mel, target, config.mixup_alpha, rng)
            mel, target = mixed.x, mixed.targets
            mix = lambda x: augment.mix_as(x, mixed)  # noqa: E731
        extra = _distillation_inputs(inputs, config, batch, waveform, mix)
        if "label_weight" in extra:
            target = tf.math.divide_no_nan(target, extra["label_weight"][:, tf.newaxis])
        with tf.GradientTape() as tape:
            out = tagger.net(mel, training=True)
            total, terms = loss_fn(target, out["logits"], out["embedding"], **extra)
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


def _distillation_inputs(
    inputs: _RunInputs, config: FinetuneConfig, batch: dict[str, tf.Tensor], waveform: tf.Tensor, mix: Any
) -> dict[str, tf.Tensor]:
    """The loss inputs of distillation: ``teacher_probs`` (the teacher's softened scores for the
    augmented, mixed rows) and, where the data hold unlabelled files, ``label_weight`` (each row's
    labelled share after mixup: the label terms weigh rows by it)."""
    extra: dict[str, tf.Tensor] = {}
    if inputs.teacher is not None:
        temperature = config.loss_settings["kd_temperature"]
        extra["teacher_probs"] = inputs.teacher.targets(batch, waveform, mix, config.loss_form, temperature)
    if inputs.has_unlabelled:
        labelled = tf.cast(batch["label"] >= 0, tf.float32)
        extra["label_weight"] = mix(labelled) if mix is not None else labelled
    return extra


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
        say: Callable[[str], None],
    ) -> None:
        self.config, self.run, self.inputs, self.state = config, run, inputs, state
        self.strategy, self.say = strategy, say
        self.train_step = _train_step_function(state, inputs, config, strategy)
        predict_fn = tf.function(
            lambda w: state.tagger(w, training=False)["logits"],
            input_signature=[tf.TensorSpec([None, inputs.clip_samples], tf.float32)],
        )
        self.predict = lambda waveforms: predict_fn(tf.constant(waveforms)).numpy()
        self.steps_per_epoch = _steps_per_epoch(
            inputs.prepared, config.batch_size, _input_pipelines(strategy), strategy.num_replicas_in_sync
        )

    def run_epochs(self, manager: tf.train.CheckpointManager, verbose: bool) -> list[dict[str, Any]]:
        """Train from where the run stands to its last epoch or early stop; the whole run's log."""
        config, state = self.config, self.state
        history: list[dict[str, Any]] = self.run.log_rows(int(state.epoch))
        first_epoch = _first_epoch(state, config, self.say)
        with _writing(self.run.root):
            writer = tf.summary.create_file_writer(str(self.run.root / "tensorboard")) if config.tensorboard else None
        for epoch in range(first_epoch, config.epochs):
            started = time.time()
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch, verbose)}
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

    def _training_batches(self, epoch: int) -> Any:
        """The distributed training batches of ``epoch`` (0-based): each input pipeline (one per
        worker) reads its own shards; order and crops depend on the seed and the epoch alone, so a
        resumed run sees what an uninterrupted one would."""
        config, inputs = self.config, self.inputs
        steps = self.steps_per_epoch

        def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
            dataset = prepared_dataset(
                inputs.prepared, "train", mode="train", clip_samples=inputs.clip_samples,
                batch_size=context.get_per_replica_batch_size(config.batch_size), class_names=inputs.class_names,
                seed=config.seed, epoch=epoch, shard_index=context.input_pipeline_id,
                num_shards=context.num_input_pipelines, drop_remainder=steps.drop_remainder,
            )  # fmt: skip
            local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
            return dataset.take(steps.count * local_replicas)  # every worker takes as many steps

        return self.strategy.distribute_datasets_from_function(pipeline)

    def train_epoch(self, epoch: int, verbose: bool) -> dict[str, Any]:
        """One pass over the training data, the learning rates following the schedule step by
        step; the mean loss and terms. A non-finite loss stops the run before anything of the
        epoch is saved."""
        config, steps = self.config, self.steps_per_epoch.count
        train_backbone = epoch >= config.freeze_backbone_epochs
        progbar = tf_keras.utils.Progbar(steps, verbose=1 if verbose else 0, unit_name="batch")
        sums: dict[str, float] = {}
        first_lr = None
        for step, batch in enumerate(self._training_batches(epoch)):
            lr = self._set_learning_rates((epoch * steps + step + 0.5) / (config.epochs * steps))
            first_lr = first_lr if first_lr is not None else lr
            values = {k: float(v) for k, v in self.train_step(batch, train_backbone).items()}
            if not math.isfinite(values["loss"]):
                raise _diverged(self.run, epoch, f"the training loss became {values['loss']} at step {step + 1}", lr)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            progbar.update(step + 1, list(values.items()))
        means = {f"train_{k}": v / steps for k, v in sums.items()}
        return {"lr": first_lr, "backbone_trained": int(train_backbone), **means}

    def _set_learning_rates(self, progress: float) -> float:
        """Set each depth level's rate for a step at ``progress``; returns the head's."""
        config, optimizers = self.config, self.state.optimizers
        lr = config.learning_rate * learning_rate_factor(progress, config)
        depth = len(optimizers) - 1  # the head's level; each level below gets layer_decay once more
        for level, opt in enumerate(optimizers):
            factor = config.head_lr_factor if level == depth else config.layer_decay ** (depth - level - 1)
            opt.learning_rate.assign(lr * factor)
        return lr

    def _side_logits(self, predict: Callable[[np.ndarray], np.ndarray], side: str) -> np.ndarray:
        """Per-file logits of a side of the prepared data, each file's windows averaged."""
        inputs = self.inputs
        dataset = prepared_dataset(
            inputs.prepared, side, mode="eval", clip_samples=inputs.clip_samples, batch_size=self.config.batch_size,
            class_names=inputs.class_names,
        )  # fmt: skip
        return dataset_logits(predict, dataset, inputs.splits[side])

    def validate(self, epoch: int, lr: float) -> dict[str, float]:
        """Validation loss, accuracy and macro-F1 on whole files; non-finite logits stop the run
        before anything of the epoch is saved."""
        inputs = self.inputs
        try:
            logits = self._side_logits(self.predict, "val")
        except NonFiniteLogitsError:
            raise _diverged(self.run, epoch, "the model's validation logits became non-finite", lr) from None
        report = report_of(logits, inputs.splits["val"], inputs.class_names)
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
        logits = self._side_logits(lambda w: best_fn(tf.constant(w))["logits"].numpy(), "test")
        report = report_of(logits, self.inputs.splits["test"], self.inputs.class_names)
        self.say("test (best checkpoint):\n" + report.summary())
        return report


@dataclasses.dataclass(frozen=True)
class _Steps:
    count: int  # steps per epoch, the same on every worker
    drop_remainder: bool


def _input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """Input pipelines of a strategy: one per worker of a multi-worker cluster, else one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def _steps_per_epoch(prepared: PreparedData, batch_size: int, pipelines: int, replicas: int) -> _Steps:
    """Steps per epoch. One device keeps a last partial batch unless the data hold two full ones
    (a batch of one or two would upset BatchNorm and SupCon); several take full batches only, the
    smallest pipeline's count, as every replica of every worker must take every step."""
    if replicas == 1:
        files = len(prepared.entries("train"))
        drop = files >= 2 * batch_size
        return _Steps(files // batch_size if drop else -(-files // batch_size), drop)
    per_pipeline = batch_size // pipelines
    counts = [len(worker_entries(prepared, "train", i, pipelines)[1]) // per_pipeline for i in range(pipelines)]
    if min(counts) < 1:
        raise EatKerasError(
            f"{prepared.folder}: a worker's share of the training files is smaller than its batch ({per_pipeline})"
        )
    return _Steps(min(counts), True)


def finetune(
    data: Sequence[Example] | PreparedData | str | Path,
    out_dir: str | Path,
    config: FinetuneConfig,
    strategy: tf.distribute.Strategy | None = None,
    verbose: bool = True,
    *,
    processes: int = 2,
    on_error: str = "fail",
) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``data``; resumes when ``out_dir`` holds the same run.

    ``data`` is a prepared folder (``eat-keras prepare``; its split is the run's) or a list of
    files, which are first prepared into ``out_dir/prepared`` (``processes`` decoding processes; a
    bad file fails or, ``on_error="skip"``, is left out). Training streams the shards: memory does
    not grow with the number of files. Under a multi-worker strategy each worker reads its own
    shards, and a worker other than the chief writes its copy of the run into
    ``out_dir/workers/<task>-<index>``.

    One command, data and seed give one ``log.csv`` and one set of weights on one CPU machine, and
    a resumed run ends as the uninterrupted one would: the call seeds the global RNGs and runs with
    TensorFlow's op determinism on (both process-wide; determinism is switched back off after). On
    a GPU determinism stays off (see ``_deterministic_ops``): reruns agree only approximately.
    """
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    strategy = strategy or tf.distribute.get_strategy()
    config.validate()
    _check_batch_splits(config, strategy)
    base = load_tagger(config.model, config.weights, with_class_names=False)  # a wrong --model fails before decoding
    run = _RunFolder(_worker_folder(Path(out_dir), strategy))
    if config.unlabelled and isinstance(data, (PreparedData, str, Path)):
        raise ConfigError(
            "--unlabelled adds files before they are prepared: give DATA as files, or list the unlabelled files in the "
            "manifest you prepare (rows without a label)"
        )
    if not isinstance(data, (PreparedData, str, Path)):
        data = groups_from_names(list(data), config.group_pattern)
        if config.unlabelled:
            data += read_unlabelled_folder(config.unlabelled)
        _unlabelled_count(data, config)
        settings = PrepareSettings.split_of(config)  # data that cannot be split fail before the folder is made
        splits = split_examples(
            data, settings.val_fraction, settings.test_fraction, settings.seed, settings.test_folds, settings.val_folds
        )
        run.check_split_before_preparing(splits)
        run.make()  # the files are prepared into it
    prepared = prepared_for_run(data, config, run.prepared, processes=processes, on_error=on_error, log=say)
    inputs, config = _checked_inputs(prepared, config, base)

    resuming = run.latest_checkpoint() is not None
    former_epochs = run.claim(config)
    if former_epochs is not None:
        say(f"{run.root}: the run now trains {config.epochs} epochs instead of {former_epochs}")
    say(run.record_split(inputs.splits, resuming))
    say(f"training on {config.clip_seconds:g} s clips, {config.epochs} epochs of {config.batch_size}-clip batches")
    with _deterministic_ops():
        state = _training_state(base, inputs.class_names, config, strategy)
        del base
        manager = _restored(state, run, resuming, say)
        _check_workers_resume_together(state, strategy)
        training = _Training(config, run, inputs, state, strategy, say)
        history = training.run_epochs(manager, verbose)
        if history and int(state.best_epoch) == 0:
            raise EatKerasError(f"no epoch gave a finite {config.monitor}: nothing was saved as {run.best}")
        test_report = training.test_best()
    return FinetuneResult(run.root, run.best, int(state.best_epoch), float(state.best), history, test_report)


def _check_batch_splits(config: FinetuneConfig, strategy: tf.distribute.Strategy) -> None:
    """Refuse a global batch the strategy's replicas cannot share equally (before the folder is written)."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"--batch-size {config.batch_size} does not split evenly over the {replicas} replicas of the strategy: "
            f"use a multiple of {replicas}"
        )


def _cluster_resolver(strategy: tf.distribute.Strategy) -> Any:
    """The strategy's cluster when it spans several processes (``TF_CONFIG``), else ``None``."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver if resolver is not None and resolver.cluster_spec().as_dict() else None


def _check_workers_resume_together(state: _TrainingState, strategy: tf.distribute.Strategy) -> None:
    """Refuse a start whose workers restored different epochs. Each worker resumes from its own copy
    of the run; one whose copy was lost would start afresh beside the others, and the strategy's
    updates, which assume every replica holds the same weights, would train two models at once."""
    if _cluster_resolver(strategy) is None:
        return
    done = float(int(state.epoch))
    epochs = strategy.gather(strategy.run(lambda: tf.constant([done])), axis=0).numpy()
    if len(set(epochs.tolist())) > 1:
        found = ", ".join(f"{e:.0f}" for e in sorted(set(epochs.tolist())))
        raise EatKerasError(
            f"the workers resume from different epochs ({found} done): each resumes from its own copy of the run (the "
            "chief's --out, the others' OUT/workers/<task>-<index>); put the lost copies back, or use a new --out folder"
        )


def _worker_folder(out_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """The run folder this process writes: ``out_dir``, or for a multi-worker cluster's worker other
    than the chief its own folder inside it (every worker saves, as saving reads synchronised
    variables; only the chief's copy is the run's)."""
    resolver = _cluster_resolver(strategy)
    if resolver is None:
        return out_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs)
    return out_dir if chief else out_dir / "workers" / f"{task_type}-{task_id}"
