"""The tf.data input pipeline over a prepared folder (:mod:`eat_keras.train.prepare`).

:func:`prepared_dataset` gives the same batches as :func:`eat_keras.train.data.make_dataset` (dicts
of ``waveform``, ``label``, ``index`` and ``target``, evaluation windows included) from TFRecord
shards, with tf.data ops only: the shards are read in parallel (interleave), each record is parsed,
cropped or cut into windows, shuffled in a bounded buffer, batched and converted to float. Memory
holds the shuffle buffer and a few batches, whatever the number of files; no Python runs per element.

Several workers each read their own shards (``shard_index`` of ``num_shards``); a side with fewer
shards than workers is split record by record instead. Every random choice (shard order, crop
offsets, shuffle) is drawn from ``(seed, epoch)``, so a data set for one epoch is the same whenever it
is made: a resumed run passes the epoch it resumes at.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.train.data import num_windows
from eat_keras.train.prepare import PreparedData, read_prepared

__all__ = ["prepared_dataset", "worker_entries"]

_PARALLEL = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "pcm": tf.io.FixedLenFeature([], tf.string),
    "scale": tf.io.FixedLenFeature([], tf.float32),
}


def _seed(seed: int, epoch: int, purpose: str) -> int:
    text = f"{seed}\0{epoch}\0{purpose}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def worker_entries(
    prepared: PreparedData, split: str, shard_index: int = 0, num_shards: int = 1
) -> tuple[list[Path], list[Mapping[str, Any]], bool]:
    """``(shard files, manifest entries, by_record)`` of one worker: every ``num_shards``-th shard
    from ``shard_index`` on, or, with fewer shards than workers, all shards read in order and every
    ``num_shards``-th record (``by_record``)."""
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    paths = prepared.shard_paths(split)
    entries = prepared.entries(split)
    if not entries:
        raise EatKerasError(f"{prepared.folder}: no prepared files on the {split} side")
    if len(paths) >= num_shards:
        mine = paths[shard_index::num_shards]
        names = {p.name for p in mine}
        return mine, [e for e in entries if e["shard"] in names], False
    position = {p.name: i for i, p in enumerate(paths)}
    ordered = sorted(entries, key=lambda e: (position[e["shard"]], e["record"]))
    return paths, ordered[shard_index::num_shards], True


def _label_map(prepared: PreparedData, entries: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> np.ndarray:
    """Prepared class id + 1 → id in ``class_names`` (-1 for a class the worker's files do not
    use); the first entry maps an unlabelled file's -1 to -1 (a row of zeros as its target)."""
    wanted = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({e["label"] for e in entries if e["label"] is not None} - set(wanted))
    if unknown:
        raise EatKerasError(
            f"{prepared.folder}: label(s) {', '.join(map(repr, unknown[:5]))} are not among the model's classes"
        )
    return np.array([-1] + [wanted.get(name, -1) for name in prepared.class_names], dtype=np.int32)


def _index_map(prepared: PreparedData, split: str) -> np.ndarray:
    """A record's planned ``id`` → its file's ``index`` (position among the side's prepared files;
    a skipped file has an id but no index)."""
    entries = prepared.entries(split)
    skipped = [s["id"] for s in prepared.manifest.get("skipped", []) if s["split"] == split]
    index = np.full(max([e["id"] for e in entries] + skipped) + 1, -1, dtype=np.int32)
    index[[e["id"] for e in entries]] = np.arange(len(entries), dtype=np.int32)
    return index


def prepared_dataset(
    prepared: PreparedData | str | os.PathLike[str],
    split: str,
    *,
    mode: Literal["train", "eval"],
    clip_samples: int,
    batch_size: int,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    epoch: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    drop_remainder: bool = False,
    shuffle_buffer: int = 512,
    cycle_length: int = 4,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` over the ``split`` side (train/val/test) of a prepared folder,
    with :func:`~eat_keras.train.data.make_dataset`'s elements: ``waveform`` (float32
    ``[B, clip_samples]``), ``label`` (int32 id in ``class_names``, default the prepared ones),
    ``index`` (int32 position of the file in ``PreparedData.examples(split)``), in training
    ``start`` (int64 first sample of the crop in its file) and ``target`` (float32 one-hot ``[B, C]``; an
    unlabelled file has label -1 and a row of zeros); its cardinality is known.

    * ``mode="train"``: one crop per file at a uniform random offset (a shorter file zero-padded at
      the end), shuffled through ``shuffle_buffer`` elements; order and offsets follow
      ``(seed, epoch)``: make one data set per epoch.
    * ``mode="eval"``: every file in full as consecutive windows of ``clip_samples`` (the last
      zero-padded), as make_dataset's; the order is the shards' (average with ``index``).
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if clip_samples <= 0 or batch_size <= 0 or shuffle_buffer <= 0 or cycle_length <= 0:
        raise ConfigError(
            f"clip_samples, batch_size, shuffle_buffer and cycle_length must be positive, got "
            f"{clip_samples}, {batch_size}, {shuffle_buffer}, {cycle_length}"
        )
    if mode == "eval" and drop_remainder:
        raise ValueError("drop_remainder would leave evaluation windows out")
    prepared = prepared if isinstance(prepared, PreparedData) else read_prepared(prepared)
    class_names = list(class_names) if class_names is not None else prepared.class_names
    paths, entries, by_record = worker_entries(prepared, split, shard_index, num_shards)
    labels = tf.constant(_label_map(prepared, entries, class_names))
    index = tf.constant(_index_map(prepared, split))
    shard_seed = _seed(seed, epoch, "shards") if mode == "train" and not by_record else None
    records = _records(paths, shard_seed, 1 if by_record else cycle_length)
    if by_record:
        records = records.shard(num_shards, shard_index)
    elements = records.map(_parser(labels, index), **_PARALLEL)
    if mode == "train":
        elements = _training_crops(elements, clip_samples, len(entries), seed, epoch, shuffle_buffer)
    else:
        elements = _evaluation_windows(elements, clip_samples, entries)
    num_classes = len(class_names)
    batches = elements.batch(batch_size, drop_remainder=drop_remainder)
    batches = batches.map(lambda b: _as_float(b, num_classes), **_PARALLEL)
    options = tf.data.Options()
    options.deterministic = True
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def _parser(labels: tf.Tensor, index: tf.Tensor) -> Any:
    """A record → its int16 samples, scale, class id (in the caller's classes), index and id."""

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        f = tf.io.parse_single_example(serialized, _FEATURES)
        pcm = tf.io.decode_raw(f["pcm"], tf.int16, little_endian=True)
        label, position = tf.gather(labels, f["label"] + 1), tf.gather(index, f["id"])
        return {"pcm": pcm, "scale": f["scale"], "label": label, "index": position, "id": f["id"]}

    return parse


def _training_crops(
    elements: tf.data.Dataset, clip_samples: int, count: int, seed: int, epoch: int, shuffle_buffer: int
) -> tf.data.Dataset:
    crop_seed = _seed(seed, epoch, "crops")
    elements = elements.map(lambda e: _crop(e, clip_samples, crop_seed), **_PARALLEL)
    elements = elements.apply(tf.data.experimental.assert_cardinality(count))
    # the buffer holds cropped int16 clips: half the memory of float32 ones
    return elements.shuffle(shuffle_buffer, seed=_seed(seed, epoch, "shuffle"), reshuffle_each_iteration=False)


def _evaluation_windows(
    elements: tf.data.Dataset, clip_samples: int, entries: Sequence[Mapping[str, Any]]
) -> tf.data.Dataset:
    windows = elements.map(lambda e: _windows(e, clip_samples), **_PARALLEL).unbatch()
    total = sum(num_windows(e["num_samples"], clip_samples) for e in entries)
    return windows.apply(tf.data.experimental.assert_cardinality(total))


def _records(paths: Sequence[Path], shard_seed: int | None, cycle_length: int) -> tf.data.Dataset:
    """The serialized records of ``paths`` (in a shuffled order with a ``shard_seed``), read
    ``cycle_length`` shards at a time, one record from each in turn; with ``cycle_length`` 1 the
    shards are read one after the other, so that records can be split by count."""
    files = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    if shard_seed is not None:
        files = files.shuffle(len(paths), seed=shard_seed, reshuffle_each_iteration=False)
    if cycle_length == 1 or len(paths) == 1:
        return files.interleave(tf.data.TFRecordDataset, cycle_length=1)
    return files.interleave(
        tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(paths)), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )  # fmt: skip


def _fit(pcm: tf.Tensor, start: tf.Tensor, clip_samples: int) -> tf.Tensor:
    """``pcm[start:start + clip_samples]``, zero-padded at the end."""
    piece = pcm[start : start + clip_samples]
    piece = tf.pad(piece, [[0, clip_samples - tf.shape(piece)[0]]])
    return tf.ensure_shape(piece, [clip_samples])


def _crop(e: dict[str, tf.Tensor], clip_samples: int, crop_seed: int) -> dict[str, tf.Tensor]:
    """One crop at a uniform offset drawn from ``(crop_seed, file id)``: the same whatever the order."""
    room = tf.maximum(tf.shape(e["pcm"], out_type=tf.int64)[0] - clip_samples, 0)
    seed = tf.stack([tf.constant(crop_seed, tf.int64), e["id"]])
    start = tf.random.stateless_uniform([], seed, minval=0, maxval=room + 1, dtype=tf.int64)
    return {
        "pcm": _fit(e["pcm"], start, clip_samples), "scale": e["scale"], "label": e["label"], "index": e["index"],
        "start": start,
    }  # fmt: skip


def _windows(e: dict[str, tf.Tensor], clip_samples: int) -> dict[str, tf.Tensor]:
    """Every window of a file, ``[W, clip_samples]``, with its label and index repeated."""
    length = tf.shape(e["pcm"])[0]
    count = tf.maximum(1, (length + clip_samples - 1) // clip_samples)
    pcm = tf.pad(e["pcm"], [[0, count * clip_samples - length]])
    windows = tf.reshape(pcm, [count, clip_samples])
    repeat = lambda value: tf.fill([count], value)  # noqa: E731
    return {"pcm": windows, "scale": repeat(e["scale"]), "label": repeat(e["label"]), "index": repeat(e["index"])}


def _as_float(batch: dict[str, tf.Tensor], num_classes: int) -> dict[str, tf.Tensor]:
    waveform = tf.cast(batch["pcm"], tf.float32) * batch["scale"][:, None]
    elements = {
        "waveform": waveform, "label": batch["label"], "index": batch["index"],
        "target": tf.one_hot(batch["label"], num_classes),  # zeros for an unlabelled file (label -1)
    }  # fmt: skip
    if "start" in batch:  # training crops: where each begins, for per-window teacher logits
        elements["start"] = batch["start"]
    return elements
