"""Fine-tuning: the loss goes down, a killed run resumes, freezing works, the result exports with
its own class names."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from eat_keras.errors import EatKerasError
from eat_keras.train.data import read_esc50_manifest
from eat_keras.train.fit import FinetuneConfig, finetune, learning_rate_factor

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
        epochs=3, learning_rate=1e-3, warmup_epochs=0, val_fraction=0.25, mixup_alpha=0.0, patience=5,
    )
    return FinetuneConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def short_run(shared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    return finetune(_examples(shared_dir), out, _config(shared_dir), verbose=False)


def _log(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_lowers_the_loss_and_saves_the_best(short_run):
    losses = [row["train_loss"] for row in short_run.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert (short_run.best_dir / "eat_keras.json").is_file()
    rows = _log(short_run.out_dir / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_cb", "train_supcon", "val_accuracy", "val_macro_f1", "lr"} <= set(rows[0])
    split = (short_run.out_dir / "split_report.txt").read_text()
    assert all(name in split for name in CLASSES)


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


def test_learning_rate_schedule_matches_upstream():
    config = FinetuneConfig(epochs=80)
    # upstream exp_warmup_linear_down(10, 65, 10, 0.01): e=0 → exp(-5 (1 - 0.05)^2)
    assert learning_rate_factor(0, config) == pytest.approx(np.exp(-5 * 0.95**2))
    assert learning_rate_factor(10, config) == 1.0
    assert learning_rate_factor(42, config) == pytest.approx(0.01 + 0.99 * (75 - 42) / 65)
    assert learning_rate_factor(79, config) == 0.01


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
        accuracies = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:2] in ("A ", "B ")]
        assert len(accuracies) == 2 and accuracies[0] == accuracies[1], text
        assert "difference B - A: +0.0000" in text and "top-1 agreement: 1.0000" in text, text
    assert main(["tag", rows[0].path, "--model", str(short_run.best_dir), "--top-k", "3"]) == 0
    labels = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(labels) == sorted(CLASSES)
