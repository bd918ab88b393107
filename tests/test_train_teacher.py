"""Distillation end to end on :mod:`tiny_training`'s data and model: an online teacher and its
precomputed logits train alike; a student lowers its distillation loss; unlabelled files train on
the training side only; a run with a teacher resumes after a kill as if uninterrupted; verify
compares student and teacher; the teacher-logits file and upstream's layout are read back."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from tiny_training import (  # noqa: F401
    CLASSES,
    best_values,
    checkpoint_values,
    interrupting_epoch_2,
    save_tiny_model,
    save_tiny_teacher,
    tiny_finetune_config,
    tiny_model,
    write_class_folders,
    write_clip,
)
from tensorflow.python.framework import config as tf_config
from tolerances import NETWORK_RTOL, OP_RTOL, assert_close

from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.train.data import read_folder_dataset
from eat_keras.train.fit import finetune
from eat_keras.train.teacher import (
    FORMAT_NAME,
    PrecomputedTeacher,
    compute_teacher_logits,
    read_teacher_logits,
    write_teacher_logits,
)

CLEAN = {"mixup_alpha": 0.0, "gain_db": 0, "roll_samples": 0}  # the student's input is the file itself
REL = 1e-4  # online against precomputed logits: float32 sums over another batch layout


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Four files per class (three train, one validate), three unlabelled files, the tiny model as
    student and :func:`save_tiny_teacher`'s teacher (the classes in reverse order)."""
    root = tmp_path_factory.mktemp("distill")
    for i in range(3):
        write_clip(root / "unlabelled" / f"u{i}.wav", CLASSES[i % 2], 20 + i)
    return {"data": write_class_folders(root / "data", per_class=4), "unlabelled": root / "unlabelled",
            "teacher": save_tiny_teacher(root / "teacher"), "student": save_tiny_model(root / "student")}  # fmt: skip


def _log(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _floats(rows: list[dict[str, str]], column: str) -> np.ndarray:
    return np.array([float(r[column]) for r in rows])


@pytest.fixture(scope="module")
def online(folders, tmp_path_factory) -> Path:
    """The distillation term alone, an online teacher, clean input, 1.5 s clips (the whole file)."""
    config = tiny_finetune_config(
        folders["student"], val_fraction=0.25, clip_seconds=1.5, epochs=4, teachers=[str(folders["teacher"])],
        loss_terms={"kd": 1.0}, **CLEAN,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("online") / "run"
    finetune(read_folder_dataset(folders["data"]), out, config, verbose=False)
    return out


def test_a_student_lowers_its_distillation_loss(online):
    kd = _floats(_log(online), "train_kd")
    assert kd[0] > 0 and kd[-1] < 0.5 * kd[0], kd


def test_precomputed_logits_train_as_the_online_teacher(folders, online, tmp_path):
    """The logits file of the run's prepared folder gives the online run's loss, epoch by epoch."""
    logits_file = tmp_path / "teacher.npz"
    count, seconds = compute_teacher_logits([str(folders["teacher"])], str(online / "prepared"), str(logits_file))
    assert (count, seconds) == (6, 1.5)
    config = tiny_finetune_config(
        folders["student"], val_fraction=0.25, clip_seconds=1.5, epochs=4, teacher_logits=[str(logits_file)],
        loss_terms={"kd": 1.0}, **CLEAN,
    )  # fmt: skip
    finetune(online / "prepared", tmp_path / "run", config, verbose=False)
    want, got = _log(online), _log(tmp_path / "run")
    for column in ("train_kd", "train_loss", "val_loss"):
        np.testing.assert_allclose(_floats(got, column), _floats(want, column), rtol=REL, err_msg=column)


def test_teacher_logits_of_a_data_set_score_every_file_once_decoded(folders, online, tmp_path):
    """From the audio files (decoded as float) the logits match those of the prepared 16-bit audio
    to the quantisation's precision, and unlabelled files are scored too."""
    compute_teacher_logits(
        [str(folders["teacher"])], str(folders["data"]), str(tmp_path / "files.npz"), unlabelled=str(folders["unlabelled"])
    )  # fmt: skip
    files = read_teacher_logits([str(tmp_path / "files.npz")])
    prepared = read_teacher_logits([str(_teacher_logits(folders, online, tmp_path))])
    assert len(files.paths) == 8 + 3 and files.num_windows.tolist() == [1] * 11
    rows = {p: i for i, p in enumerate(files.paths)}
    for i, path in enumerate(prepared.paths):
        want = prepared.file_logits(i)[0]
        np.testing.assert_allclose(files.file_logits(rows[path])[0], want, rtol=0, atol=1e-3 * np.abs(want).max())


def test_upstream_layout_is_read_by_file_name(folders, online, tmp_path):
    """An array aligned with a list of file names (upstream's AudioSet layout) finds every file."""
    archive = read_teacher_logits([str(_teacher_logits(folders, online, tmp_path))])
    names = [Path(p).name for p in archive.paths]
    if len(set(names)) != len(names):  # 0.wav of both classes: rename the rows by their keys
        names = archive.keys
    assert archive.num_windows.tolist() == [1] * len(names)
    np.save(tmp_path / "logits.npy", archive.logits)
    (tmp_path / "files.txt").write_text("\n".join(names) + "\n")
    upstream = read_teacher_logits([str(tmp_path / "logits.npy"), str(tmp_path / "files.txt")])
    from eat_keras.train.prepare import read_prepared

    entries = read_prepared(online / "prepared").entries("train")
    np.testing.assert_array_equal(upstream.rows_for(entries), archive.rows_for(entries))
    (tmp_path / "files.txt").write_text("\n".join(names[:-1]) + "\n")
    with pytest.raises(EatKerasError, match="one row per line"):
        read_teacher_logits([str(tmp_path / "logits.npy"), str(tmp_path / "files.txt")])


def test_precomputed_logits_are_found_by_file_and_window_and_hold_no_padding(tmp_path):
    """Files of 1, 4 and 2 windows: the file holds their 7 windows (no padding to the longest file's
    4); a crop finds its file's window nearest its start, within the file's windows, in the
    student's class order; a version-1 file (padded with NaN) reads as the same windows, and logits
    that do not add up to the window counts are refused."""
    counts, classes = np.array([1, 4, 2]), ["x", "y"]
    logits = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    paths, keys = [str(tmp_path / f"{n}.wav") for n in "abc"], ["a.wav", "b.wav", "c.wav"]
    write_teacher_logits(tmp_path / "t.npz", logits, counts, paths, keys, classes, 1.0, ["teacher"])
    archive = read_teacher_logits([str(tmp_path / "t.npz")])
    assert archive.logits.shape == (7, 2)
    np.testing.assert_array_equal(archive.file_logits(1), logits[1:5])

    # the training side: c then b (a is not trained); hop 1 s = 100 samples at 100 Hz
    train = [{"path": paths[2], "key": keys[2]}, {"path": paths[1], "key": keys[1]}]
    prepared = SimpleNamespace(entries=lambda side: train)
    index, start = tf.constant([0, 0, 0, 1, 1, 1, 1]), tf.constant([0, 140, 900, 0, 149, 151, 10_000])
    want = logits[[5, 6, 6, 1, 2, 3, 4]]
    np.testing.assert_array_equal(PrecomputedTeacher(archive, prepared, classes, 100).logits(index, start), want)
    swapped = PrecomputedTeacher(archive, prepared, classes[::-1], 100).logits(index, start)
    np.testing.assert_array_equal(swapped, want[:, ::-1])

    padded = np.full((3, 4, 2), np.nan, np.float32)
    for i, first in enumerate([0, 1, 5]):
        padded[i, : counts[i]] = logits[first : first + counts[i]]
    fields = dict(np.load(tmp_path / "t.npz"))
    np.savez(tmp_path / "v1.npz", **{**fields, "logits": padded, "version": np.int32(1), "format": np.array(FORMAT_NAME)})
    version_1 = read_teacher_logits([str(tmp_path / "v1.npz")])
    np.testing.assert_array_equal(version_1.logits, logits)
    np.testing.assert_array_equal(version_1.num_windows, counts)

    np.savez(tmp_path / "short.npz", **{**fields, "logits": logits[:6]})  # one window short of the counts
    with pytest.raises(EatKerasError, match=r"expected logits \[windows, classes\].*\[6, 2\].*adding up to 7"):
        read_teacher_logits([str(tmp_path / "short.npz")])


def _teacher_logits(folders, online, tmp_path) -> Path:
    out = tmp_path / "t.npz"
    compute_teacher_logits([str(folders["teacher"])], str(online / "prepared"), str(out))
    return out


def _unlabelled_config(folders, **changes):
    return tiny_finetune_config(
        folders["student"], val_fraction=0.25, teachers=[str(folders["teacher"])], unlabelled=str(folders["unlabelled"]),
        mixup_alpha=0.3, **changes,
    )  # fmt: skip


@pytest.fixture(scope="module")
def with_unlabelled(folders, tmp_path_factory) -> Path:
    """The default distillation loss with mixup, three unlabelled files added."""
    out = tmp_path_factory.mktemp("unlabelled") / "run"
    finetune(read_folder_dataset(folders["data"]), out, _unlabelled_config(folders), verbose=False)
    return out


def test_unlabelled_files_train_on_the_training_side_only(folders, with_unlabelled):
    with (with_unlabelled / "split.csv").open() as f:
        rows = list(csv.DictReader(f))
    unlabelled = [r for r in rows if not r["label"]]
    assert len(unlabelled) == 3 and {r["side"] for r in unlabelled} == {"train"}
    report = (with_unlabelled / "split_report.txt").read_text()
    assert [line.split() for line in report.splitlines() if line.startswith("unlabelled")] == [["unlabelled", "3", "0", "0", "3"]]
    log = _log(with_unlabelled)
    assert {"train_cb", "train_supcon", "train_kd"} <= set(log[0])


def test_a_run_with_a_teacher_resumes_after_a_kill_as_if_uninterrupted(folders, with_unlabelled, tmp_path):
    out, config = tmp_path / "killed", _unlabelled_config(folders)
    with pytest.MonkeyPatch.context() as mp:
        interrupting_epoch_2(mp)
        with pytest.raises(KeyboardInterrupt):
            finetune(read_folder_dataset(folders["data"]), out, config, verbose=False)
    assert not tf_config.is_op_determinism_enabled()
    finetune(read_folder_dataset(folders["data"]), out, config, verbose=False)
    assert (out / "log.csv").read_text() == (with_unlabelled / "log.csv").read_text()
    for got, want in ((best_values(out), best_values(with_unlabelled)),
                      (checkpoint_values(out / "checkpoints" / "ckpt-2"), checkpoint_values(with_unlabelled / "checkpoints" / "ckpt-2"))):  # fmt: skip
        for key, expected in want.items():
            scale = float(np.max(np.abs(expected), initial=0.0)) if np.issubdtype(expected.dtype, np.floating) else 0
            np.testing.assert_allclose(got[key], expected, rtol=0, atol=1e-6 * scale, err_msg=key)


def test_verify_reports_student_and_teacher_accuracy_and_agreement(folders, with_unlabelled, capsys):
    from eat_keras.cli import main

    assert main(["verify", str(with_unlabelled / "best"), str(folders["teacher"]), str(folders["data"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    accuracies = [line for line in lines if line.startswith(("A ", "B ")) and ": accuracy " in line]
    assert len(accuracies) == 2
    agreement = next(line for line in lines if line.startswith("top-1 agreement: "))
    assert agreement.endswith("(8 files)") and 0.0 <= float(agreement.split()[2]) <= 1.0


def test_unlabelled_files_need_a_teacher_and_a_teacher_needs_the_kd_term(folders, tmp_path):
    with pytest.raises(EatKerasError, match="have no label"):
        finetune(
            read_folder_dataset(folders["data"]), tmp_path / "a",
            tiny_finetune_config(folders["student"], val_fraction=0.25, unlabelled=str(folders["unlabelled"])), verbose=False,
        )  # fmt: skip
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="no kd term"):
        tiny_finetune_config(folders["student"], teachers=[str(folders["teacher"])], loss_terms={"cb": 1.0})
    with pytest.raises(ConfigError, match="needs a teacher"):
        tiny_finetune_config(folders["student"], loss_terms={"kd": 1.0})
    with pytest.raises(EatKerasError, match="classes"):
        finetune(
            read_folder_dataset(folders["data"]), tmp_path / "b",
            tiny_finetune_config(folders["student"], val_fraction=0.25, teachers=[str(folders["student"])]), verbose=False,
        )  # fmt: skip


def test_an_exported_saved_model_teaches_as_its_model_folder(folders, tmp_path):
    import tensorflow as tf

    from eat_keras.export.saved_model import export_saved_model
    from eat_keras.models.saving import load_tagger_dir
    from eat_keras.train.teacher import OnlineTeacher

    saved = export_saved_model(load_tagger_dir(folders["teacher"]), tmp_path, "teacher")
    waveform = tf.constant(np.random.default_rng(0).uniform(-0.3, 0.3, (3, 48000)), tf.float32)
    mix = lambda x: 0.7 * x + 0.3 * tf.reverse(x, [0])  # noqa: E731
    want = OnlineTeacher([str(folders["teacher"])], list(CLASSES)).logits(waveform, mix).numpy()
    got = OnlineTeacher([str(saved)], list(CLASSES)).logits(waveform, mix).numpy()
    assert_close(got, want, NETWORK_RTOL)  # a frozen graph: another operation order


def test_a_side_with_unlabelled_files_is_not_evaluated(with_unlabelled):
    from eat_keras.train.evaluate import PreparedSide, file_logits
    from eat_keras.train.prepare import read_prepared

    side = PreparedSide(read_prepared(with_unlabelled / "prepared"), "train")
    with pytest.raises(EatKerasError, match="3 of the 9 files have no label"):
        file_logits(lambda w: w[:, :2], side, list(CLASSES), 32000)


def test_an_ensemble_averages_its_teachers_logits(folders, tmp_path):
    import tensorflow as tf

    from eat_keras.models.saving import load_tagger_dir, save_tagger
    from eat_keras.train.teacher import OnlineTeacher

    other = load_tagger_dir(folders["teacher"])
    kernel, bias = other.net.head.classifier.get_weights()
    other.net.head.classifier.set_weights([-kernel, bias + np.array([-1.0, 3.0], np.float32)])
    save_tagger(other, tmp_path / "other")
    waveform = tf.constant(np.random.default_rng(1).uniform(-0.3, 0.3, (2, 48000)), tf.float32)
    one, two = (OnlineTeacher([str(t)], list(CLASSES)).logits(waveform).numpy() for t in (folders["teacher"], tmp_path / "other"))
    both = OnlineTeacher([str(folders["teacher"]), str(tmp_path / "other")], list(CLASSES)).logits(waveform).numpy()
    assert np.abs(one - two).max() > 1.0  # two different teachers
    assert_close(both, (one + two) / 2, OP_RTOL * 4)  # the same members, summed then halved
