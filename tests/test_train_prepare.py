"""The prepared data format (TFRecord shards + prepared.json), its local writer and its tf.data reader,
on small synthetic files made here at 16, 32 and 44.1 kHz."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from cli_process import run_cli
from eat_keras.audio import load_audio
from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.train.data import AudioCache, Example, make_dataset, read_dataset, split_examples
from eat_keras.train.prepare import (
    MANIFEST_NAME,
    PrepareSettings,
    dequantize,
    plan_prepare,
    plan_shards,
    prepare,
    quantize,
    read_prepared,
    serialize_record,
)
from eat_keras.train.shards import prepared_dataset

SR = 32000
CLIP = 16000  # 0.5 s windows: the files below give one to seven windows each
SETTINGS = PrepareSettings(val_fraction=0.25, min_shards=3)


def _noise_file(path: Path, seconds: float, sample_rate: int, subtype: str = "PCM_16", peak: float = 0.5) -> Path:
    """Noise with a given peak; the seed comes from the name, so every file's audio differs."""
    rng = np.random.default_rng(int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16))
    x = rng.uniform(-1.0, 1.0, int(seconds * sample_rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (x * peak / np.abs(x).max()).astype(np.float32), sample_rate, subtype=subtype)
    return path


def _make_data(root: Path) -> Path:
    """3 classes x 6 files: 16/44.1/32 kHz, 0.4 to 3.2 s, 16-bit and float (one louder than full
    scale, one 60 dB down)."""
    rates, lengths = (16000, 44100, 32000), (0.4, 1.1, 1.7, 2.3, 3.2, 0.9)
    for c, label in enumerate(("bird", "car", "door")):
        for i in range(6):
            subtype, peak = ("FLOAT", 1.7) if i == 4 else ("FLOAT", 1e-3) if i == 5 else ("PCM_16", 0.8)
            _noise_file(root / label / f"{label}{i}.wav", lengths[(i + c) % 6], rates[(i + c) % 3], subtype, peak)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def prepared(data: Path, tmp_path_factory: pytest.TempPathFactory):
    return prepare(read_dataset(data), tmp_path_factory.mktemp("prepared"), SETTINGS, processes=2, log=lambda m: None)


def _records(folder: Path) -> dict[str, dict]:
    """Every record of a prepared folder by key, parsed with TensorFlow's own proto classes."""
    out = {}
    for shard in sorted(folder.glob("*.tfrecord")):
        for position, raw in enumerate(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()):
            f = tf.train.Example.FromString(raw).features.feature
            pcm = np.frombuffer(f["pcm"].bytes_list.value[0], dtype="<i2")
            out[f["key"].bytes_list.value[0].decode()] = {
                "waveform": dequantize(pcm, f["scale"].float_list.value[0]), "label": f["label"].int64_list.value[0],
                "id": f["id"].int64_list.value[0], "shard": shard.name, "record": position,
            }  # fmt: skip
    return out


def _within_quantisation(got: np.ndarray, reference: np.ndarray, peak: float) -> bool:
    """16-bit storage promises every sample within peak / 32767 of the decoded float."""
    return got.shape == reference.shape and bool(np.all(np.abs(got - reference) <= peak / 32767))


def _stat(path: Path) -> tuple[int, int]:
    s = path.stat()
    return s.st_ino, s.st_mtime_ns


# --- the record ------------------------------------------------------------------------------


def test_quantize_keeps_every_sample_within_peak_over_32767() -> None:
    rng = np.random.default_rng(0)
    for level in (1e-4, 0.3, 1.0, 1.7, 300.0):
        x = (rng.standard_normal(20000) * level).astype(np.float32)
        pcm, scale = quantize(x)
        assert pcm.dtype == np.dtype("<i2") and np.log2(scale) == round(np.log2(scale))
        assert _within_quantisation(dequantize(pcm, scale), x, float(np.abs(x).max()))
        assert np.abs(pcm).max() >= 16384  # the scale is the smallest: at least 15 bits are used
    full_range = np.arange(-32768, 32768, dtype=np.float32) / 32768  # what a 16-bit file decodes to
    for x in (full_range, full_range[1:] * 0.5, full_range[:1000]):
        assert np.array_equal(dequantize(*quantize(x)), x)
    assert not dequantize(*quantize(np.zeros(5, np.float32))).any()


def test_serialized_record_is_the_tf_example_tensorflow_writes() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype="<i2")
    ours = serialize_record(300, 2, "dog/ä b.wav", pcm, 2.0**-15)

    def feature(**kwargs) -> tf.train.Feature:
        return tf.train.Feature(**kwargs)

    theirs = tf.train.Example(features=tf.train.Features(feature={
        "id": feature(int64_list=tf.train.Int64List(value=[300])),
        "label": feature(int64_list=tf.train.Int64List(value=[2])),
        "key": feature(bytes_list=tf.train.BytesList(value=["dog/ä b.wav".encode()])),
        "pcm": feature(bytes_list=tf.train.BytesList(value=[pcm.tobytes()])),
        "scale": feature(float_list=tf.train.FloatList(value=[2.0**-15])),
    }))  # fmt: skip
    assert ours == theirs.SerializeToString(deterministic=True)


def test_shard_plan_depends_on_names_not_on_order_or_location() -> None:
    def examples(root: str, count: int) -> list[Example]:
        return [Example(f"{root}/c{i % 3}/f{i}.wav", f"c{i % 3}") for i in range(count)]

    def plan(items: list[Example], root: str) -> dict[str, list[tuple[str, int]]]:
        plans = plan_shards({"train": items}, ["c0", "c1", "c2"], root, PrepareSettings(min_shards=4))
        return {p.name: [(t.key, t.id) for t in p.tasks] for p in plans}

    here = plan(examples("/data/x", 40), "/data/x")
    assert len(here) == 4 and sum(map(len, here.values())) == 40 and all(here.values())
    assert plan(examples("/elsewhere/y", 40), "/elsewhere/y") == here  # moved: the same shards
    reordered = plan(list(reversed(examples("/data/x", 40))), "/data/x")  # ids follow the list; shards do not
    assert reordered == {name: [(k, 39 - i) for k, i in tasks] for name, tasks in here.items()}
    grown = plan(examples("/data/x", 41), "/data/x")  # one more file: no other file changes shard
    assert {k for tasks in grown.values() for k, _ in tasks} - {k for tasks in here.values() for k, _ in tasks} == {"c1/f40.wav"}
    for name, tasks in here.items():
        assert [k for k, _ in tasks] == [k for k, _ in grown[name] if k != "c1/f40.wav"]


# --- the writer ------------------------------------------------------------------------------


def test_prepared_records_hold_the_decoded_audio_and_the_manifest_describes_them(data: Path, prepared) -> None:
    folder = prepared.folder
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    records = _records(folder)
    splits = split_examples(read_dataset(data), SETTINGS.val_fraction, seed=SETTINGS.seed)
    assert manifest["class_names"] == ["bird", "car", "door"] and manifest["sample_rate"] == SR
    assert {side: [e.path for e in prepared.examples(side)] for side in ("train", "val")} == {
        side: [e.path for e in splits[side]] for side in ("train", "val")
    }
    assert len(records) == len(manifest["examples"]) == 18 and not manifest["skipped"]
    for entry in manifest["examples"]:
        record, reference = records[entry["key"]], load_audio(entry["path"])
        assert (record["shard"], record["record"], record["id"]) == (entry["shard"], entry["record"], entry["id"])
        assert manifest["class_names"][record["label"]] == entry["label"]
        assert entry["num_samples"] == len(reference)
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
        assert _within_quantisation(record["waveform"], reference, float(np.abs(reference).max()))
        if sf.info(entry["path"]).samplerate == SR and sf.info(entry["path"]).subtype == "PCM_16":
            assert np.array_equal(record["waveform"], reference)  # 16-bit at 32 kHz: stored exactly
    for shard in manifest["shards"]:
        path = folder / shard["name"]
        assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and shard["bytes"] == path.stat().st_size
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_prepare_writes_the_same_bytes_every_time(data: Path, prepared, tmp_path: Path) -> None:
    again = prepare(read_dataset(data), tmp_path / "again", SETTINGS, processes=1, log=lambda m: None)
    assert again.manifest["content_sha256"] == prepared.manifest["content_sha256"]
    assert again.manifest["shards"] == prepared.manifest["shards"]


def test_a_corrupt_file_is_skipped_or_fails_the_run_as_asked(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data")
    bad = data / "car" / "broken.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    skipped = run_cli(["prepare", str(data), "--out", str(tmp_path / "skip"), "--on-error", "skip", "--min-shards", "2"])
    assert skipped.returncode == 0, skipped.stderr
    assert any("skipped" in line and str(bad) in line for line in skipped.stderr.splitlines())
    assert "prepare: 19/19 files" in skipped.stderr  # the progress line counts every file
    manifest = json.loads((tmp_path / "skip" / MANIFEST_NAME).read_text())
    assert [s["path"] for s in manifest["skipped"]] == [str(bad)] and len(manifest["examples"]) == 18
    failed = run_cli(["prepare", str(data), "--out", str(tmp_path / "fail"), "--min-shards", "2"])
    assert failed.returncode != 0 and len(failed.error_lines) == 1 and str(bad) in failed.error_lines[0]
    assert not (tmp_path / "fail" / MANIFEST_NAME).exists()
    assert not [p for p in (tmp_path / "fail").iterdir() if p.name.endswith(".tmp")]


_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from eat_keras.train.data import read_dataset
    from eat_keras.train.prepare import PrepareSettings, prepare

    data, out, after = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def kill(done):
        if done == after:  # mid-shard: no cleanup of any kind runs
            os.kill(os.getpid(), signal.SIGKILL)

    prepare(read_dataset(data), out, PrepareSettings(val_fraction=0.25, min_shards=3), processes=2, on_file=kill)
    """
)


def test_a_killed_prepare_leaves_no_partial_shard_and_the_rerun_reuses_finished_ones(data: Path, prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first_shard = prepared.manifest["shards"][0]["records"]
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(data), str(out), str(first_shard + 1)], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert child.wait(timeout=120) == -signal.SIGKILL
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # workers, if any outlived their parent
        except ProcessLookupError:
            pass
    assert not (out / MANIFEST_NAME).exists()
    finished = sorted(out.glob("*.tfrecord"))
    assert [p.name for p in finished] == [prepared.manifest["shards"][0]["name"]]  # only the completed shard
    assert [p for p in out.iterdir() if p.name.endswith(".tmp")]  # the shard in progress kept its temporary name
    before = _stat(finished[0])
    again = prepare(read_dataset(data), out, SETTINGS, processes=2, log=lambda m: None)
    assert _stat(finished[0]) == before  # reused, not rewritten
    assert again.manifest["shards"] == prepared.manifest["shards"]  # and the result is the uninterrupted one
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_prepare_removes_its_temporary_file(data: Path, tmp_path: Path) -> None:
    first_shard = plan_prepare(read_dataset(data), SETTINGS).shards[0]

    def interrupt(done: int) -> None:  # after the first shard's last record, before it is moved into place
        if done == len(first_shard.tasks):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(read_dataset(data), tmp_path, SETTINGS, processes=1, on_file=interrupt, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".prepare.lock"]


def test_a_changed_file_rewrites_only_its_shard(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data")
    first = prepare(read_dataset(data), tmp_path / "out", SETTINGS, processes=1, log=lambda m: None)
    before = {p.name: _stat(p) for p in (tmp_path / "out").glob("*.tfrecord")}
    changed = first.manifest["examples"][0]
    _noise_file(Path(changed["path"]).with_name("other.wav"), 1.0, SR).replace(changed["path"])
    second = prepare(read_dataset(data), tmp_path / "out", SETTINGS, processes=1, log=lambda m: None)
    after = {p.name: _stat(p) for p in (tmp_path / "out").glob("*.tfrecord")}
    assert [name for name in before if before[name] != after[name]] == [changed["shard"]]
    entry = next(e for e in second.manifest["examples"] if e["path"] == changed["path"])
    assert entry["sha256"] != changed["sha256"] and entry["num_samples"] == SR


def test_the_same_audio_on_two_sides_is_a_leak(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data")
    (data / "car" / "copy.wav").write_bytes((data / "bird" / "bird1.wav").read_bytes())
    sides = {"bird1.wav": "train", "copy.wav": "val"}  # one sound, under two names, on two sides
    rows = [f"{p},{p.parent.name},{sides.get(p.name, 'train' if p.stem[-1] < '4' else 'val')}" for p in sorted(data.rglob("*.wav"))]
    (data / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(EatKerasError, match=r"same audio content: .*bird1.wav \(train\) and .*copy.wav \(val\)"):
        prepare(read_dataset(data / "manifest.csv"), tmp_path / "out", SETTINGS, processes=1, log=lambda m: None)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_bad_settings_and_unprepared_folders_are_refused(prepared, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        PrepareSettings(files_per_shard=0)
    with pytest.raises(ConfigError):
        prepare([Example("/x/a.wav", "a")], tmp_path, on_error="ignore")
    with pytest.raises(EatKerasError, match="eat-keras prepare"):
        read_prepared(tmp_path)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / MANIFEST_NAME).write_text((prepared.folder / MANIFEST_NAME).read_text())
    with pytest.raises(EatKerasError, match="missing or changed"):
        read_prepared(tmp_path / "copy")


# --- the reader ------------------------------------------------------------------------------


def _by_file(elements) -> dict[int, list[dict]]:
    files = defaultdict(list)
    for e in elements:
        files[int(e["index"])].append(e)
    return files


@pytest.mark.parametrize("side", ["train", "val"])
def test_eval_reader_gives_make_datasets_elements(prepared, side: str) -> None:
    examples, names = prepared.examples(side), prepared.class_names
    ours = prepared_dataset(prepared, side, mode="eval", clip_samples=CLIP, batch_size=5)
    theirs = make_dataset(examples, names, mode="eval", clip_samples=CLIP, batch_size=5, cache=AudioCache())
    assert ours.element_spec == theirs.element_spec and ours.cardinality() == theirs.cardinality()
    got, expected = _by_file(ours.unbatch().as_numpy_iterator()), _by_file(theirs.unbatch().as_numpy_iterator())
    assert sorted(got) == sorted(expected) == list(range(len(examples)))
    for i, windows in expected.items():
        peak = float(np.abs(load_audio(examples[i].path)).max())
        assert len(got[i]) == len(windows)
        for a, b in zip(got[i], windows):
            assert a["label"] == b["label"] and np.array_equal(a["target"], b["target"])
            assert _within_quantisation(a["waveform"], b["waveform"], peak)


def test_train_reader_crops_every_file_once_and_repeats_an_epoch_exactly(prepared) -> None:
    by_key = _records(prepared.folder)
    records = {e["id"]: by_key[e["key"]] for e in prepared.entries("train")}
    index_to_id = [e["id"] for e in prepared.entries("train")]

    def epoch(number: int) -> list[dict]:
        dataset = prepared_dataset(prepared, "train", mode="train", clip_samples=CLIP, batch_size=4, seed=7, epoch=number)
        return list(dataset.as_numpy_iterator())

    first = epoch(0)
    assert len(first) == -(-len(index_to_id) // 4) and all(len(b["index"]) == 4 for b in first[:-1])
    indices = np.concatenate([b["index"] for b in first])
    assert sorted(indices) == list(range(len(index_to_id)))
    for batch in first:
        for waveform, i in zip(batch["waveform"], batch["index"]):
            source = records[index_to_id[i]]["waveform"]
            starts = [s for s in np.flatnonzero(source == waveform[0]) if s + CLIP <= max(len(source), CLIP)]
            padded = np.pad(source, (0, CLIP))
            assert any(np.array_equal(padded[s : s + CLIP], waveform) for s in starts), "not a crop of its file"
    again, other = epoch(0), epoch(1)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    assert not all(np.array_equal(a["waveform"], b["waveform"]) for a, b in zip(first, other))


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_workers_read_disjoint_parts_that_cover_the_side(prepared, workers: int) -> None:
    """3 training shards: 2 or 3 workers split them by shard, 5 split the records."""
    seen = []
    for worker in range(workers):
        dataset = prepared_dataset(prepared, "train", mode="train", clip_samples=CLIP, batch_size=2, shard_index=worker, num_shards=workers)
        indices = [i for b in dataset.as_numpy_iterator() for i in b["index"]]
        assert len(indices) == sum(len(b["index"]) for b in dataset.as_numpy_iterator())  # cardinality holds
        seen.append(indices)
    flat = [i for part in seen for i in part]
    assert sorted(flat) == list(range(len(prepared.entries("train"))))


_MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from eat_keras.train.shards import prepared_dataset

    def peak_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    for folder in sys.argv[1:]:
        for mode in ("train", "eval"):
            for batch in prepared_dataset(folder, "train", mode=mode, clip_samples=32000, batch_size=16, shuffle_buffer=32):
                pass
        print(peak_kib(), flush=True)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_reader_memory_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    files = [_noise_file(tmp_path / "data" / f"c{i % 2}" / f"f{i}.wav", 4.0, SR) for i in range(300)]
    few = prepare([Example(str(f), f.parent.name) for f in files[:30]], tmp_path / "few", SETTINGS, log=lambda m: None)
    many = prepare([Example(str(f), f.parent.name) for f in files], tmp_path / "many", SETTINGS, log=lambda m: None)
    decoded_bytes = sum(e["num_samples"] for e in many.entries("train")) * 4  # float32, as a cache would hold
    probe = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(few.folder), str(many.folder)], capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    after_few, after_many = (int(line) * 1024 for line in probe.stdout.split())
    # the reader holds a shuffle buffer and a few batches: ten times the files add far less than their
    # audio (holding it, even as int16, would add at least half of it)
    assert after_many - after_few < decoded_bytes / 3, (after_few, after_many, decoded_bytes)


def test_prepare_takes_groups_from_file_names(tmp_path: Path) -> None:
    """--group-pattern as in finetune: each recording's clips land on one side of the split."""
    import json

    import soundfile as sf

    from eat_keras.cli import main

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in ("dog", "rain"):
        (data / label).mkdir(parents=True)
        for recording in range(4):
            for take in "ABC":
                sf.write(data / label / f"{label}{recording}-{take}.wav", rng.normal(0, 0.1, 16000).astype(np.float32), 32000)
    flags = ["--val-fraction", "0.5", "--min-shards", "1", "--group-pattern", "{group}-{take}"]
    assert main(["prepare", str(data), "--out", str(tmp_path / "out"), *flags]) == 0
    examples = json.loads((tmp_path / "out" / "prepared.json").read_text())["examples"]
    sides: dict[str, set[str]] = {}
    for example in examples:
        assert example["group"] == Path(example["path"]).stem.split("-")[0]
        sides.setdefault(example["group"], set()).add(example["split"])
    assert len(sides) == 8 and all(len(split) == 1 for split in sides.values())
    assert {next(iter(split)) for split in sides.values()} == {"train", "val"}


def test_evaluating_a_prepared_side_equals_evaluating_its_files(prepared) -> None:
    """``evaluate`` of a prepared side (read from the shards) gives each file the logits that its
    audio file gives, within what 16-bit storage changes: here the mean and the mean absolute
    value of each window, which move by at most one quantisation step."""
    from eat_keras.train.evaluate import PreparedSide, evaluate

    def predict(windows: np.ndarray) -> np.ndarray:
        return np.stack([windows.mean(axis=1), np.abs(windows).mean(axis=1), np.zeros(len(windows))], axis=1)

    names = prepared.class_names
    for side in ("train", "val"):
        examples = prepared.examples(side)
        _, from_shards = evaluate(predict, PreparedSide(prepared, side), names, CLIP, batch_size=5)
        _, from_files = evaluate(predict, examples, names, CLIP, batch_size=5)
        peaks = np.array([np.abs(load_audio(e.path)).max() for e in examples])
        assert from_shards.shape == from_files.shape == (len(examples), 3)
        # one quantisation step, plus float32 rounding of a mean over a window (relative to its value)
        bound = peaks[:, None] / 32767 + 1e-6 * np.abs(from_files)
        assert np.all(np.abs(from_shards - from_files) <= bound)
        assert not np.allclose(from_shards[:, 1], from_shards[0, 1])  # the files differ: a real comparison
