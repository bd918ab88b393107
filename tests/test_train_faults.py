"""Fine-tuning and evaluation faults: a data set no classifier can learn from, a bad setting or an
output folder that cannot be written is refused in one line (exit status 2) before anything is
written, and a diverging run stops without saving its weights.

The data sets and the model are :mod:`tiny_training`'s: a training step costs milliseconds."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_process import run_cli
from tiny_training import CLASSES, PER_CLASS, SR, tiny_finetune_config, tiny_model, write_class_folders  # noqa: F401

import eat_keras.train.fit as fit_module
from eat_keras.errors import ConfigError, EatKerasError
from eat_keras.train.data import (
    AudioCache,
    Example,
    check_unique_files,
    read_folder_dataset,
    read_manifest,
    split_examples,
)
from eat_keras.train.evaluate import NonFiniteLogitsError, file_logits
from eat_keras.train.fit import MONITORS, FinetuneConfig, _diverged, _RunFolder, finetune, is_improvement
from eat_keras.train.metrics import classification_report, write_report_files


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """``root/<class>/<i>.wav``, three files per class."""
    return write_class_folders(tmp_path_factory.mktemp("data"))


def _config(model: Path, **changes) -> FinetuneConfig:
    return tiny_finetune_config(model, **{"val_fraction": 0.34, "mixup_alpha": 0.0, **changes})


def _manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_one_error_line(result, *words: str) -> str:
    """Exit status 2 and exactly one ``eat-keras: error:`` line holding ``words``, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    line = result.error_lines[0]
    for word in words:
        assert word in line, line
    return line


def _finetune_cli(data: Path, out: Path, model: Path, *flags: str):
    return run_cli(["finetune", str(data), "--out", str(out), "--model", str(model), *flags])


# --- data sets no classifier can learn from --------------------------------------------------


def test_a_single_class_is_refused(data_root, tiny_model, tmp_path):
    one_class = tmp_path / "one_class"
    shutil.copytree(data_root / "hum", one_class / "hum")
    result = _finetune_cli(one_class, tmp_path / "run", tiny_model)
    _assert_one_error_line(result, "at least two classes", "'hum'")
    assert not (tmp_path / "run").exists()
    with pytest.raises(EatKerasError, match="at least two classes"):
        split_examples(read_folder_dataset(one_class))


def test_a_file_listed_twice_is_refused_naming_it(data_root, tiny_model, tmp_path):
    rows = [f"{label}/{i}.wav,{label}" for label in CLASSES for i in range(PER_CLASS)]
    manifest = _manifest(tmp_path / "twice.csv", ["path,label", *rows, "hum/1.wav,hum"])
    shutil.copytree(data_root, tmp_path, dirs_exist_ok=True)
    result = _finetune_cli(manifest, tmp_path / "run", tiny_model)
    line = _assert_one_error_line(result, "1 file(s) listed more than once", str(tmp_path / "hum" / "1.wav"))
    assert line.endswith("1.wav (2 times) (list each file once, under one label)"), line
    assert not (tmp_path / "run").exists()


def test_a_file_under_two_labels_is_refused_naming_it(data_root, tiny_model, tmp_path):
    rows = [f"{label}/{i}.wav,{label}" for label in CLASSES for i in range(PER_CLASS)]
    manifest = _manifest(tmp_path / "two_labels.csv", ["path,label", *rows, "hum/2.wav,hiss"])
    shutil.copytree(data_root, tmp_path, dirs_exist_ok=True)
    result = _finetune_cli(manifest, tmp_path / "run", tiny_model)
    _assert_one_error_line(result, f"1 file(s) under more than one label: {tmp_path / 'hum' / '2.wav'} (hiss, hum)")
    assert not (tmp_path / "run").exists()


def test_the_library_refuses_them_too_and_names_only_the_first_few(data_root, tmp_path):
    # a link into another class folder is the same file under two labels once paths are resolved
    linked = tmp_path / "linked"
    shutil.copytree(data_root, linked)
    (linked / "hiss" / "alias.wav").symlink_to(linked / "hum" / "0.wav")
    with pytest.raises(EatKerasError, match=r"1 file\(s\) under more than one label: .*/0\.wav \(hiss, hum\)"):
        split_examples(read_folder_dataset(linked))
    repeated = [Example(f"/d/{i}.wav", "a") for i in range(8)] * 2
    with pytest.raises(EatKerasError) as caught:
        check_unique_files(repeated + [Example("/d/x.wav", "b")])
    message = str(caught.value)
    assert "8 file(s) listed more than once: /d/0.wav (2 times), " in message and message.count(" and 3 more") == 1
    assert message.count("(2 times)") == 5  # the first five named, the rest counted


def test_a_binary_manifest_is_one_line(tiny_model, tmp_path):
    binary = tmp_path / "image.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    result = _finetune_cli(binary, tmp_path / "run", tiny_model)
    _assert_one_error_line(result, str(binary), "not a text CSV manifest")
    # UTF-8 text with a NUL byte in a cell: a path no file system accepts
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"path,label\nhum/0.wav,hum\nhum/\x00.wav,hum\n")
    with pytest.raises(EatKerasError, match=r"nul.csv, line 3: a NUL byte"):
        read_manifest(nul)


def test_a_manifest_without_the_required_columns_is_one_line(data_root, tiny_model, tmp_path):
    manifest = _manifest(tmp_path / "columns.csv", ["file,class", f"{data_root}/hum/0.wav,hum"])
    result = _finetune_cli(manifest, tmp_path / "run", tiny_model)
    _assert_one_error_line(result, "no column 'path', 'label'", "columns: file, class")


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1; got 0"),
        (["--batch-size", "-4"], "--batch-size must be at least 1; got -4"),
        (["--clip-seconds", "0.01"], "--clip-seconds must be at least 1 s; got 0.01"),
        (["--clip-seconds", "0"], "--clip-seconds must be at least 1 s; got 0"),  # not "unset"
    ],
)
def test_bad_evaluation_flags_are_one_line(flags, words, data_root, tiny_model, tmp_path):
    out = tmp_path / "eval"
    for command in (
        ["evaluate", str(tiny_model), str(data_root), "--out", str(out)],
        ["verify", str(tiny_model), str(tiny_model), str(data_root)],
    ):
        _assert_one_error_line(run_cli([*command, *flags]), words)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--clip-seconds", "0.1"], "clip_seconds must be between 1 and"),
        (["--loss", "cb=0"], "at least one loss term weight must be > 0"),
        (["--batch-size", "0"], "batch_size must be finite and > 0"),
        (["--epochs", "0"], "epochs must be finite and > 0"),
        (["--lr", "nan"], "learning_rate must be finite"),
    ],
)
def test_bad_finetune_flags_are_one_line(flags, words, data_root, tiny_model, tmp_path):
    result = _finetune_cli(data_root, tmp_path / "run", tiny_model, *flags)
    _assert_one_error_line(result, words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"loss_terms": {"cb": 0.0, "supcon": 0.0}}, "at least one loss term weight"),
        ({"loss_terms": {"cb": -1.0}}, "finite and >= 0"),
        ({"loss_terms": {"bogus": 1.0}}, "must be among"),
        ({"learning_rate": math.inf}, "learning_rate must be finite"),
        ({"clip_seconds": 0.5}, "clip_seconds must be between"),
        ({"clip_seconds": 1e9}, "clip_seconds must be between"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"epochs": -1}, "epochs must be finite and > 0"),
    ],
)
def test_the_python_api_refuses_the_same_settings(changes, words, tiny_model):
    with pytest.raises(ConfigError, match=words):
        _config(tiny_model, **changes)
    config = _config(tiny_model)
    for name, value in changes.items():
        setattr(config, name, value)  # finetune() checks again: fields can change after creation
    with pytest.raises(ConfigError, match=words):
        finetune([], "unused", config, verbose=False)


def test_a_loss_term_named_twice_is_refused():
    from eat_keras.cli import _parse_loss_terms

    assert _parse_loss_terms(["cb=0.5", "supcon"]) == {"cb": 0.5, "supcon": 1.0}
    with pytest.raises(EatKerasError, match="--loss names 'cb' twice"):
        _parse_loss_terms(["cb=1", "cb=2"])  # the second would silently replace the first


def test_labels_the_model_lacks_are_named_briefly(data_root):
    """Data labels against the 527 AudioSet classes: counts and a few names, not 8 KB of them."""
    examples = read_folder_dataset(data_root)
    audioset_like = [f"AudioSet class number {i}" for i in range(527)]
    with pytest.raises(EatKerasError) as caught:
        file_logits(lambda w: np.zeros((len(w), 527), np.float32), examples, audioset_like, SR, 2)
    message = str(caught.value)
    assert f"{len(CLASSES)} data label(s)" in message and "527 classes" in message
    assert "and 524 more" in message and len(message) < 300 and "\n" not in message


def test_evaluation_refuses_bad_sizes_and_non_finite_logits(data_root):
    examples = read_folder_dataset(data_root)

    def predict(waveforms: np.ndarray) -> np.ndarray:
        return np.zeros((len(waveforms), len(CLASSES)), np.float32)

    for clip, batch in ((SR, 0), (0, 2), (61 * SR, 2)):
        with pytest.raises(ConfigError):
            file_logits(predict, examples, list(CLASSES), clip, batch)
    logits = file_logits(predict, examples, list(CLASSES), SR, 2)
    assert logits.shape == (len(examples), len(CLASSES))

    def broken(waveforms: np.ndarray) -> np.ndarray:
        """NaN for one window: the second (padded) one of the fourth file, hum/0.wav."""
        out = predict(waveforms)
        out[7] = np.nan
        return out

    assert [Path(e.path).parent.name for e in examples][3] == "hum"  # two windows per 1.5 s file
    with pytest.raises(NonFiniteLogitsError, match=r"non-finite logits for 1 of 6 file\(s\) \(e\.g\. .*hum/0\.wav\)"):
        file_logits(broken, examples, list(CLASSES), SR, 2 * len(examples))


# --- output folders --------------------------------------------------------------------------


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder in which nothing can be made: a read-only one, or (for root, whom permissions do
    not stop) sysfs, whose top level refuses new folders."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    probe = Path("/sys/eat-keras-write-probe")
    try:
        probe.mkdir()
    except OSError:
        yield Path("/sys")
        return
    probe.rmdir()
    pytest.skip("running as root and no read-only folder to write into")


def test_finetune_onto_a_file_or_into_a_read_only_folder_is_one_line(
    data_root, tiny_model, tmp_path, unwritable_dir
):
    in_the_way = tmp_path / "run"
    in_the_way.write_text("keep me\n")
    result = _finetune_cli(data_root, in_the_way, tiny_model, "--epochs", "1")
    _assert_one_error_line(result, str(in_the_way), "a file is in the way")
    assert in_the_way.read_text() == "keep me\n"
    result = _finetune_cli(data_root, unwritable_dir / "run", tiny_model, "--epochs", "1")
    _assert_one_error_line(result, str(unwritable_dir / "run"), "cannot write the run folder")


def test_unwritable_run_cache_and_report_folders_in_the_python_api(data_root, tiny_model, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    examples = read_folder_dataset(data_root)
    with pytest.raises(EatKerasError, match="cannot write the run folder"):
        finetune(examples, a_file / "run", _config(tiny_model), verbose=False)
    with pytest.raises(EatKerasError, match="cannot make the cache folder"):
        AudioCache(a_file / "cache")
    report = classification_report([0, 1], [0, 0], list(CLASSES))
    with pytest.raises(EatKerasError, match="cannot write the evaluation report"):
        write_report_files(report, a_file)


# --- a run that diverges ---------------------------------------------------------------------


def _assert_nothing_of_the_run_saved(out: Path) -> None:
    assert not (out / "best").exists()
    assert not (out / "checkpoints").exists()
    assert not (out / "log.csv").exists()


def test_a_diverging_run_stops_saves_nothing_and_can_be_retried(data_root, tiny_model, tmp_path):
    """The issue's ``--lr 1e6``: the weights overflow within the first epoch."""
    examples, out = read_folder_dataset(data_root), tmp_path / "run"
    with pytest.raises(EatKerasError, match=r"training diverged in epoch 1: .*non-finite.*lower --lr") as caught:
        finetune(examples, out, _config(tiny_model, learning_rate=1e6), verbose=False)
    assert "\n" not in str(caught.value)
    _assert_nothing_of_the_run_saved(out)
    # as the message says, the same folder takes a corrected configuration
    result = finetune(examples, out, _config(tiny_model, epochs=1), verbose=False)
    assert result.best_epoch == 1 and (out / "best" / "eat_keras.json").is_file()
    assert json.loads((out / "finetune.json").read_text())["learning_rate"] == 1e-3


def test_a_nan_loss_stops_at_its_step(data_root, tiny_model, tmp_path, monkeypatch):
    """A loss that is NaN from the first step (as a term overflowing would give) stops there."""
    real_loss = fit_module.CombinedLoss

    def nan_loss(*args, **kwargs):
        loss = real_loss(*args, **kwargs)

        def call(target, logits, embedding):
            total, terms = loss(target, logits, embedding)
            return total * float("nan"), terms

        return call

    monkeypatch.setattr(fit_module, "CombinedLoss", nan_loss)
    out = tmp_path / "run"
    config = _config(tiny_model, freeze_backbone_epochs=2)  # only the head: a small gradient graph
    with pytest.raises(EatKerasError, match="training diverged in epoch 1: the training loss became nan at step 1"):
        finetune(read_folder_dataset(data_root), out, config, verbose=False)
    _assert_nothing_of_the_run_saved(out)


def test_a_non_finite_metric_is_never_the_best():
    nan, inf = math.nan, math.inf
    better = MONITORS["val_loss"]
    assert not is_improvement(nan, nan, nan, inf, better)  # no best yet, and still no improvement
    assert not is_improvement(nan, 0.1, 0.5, 0.5, better)  # min(nan, 0.5) would pick NaN
    assert not is_improvement(-inf, 0.1, 0.5, 0.5, better)
    assert is_improvement(0.4, 0.4, 0.5, 0.5, better)
    assert is_improvement(0.5, 0.5, nan, inf, better)
    accuracy = MONITORS["val_accuracy"]
    assert not is_improvement(nan, 0.1, 0.5, 0.5, accuracy)  # max(nan, 0.5) would pick NaN
    assert is_improvement(1.0, 0.2, 1.0, 0.3, accuracy)  # a tie goes to the lower loss
    assert not is_improvement(1.0, nan, 1.0, 0.3, accuracy)


def test_divergence_after_saved_epochs_says_to_use_a_new_folder(tmp_path):
    run = _RunFolder(tmp_path)
    fresh = str(_diverged(run, 0, "the training loss became nan at step 2", 0.1))
    assert "nothing was saved" in fresh and "same --out folder" in fresh
    run.log.write_text("epoch\n1\n")  # epoch 1 finished before epoch 2 diverged
    later = str(_diverged(run, 1, "the training loss became inf at step 2", 0.1))
    assert "epoch 2" in later and "keeps the earlier epochs" in later and "new --out folder" in later
