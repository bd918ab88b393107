"""Data sets, leak-free splits and the tf.data pipeline (ESC-10 from ../shared, synthetic files)."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import eat_keras.train.data as data_module
from eat_keras.errors import AudioError, ConfigError, EatKerasError
from eat_keras.train.data import (
    AudioCache,
    Example,
    average_per_file,
    check_no_leakage,
    class_counts,
    class_names_of,
    compile_group_pattern,
    groups_from_names,
    make_dataset,
    read_dataset,
    read_esc50_manifest,
    read_folder_dataset,
    read_manifest,
    split_examples,
    split_report,
)

SR = 32000
ESC10_CLASSES = ["chainsaw", "clock_tick", "crackling_fire", "crying_baby", "dog", "helicopter",
                 "rain", "rooster", "sea_waves", "sneezing"]  # fmt: skip


def _write(path: Path, seconds: float, freq: float = 440.0, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[path.suffix.lower()]
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)
    return path


@pytest.fixture(scope="module")
def esc10(shared_dir: Path) -> list[Example]:
    root = shared_dir / "data" / "esc10"
    return read_esc50_manifest(root / "esc10.csv", root / "audio")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the pipeline decodes, in call order."""
    calls: list[str] = []
    real = data_module.load_audio

    def counting(path: str, sample_rate: int) -> np.ndarray:
        calls.append(path)
        return real(path, sample_rate)

    monkeypatch.setattr(data_module, "load_audio", counting)
    return calls


# --- reading ---------------------------------------------------------------------------------


def test_read_folder_dataset(tmp_path: Path) -> None:
    _write(tmp_path / "rain" / "b.WAV", 0.1)
    _write(tmp_path / "rain" / "a.flac", 0.1)
    _write(tmp_path / "rain" / "nested" / "c.Ogg", 0.1)
    _write(tmp_path / "dog" / "x.wav", 0.1)
    _write(tmp_path / "dog" / "._x.wav", 0.1)  # macOS AppleDouble file: hidden, skipped
    (tmp_path / "dog" / "notes.txt").write_text("not audio")
    (tmp_path / "empty").mkdir()
    examples = read_folder_dataset(tmp_path)
    root = tmp_path.resolve()
    assert [(Path(e.path).relative_to(root).as_posix(), e.label) for e in examples] == [
        ("dog/x.wav", "dog"),
        ("rain/a.flac", "rain"),
        ("rain/b.WAV", "rain"),
        ("rain/nested/c.Ogg", "rain"),
    ]
    assert all(e.group is None and e.split is None and Path(e.path).is_absolute() for e in examples)
    assert read_folder_dataset(tmp_path) == examples
    with pytest.raises(EatKerasError, match="no audio files"):
        read_folder_dataset(tmp_path / "empty")
    with pytest.raises(EatKerasError, match="not found"):
        read_folder_dataset(tmp_path / "missing")


def test_read_manifest_resolves_paths_and_detects_columns(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    (tmp_path / "lists").mkdir()
    csv_file = tmp_path / "lists" / "all.csv"
    csv_file.write_text(
        "path,label,group,split,fold,extra\n"
        "../audio/a.wav,dog,rec1,Training,1,x\n"
        f"{tmp_path / 'b.wav'},cat,,validation,2,y\n"
        "c.wav,cat,rec2,TEST,,z\n"
    )
    examples = read_manifest(csv_file)
    assert [Path(e.path) for e in examples] == [
        tmp_path / "audio" / "a.wav", tmp_path / "b.wav", tmp_path / "lists" / "c.wav"
    ]  # fmt: skip
    assert [(e.label, e.group, e.split, e.fold) for e in examples] == [
        ("dog", "rec1", "train", "1"), ("cat", None, "val", "2"), ("cat", "rec2", "test", None)
    ]  # fmt: skip
    named = tmp_path / "named.csv"
    named.write_text("file,class,recording\nx.wav,dog,r1\n")
    (only,) = read_manifest(named, "file", "class", group_column="recording")
    assert (only.label, only.group, only.split) == ("dog", "r1", None)
    with pytest.raises(EatKerasError, match=r"no column 'path', 'label' \(columns: file, class"):
        read_manifest(named)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\nx.wav,dog,holdout\n")
    with pytest.raises(EatKerasError, match="line 2: unknown split 'holdout'"):
        read_manifest(bad)


def test_read_esc50_manifest(esc10: list[Example], shared_dir: Path) -> None:
    assert len(esc10) == 320
    assert class_names_of(esc10) == ESC10_CLASSES
    assert class_counts(esc10, ESC10_CLASSES).tolist() == [32] * 10
    assert {e.fold for e in esc10} == {"1", "2", "3", "4"}
    assert len({e.group for e in esc10}) == 247
    first = next(e for e in esc10 if Path(e.path).name == "1-100032-A-0.flac")
    assert (first.label, first.group, first.fold) == ("dog", "100032", "1")
    audio_dir = shared_dir / "data" / "esc10" / "audio"
    assert Path(first.path) == (audio_dir / "1-100032-A-0.flac").resolve()
    assert all(os.path.isfile(e.path) for e in esc10[:20])


def test_read_dataset_tells_the_layout_and_keeps_folds(tmp_path: Path, shared_dir: Path, esc10: list[Example]) -> None:
    _write(tmp_path / "folder" / "dog" / "x.wav", 0.1)
    assert read_dataset(tmp_path / "folder") == read_folder_dataset(tmp_path / "folder")
    assert read_dataset(shared_dir / "data" / "esc10" / "esc10.csv") == esc10  # audio/ beside the CSV
    meta = tmp_path / "esc50" / "meta"  # ESC-50's own layout: meta/esc50.csv and audio/
    meta.mkdir(parents=True)
    (tmp_path / "esc50" / "audio").mkdir()
    (meta / "esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\nx.wav,1,0,dog,TRUE,7,A\n")
    (from_meta,) = read_dataset(meta / "esc50.csv")
    assert Path(from_meta.path) == (tmp_path / "esc50" / "audio" / "x.wav").resolve() and from_meta.group == "7"
    manifest = tmp_path / "list.csv"  # any other CSV is a manifest
    manifest.write_text("path,label,fold\na.wav,dog,1\nb.wav,cat,2\n")
    assert read_dataset(manifest) == read_manifest(manifest)
    assert [Path(e.path).name for e in read_dataset(manifest, folds=[2])] == ["b.wav"]
    with pytest.raises(EatKerasError, match="no labelled audio files in folds 3"):
        read_dataset(manifest, folds=["3"])
    with pytest.raises(EatKerasError, match="the data has no fold column"):
        read_dataset(tmp_path / "folder", folds=["1"])
    (tmp_path / "list.txt").write_text("path,label\n")
    with pytest.raises(EatKerasError, match="expected a folder of class folders or a CSV manifest"):
        read_dataset(tmp_path / "list.txt")


ESC_NAMES = "{fold}-{group}-{take}-{class}"  # ESC-50's 1-100038-A-14.wav: fold, recording, take, class


def _clips_of_recordings(root: Path, recordings: int = 6, takes: str = "ABC") -> dict[str, str]:
    """``root/<class>/<fold>-<recording>-<take>-<class id>.wav``: several clips cut from each
    recording, as ESC-50 names them; returns each file's recording. The files hold distinct bytes,
    not audio: reading and splitting decode nothing."""
    recording_of = {}
    for class_id, label in enumerate(("dog", "rain")):
        (root / label).mkdir(parents=True, exist_ok=True)
        for r in range(recordings):
            source = str(100000 + 37 * r + class_id)
            for take in takes:
                path = root / label / f"{r % 5 + 1}-{source}-{take}-{class_id}.wav"
                path.write_bytes(path.name.encode())
                recording_of[str(path.resolve())] = source
    return recording_of


def _sides_per_recording(splits: dict[str, list[Example]], recording_of: dict[str, str]) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = defaultdict(set)
    for side, items in splits.items():
        for e in items:
            sides[recording_of[e.path]].add(side)
    return sides


def test_a_group_pattern_keeps_a_recordings_clips_on_one_side(tmp_path: Path) -> None:
    recording_of = _clips_of_recordings(tmp_path)
    grouped = read_folder_dataset(tmp_path, group_pattern=ESC_NAMES)
    assert {e.path: e.group for e in grouped} == recording_of
    seeds = range(6)
    for seed in seeds:
        splits = split_examples(grouped, val_fraction=0.3, test_fraction=0.2, seed=seed)
        assert all(len(sides) == 1 for sides in _sides_per_recording(splits, recording_of).values()), seed
        check_no_leakage(splits)
    # without the pattern, the clips of one recording land on different sides
    plain = read_folder_dataset(tmp_path)
    assert all(e.group is None for e in plain)
    split_apart = [
        recording for seed in seeds
        for recording, sides in _sides_per_recording(split_examples(plain, 0.3, 0.2, seed), recording_of).items()
        if len(sides) > 1
    ]  # fmt: skip
    assert split_apart
    # a regular expression with a named group says the same; read_dataset passes the pattern on
    assert read_dataset(tmp_path, group_pattern=r"\d+-(?P<group>\d+)-[A-Z]-\d+") == grouped


def test_a_group_pattern_reads_esc50_names_as_the_manifest_groups_them(esc10: list[Example], shared_dir: Path) -> None:
    """ESC-10's meta CSV gives each clip its Freesound recording (src_file); the pattern reads the same
    group from the file name (with the extension: 1-100032-A-0.flac)."""
    assert read_dataset(shared_dir / "data" / "esc10" / "esc10.csv", group_pattern=ESC_NAMES) == esc10
    named = [dataclasses.replace(e, group=None) for e in esc10]
    assert groups_from_names(named, ESC_NAMES) == esc10


def test_group_pattern_faults_are_one_line_and_name_a_file(tmp_path: Path) -> None:
    _clips_of_recordings(tmp_path / "data")
    (tmp_path / "data" / "dog" / "field recording.wav").write_bytes(b"x")
    with pytest.raises(EatKerasError, match=r"does not match the names of 1 of 37 files, e\.g\. .*field recording\.wav") as caught:
        read_folder_dataset(tmp_path / "data", group_pattern=ESC_NAMES)
    assert "\n" not in str(caught.value)
    for bad in ("{fold}-{take}", "{group}-{group}", "(?P<group>[0-9"):
        with pytest.raises(ConfigError, match="group pattern"):
            compile_group_pattern(bad)
    manifest = tmp_path / "list.csv"  # a manifest's group that the file name contradicts
    manifest.write_text("path,label,group\n1-100-A-0.wav,dog,200\n")
    with pytest.raises(EatKerasError, match="the manifest gives group '200', the group pattern '100'"):
        read_dataset(manifest, group_pattern=ESC_NAMES)


def test_finetune_takes_the_groups_of_its_group_pattern(tmp_path: Path) -> None:
    from cli_process import run_cli

    from eat_keras.train.config import FinetuneConfig
    from eat_keras.train.prepare import PrepareSettings

    recording_of = _clips_of_recordings(tmp_path / "data")
    config = FinetuneConfig(group_pattern=ESC_NAMES, val_fraction=0.3, test_fraction=0.2)
    settings = PrepareSettings.split_of(config)  # the split finetune prepares (the clips here are not audio)
    examples = groups_from_names(read_folder_dataset(tmp_path / "data"), config.group_pattern)
    splits = split_examples(examples, settings.val_fraction, settings.test_fraction, settings.seed)
    assert all(e.group == recording_of[e.path] for items in splits.values() for e in items)
    assert all(len(sides) == 1 for sides in _sides_per_recording(splits, recording_of).values())
    # the command line refuses a pattern without {group} in one line, before it writes anything
    out = tmp_path / "run"
    result = run_cli(["finetune", str(tmp_path / "data"), "--out", str(out), "--group-pattern", "{fold}-{take}"])
    assert result.returncode == 2 and len(result.error_lines) == 1, result.stderr
    assert "must mark the recording once" in result.error_lines[0] and not out.exists()


def test_class_counts_rejects_unknown_labels() -> None:
    with pytest.raises(EatKerasError, match="'cow' is not one of"):
        class_counts([Example("/a.wav", "cow")], ["dog"])


# --- splitting -------------------------------------------------------------------------------


def _groups(examples: list[Example]) -> set[str | None]:
    return {e.group for e in examples}


def test_group_split_of_esc10_is_stratified_and_leak_free(esc10: list[Example]) -> None:
    splits = split_examples(esc10, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert sum(len(v) for v in splits.values()) == 320
    assert not _groups(splits["train"]) & _groups(splits["val"])
    assert not _groups(splits["train"]) & _groups(splits["test"])
    assert not _groups(splits["val"]) & _groups(splits["test"])
    for side in ("val", "test"):  # every class is represented on each held-out side
        assert class_names_of(splits[side]) == ESC10_CLASSES
    assert 20 <= len(splits["val"]) <= 50 and 20 <= len(splits["test"]) <= 50
    check_no_leakage(splits)  # also hashes all 320 files: no copies under two names
    report = split_report(splits)
    assert report.splitlines()[0].split() == ["class", "train", "val", "test", "total"]
    total = report.splitlines()[-2].split()
    assert total[0] == "total" and total[-1] == "320"
    assert [int(v) for v in total[1:4]] == [len(splits[s]) for s in ("train", "val", "test")]
    assert report.splitlines()[-1].split()[0] == "groups"


def test_split_is_deterministic_order_independent_and_seeded(esc10: list[Example]) -> None:
    a = split_examples(esc10, seed=1)
    shuffled = list(esc10)
    random.Random(0).shuffle(shuffled)
    assert split_examples(shuffled, seed=1) == a
    assert split_examples(esc10, seed=2)["val"] != a["val"]


def test_a_data_set_splits_the_same_wherever_it_is_stored() -> None:
    """Files without a group are ranked by their path below the data set's folder, not by where
    the folder is: a copy on another disk (a colleague's machine, CI) gets the same split."""
    names = [f"{label}/{i}.wav" for label in "abc" for i in range(20)]

    def split_below(folder: str, **options: Any) -> dict[str, list[str]]:
        examples = [Example(f"{folder}/{n}", n[0], fold=str(int(n[2:-4]) % 4 + 1)) for n in names]
        return {side: [e.path[len(folder) + 1 :] for e in files] for side, files in split_examples(examples, **options).items()}

    for options in ({"val_fraction": 0.2, "test_fraction": 0.2}, {"val_fraction": 0.2, "test_folds": [4]}):
        here = split_below("/data", seed=3, **options)
        assert here == split_below("/mnt/disk2/copy/data", seed=3, **options)
        assert here["val"] and here["test"]


def test_fold_split_matches_upstream_esc50(esc10: list[Example]) -> None:
    upstream = split_examples(esc10, val_fraction=0.0, test_folds=[4])
    assert {e.fold for e in upstream["test"]} == {"4"} and len(upstream["test"]) == 80
    assert len(upstream["train"]) == 240 and upstream["val"] == []
    carved = split_examples(esc10, val_fraction=0.1, test_folds=["4"], seed=0)
    assert carved["test"] == upstream["test"]
    assert {e.fold for e in carved["val"]} <= {"1", "2", "3"}
    assert class_names_of(carved["val"]) == ESC10_CLASSES
    assert not _groups(carved["train"]) & _groups(carved["val"])
    check_no_leakage(carved, check_content=False)
    both = split_examples(esc10, test_folds=[4], val_folds=[3])
    assert [len(both[s]) for s in ("train", "val", "test")] == [160, 80, 80]
    with pytest.raises(EatKerasError, match="fold.* 5 not in the data"):
        split_examples(esc10, test_folds=[5])
    with pytest.raises(EatKerasError, match="both test and validation"):
        split_examples(esc10, test_folds=[4], val_folds=[4])


def test_split_column_takes_precedence() -> None:
    sides = ["train", "val", "test", "train"]
    examples = [Example(f"/d/{i}.wav", "ab"[i % 2], split=s) for i, s in enumerate(sides)]
    splits = split_examples(examples, val_fraction=0.5, test_folds=[1])
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    with pytest.raises(EatKerasError, match="have a split, the others none"):
        split_examples(examples + [Example("/d/x.wav", "a")])


def test_file_split_without_groups_keeps_small_classes_trainable() -> None:
    sizes = {"big": 40, "pair": 2, "single": 1}
    examples = [Example(f"/d/{c}/{i}.wav", c) for c, n in sizes.items() for i in range(n)]
    splits = split_examples(examples, val_fraction=0.1, test_fraction=0.1, seed=0)
    counts = {s: Counter(e.label for e in v) for s, v in splits.items()}
    assert counts["val"] == {"big": 4, "pair": 1} and counts["test"] == {"big": 4}
    assert counts["train"] == {"big": 32, "pair": 1, "single": 1}


def test_group_goes_where_its_majority_label_puts_it() -> None:
    mixed = [Example(f"/d/m{i}.wav", label, "m") for i, label in enumerate("aab")]
    others = [Example(f"/d/a{i}.wav", "a", f"a{i}") for i in range(3)]
    for seed in range(5):
        splits = split_examples(mixed + others, val_fraction=0.3, seed=seed)
        side = [s for s, v in splits.items() if any(e.group == "m" for e in v)]
        assert len(side) == 1 and len([e for e in splits[side[0]] if e.group == "m"]) == 3
        assert Counter(e.label for e in splits["val"])["a"] >= 1


def test_the_seed_recipes_split_leaks_and_is_caught(esc10: list[Example]) -> None:
    """Spec §7.2: train = 90 % of one shuffle, val = 10 % of another, independent shuffle."""
    files = list(esc10)
    random.Random(1).shuffle(files)
    train = files[: int(0.9 * len(files))]
    random.Random(2).shuffle(files)
    val = files[int(0.9 * len(files)) :]
    with pytest.raises(EatKerasError, match=r"file .*\.flac is in train and val"):
        check_no_leakage({"train": train, "val": val}, check_content=False)


def test_leakage_by_group_and_by_content(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.wav", 0.1, 300)
    b = _write(tmp_path / "b.wav", 0.1, 500)
    copy = tmp_path / "other" / "a_copy.wav"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    with pytest.raises(EatKerasError, match="group 'rec' is in train"):
        check_no_leakage(
            {"train": [Example(str(a), "x", "rec")], "val": [Example(str(b), "x", "rec")]}
        )
    with pytest.raises(EatKerasError, match=f"same audio content: .*a.wav \\(train\\) and {copy}"):
        check_no_leakage({"train": [Example(str(a), "x")], "val": [Example(str(copy), "x")]})
    copies_on_one_side = [Example(str(a), "x"), Example(str(copy), "x")]
    check_no_leakage({"train": copies_on_one_side, "val": [Example(str(b), "x")]})
    alias = str(tmp_path / "other" / ".." / "a.wav")
    with pytest.raises(EatKerasError, match=f"file {a} is in train and test"):
        check_no_leakage(
            {"train": [Example(str(a), "x")], "test": [Example(alias, "x")]}, check_content=False
        )


# --- pipeline --------------------------------------------------------------------------------


def _batches(dataset) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def _concat(batches: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.concatenate([b[key] for b in batches])


@pytest.fixture(scope="module")
def few(esc10: list[Example]) -> list[Example]:
    """Four ESC-10 clips (5 s at 44.1 kHz) of three classes."""
    dogs = [e for e in esc10 if e.label == "dog"]
    rain = next(e for e in esc10 if e.label == "rain")
    rooster = next(e for e in esc10 if e.label == "rooster")
    return [dogs[0], rain, rooster, dogs[1]]


def test_training_pipeline_decodes_each_file_once(few: list[Example], decodes: list[str]) -> None:
    cache = AudioCache()
    dataset = make_dataset(
        few, ESC10_CLASSES, mode="train", clip_samples=2 * SR, batch_size=3, seed=0, cache=cache
    )
    assert int(dataset.cardinality()) == 2
    epoch0, epoch1 = _batches(dataset), _batches(dataset)
    assert sorted(decodes) == sorted(e.path for e in few) and cache.decode_count == 4
    assert [b["waveform"].shape for b in epoch0] == [(3, 2 * SR), (1, 2 * SR)]
    for epoch in (epoch0, epoch1):
        index, label = _concat(epoch, "index"), _concat(epoch, "label")
        assert sorted(index.tolist()) == [0, 1, 2, 3]
        assert label.tolist() == [ESC10_CLASSES.index(few[i].label) for i in index]
        np.testing.assert_array_equal(_concat(epoch, "target"), np.eye(10, dtype=np.float32)[label])
        for i, crop in zip(index, _concat(epoch, "waveform")):  # a contiguous slice of the clip
            full = cache.get(few[i].path)
            assert full.shape == (5 * SR,)
            candidates = np.flatnonzero(full[: 3 * SR + 1] == crop[0])
            assert any(np.array_equal(full[s : s + 2 * SR], crop) for s in candidates)
    assert not np.array_equal(_concat(epoch0, "waveform"), _concat(epoch1, "waveform"))
    # The validation set shares the cache: nothing more is decoded.
    make_dataset(few[:2], ESC10_CLASSES, mode="eval", clip_samples=SR, batch_size=4, cache=cache)
    assert len(decodes) == 4


def test_training_pipeline_is_deterministic_given_a_seed(few: list[Example]) -> None:
    cache = AudioCache()

    def epochs(seed: int) -> list[np.ndarray]:
        dataset = make_dataset(
            few, ESC10_CLASSES, mode="train", clip_samples=SR, batch_size=4, seed=seed, cache=cache
        )
        return [_concat(_batches(dataset), "waveform") for _ in range(2)]

    first, again, other = epochs(3), epochs(3), epochs(4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_a_resumed_training_set_continues_the_epoch_sequence(few: list[Example]) -> None:
    """A run resumed after k epochs builds its data set with ``first_epoch=k``: its first epoch
    must be epoch k of an uninterrupted data set (order and crops), not a replay of epoch 0."""
    cache = AudioCache()

    def epochs(first_epoch: int, count: int) -> list[dict[str, np.ndarray]]:
        dataset = make_dataset(
            few, ESC10_CLASSES, mode="train", clip_samples=SR, batch_size=4, seed=3, cache=cache,
            first_epoch=first_epoch,
        )
        batches = [_batches(dataset) for _ in range(count)]  # one iteration is one epoch
        return [{k: _concat(b, k) for k in ("index", "waveform")} for b in batches]

    uninterrupted = epochs(0, 3)
    resumed = epochs(2, 1)
    for key in ("index", "waveform"):
        np.testing.assert_array_equal(resumed[0][key], uninterrupted[2][key])
    assert not np.array_equal(resumed[0]["waveform"], uninterrupted[0]["waveform"])


def test_evaluation_windows_cover_whole_files(few: list[Example], tmp_path: Path) -> None:
    short = Example(str(_write(tmp_path / "short.wav", 0.5)), "dog")
    examples = few[:2] + [short]
    cache = AudioCache()
    dataset = make_dataset(
        examples, ESC10_CLASSES, mode="eval", clip_samples=2 * SR, batch_size=4, cache=cache
    )
    batches = _batches(dataset)
    index, windows = _concat(batches, "index"), _concat(batches, "waveform")
    assert index.tolist() == [0, 0, 0, 1, 1, 1, 2]  # 5 s → 2 s + 2 s + 1 s padded; 0.5 s → 1 window
    assert int(dataset.cardinality()) == 2
    for i, e in enumerate(examples):
        full = cache.get(e.path)
        joined = windows[index == i].reshape(-1)
        np.testing.assert_array_equal(joined[: full.shape[0]], full)
        assert not joined[full.shape[0] :].any()
    assert _concat(batches, "label").tolist() == [4, 4, 4, 6, 6, 6, 4]
    logits = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    per_file = average_per_file(logits, index, 3).numpy()
    np.testing.assert_allclose(per_file, [[2, 3], [8, 9], [12, 13]])


def test_disk_cache_is_reused_across_instances(
    few: list[Example], tmp_path: Path, decodes: list[str]
) -> None:
    cache_dir = tmp_path / "cache"
    first = AudioCache(cache_dir)
    make_dataset(few[:2], ESC10_CLASSES, mode="train", clip_samples=SR, batch_size=2, cache=first)
    assert first.decode_count == 2 and len(list(cache_dir.glob("*.npy"))) == 2
    second = AudioCache(cache_dir)
    dataset = make_dataset(
        few[:2], ESC10_CLASSES, mode="eval", clip_samples=SR, batch_size=8, cache=second
    )
    _batches(dataset)
    _batches(dataset)
    assert second.decode_count == 0 and len(decodes) == 2
    np.testing.assert_array_equal(second.get(few[0].path), first.get(few[0].path))
    # A file that changes is decoded again (the key holds its size and mtime).
    changed = _write(tmp_path / "changing.wav", 0.2)
    second.get(str(changed))
    os.utime(changed, ns=(1, 1))
    second.get(str(changed))
    assert second.decode_count == 2


def test_pipeline_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "dog" / "broken.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF0000WAVEjunk")
    good = _write(tmp_path / "dog" / "good.wav", 0.2)
    dog, cat, broken = Example(str(good), "dog"), Example(str(good), "cat"), Example(str(bad), "dog")
    with pytest.raises(AudioError, match="broken.wav"):
        make_dataset([dog, broken], ["dog"], mode="train", clip_samples=SR, batch_size=2)
    with pytest.raises(EatKerasError, match="'cat' is not one of"):
        make_dataset([cat], ["dog"], mode="train", clip_samples=SR, batch_size=2)
    with pytest.raises(ValueError, match="drop_remainder"):
        make_dataset([dog], ["dog"], mode="eval", clip_samples=SR, batch_size=1, drop_remainder=True)


def test_rows_without_a_label_are_unlabelled_training_files_that_never_move_the_split(tmp_path):
    rows = ["path,label"] + [f"{c}{i}.wav,{c}" for c in "ab" for i in range(10)] + [f"u{i}.wav," for i in range(4)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    examples = read_manifest(tmp_path / "m.csv")
    assert sum(e.label is None for e in examples) == 4
    assert data_module.class_names_of(examples) == ["a", "b"]
    sides = split_examples(examples, val_fraction=0.2, seed=3)
    labelled_only = split_examples([e for e in examples if e.label is not None], val_fraction=0.2, seed=3)
    assert {e.path for e in sides["train"] if e.label is None} == {e.path for e in examples if e.label is None}
    for side in ("val", "test"):
        assert sides[side] == labelled_only[side]
    report = split_report(sides).splitlines()
    assert next(line for line in report if line.startswith("unlabelled")).split() == ["unlabelled", "4", "0", "0", "4"]
    stray = [dataclasses.replace(examples[-1], split="val"), *[dataclasses.replace(e, split="train") for e in examples[:-1]]]
    with pytest.raises(EatKerasError, match="unlabelled file"):
        split_examples(stray)
