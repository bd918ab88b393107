"""Reproducible fine-tuning: one command, data and seed give one log.csv and one set of weights; a run
killed mid-epoch and resumed ends as the uninterrupted run; a finished run started with more epochs
goes on as if it had been started with them, or says how to train more. Also the generator-driven
randomness that makes this possible: the front-end's training mode and dropout.

The data and the model are :mod:`tiny_training`'s; each run trains the whole network for two epochs
of three steps, with mixup, masking and dropout drawing from the run's generator."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorflow.python.framework import config as tf_config
from tiny_training import (  # noqa: F401
    best_values,
    checkpoint_values,
    interrupting_epoch_2,
    tiny_finetune_config,
    tiny_model,
    write_class_folders,
)
from tolerances import OP_RTOL, assert_close

import eat_keras.train.fit as fit_module
from eat_keras.errors import EatKerasError
from eat_keras.frontend import NORM_SCALE, NORM_SHIFT, FrontendConfig, LogMelSpectrogram
from eat_keras.train.augment import GeneratorDropout, training_log_mel
from eat_keras.train.data import read_folder_dataset
from eat_keras.train.fit import FinetuneConfig, _RunFolder, finetune

REL = 1e-6  # weights of a resumed run against the uninterrupted run's, relative to each tensor's scale


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Four files per class: six train (three batches of two), two validate."""
    return write_class_folders(tmp_path_factory.mktemp("data"), per_class=4)


def _config(model: Path, **changes) -> FinetuneConfig:
    settings = {"val_fraction": 0.25, "mixup_alpha": 0.3, "freqm": 4, "timem": 8}  # every random draw in use
    return tiny_finetune_config(model, **{**settings, **changes})


def _run(data_root: Path, out: Path, config: FinetuneConfig) -> Path:
    finetune(read_folder_dataset(data_root), out, config, verbose=False)
    assert not tf_config.is_op_determinism_enabled()  # on for the run only
    return out


@pytest.fixture(scope="module")
def uninterrupted(data_root, tiny_model, tmp_path_factory) -> Path:
    return _run(data_root, tmp_path_factory.mktemp("uninterrupted"), _config(tiny_model))


def _assert_same_values(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        if np.issubdtype(expected.dtype, np.floating):
            scale = float(np.max(np.abs(expected), initial=0.0))
            np.testing.assert_allclose(got[key], expected, rtol=0, atol=REL * scale, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], expected, err_msg=key)


def _assert_same_run(got: Path, want: Path, epochs: int = 2) -> None:
    """The same log.csv, last checkpoint (weights, optimizers, RNG, counters) and best/ weights."""
    assert (got / "log.csv").read_text() == (want / "log.csv").read_text()
    last = f"ckpt-{epochs}"
    _assert_same_values(checkpoint_values(got / "checkpoints" / last), checkpoint_values(want / "checkpoints" / last))
    _assert_same_values(best_values(got), best_values(want))


def test_two_runs_of_one_command_give_one_log_and_one_set_of_weights(data_root, tiny_model, uninterrupted, tmp_path):
    rows = (uninterrupted / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and "seconds" not in rows[0]  # a wall-clock column would differ
    again = _run(data_root, tmp_path / "again", _config(tiny_model))
    _assert_same_run(again, uninterrupted)


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(data_root, tiny_model, uninterrupted, tmp_path):
    out, config = tmp_path / "killed", _config(tiny_model)
    with pytest.MonkeyPatch.context() as mp:
        seen = interrupting_epoch_2(mp)
        with pytest.raises(KeyboardInterrupt):
            finetune(read_folder_dataset(data_root), out, config, verbose=False)
    assert seen == [True] and not tf_config.is_op_determinism_enabled()
    assert (out / "checkpoints" / "ckpt-1.index").exists() and not (out / "checkpoints" / "ckpt-2.index").exists()
    assert len((out / "log.csv").read_text().splitlines()) == 2  # header and epoch 1
    _run(data_root, out, config)  # the same command again: redoes epoch 2 from epoch 1's checkpoint
    _assert_same_run(out, uninterrupted)


def test_a_finished_run_extends_to_more_epochs_as_if_started_with_them(data_root, tiny_model, uninterrupted, tmp_path):
    out = _run(data_root, tmp_path / "short", _config(tiny_model, epochs=1))
    assert len((out / "log.csv").read_text().splitlines()) == 2
    _run(data_root, out, _config(tiny_model, epochs=2))
    assert json.loads((out / "finetune.json").read_text())["epochs"] == 2
    _assert_same_run(out, uninterrupted)


def _finished_run(folder: Path, config: FinetuneConfig, epochs_done: int) -> _RunFolder:
    """A claimed run folder whose last checkpoint holds ``epochs_done`` epochs."""
    run = _RunFolder(folder)
    run.claim(config)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1)), str(run.checkpoints), max_to_keep=2)
    manager.save(checkpoint_number=epochs_done)
    return run


def test_another_length_goes_on_only_where_the_finished_epochs_keep_their_learning_rate(
    tiny_model, tmp_path, monkeypatch
):
    run = _finished_run(tmp_path / "run", _config(tiny_model, epochs=2), epochs_done=2)
    said: list[str] = []
    fit_module._first_epoch(SimpleNamespace(epoch=2, bad_epochs=0), _config(tiny_model, epochs=2), said.append)
    assert "larger --epochs" in said[0]
    assert run.claim(_config(tiny_model, epochs=4)) == 2  # the schedule does not depend on the run's length
    assert json.loads(run.config.read_text())["epochs"] == 4
    with pytest.raises(EatKerasError, match="has trained 2 epochs already: --epochs must be at least 2"):
        run.claim(_config(tiny_model, epochs=1))
    with pytest.raises(EatKerasError, match="another configuration .*epochs, learning_rate"):
        run.claim(_config(tiny_model, epochs=6, learning_rate=5e-4))
    # a schedule that stretches with the run would change the learning rate of finished epochs
    monkeypatch.setattr(fit_module, "learning_rate_factor", lambda progress, config: 1.0 - 0.5 * progress)
    with pytest.raises(EatKerasError) as caught:
        run.claim(_config(tiny_model, epochs=6))
    message = str(caught.value)
    assert "\n" not in message and "epoch 1 trained at 0.0009375, would be 0.000958333" in message, message
    assert f"--model {run.best} --out NEW_FOLDER" in message and "new --out folder" in message, message
    assert json.loads(run.config.read_text())["epochs"] == 4  # the refused start changed nothing
    for checkpoint in run.checkpoints.iterdir():
        checkpoint.unlink()
    run.log.write_text("epoch\n1\n2\n")  # a finished run whose checkpoints were deleted
    with pytest.raises(EatKerasError, match="without checkpoints: it cannot train more"):
        run.claim(_config(tiny_model, epochs=8))


# --- randomness drawn from the run's generator -----------------------------------------------


def _waveforms(batch: int = 4, seconds: float = 1.0) -> tf.Tensor:
    rng = np.random.default_rng(0)
    return tf.constant(0.1 * rng.standard_normal((batch, int(32000 * seconds))), tf.float32)


def test_training_log_mel_without_jitter_is_the_inference_front_end():
    config = FrontendConfig(n_mels=32, fmin_aug_range=0, fmax_aug_range=0)
    waveform = _waveforms()
    want = LogMelSpectrogram(config)(waveform, training=False).numpy()
    assert_close(training_log_mel(config, waveform, tf.random.Generator.from_seed(0)).numpy(), want, OP_RTOL)


def test_training_log_mel_replays_from_a_seed_and_masks_one_band_per_example():
    config = FrontendConfig(n_mels=32, freqm=8, timem=20)
    waveform = _waveforms(batch=16)
    rng = tf.random.Generator.from_seed(5)
    first, second = training_log_mel(config, waveform, rng).numpy(), training_log_mel(config, waveform, rng).numpy()
    assert not np.array_equal(first, second)  # the generator moved on: other jitter and masks
    np.testing.assert_array_equal(training_log_mel(config, waveform, tf.random.Generator.from_seed(5)).numpy(), first)
    masked_value = np.float32(NORM_SHIFT / NORM_SCALE)  # a zeroed log-mel, normalised
    widths = []
    for example in first[..., 0]:  # [mel bins, frames]
        rows = np.flatnonzero((example == masked_value).all(axis=1))
        widths.append(len(rows))
        assert len(rows) < config.freqm and (len(rows) == 0 or np.all(np.diff(rows) == 1))  # one band
    assert max(widths) > 0


def test_generator_dropout_is_inverted_dropout_replayed_from_a_seed():
    x = tf.ones([64, 100])
    layer = GeneratorDropout(0.5, tf.random.Generator.from_seed(3))
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    first = layer(x, training=True).numpy()
    assert set(np.unique(first)) == {0.0, 2.0} and 0.4 < (first == 0).mean() < 0.6
    assert not np.array_equal(layer(x, training=True).numpy(), first)
    np.testing.assert_array_equal(GeneratorDropout(0.5, tf.random.Generator.from_seed(3))(x, training=True).numpy(), first)


def test_a_run_draws_dropout_from_its_generator_and_saves_no_rng_with_the_model(tiny_model):
    from eat_keras.models.saving import load_tagger_dir

    tagger = load_tagger_dir(tiny_model)
    names = sorted(v.name for v in tagger.variables)
    assert any(isinstance(layer, tf_keras.layers.Dropout) for layer in tagger.net.submodules)
    fit_module._draw_dropout_from(tagger, tf.random.Generator.from_seed(0))
    assert not any(isinstance(layer, tf_keras.layers.Dropout) for layer in tagger.net.submodules)
    assert any(isinstance(layer, GeneratorDropout) for layer in tagger.net.submodules)
    assert sorted(v.name for v in tagger.variables) == names
