"""Teachers for knowledge distillation: models run beside the student, or their logits read from a file.

A run with a teacher adds the ``kd`` loss term (:func:`~eat_keras.train.losses.distillation_loss`),
whose targets are the teacher's softened scores for each training row:

* **online** (:class:`OnlineTeacher`, ``--teacher``): one or more models (an ensemble averages
  their logits) run on exactly the student's augmented waveform (crop, gain, roll), each through
  its own inference front-end, and on the same mixup of the log-mels. Teacher and student may
  differ in family, width and training clip length; they must have the same classes.
* **precomputed** (:class:`PrecomputedTeacher`, ``--teacher-logits``): logits per file or per
  window, keyed by path (:func:`read_teacher_logits`); under mixup the softened scores are mixed
  as the labels are (upstream EfficientAT's AudioSet recipe). The forward pass of the teacher is
  paid once, not every epoch.

The teacher-logits file (``eat-keras teacher-logits``, :func:`write_teacher_logits`) is a NumPy
``.npz`` archive:

* ``logits``: float32 ``[windows, classes]``, the windows of every file one after another (file
  ``i``'s ``num_windows[i]`` rows follow those of the files before it): the table grows with the
  audio's length, not with the number of files times the longest file's windows;
* ``num_windows``: int32 ``[files]``;
* ``paths``: ``[files]`` the files' resolved paths; ``keys``: their paths relative to the data root;
* ``class_names``: ``[classes]``; ``window_seconds``, ``hop_seconds``: the windows (window ``k``
  starts at ``k · hop``);
* ``format``: ``"eat-keras-teacher-logits"``, ``version``: 2 (version 1 held ``[files, windows,
  classes]``, NaN past a file's last window; it is still read).

Another framework's logits come in the same archive, or in upstream's layout: a ``.npy`` array
``[files, classes]`` with a file list (a text file, one name per line) whose line ``i`` names row
``i``. A training file finds its row by resolved path, else by its path relative to the data
root, else by its file name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.labels import short_list
from eat_keras.train.losses import teacher_probabilities
from eat_keras.train.prepare import PreparedData

__all__ = [
    "FORMAT_NAME",
    "OnlineTeacher",
    "PrecomputedTeacher",
    "TeacherLogits",
    "read_teacher_logits",
    "window_logits",
    "write_teacher_logits",
]

FORMAT_NAME = "eat-keras-teacher-logits"
FORMAT_VERSION = 2
_MAX_LISTED = 3

#: Mixes a batch's rows as its mixup did (``λ x + (1 - λ) x[perm]``), or ``None`` without mixup.
Mix = Callable[[tf.Tensor], tf.Tensor] | None


# --- online teachers ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Member:
    """One teacher model: waveform → its log-mel ``[B, F, T, 1]``, log-mel → logits in the student's
    class order."""

    source: str
    log_mel: Callable[[tf.Tensor], tf.Tensor]
    logits: Callable[[tf.Tensor], tf.Tensor]
    class_names: list[str]


def _keras_member(source: str) -> _Member:
    from eat_keras.loading import load_tagger

    tagger = load_tagger(source)
    return _Member(
        source,
        lambda w: tagger.frontend(w, training=False),
        lambda mel: tagger.net(mel, training=False)["logits"],
        list(tagger.class_names or []),
    )


def _saved_model_member(source: str) -> _Member:
    module = tf.saved_model.load(source)
    log_mel, from_log_mel = module.signatures["log_mel"], module.signatures["from_log_mel"]
    return _Member(
        source,
        lambda w: log_mel(waveform=w)["log_mel"][..., tf.newaxis],
        lambda mel: from_log_mel(log_mel=mel[..., 0])["logits"],
        [n.decode() for n in module.class_names().numpy()],
    )


def _is_saved_model(source: str) -> bool:
    return (Path(source) / "saved_model.pb").is_file()


class OnlineTeacher:
    """The teachers named by ``sources`` (model folders, presets, weight files, SavedModels), run
    in inference mode on the student's training rows; several average their logits."""

    def __init__(self, sources: Sequence[str], class_names: Sequence[str]) -> None:
        self.sources = list(sources)
        self.members = [(_saved_model_member if _is_saved_model(s) else _keras_member)(s) for s in sources]
        self.orders = [tf.constant(_class_order(m.class_names, class_names, m.source)) for m in self.members]

    def logits(self, waveform: tf.Tensor, mix: Mix = None) -> tf.Tensor:
        """The ensemble's logits ``[B, C]`` for augmented waveforms, their log-mels mixed by ``mix``."""
        outputs = []
        for member, order in zip(self.members, self.orders):
            log_mel = member.log_mel(waveform)
            if mix is not None:
                log_mel = mix(log_mel)
            outputs.append(tf.gather(member.logits(log_mel), order, axis=-1))
        return tf.add_n(outputs) / float(len(outputs))

    def targets(self, batch: Mapping[str, tf.Tensor], waveform: tf.Tensor, mix: Mix, form: str, temperature: float) -> tf.Tensor:
        """The ``teacher_probs`` of a training batch."""
        return teacher_probabilities(self.logits(waveform, mix), form, temperature)


def _class_order(teacher_classes: Sequence[str], student_classes: Sequence[str], source: str) -> np.ndarray:
    """The teacher's column of each student class; the two must have the same classes."""
    if sorted(teacher_classes) != sorted(student_classes):
        raise EatKerasError(
            f"{source}: the teacher's {len(teacher_classes)} classes ({short_list(list(teacher_classes))}) are not "
            f"the data's {len(student_classes)} ({short_list(list(student_classes))}); a teacher is fine-tuned on "
            "the same classes"
        )
    column = {name: i for i, name in enumerate(teacher_classes)}
    return np.array([column[name] for name in student_classes], dtype=np.int32)


# --- precomputed logits ------------------------------------------------------------------------


@dataclasses.dataclass
class TeacherLogits:
    """Logits read from a file: ``logits`` ``[windows, classes]``, the windows of each file in turn
    (``num_windows`` per file, see :meth:`file_logits`); one file per path and key."""

    logits: np.ndarray
    num_windows: np.ndarray
    paths: list[str]
    keys: list[str]
    class_names: list[str] | None  # None: upstream's bare array, in the data's class order
    hop_seconds: float | None  # None: one row per file, for any crop of it
    source: str
    first_window: np.ndarray = dataclasses.field(init=False, repr=False)  # each file's first row in ``logits``

    def __post_init__(self) -> None:
        if self.logits.ndim != 2 or len(self.num_windows) != len(self.paths) or len(self.logits) != self.num_windows.sum():
            raise EatKerasError(
                f"{self.source}: expected logits [windows, classes] holding the num_windows of each of the "
                f"{len(self.paths)} files; got logits {list(self.logits.shape)} and {len(self.num_windows)} window counts "
                f"adding up to {int(self.num_windows.sum())}"
            )
        self.first_window = _first_windows(self.num_windows)

    def file_logits(self, file: int) -> np.ndarray:
        """``[windows, classes]``: the logits of file number ``file``, window by window."""
        return self.logits[self.first_window[file] : self.first_window[file] + self.num_windows[file]]

    def rows_for(self, entries: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Each prepared entry's row; refuses entries with no row, naming a few."""
        lookups = [_index(self.paths, os.path.realpath), _index(self.keys, str), _index(self.paths, os.path.basename)]
        rows, missing = [], []
        for e in entries:
            found = next((lookup[k] for lookup, k in zip(lookups, _entry_names(e)) if k in lookup), None)
            if found is None:
                missing.append(e["path"])
            rows.append(found if found is not None else -1)
        if missing:
            listed = ", ".join(missing[:_MAX_LISTED]) + (f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else "")
            raise EatKerasError(f"{self.source}: no teacher logits for {len(missing)} training file(s): {listed}")
        return np.array(rows, dtype=np.int64)


def _first_windows(num_windows: np.ndarray) -> np.ndarray:
    """Where each file's windows start in a table of every file's windows in turn."""
    return np.concatenate([[0], np.cumsum(num_windows)[:-1]]).astype(np.int64)


def _entry_names(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return os.path.realpath(entry["path"]), str(entry["key"]), os.path.basename(entry["path"])


def _index(names: Sequence[str], normal: Callable[[str], str]) -> dict[str, int]:
    """Name → row, leaving out names that occur twice (a file name alone may not be unique)."""
    seen: dict[str, int] = {}
    twice = set()
    for i, name in enumerate(names):
        key = normal(name) if name else ""
        if key in seen:
            twice.add(key)
        seen[key] = i
    return {k: v for k, v in seen.items() if k and k not in twice}


class PrecomputedTeacher:
    """Precomputed logits aligned with the prepared training files, looked up per row: the file's
    windows, and among them the one nearest the crop's start."""

    def __init__(self, teacher_logits: TeacherLogits, prepared: PreparedData, class_names: Sequence[str], sample_rate: int) -> None:
        rows = teacher_logits.rows_for(prepared.entries("train"))
        counts = teacher_logits.num_windows[rows].astype(np.int64)
        first = _first_windows(counts)  # the training files' windows, file after file in the prepared order
        logits = teacher_logits.logits[np.repeat(teacher_logits.first_window[rows] - first, counts) + np.arange(counts.sum())]
        if teacher_logits.class_names is not None:
            logits = logits[..., _class_order(teacher_logits.class_names, class_names, teacher_logits.source)]
        elif logits.shape[-1] != len(class_names):
            raise EatKerasError(
                f"{teacher_logits.source}: {logits.shape[-1]} logits per file, the data have {len(class_names)} classes"
            )
        if not np.isfinite(logits).all():
            raise EatKerasError(f"{teacher_logits.source}: the teacher logits of some training files are not finite")
        self.table = tf.constant(logits.astype(np.float32))
        self.first_window = tf.constant(first)
        self.num_windows = tf.constant(counts)
        hop = teacher_logits.hop_seconds
        self.hop_samples = float(round(hop * sample_rate)) if hop else 0.0

    def logits(self, index: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        """``[B, C]``: the logits of the files at ``index`` for crops beginning at ``start``."""
        index = tf.cast(index, tf.int64)
        if self.hop_samples:
            nearest = tf.cast(tf.round(tf.cast(start, tf.float64) / self.hop_samples), tf.int64)
            window = tf.clip_by_value(nearest, 0, tf.gather(self.num_windows, index) - 1)
        else:
            window = tf.zeros_like(index)
        return tf.gather(self.table, tf.gather(self.first_window, index) + window)

    def targets(self, batch: Mapping[str, tf.Tensor], waveform: tf.Tensor, mix: Mix, form: str, temperature: float) -> tf.Tensor:
        """The ``teacher_probs`` of a training batch: softened, then mixed as the labels are."""
        probs = teacher_probabilities(self.logits(batch["index"], batch["start"]), form, temperature)
        return mix(probs) if mix is not None else probs


# --- the file ----------------------------------------------------------------------------------


def read_teacher_logits(files: Sequence[str]) -> TeacherLogits:
    """``[FILE.npz]`` (eat-keras' format) or ``[ARRAY.npy, FILE_LIST]`` (upstream's layout)."""
    if len(files) == 1 and str(files[0]).endswith(".npz"):
        return _read_archive(Path(files[0]))
    if len(files) == 2 and str(files[0]).endswith(".npy"):
        return _read_upstream(Path(files[0]), Path(files[1]))
    raise ConfigError(
        f"--teacher-logits takes FILE.npz (eat-keras teacher-logits) or ARRAY.npy FILE_LIST, got {' '.join(map(str, files))}"
    )


def _load(path: Path, what: str) -> Any:
    try:
        return np.load(path, allow_pickle=False)  # never runs code from the file
    except (OSError, ValueError, EOFError) as exc:
        raise EatKerasError(f"{path}: cannot read {what} ({exc})") from exc


def _read_archive(path: Path) -> TeacherLogits:
    archive = _load(path, "the teacher logits")
    try:
        version = int(archive["version"])
        if str(archive["format"]) != FORMAT_NAME or version > FORMAT_VERSION:
            raise EatKerasError(f"{path}: not a teacher-logits file of version <= {FORMAT_VERSION}")
        logits = np.asarray(archive["logits"], np.float32)
        num_windows = np.asarray(archive["num_windows"], np.int64)
        if version == 1 and logits.ndim == 3 and len(logits) == len(num_windows):  # NaN past each file's windows
            logits = logits[np.arange(logits.shape[1]) < num_windows[:, np.newaxis]]
        return TeacherLogits(
            logits, num_windows, [str(p) for p in archive["paths"]], [str(k) for k in archive["keys"]],
            [str(c) for c in archive["class_names"]], float(archive["hop_seconds"]), str(path),
        )  # fmt: skip
    except KeyError as exc:
        raise EatKerasError(f"{path}: the teacher-logits file lacks {exc}") from exc


def _read_upstream(array_path: Path, list_path: Path) -> TeacherLogits:
    logits = np.asarray(_load(array_path, "the teacher logits"), np.float32)
    try:
        names = [line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EatKerasError(f"{list_path}: cannot read the file list ({exc})") from exc
    if logits.ndim != 2 or len(names) != logits.shape[0]:
        raise EatKerasError(
            f"{array_path}: expected logits [files, classes] with one row per line of {list_path}; got "
            f"{list(logits.shape)} and {len(names)} names"
        )
    return TeacherLogits(logits, np.ones(len(names), np.int64), names, names, None, None, str(array_path))


def window_logits(predict: Callable[[np.ndarray], np.ndarray], dataset: tf.data.Dataset, num_files: int) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [windows, classes], num_windows [files])`` of an evaluation data set (consecutive
    windows of each file, in order, its ``index`` counting the files): each file's windows in turn."""
    rows: dict[int, list[np.ndarray]] = {}
    for batch in dataset:
        logits = np.asarray(predict(batch["waveform"].numpy()), np.float32)
        for i, row in zip(batch["index"].numpy(), logits):
            rows.setdefault(int(i), []).append(row)
    if len(rows) != num_files:
        raise EatKerasError(f"teacher logits for {len(rows)} of {num_files} files")
    counts = np.array([len(rows[i]) for i in range(num_files)], np.int64)
    return np.stack([row for i in range(num_files) for row in rows[i]]), counts


def write_teacher_logits(
    path: str | os.PathLike[str],
    logits: np.ndarray,
    num_windows: np.ndarray,
    paths: Sequence[str],
    keys: Sequence[str],
    class_names: Sequence[str],
    window_seconds: float,
    teachers: Sequence[str],
) -> None:
    """Write the archive, first under a temporary name: an interrupted write leaves no file."""
    final = Path(path)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(
            temporary, logits=logits.astype(np.float32), num_windows=num_windows.astype(np.int32),
            paths=np.array(list(paths), dtype=str), keys=np.array(list(keys), dtype=str),
            class_names=np.array(list(class_names), dtype=str), window_seconds=np.float64(window_seconds),
            hop_seconds=np.float64(window_seconds), teachers=np.array(list(teachers), dtype=str),
            format=np.array(FORMAT_NAME), version=np.int32(FORMAT_VERSION),
        )  # fmt: skip
        os.replace(temporary, final)
    except OSError as exc:
        raise EatKerasError(f"{final}: cannot write ({exc.strerror or exc})") from exc
    finally:
        temporary.unlink(missing_ok=True)


# --- eat-keras teacher-logits ----------------------------------------------------------------


@dataclasses.dataclass
class _Files:
    """The files to score: their examples, keys, lengths in samples, and their evaluation data set maker."""

    paths: list[str]
    keys: list[str]
    num_samples: list[int]
    dataset: Callable[[int, int, Sequence[str]], tf.data.Dataset]  # (clip samples, batch size, classes)


def _prepared_files(folder: Path) -> _Files:
    """The training side of a prepared folder (what ``finetune --teacher-logits`` looks up)."""
    from eat_keras.train.prepare import read_prepared
    from eat_keras.train.shards import prepared_dataset

    prepared = read_prepared(folder)
    entries = prepared.entries("train")
    return _Files(
        [e["path"] for e in entries], [e["key"] for e in entries], [e["num_samples"] for e in entries],
        lambda clip, batch, names: prepared_dataset(
            prepared, "train", mode="eval", clip_samples=clip, batch_size=batch, class_names=names
        ),
    )  # fmt: skip


def _audio_files(data: str, unlabelled: str | None) -> _Files:
    """Every file of a data set (and of an unlabelled folder), decoded one at a time."""
    from eat_keras.audio import SAMPLE_RATE, audio_info
    from eat_keras.train.data import data_root, example_key, make_dataset, read_dataset, read_unlabelled_folder

    examples = read_dataset(data) + (read_unlabelled_folder(unlabelled) if unlabelled else [])
    root = data_root(examples)
    lengths = [int(audio_info(e.path).seconds * SAMPLE_RATE) for e in examples]
    return _Files(
        [e.path for e in examples], [example_key(e, root) for e in examples], lengths,
        lambda clip, batch, names: make_dataset(examples, names, mode="eval", clip_samples=clip, batch_size=batch),
    )  # fmt: skip


def compute_teacher_logits(
    sources: Sequence[str],
    data: str,
    out: str,
    clip_seconds: float | None = None,
    batch_size: int = 16,
    unlabelled: str | None = None,
) -> tuple[int, float]:
    """Score every training file of ``data`` (a prepared folder's training side, or a data set's
    files) with the teachers, in consecutive windows of ``clip_seconds`` (default: the clip length
    ``finetune`` would choose), and write the archive to ``out``. Returns (files, window seconds)."""
    from eat_keras.audio import SAMPLE_RATE, seconds_to_samples
    from eat_keras.runners import load_runner
    from eat_keras.train.config import data_clip_seconds
    from eat_keras.train.prepare import MANIFEST_NAME

    runners = [load_runner(s) for s in sources]
    fixed = [s for s, r in zip(sources, runners) if r.window_samples is not None]
    if fixed:
        raise ConfigError(f"{fixed[0]}: a teacher takes any clip length: give a model folder, preset, weight file or SavedModel")
    class_names = list(runners[0].class_names)
    orders = [_class_order(r.class_names, class_names, s) for s, r in zip(sources, runners)]
    prepared = (Path(data) / MANIFEST_NAME).is_file()
    if prepared and unlabelled:
        raise ConfigError("--unlabelled adds files to a data set; a prepared folder's training side holds its own")
    files = _prepared_files(Path(data)) if prepared else _audio_files(data, unlabelled)
    seconds = clip_seconds or data_clip_seconds(files.num_samples, SAMPLE_RATE)

    def predict(waveforms: np.ndarray) -> np.ndarray:
        return np.mean([r.logits(waveforms)[:, order] for r, order in zip(runners, orders)], axis=0)

    dataset = files.dataset(seconds_to_samples(seconds, SAMPLE_RATE), batch_size, class_names)
    logits, counts = window_logits(predict, dataset, len(files.paths))
    write_teacher_logits(out, logits, counts, files.paths, files.keys, class_names, seconds, sources)
    return len(files.paths), seconds
