"""A prepared data set: every file decoded and resampled once, into TFRecord shards.

``eat-keras prepare DATA --out DIR`` writes, per side of the split (train/val/test), shards named
``{side}-{shard:05d}-of-{count:05d}.tfrecord``, each with a ``.json`` sidecar that says which files it
holds and from which inputs it was made, and last ``prepared.json``, the manifest a reader starts from.

Why it is shaped as it is:

* **Pure pieces, one local runner.** What a record holds (:func:`encode_file`,
  :func:`serialize_record`), which shard a file goes to (:func:`shard_of`) and in which order a shard
  holds its files (:func:`plan_shards`) are plain functions of the file list and the settings, so
  another writer (a Beam pipeline, say) can write the same shards. :func:`prepare` runs them in a
  pool of worker processes, which import no TensorFlow; only the parent writes TFRecord files.
* **16-bit PCM with a power-of-two scale.** A record holds the 32 kHz waveform as int16 times a
  per-file scale ``2**k``, the smallest that fits the file's peak: every sample is within
  ``peak / 32767`` of the decoded float, a 16-bit file at 32 kHz is stored bit-exactly, and a float
  file louder or quieter than full scale keeps its level (half the size of float32).
* **Nothing half-written, nothing done twice.** A shard is written under a temporary name and moved
  into place (:func:`os.replace`) when complete; its sidecar, written next, records a digest of its
  inputs (paths, sizes, modification times, labels, settings). A re-run keeps every shard whose
  sidecar matches and removes temporary files an interrupted run left. ``prepared.json`` is removed
  first and written last, so it exists only when every shard does.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

import numpy as np

from eat_keras.audio import SAMPLE_RATE, load_audio
from eat_keras.progress import ProgressLine
from eat_keras.errors import AudioError, ConfigError, EatKerasError
from eat_keras.hub import sha256_of
from eat_keras.train.data import (
    SIDES,
    Example,
    check_no_leakage,
    class_names_of,
    data_root,
    example_key,
    groups_from_names,
    split_examples,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ON_ERROR",
    "EncodedFile",
    "FileTask",
    "PrepareSettings",
    "PreparePlan",
    "PreparedData",
    "ShardPlan",
    "data_root",  # defined in eat_keras.train.data (the split keys files the same way)
    "dequantize",
    "encode_file",
    "finished_shards",
    "num_shards_for",
    "plan_prepare",
    "plan_shards",
    "prepare",
    "prepared_for_run",
    "prepared_output",
    "quantize",
    "read_prepared",
    "serialize_record",
    "shard_name",
    "shard_of",
    "write_manifest",
    "write_shard",
]

FORMAT_NAME = "eat-keras-prepared"
#: Raised whenever the record layout or the manifest changes meaning.
FORMAT_VERSION = 1
MANIFEST_NAME = "prepared.json"
LOCK_NAME = ".prepare.lock"
SHARD_SUFFIX = ".tfrecord"
SIDECAR_SUFFIX = ".json"
ON_ERROR = ("fail", "skip")
#: The record label of an unlabelled file (training side only; it trains through distillation).
UNLABELLED_ID = -1

#: The record layout (a ``tf.train.Example``), as the manifest describes it.
RECORD_FEATURES = {
    "id": "int64: position of the file in its side's planned file list",
    "label": "int64: position of the label in class_names; -1 for an unlabelled file (distillation)",
    "key": "bytes: the file's path relative to the data root",
    "pcm": "bytes: mono int16 little-endian samples at sample_rate",
    "scale": "float: a power of two; waveform = pcm * scale",
}

_PCM_MAX = 32767
_FILES_PER_PROCESS = 32  # fewer files than this are decoded in the calling process
_PR_SET_PDEATHSIG = 1  # prctl option: a signal for this process when its parent ends
_MIN_SCALE_EXPONENT = -126  # the smallest normal float32: the scale must survive the record's float


# --- settings -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What a prepared folder depends on besides the files: the split and the sharding."""

    sample_rate: int = SAMPLE_RATE
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 0
    val_folds: tuple[str, ...] | None = None
    test_folds: tuple[str, ...] | None = None
    files_per_shard: int = 256
    min_shards: int = 4

    def __post_init__(self) -> None:
        for name in ("sample_rate", "files_per_shard", "min_shards"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("val_folds", "test_folds"):
            folds = getattr(self, name)
            if folds is not None:  # lists from the command line; a tuple keeps the settings hashable
                object.__setattr__(self, name, tuple(str(f) for f in folds))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def split_of(cls, config: Any) -> PrepareSettings:
        """The settings that split as a fine-tuning configuration (``FinetuneConfig``) asks."""
        return cls(
            val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
            val_folds=config.val_folds, test_folds=config.test_folds,
        )  # fmt: skip


# --- the record: pure functions shared by every writer ---------------------------------------


def quantize(waveform: np.ndarray) -> tuple[np.ndarray, float]:
    """``(pcm, scale)``: int16 samples and the smallest power-of-two ``scale`` that holds every
    sample in ``[-32768, 32767] * scale``, so that ``pcm * scale`` is within ``peak / 32767`` of each
    sample, and a 16-bit file's own values (``k / 32768``) come back exactly."""
    x = np.asarray(waveform, dtype=np.float32)
    # the scale each end of the int16 range needs; -32768 as well, as 16-bit files hold it
    need = max(float(x.max()) / _PCM_MAX, -float(x.min()) / (_PCM_MAX + 1)) if x.size else 0.0
    exponent = _MIN_SCALE_EXPONENT  # below it a file (peak under 4e-34) is stored as silence
    if need > 0.0:
        mantissa, e = math.frexp(need)  # exact: need = mantissa * 2**e with mantissa in [0.5, 1)
        exponent = max(e - 1 if mantissa == 0.5 else e, _MIN_SCALE_EXPONENT)
    scale = math.ldexp(1.0, exponent)
    # x / scale is exact in float32 (a power of two), so rounding is the only error
    pcm = np.clip(np.rint(x * np.float32(1.0 / scale)), -_PCM_MAX - 1, _PCM_MAX).astype("<i2")
    return pcm, scale


def dequantize(pcm: np.ndarray, scale: float) -> np.ndarray:
    """The float32 waveform of :func:`quantize`'s output (each product is exact)."""
    return np.asarray(pcm, dtype=np.float32) * np.float32(scale)


def serialize_record(id: int, label: int, key: str, pcm: np.ndarray, scale: float) -> bytes:
    """A serialized ``tf.train.Example`` with the features of :data:`RECORD_FEATURES`, encoded here
    (keys sorted) so that worker processes need no TensorFlow and the bytes are the same everywhere."""
    features = {
        "id": _int64_feature(id),
        "key": _bytes_feature(key.encode("utf-8")),
        "label": _int64_feature(label),
        "pcm": _bytes_feature(np.asarray(pcm, dtype="<i2").tobytes()),
        "scale": _float_feature(scale),
    }
    entries = b"".join(
        _field(1, _field(1, name.encode("utf-8")) + _field(2, feature)) for name, feature in sorted(features.items())
    )
    return _field(1, entries)  # Example.features (Features.feature is a map: one entry per field 1)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list { value }


def _float_feature(value: float) -> bytes:
    return _field(2, _field(1, struct.pack("<f", value)))  # Feature.float_list { packed value }


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(int(value))))  # Feature.int64_list { packed value }


@dataclasses.dataclass(frozen=True)
class FileTask:
    """One file to encode: where it is, its key and planned position, and its class id."""

    path: str
    key: str
    id: int
    label: int
    sample_rate: int = SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class EncodedFile:
    """What :func:`encode_file` made of a task: a record, or the error that names the file."""

    id: int
    record: bytes | None
    sha256: str | None
    num_samples: int
    error: str | None = None


def encode_file(task: FileTask) -> EncodedFile:
    """Decode and resample ``task.path``, hash its bytes and serialize its record. A file that
    cannot be decoded gives an :class:`EncodedFile` with the error (naming the file), not an
    exception, so that the caller decides whether to skip it."""
    try:
        waveform = load_audio(task.path, task.sample_rate)  # refuses FIFOs and other non-files first
        digest = sha256_of(task.path)
    except EatKerasError as exc:
        return EncodedFile(task.id, None, None, 0, str(exc))
    except OSError as exc:
        return EncodedFile(task.id, None, None, 0, f"{task.path}: cannot read audio file ({exc.strerror or exc})")
    pcm, scale = quantize(waveform)
    record = serialize_record(task.id, task.label, task.key, pcm, scale)
    return EncodedFile(task.id, record, digest, int(waveform.shape[0]))


# --- the plan: which file goes to which shard, in which order ---------------------------------


def _digest_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def shard_of(key: str, num_shards: int) -> int:
    """The shard of a file: a hash of its key, so adding files moves no other file (at one count)."""
    return _digest_int(f"shard\0{key}") % num_shards


def num_shards_for(num_files: int, settings: PrepareSettings) -> int:
    """Shards of one side: ``files_per_shard`` files each, at least ``min_shards`` (so that several
    workers each read their own), never more than there are files."""
    wanted = max(settings.min_shards, -(-num_files // settings.files_per_shard))
    return max(1, min(wanted, num_files))


def shard_name(side: str, shard: int, num_shards: int) -> str:
    return f"{side}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """One shard: its side and name, its files in the order written, and a digest of its inputs."""

    side: str
    name: str
    tasks: tuple[FileTask, ...]
    inputs: str


def plan_shards(
    splits: Mapping[str, Sequence[Example]], class_names: Sequence[str], root: str, settings: PrepareSettings
) -> list[ShardPlan]:
    """The shards of every side. A file's ``id`` is its position in its side's list; within a shard
    the files are in a hashed order, so that each shard mixes the classes (a class-sorted shard would
    give batches of one class through a small shuffle buffer)."""
    class_id = {name: i for i, name in enumerate(class_names)}
    plans = []
    for side in SIDES:
        items = splits.get(side, [])
        if not items:
            continue
        count = num_shards_for(len(items), settings)
        members: dict[int, list[FileTask]] = collections.defaultdict(list)
        for i, e in enumerate(items):
            key = example_key(e, root)
            label = UNLABELLED_ID if e.label is None else class_id[e.label]
            members[shard_of(key, count)].append(FileTask(e.path, key, i, label, settings.sample_rate))
        for shard in range(count):
            tasks = tuple(sorted(members[shard], key=lambda t: (_digest_int(f"order\0{t.key}"), t.key)))
            name = shard_name(side, shard, count)
            plans.append(ShardPlan(side, name, tasks, _inputs_digest(name, tasks, class_names, settings)))
    return plans


def _inputs_digest(name: str, tasks: Sequence[FileTask], class_names: Sequence[str], settings: PrepareSettings) -> str:
    """What a finished shard was made from: a changed file (size or modification time), label,
    class list or setting gives another digest, and the shard is written again."""
    files = []
    for t in tasks:
        try:
            stat = os.stat(t.path)
            fingerprint: list[int] | None = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            fingerprint = None  # the encoder words the error
        files.append([t.path, t.key, t.id, t.label, fingerprint])
    text = json.dumps(
        {"format": FORMAT_VERSION, "name": name, "classes": list(class_names), "sample_rate": settings.sample_rate,
         "files": files}, sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the local runner ------------------------------------------------------------------------


def prepare(
    examples: Sequence[Example],
    out_dir: str | os.PathLike[str],
    settings: PrepareSettings | None = None,
    *,
    processes: int = 2,
    on_error: Literal["fail", "skip"] = "fail",
    source: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: ProgressLine | None = None,
    on_file: Callable[[int], None] | None = None,
) -> PreparedData:
    """Split ``examples``, write the shards of every side into ``out_dir`` with ``processes``
    decoding processes, and write ``prepared.json`` last; returns the prepared data as read back.

    A file that cannot be decoded raises :class:`~eat_keras.errors.AudioError` naming it
    (``on_error="fail"``; the shards finished so far are kept for the re-run) or is reported through
    ``log`` and left out (``"skip"``; the manifest lists it under ``skipped``). Shards that an earlier
    run finished from the same inputs are kept as they are. ``on_file`` is called with the number of
    files done after each file a shard takes (tests interrupt a run with it).

    The workers are forked while this process has not imported TensorFlow, else spawned; a script
    that calls this after importing TensorFlow needs the usual ``if __name__ == "__main__":`` guard.
    """
    settings = settings or PrepareSettings()
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if processes < 1:
        raise ConfigError(f"processes must be at least 1, got {processes}")
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    plan = plan_prepare(examples, settings)
    with prepared_output(out_dir, plan.shards) as out:
        finished = _write_missing_shards(out, plan.shards, processes, on_error, say, progress, on_file)
        write_manifest(out, plan, finished, source)
    return read_prepared(out)


# --- the steps of prepare, public for other writers (eat_keras.beam) ---------------------------


@dataclasses.dataclass(frozen=True)
class PreparePlan:
    """What a prepared folder will hold: the split, the class names, the data root and the shards."""

    settings: PrepareSettings
    splits: Mapping[str, Sequence[Example]]
    class_names: list[str]
    root: str
    shards: list[ShardPlan]


def plan_prepare(examples: Sequence[Example], settings: PrepareSettings) -> PreparePlan:
    """Split ``examples`` and plan the shards of every side, whichever writer then writes them."""
    splits = split_examples(
        examples, settings.val_fraction, settings.test_fraction, settings.seed, settings.test_folds, settings.val_folds
    )
    check_no_leakage(splits, check_content=False)  # the content check runs on the hashes the encoders make
    class_names = class_names_of(examples)
    root = data_root([e for side in splits.values() for e in side])
    return PreparePlan(settings, splits, class_names, root, plan_shards(splits, class_names, root, settings))


@contextlib.contextmanager
def prepared_output(out_dir: str | os.PathLike[str], plans: Sequence[ShardPlan]) -> Iterator[Path]:
    """The output folder, held by this process for the block (a second prepare is refused), without
    its manifest (written again last: it exists only when every shard does) and without what an
    interrupted or earlier run left that ``plans`` do not hold."""
    out = _output_folder(out_dir)
    with _only_writer(out):
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        _remove_leftovers(out, plans)
        yield out


def finished_shards(out: Path, plans: Sequence[ShardPlan], on_error: str) -> dict[str, dict[str, Any]]:
    """The sidecars of the shards of ``plans`` finished from the same inputs (see :func:`prepare`)."""
    return {p.name: s for p in plans if (s := _finished_sidecar(out, p, on_error)) is not None}


def write_shard(out: Path, plan: ShardPlan, on_error: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Encode the files of ``plan`` in this process, then write the shard and its sidecar into
    ``out``, as :func:`prepare` does with one process; returns the sidecar."""
    import tensorflow as tf

    return _write_shard(tf, out, plan, map(encode_file, plan.tasks), on_error, say, None, None)


def write_manifest(out: Path, plan: PreparePlan, finished: Mapping[str, Mapping[str, Any]], source: str | None) -> None:
    """``prepared.json`` from the sidecars of every shard, after the content leakage check."""
    manifest = _manifest(plan.splits, plan.shards, finished, plan.class_names, plan.root, plan.settings, source)
    _check_content_leakage(manifest["examples"])
    _write_json(out / MANIFEST_NAME, manifest)


def _write_missing_shards(
    out: Path,
    plans: Sequence[ShardPlan],
    processes: int,
    on_error: str,
    say: Callable[[str], None],
    progress: ProgressLine | None,
    on_file: Callable[[int], None] | None,
) -> dict[str, dict[str, Any]]:
    """The sidecar of every shard: kept from an earlier run where its inputs match, else written."""
    finished = finished_shards(out, plans, on_error)
    for error in (f["error"] for s in finished.values() for f in s["files"] if f.get("error")):
        say(f"eat-keras: warning: skipped a bad file (as the earlier run did): {error}")
    todo = [p for p in plans if p.name not in finished]
    total = sum(len(p.tasks) for p in plans)
    reused = total - sum(len(p.tasks) for p in todo)
    progress = progress or ProgressLine("prepare", total)
    progress.reuse(reused)
    try:
        for plan, sidecar in _write_shards(out, todo, processes, on_error, say, progress, on_file):
            finished[plan.name] = sidecar
    except BaseException:
        progress.abandon()
        raise
    skipped = sum(bool(f.get("error")) for s in finished.values() for f in s["files"])
    progress.finish((f", {reused} reused" if reused else "") + (f", {skipped} bad file(s) skipped" if skipped else ""))
    return finished


@contextlib.contextmanager
def _only_writer(out: Path) -> Iterator[None]:
    """Hold ``out/.prepare.lock``: a second prepare into the same folder would remove this one's
    temporary files. The lock goes with the process, however it ends."""
    try:
        lock = open(out / LOCK_NAME, "a")
    except OSError as exc:
        raise EatKerasError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EatKerasError(f"{out}: another eat-keras prepare is writing this folder") from None
        yield


def _output_folder(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EatKerasError(f"{out}: cannot make the output folder ({exc.strerror or exc})") from exc
    if not os.access(out, os.W_OK):
        raise EatKerasError(f"{out}: the output folder is not writable")
    return out


def _remove_leftovers(out: Path, plans: Sequence[ShardPlan]) -> None:
    """Remove temporary files of an interrupted run and shards (with sidecars) of an earlier plan
    that this one does not have; only names this module writes are touched."""
    wanted = {p.name for p in plans} | {p.name + SIDECAR_SUFFIX for p in plans}
    for path in out.iterdir():
        name = path.name
        temporary = name.startswith(".") and name.endswith(".tmp") and (SHARD_SUFFIX in name or SIDECAR_SUFFIX in name)
        stale = _is_shard_file_name(name) and name not in wanted
        if (temporary or stale) and path.is_file():
            path.unlink(missing_ok=True)


def _is_shard_file_name(name: str) -> bool:
    stem = name.removesuffix(SIDECAR_SUFFIX)
    if not stem.endswith(SHARD_SUFFIX):
        return False
    side, _, rest = stem.removesuffix(SHARD_SUFFIX).partition("-")
    return side in SIDES and rest.replace("-of-", "", 1).isdigit()


def _finished_sidecar(out: Path, plan: ShardPlan, on_error: str) -> dict[str, Any] | None:
    """The sidecar of a shard an earlier run finished from the same inputs, else None. With
    ``on_error="fail"`` a kept shard that left a bad file out fails as a fresh run would."""
    try:
        sidecar = json.loads((out / (plan.name + SIDECAR_SUFFIX)).read_text(encoding="utf-8"))
        size = (out / plan.name).stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("inputs") != plan.inputs or sidecar.get("bytes") != size:
        return None
    errors = [f["error"] for f in sidecar.get("files", []) if f.get("error")]
    if errors and on_error == "fail":
        raise AudioError(errors[0])
    return sidecar


def _write_shards(
    out: Path,
    plans: Sequence[ShardPlan],
    processes: int,
    on_error: str,
    say: Callable[[str], None],
    progress: ProgressLine,
    on_file: Callable[[int], None] | None,
) -> Iterator[tuple[ShardPlan, dict[str, Any]]]:
    """Encode the files of ``plans`` in worker processes and write each shard in turn."""
    if not plans:
        return
    tasks = [t for p in plans for t in p.tasks]
    if processes == 1 or len(tasks) < _FILES_PER_PROCESS:  # starting processes would cost more than it saves
        import tensorflow as tf

        encoded_here = map(encode_file, tasks)
        for plan in plans:
            yield plan, _write_shard(tf, out, plan, encoded_here, on_error, say, progress, on_file)
        return
    pool = ProcessPoolExecutor(processes, mp_context=_worker_context(), initializer=_start_worker)
    try:
        encoded = _InOrder(pool, tasks, window=8 * processes)  # workers start here
        import tensorflow as tf  # after: forked workers hold no TensorFlow, and they decode meanwhile

        for plan in plans:
            yield plan, _write_shard(tf, out, plan, encoded, on_error, say, progress, on_file)
    except BrokenProcessPool:
        raise EatKerasError(
            "a decoding process ended abruptly (killed, out of memory, or a script that starts processes at import: "
            "guard its code with if __name__ == '__main__':, or pass processes=1)"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Fork while this process has no TensorFlow (fast, and a script needs no ``__main__`` guard);
    spawn once it has: a forked copy of TensorFlow's threads and locks may hang."""
    return multiprocessing.get_context("spawn" if "tensorflow" in sys.modules else "fork")


def _start_worker() -> None:
    """Workers leave Ctrl-C to the parent, which stops them and removes its temporary file, and
    (on Linux) end with the parent: a killed prepare leaves no idle workers behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # without it a worker outlives a killed parent, idle, as before


class _InOrder:
    """The encoded tasks in order, at most ``window`` in flight: memory holds a few records, not
    every record that finished while the parent was busy (``pool.map`` would submit all tasks)."""

    def __init__(self, pool: ProcessPoolExecutor, tasks: Sequence[FileTask], window: int) -> None:
        self.pool, self.upcoming = pool, iter(tasks)
        self.pending: collections.deque[Future[EncodedFile]] = collections.deque(
            pool.submit(encode_file, task) for task in itertools.islice(self.upcoming, window)
        )

    def __iter__(self) -> _InOrder:
        return self

    def __next__(self) -> EncodedFile:
        if not self.pending:
            raise StopIteration
        result = self.pending.popleft().result()
        task = next(self.upcoming, None)
        if task is not None:
            self.pending.append(self.pool.submit(encode_file, task))
        return result


def _write_shard(
    tf: Any,
    out: Path,
    plan: ShardPlan,
    encoded: Iterator[EncodedFile],
    on_error: str,
    say: Callable[[str], None],
    progress: ProgressLine | None,
    on_file: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Write one shard under a temporary name, move it into place, then write its sidecar."""
    temporary = out / f".{plan.name}.{os.getpid()}.tmp"
    files = []
    try:
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for task in plan.tasks:
                result = next(encoded)
                if result.error is not None:
                    if on_error == "fail":
                        raise AudioError(result.error)
                    say(f"eat-keras: warning: skipped a bad file: {result.error}")
                    files.append({"id": task.id, "error": result.error})
                else:
                    writer.write(result.record)
                    files.append({"id": task.id, "sha256": result.sha256, "num_samples": result.num_samples})
                if progress is not None:
                    progress.advance()
                if on_file is not None and progress is not None:
                    on_file(progress.done)
        digest, size = _synced_sha256(temporary)
        os.replace(temporary, out / plan.name)
    except OSError as exc:
        raise EatKerasError(f"{out}: cannot write {plan.name} ({exc.strerror or exc})") from exc
    except tf.errors.OpError as exc:  # TensorFlow's writer words a full disk its own way
        raise EatKerasError(f"{out}: cannot write {plan.name} ({exc.message})") from exc
    finally:
        temporary.unlink(missing_ok=True)
    records = sum("sha256" in f for f in files)
    sidecar = {"inputs": plan.inputs, "sha256": digest, "bytes": size, "records": records, "files": files}
    _write_json(out / (plan.name + SIDECAR_SUFFIX), sidecar)
    return sidecar


def _synced_sha256(path: Path) -> tuple[str, int]:
    """The file's sha256 and size, after its data reached the disk: a shard moved into place after
    a power cut must not be empty."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return sha256_of(path), path.stat().st_size


def _write_json(path: Path, document: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise EatKerasError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        temporary.unlink(missing_ok=True)


# --- the manifest ----------------------------------------------------------------------------


def _manifest(
    splits: Mapping[str, Sequence[Example]],
    plans: Sequence[ShardPlan],
    finished: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    root: str,
    settings: PrepareSettings,
    source: str | None,
) -> dict[str, Any]:
    """prepared.json: the format, the settings, the shards with their hashes, every file written
    (in each side's order: a file's ``index`` is its position among its side's files) and the
    files skipped."""
    done: dict[tuple[str, int], tuple[str, int, Mapping[str, Any]]] = {}  # (side, id) → shard, record, file
    for plan in plans:
        written = 0
        for f in finished[plan.name]["files"]:
            done[(plan.side, f["id"])] = (plan.name, written, f)
            written += not f.get("error")
    examples, skipped = [], []
    for side in SIDES:
        for i, e in enumerate(splits.get(side, [])):
            shard, record, f = done[(side, i)]
            entry = {"path": e.path, "key": example_key(e, root), "label": e.label, "group": e.group, "fold": e.fold,
                     "split": side, "id": i}  # fmt: skip
            if f.get("error"):
                skipped.append({**entry, "error": f["error"]})
            else:
                examples.append(
                    {**entry, "shard": shard, "record": record, "num_samples": f["num_samples"], "sha256": f["sha256"]}
                )
    shards = [
        {"name": p.name, "split": p.side, "records": finished[p.name]["records"], "bytes": finished[p.name]["bytes"],
         "sha256": finished[p.name]["sha256"]} for p in plans
    ]  # fmt: skip
    content = hashlib.sha256("".join(f"{s['name']}\0{s['sha256']}\n" for s in shards).encode("utf-8")).hexdigest()
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "record": RECORD_FEATURES,
        "sample_rate": settings.sample_rate, "class_names": list(class_names), "settings": settings.to_dict(),
        "source": source, "root": root, "content_sha256": content, "shards": shards,
        "examples": examples, "skipped": skipped,
    }  # fmt: skip


def _check_content_leakage(examples: Sequence[Mapping[str, Any]]) -> None:
    """The same audio bytes under two names on two sides is a leak (``check_no_leakage``'s content
    check, here on the hashes the workers made instead of a second read of every file)."""
    sides: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for e in examples:
        sides[e["sha256"]].setdefault(e["split"], e["path"])
    leaks = [
        "same audio content: " + " and ".join(f"{path} ({side})" for side, path in where.items())
        for where in sides.values() if len(where) > 1
    ]  # fmt: skip
    if leaks:
        more = f"; and {len(leaks) - 5} more" if len(leaks) > 5 else ""
        raise EatKerasError("train/val/test leakage: " + "; ".join(leaks[:5]) + more)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A prepared folder as ``prepared.json`` describes it."""

    folder: Path
    manifest: Mapping[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    def entries(self, split: str) -> list[Mapping[str, Any]]:
        """The manifest entries of the files of ``split``: entry ``i`` is the file of ``index`` i."""
        return [e for e in self.manifest["examples"] if e["split"] == split]

    def examples(self, split: str) -> list[Example]:
        """The files of ``split`` as :class:`Example` s, in ``index`` order."""
        return [Example(e["path"], e["label"], e["group"], e["split"], e["fold"]) for e in self.entries(split)]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.folder / s["name"] for s in self.manifest["shards"] if s["split"] == split]


def prepared_for_run(
    data: Sequence[Example] | PreparedData | str | os.PathLike[str],
    config: Any,
    folder: str | os.PathLike[str],
    *,
    processes: int = 2,
    on_error: Literal["fail", "skip"] = "fail",
    log: Callable[[str], None] | None = None,
) -> PreparedData:
    """The prepared data a fine-tuning run (``config``: a ``FinetuneConfig``) reads: ``data`` as it
    is when it is prepared already (a :class:`PreparedData` or a folder with ``prepared.json``),
    else the files ``data`` lists prepared into ``folder`` with the run's split and group pattern;
    a re-run reuses the shards."""
    if isinstance(data, PreparedData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return read_prepared(data)
    examples = groups_from_names(list(data), config.group_pattern)
    settings = PrepareSettings.split_of(config)
    return prepare(examples, folder, settings, processes=processes, on_error=on_error, log=log)


def read_prepared(folder: str | os.PathLike[str]) -> PreparedData:
    """Read ``folder/prepared.json``; a missing, foreign or incomplete folder raises
    :class:`EatKerasError` saying to run ``eat-keras prepare``."""
    root = Path(folder).expanduser()
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EatKerasError(
            f"{root}: no {MANIFEST_NAME} (not prepared, or interrupted: run eat-keras prepare)"
        ) from None
    except (OSError, ValueError) as exc:
        raise EatKerasError(f"{path}: cannot read the manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise EatKerasError(f"{path}: not an eat-keras prepared data set")
    if manifest.get("version") != FORMAT_VERSION:
        raise EatKerasError(
            f"{path}: prepared-data format {manifest.get('version')}, this eat-keras reads {FORMAT_VERSION}: "
            "run eat-keras prepare again"
        )
    for shard in manifest["shards"]:
        try:
            size = (root / shard["name"]).stat().st_size
        except OSError:
            size = None
        if size != shard["bytes"]:
            raise EatKerasError(
                f"{root / shard['name']}: missing or changed since prepare; run eat-keras prepare again"
            )
    return PreparedData(root, manifest)
