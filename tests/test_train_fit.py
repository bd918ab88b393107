"""Fine-tuning: the loss goes down, a killed run resumes, freezing works, the result exports with
its own class names; bad input fails before the run folder is written, the best epoch, validation,
class weights and resumed data are the ones the recipe promises, and a finished run stays finished."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from tiny_training import tiny_finetune_config, tiny_model, write_class_folders  # noqa: F401

import eat_keras.train.fit as fit_module
from eat_keras.errors import EatKerasError
from eat_keras.train.data import Example, class_counts, read_esc50_manifest, read_folder_dataset
from eat_keras.train.fit import MONITORS, FinetuneConfig, _RunFolder, finetune, learning_rate_factor
from eat_keras.train.losses import cross_entropy

CLASSES = ("dog", "rain", "rooster")


def _examples(shared_dir, per_class=10):
    data = shared_dir / "data" / "esc10"
    examples = read_esc50_manifest(data / "esc10.csv", data / "audio")
    picked = []
    for label in CLASSES:
        picked += [e for e in examples if e.label == label][:per_class]
    return picked


def _config(shared_dir, **changes):
    base = dict(
        model=str(shared_dir / "weights" / "mn04_as_mAP_432.pt"), clip_seconds=2.0, batch_size=8,
        epochs=3, learning_rate=1e-3, warmup_fraction=0.0, val_fraction=0.25, mixup_alpha=0.0, patience=5,
    )
    return FinetuneConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def short_run(shared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    return finetune(_examples(shared_dir), out, _config(shared_dir), verbose=False)


def _log(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _expected_best_epoch(rows, monitor):
    """The documented rule: the best monitored value; a tie goes to the lower validation loss,
    then to the earlier epoch."""
    sign = 1.0 if MONITORS[monitor] is max else -1.0
    best = min(rows, key=lambda r: (-sign * float(r[monitor]), float(r["val_loss"]), int(r["epoch"])))
    return int(best["epoch"])


def _assert_best_is_the_best_logged_epoch(result, monitor):
    rows = _log(result.out_dir / "log.csv")
    assert result.best_epoch == _expected_best_epoch(rows, monitor), rows
    manifest = json.loads((result.best_dir / "eat_keras.json").read_text())
    assert manifest["training"]["epoch"] == result.best_epoch  # best/ holds that epoch


@pytest.mark.slow
def test_training_lowers_the_loss_and_saves_the_best(short_run):
    # the validation loss: the training loss of three epochs of three small batches, with dropout
    # and a contrastive term, goes up as often as down from one seed to the next
    losses = [row["val_loss"] for row in short_run.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert (short_run.best_dir / "eat_keras.json").is_file()
    rows = _log(short_run.out_dir / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_cb", "train_supcon", "val_accuracy", "val_macro_f1", "lr"} <= set(rows[0])
    split = (short_run.out_dir / "split_report.txt").read_text()
    assert all(name in split for name in CLASSES)
    _assert_best_is_the_best_logged_epoch(short_run, "val_macro_f1")


@pytest.mark.slow
def test_fine_tuned_model_exports_with_its_class_names(short_run, shared_dir, tmp_path):
    from eat_keras.export.saved_model import export_saved_model
    from eat_keras.models.saving import load_tagger_dir

    tagger = load_tagger_dir(short_run.best_dir)
    assert tagger.class_names == list(CLASSES) and tagger.config.label_type == "single_label"
    path = export_saved_model(tagger, tmp_path, "esc3")
    loaded = tf.saved_model.load(str(path))
    assert [n.decode() for n in loaded.class_names().numpy()] == list(CLASSES)
    wav = np.zeros([2, 64000], np.float32)
    scores = loaded.signatures["serving_default"](waveform=tf.constant(wav))["scores"].numpy()
    assert scores.shape == (2, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # softmax for single-label


def test_a_different_configuration_is_refused(short_run, shared_dir):
    with pytest.raises(EatKerasError, match="another configuration .*learning_rate"):
        finetune(_examples(shared_dir), short_run.out_dir, _config(shared_dir, learning_rate=5e-4), verbose=False)


_RUN = """
import os, signal, sys
import tensorflow as tf
import tf_keras
from eat_keras.train.data import read_esc50_manifest
from eat_keras.train.fit import FinetuneConfig, finetune
sys.path.insert(0, sys.argv[3])
from test_train_fit import _config, _examples
from pathlib import Path
if sys.argv[4] == "die-in-epoch-2":
    # SIGKILL ourselves after the first batch of epoch 2: a hard kill mid-epoch, independent of
    # how fast the machine is (a parent's sleep-then-kill raced a fast CI runner).
    saved = tf.train.CheckpointManager.save
    def save_then_arm(self, *args, **kwargs):
        path = saved(self, *args, **kwargs)
        tf_keras.utils.Progbar.update = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        return path
    tf.train.CheckpointManager.save = save_then_arm
shared = Path(sys.argv[1])
finetune(_examples(shared), sys.argv[2], _config(shared, epochs=3))
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(shared_dir, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-c", _RUN, str(shared_dir), str(out), os.path.dirname(__file__)]
    first = subprocess.run([*args, "die-in-epoch-2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert (out / "checkpoints" / "ckpt-1.index").exists() and not (out / "checkpoints" / "ckpt-2.index").exists()
    rows_before = _log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows_before] == [1]
    second = subprocess.run([*args, "run"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "1 epoch(s) done" in second.stderr
    rows = _log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[0] == rows_before[0]  # the finished epoch is kept, not redone
    assert "epoch 1/3" not in second.stderr and "epoch 2/3" in second.stderr


@pytest.mark.slow
def test_frozen_backbone_and_batchnorm(shared_dir, tmp_path):
    from eat_keras.models.saving import load_tagger_dir
    from eat_keras.weights.loader import load_tagger_from_file

    config = _config(shared_dir, epochs=1, freeze_backbone_epochs=1, freeze_batchnorm=True)
    result = finetune(_examples(shared_dir, per_class=6), tmp_path, config, verbose=False)
    tuned = load_tagger_dir(result.best_dir)
    pretrained = load_tagger_from_file(config.model)
    for a, b in zip(pretrained.net.blocks[5].weights, tuned.net.blocks[5].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # kernels, BN gamma/beta and statistics
    np.testing.assert_array_equal(pretrained.net.last_conv.weights[0], tuned.net.last_conv.weights[0])


def test_learning_rate_schedule_stretches_over_the_run():
    """Upstream's shape (exponential warm-up, linear decay) as a function of the run's progress."""
    config = FinetuneConfig(warmup_fraction=0.1, last_lr_factor=0.01)
    assert learning_rate_factor(0.0, config) == pytest.approx(np.exp(-5.0))
    assert learning_rate_factor(0.05, config) == pytest.approx(np.exp(-5 * 0.5**2))
    assert learning_rate_factor(0.1, config) == 1.0
    assert learning_rate_factor(0.55, config) == pytest.approx(1.0 - 0.99 * 0.5)
    assert learning_rate_factor(1.0, config) == pytest.approx(0.01)
    flat = FinetuneConfig(warmup_fraction=0.0, last_lr_factor=1.0)
    assert {learning_rate_factor(p, flat) for p in np.linspace(0, 1, 11)} == {1.0}


@pytest.mark.slow
def test_export_tag_and_verify_the_fine_tuned_model(short_run, shared_dir, tmp_path, capsys):
    """export → SavedModel and float32 TFLite; verify reports identical accuracy and full agreement;
    tag prints the fine-tuned class names."""
    from eat_keras.cli import main

    data = shared_dir / "data" / "esc10"
    rows = [e for e in read_esc50_manifest(data / "esc10.csv", data / "audio") if e.label in CLASSES and e.fold == "4"]
    manifest = tmp_path / "fold4.csv"
    manifest.write_text("path,label\n" + "".join(f"{e.path},{e.label}\n" for e in rows[::4]))
    out = tmp_path / "saved"
    assert main(["export", str(short_run.best_dir), "--name", "esc3", "--out", str(out), "--format", "saved_model",
                 "tflite", "--window-seconds", "2", "--quantization", "float32", "--no-logmel", "--no-metadata"]) == 0
    capsys.readouterr()
    for artifact in (out / "esc3" / "1", out / "esc3" / "tflite" / "esc3_2s_float32.tflite"):
        assert main(["verify", str(short_run.best_dir), str(artifact), str(manifest)]) == 0
        text = capsys.readouterr().out
        # "A name: window ..., each file's windows averaged", then "A name accuracy"
        scored = [line for line in text.splitlines() if line[:2] in ("A ", "B ") and not line.endswith("averaged")]
        accuracies = [float(line.rsplit(" ", 1)[1]) for line in scored]
        assert len(accuracies) == 2 and accuracies[0] == accuracies[1], text
        assert "difference B - A: +0.0000" in text and "top-1 agreement: 1.0000" in text, text
        # the artifact's logits (a TFLite file's from its softmax scores) are the model's
        max_logit_difference = float(text.split("max |logit A - logit B|: ")[1].split()[0])
        assert max_logit_difference < 1e-3, text
    assert main(["tag", rows[0].path, "--model", str(short_run.best_dir), "--top-k", "3"]) == 0
    labels = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(labels) == sorted(CLASSES)


# --- a run with mixup, validation and test folds, interrupted, resumed and started again ----------

# files per class (CLASSES order) taken from each ESC-10 fold: unequal training counts, so that
# class-balanced weights differ from ones
_FOLD_PICKS = {"1": (5, 3, 4), "2": (2, 2, 2), "3": (1, 1, 1)}


def _fold_examples(shared_dir):
    data = shared_dir / "data" / "esc10"
    examples = read_esc50_manifest(data / "esc10.csv", data / "audio")
    picked = []
    for fold, numbers in _FOLD_PICKS.items():
        for label, n in zip(CLASSES, numbers):
            picked += [e for e in examples if e.label == label and e.fold == fold][:n]
    return picked


class _Interrupted(Exception):
    """Stands for a kill right after a checkpoint."""


def _spied_finetune(examples, out, config, stop_after_checkpoint=False):
    """``finetune`` with its internals observed: the training batches it draws, every validation
    evaluated twice, and the losses it builds."""
    seen = SimpleNamespace(dataset_kwargs=[], batches=[], evaluations=[], losses=[], result=None)
    real_dataset, real_logits = fit_module.prepared_dataset, fit_module.dataset_logits
    real_loss = fit_module.CombinedLoss

    def recording_dataset(*args, **kwargs):
        dataset = real_dataset(*args, **kwargs)
        if kwargs["mode"] != "train":
            return dataset
        seen.dataset_kwargs.append((args, kwargs))

        def note(index, waveform):
            seen.batches.append((index.numpy(), waveform.numpy()))
            return index

        return dataset.map(lambda b: {**b, "index": tf.py_function(note, [b["index"], b["waveform"]], tf.int32)})

    def evaluating_twice(predict, *args, **kwargs):
        first, second = real_logits(predict, *args, **kwargs), real_logits(predict, *args, **kwargs)
        seen.evaluations.append((first, second))
        return first

    def recording_loss(*args, **kwargs):
        seen.losses.append(real_loss(*args, **kwargs))
        return seen.losses[-1]

    real_save = tf.train.CheckpointManager.save

    def save_then_stop(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise _Interrupted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "prepared_dataset", recording_dataset)
        mp.setattr(fit_module, "dataset_logits", evaluating_twice)
        mp.setattr(fit_module, "CombinedLoss", recording_loss)
        if stop_after_checkpoint:
            mp.setattr(tf.train.CheckpointManager, "save", save_then_stop)
            with pytest.raises(_Interrupted):
                finetune(examples, out, config, verbose=False)
        else:
            seen.result = finetune(examples, out, config, verbose=False)
    return seen


def _stopping_config(shared_dir):
    """Mixup on, validation fold 2, test fold 3. Epoch 1 trains; from epoch 2 on the learning rate
    is 0 (``_first_epoch_only``) and BatchNorm is frozen, so the model stays as it is, epoch 2 ties epoch 1 exactly and
    early stopping (patience 1) fires after it: epoch 1 is the best, epochs 3-4 never run. Cheap:
    two equal batches of 6 per epoch (one trace of the training step) and only the head trained
    (a small gradient graph; short_run trains the backbone)."""
    return _config(
        shared_dir, epochs=4, batch_size=6, mixup_alpha=0.3, val_folds=["2"], test_folds=["3"], patience=1,
        warmup_fraction=0.0, last_lr_factor=0.0, freeze_batchnorm=True, freeze_backbone_epochs=4,
    )


def _first_epoch_only(progress, config):
    """A schedule that trains the first of four epochs only."""
    return 1.0 if progress < 0.25 else 0.0


@pytest.fixture(scope="module")
def stopped_run(shared_dir, tmp_path_factory):
    """Start (interrupted after epoch 1), resume (epoch 2, then early stop), start again."""
    out = tmp_path_factory.mktemp("stopped")
    examples, config = _fold_examples(shared_dir), _stopping_config(shared_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "learning_rate_factor", _first_epoch_only)
        starts = [
            _spied_finetune(examples, out, config, stop_after_checkpoint=True),
            _spied_finetune(examples, out, config),
            _spied_finetune(examples, out, config),
        ]
    return SimpleNamespace(out=out, examples=examples, config=config, starts=starts)


def _split_side(out, side):
    with (out / "split.csv").open() as f:
        return [row for row in csv.DictReader(f) if row["side"] == side]


def test_best_epoch_is_the_best_logged_epoch(stopped_run):
    result = stopped_run.starts[1].result
    assert [int(r["epoch"]) for r in _log(stopped_run.out / "log.csv")] == [1, 2]
    _assert_best_is_the_best_logged_epoch(result, stopped_run.config.monitor)
    assert result.best_epoch == 1  # epoch 2 ties epoch 1: not an improvement


def test_validation_is_deterministic_and_reproduced_by_best(stopped_run):
    """Validation runs the model in inference mode: two evaluations give identical logits, and
    the logged validation loss of the best epoch is what best/ gives on the validation files."""
    from eat_keras.models.saving import load_tagger_dir
    from eat_keras.train.evaluate import dataset_logits, true_ids
    from eat_keras.train.prepare import read_prepared
    from eat_keras.train.shards import prepared_dataset

    evaluations = [pair for start in stopped_run.starts for pair in start.evaluations]
    assert len(evaluations) >= 3  # epoch 1, epoch 2, the test folds
    for first, second in evaluations:
        np.testing.assert_array_equal(first, second)
    result = stopped_run.starts[1].result
    prepared = read_prepared(stopped_run.out / "prepared")
    val = prepared.examples("val")
    assert sorted(e.path for e in val) == sorted(e.path for e in stopped_run.examples if e.fold == "2")
    tagger = load_tagger_dir(result.best_dir)
    predict = tagger.predict_function_for_waveforms()
    dataset = prepared_dataset(prepared, "val", mode="eval", clip_samples=64000, batch_size=8, class_names=CLASSES)
    logits = dataset_logits(lambda w: predict(tf.constant(w))["logits"].numpy(), dataset, val)
    targets = tf.one_hot(true_ids(val, list(CLASSES)), len(CLASSES))
    logged = float(result.history[result.best_epoch - 1]["val_loss"])
    assert float(cross_entropy(targets, tf.constant(logits))) == pytest.approx(logged, rel=1e-4)


def test_test_folds_are_held_out_and_evaluated_on_best(stopped_run):
    result = stopped_run.starts[1].result
    test_paths = sorted(e.path for e in stopped_run.examples if e.fold == "3")
    assert sorted(r["path"] for r in _split_side(stopped_run.out, "test")) == test_paths
    assert result.test_report is not None
    assert int(np.asarray(result.test_report.confusion).sum()) == len(test_paths)


def test_class_weights_come_from_the_training_split(stopped_run):
    from eat_keras.train.losses import class_balanced_loss, class_balanced_weights

    train = _split_side(stopped_run.out, "train")
    counts = class_counts([Example(r["path"], r["label"]) for r in train], list(CLASSES))
    assert counts.tolist() == list(_FOLD_PICKS["1"])  # unequal, so the weights are not all ones
    expected = class_balanced_weights(counts, stopped_run.config.loss_settings["cb_beta"])
    assert not np.allclose(expected, 1.0)
    # the run's class-balanced term gives what those weights give (the same float32 operations)
    batch = {"targets": tf.eye(3), "logits": tf.constant(np.random.default_rng(0).normal(size=(3, 3)), tf.float32)}
    want = float(class_balanced_loss(batch["targets"], batch["logits"], expected))
    assert want != pytest.approx(float(class_balanced_loss(batch["targets"], batch["logits"], np.ones(3))))
    losses = [loss for start in stopped_run.starts for loss in start.losses]
    assert len(losses) == 3
    for loss in losses:
        assert float(loss.functions["cb"](batch)) == pytest.approx(want, rel=1e-6)


def test_a_resumed_run_draws_the_data_of_an_uninterrupted_run(stopped_run):
    """Epoch 2 after the interruption gets epoch 2's order and crops, not a replay of epoch 1's."""
    first, resumed = stopped_run.starts[0], stopped_run.starts[1]
    args, kwargs = first.dataset_kwargs[0]
    epochs = [
        [(b["index"].numpy(), b["waveform"].numpy()) for b in fit_module.prepared_dataset(*args, **{**kwargs, "epoch": e})]
        for e in range(2)
    ]
    for drawn, expected in ((first.batches, epochs[0]), (resumed.batches, epochs[1])):
        assert len(drawn) == len(expected)
        for (index, waveform), (want_index, want_waveform) in zip(drawn, expected):
            np.testing.assert_array_equal(index, want_index)
            np.testing.assert_array_equal(waveform, want_waveform)


def test_an_early_stopped_run_started_again_trains_no_more(stopped_run):
    again = stopped_run.starts[2]
    assert again.batches == []  # no training step
    assert [int(r["epoch"]) for r in _log(stopped_run.out / "log.csv")] == [1, 2]
    assert not (stopped_run.out / "checkpoints" / "ckpt-3.index").exists()
    assert again.result.best_epoch == 1 and len(again.result.history) == 2


def test_resuming_with_data_that_split_differently_is_refused_before_decoding(stopped_run, monkeypatch):
    """Refused before any file is decoded: the run's prepared folder and split stay as they were."""
    before = {p: p.read_bytes() for p in [stopped_run.out / "split.csv", *(stopped_run.out / "prepared").iterdir()]}
    dropped = next(e for e in stopped_run.examples if e.fold == "2")
    fewer = [e for e in stopped_run.examples if e != dropped]
    monkeypatch.setattr(fit_module, "prepared_for_run", None)  # a call would raise TypeError, not the refusal
    with pytest.raises(EatKerasError, match=f"split differently.*{dropped.path} is gone"):
        finetune(fewer, stopped_run.out, stopped_run.config, verbose=False)
    assert {p: p.read_bytes() for p in before} == before


def test_a_run_whose_files_were_skipped_resumes_from_the_same_files(tiny_model, tmp_path):
    """A file that cannot be decoded is left out (``on_error="skip"``) when the run prepares its
    files; the same files given again resume the run, as its prepared split lists the file as skipped."""
    data = write_class_folders(tmp_path / "data", per_class=4)
    (data / "hum" / "broken.wav").write_bytes(b"not audio")
    examples, config = read_folder_dataset(data), tiny_finetune_config(tiny_model, val_fraction=0.25, epochs=1)
    finetune(examples, tmp_path / "run", config, verbose=False, on_error="skip")
    skipped = json.loads((tmp_path / "run" / "prepared" / "prepared.json").read_text())["skipped"]
    assert [Path(e["path"]).name for e in skipped] == ["broken.wav"]
    finetune(examples, tmp_path / "run", dataclasses.replace(config, epochs=2), verbose=False, on_error="skip")
    assert [int(r["epoch"]) for r in _log(tmp_path / "run" / "log.csv")] == [1, 2]


# --- bad input fails before the run folder is written ----------------------------------------


def test_bad_loss_settings_are_one_line_user_errors(shared_dir, tmp_path, capsys):
    from eat_keras.cli import main

    for changes in ({"loss_terms": {"focal": 1.0}}, {"loss_settings": {"cb_beta": 1.0}}, {"patience": 0}):
        with pytest.raises(EatKerasError):
            _config(shared_dir, **changes)
    with pytest.raises(ValueError, match="among"):  # also a ValueError, as before
        _config(shared_dir, loss_terms={"focal": 1.0})
    data = shared_dir / "data" / "esc10" / "esc10.csv"
    for flags in (["--loss", "focal=1"], ["--cb-beta", "1"]):
        assert main(["finetune", str(data), "--out", str(tmp_path / "run"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("eat-keras: error:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "changes, message",
    [({"val_fraction": 0.0}, "validation side is empty"), ({"model": "no_such_model.pt"}, "no_such_model")],
)
def test_a_failed_start_leaves_the_folder_unclaimed(shared_dir, tmp_path, changes, message):
    out = tmp_path / "run"
    with pytest.raises(EatKerasError, match=message):
        finetune(_examples(shared_dir, per_class=4), out, _config(shared_dir, **changes), verbose=False)
    assert not (out / "finetune.json").exists()


def test_a_folder_without_a_finished_epoch_takes_a_new_configuration(shared_dir, tmp_path):
    run = _RunFolder(tmp_path)
    run.claim(_config(shared_dir))
    run.claim(_config(shared_dir, batch_size=4))  # e.g. retried after running out of memory
    assert json.loads(run.config.read_text())["batch_size"] == 4
    # a finished run whose checkpoints were deleted still holds its results (log.csv, best/)
    run.log.write_text("epoch\n1\n")
    with pytest.raises(EatKerasError, match="another configuration .*batch_size"):
        run.claim(_config(shared_dir))
    run.log.unlink()
    run.best.mkdir()
    with pytest.raises(EatKerasError, match="another configuration .*batch_size"):
        run.claim(_config(shared_dir))
