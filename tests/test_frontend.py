"""Log-mel front-end: parity with upstream AugmentMelSTFT and the training-only augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import CLIPS
from eat_keras.frontend import (
    FrontendConfig,
    LogMelSpectrogram,
    inference_log_mel,
    interleaved_mel_bands,
    kaldi_mel_banks,
    log_mel_spectrogram,
    mel_bands,
    symmetric_hann_window,
)
from tolerances import OP_RTOL, assert_close

TOL = 1e-4  # issue maximum; a faithful port measures ~1e-5


@pytest.mark.parametrize("seconds", [10, 2])
def test_golden_batch1(seconds, golden_waveforms, golden_logmel):
    for clip in CLIPS:
        key = clip if seconds == 10 else f"{clip}_2s"
        wav = golden_waveforms[clip][: seconds * 32000][np.newaxis]
        out = log_mel_spectrogram(wav).numpy()
        assert out.shape == golden_logmel[key].shape
        assert np.abs(out - golden_logmel[key]).max() <= TOL, key


@pytest.mark.parametrize("seconds", [10, 2])
def test_golden_batch4_through_layer(seconds, golden_waveforms, golden_logmel):
    wav = np.stack([golden_waveforms[c][: seconds * 32000] for c in CLIPS])
    out = LogMelSpectrogram()(wav, training=False).numpy()
    keys = [c if seconds == 10 else f"{c}_2s" for c in CLIPS]
    want = np.concatenate([golden_logmel[k] for k in keys])
    assert out.shape == (4, 128, seconds * 100, 1)
    assert np.abs(out - want).max() <= TOL


def test_silence_value_and_frame_count():
    config = FrontendConfig()
    for n in (32000, 32001, 32319, 32320, 64000):
        out = log_mel_spectrogram(np.zeros([2, n], np.float32)).numpy()
        assert out.shape == (2, 128, 1 + (n - 1) // 320, 1) == (2, 128, config.num_frames(n), 1)
        np.testing.assert_allclose(out, (math.log(1e-5) + 4.5) / 5, rtol=0, atol=1e-6)


def _kaldi_reference(n_mels, n_fft, sr, fmin, fmax):
    """get_mel_banks written from its formula in float64 (independent of the TF implementation)."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
    lo, hi = mel(fmin), mel(fmax)
    delta = (hi - lo) / (n_mels + 1)
    b = np.arange(n_mels)[:, None]
    left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    m = mel(np.arange(n_fft // 2) * sr / n_fft)[None, :]
    banks = np.maximum(0, np.minimum((m - left) / (centre - left), (right - m) / (right - centre)))
    return np.concatenate([banks, np.zeros([n_mels, 1])], axis=1).T


@pytest.mark.parametrize("n_mels,fmax", [(128, 15000), (64, 15000), (256, 14001), (40, 16000)])
def test_kaldi_banks_formula(n_mels, fmax):
    got = kaldi_mel_banks(n_mels, 1024, 32000, 0.0, fmax).numpy()
    want = _kaldi_reference(n_mels, 1024, 32000, 0.0, fmax)
    assert got.shape == (513, n_mels)
    # torchaudio (and this port) compute the triangles in float32 from mel values near 2000-3000,
    # so ~1e-5 round-off against this float64 reference is expected; a wrong formula is off by >1e-2.
    assert np.abs(got - want).max() < 5e-5
    assert np.all(got[-1] == 0)  # Nyquist row
    # spec sanity value: band 0 has one non-zero weight, 0.1886 on bin 1
    if n_mels == 128 and fmax == 15000:
        assert np.count_nonzero(got[:, 0]) == 1 and abs(got[1, 0] - 0.1886) < 1e-4


def test_window_is_symmetric_hann_centred():
    w = symmetric_hann_window(800, 1024)
    assert w.shape == (1024,)
    assert np.all(w[:112] == 0) and np.all(w[912:] == 0)
    assert w[112] == 0 and w[911] == 0  # symmetric: both ends of the 800 taps are zero
    np.testing.assert_allclose(w[112:912], np.hanning(800), atol=1e-7)


@pytest.mark.parametrize("hop,n_mels", [(160, 128), (480, 128), (320, 64), (320, 256)])
def test_configurable_hop_and_mels(hop, n_mels):
    config = FrontendConfig(hop_length=hop, n_mels=n_mels)
    wav = np.random.default_rng(0).standard_normal([1, 32000]).astype(np.float32) * 0.1
    out = LogMelSpectrogram(config)(wav).numpy()
    assert out.shape == (1, n_mels, 1 + 31999 // hop, 1)


def test_training_mode_jitters_and_masks():
    rng = np.random.default_rng(1)
    wav = rng.standard_normal([3, 32000]).astype(np.float32) * 0.1
    layer = LogMelSpectrogram(FrontendConfig(freqm=48, timem=40))
    eval_out = layer(wav, training=False).numpy()
    np.testing.assert_array_equal(eval_out, layer(wav).numpy())  # inactive at inference
    tf.random.set_seed(3)
    train_out = layer(wav, training=True).numpy()
    assert not np.allclose(train_out, eval_out)
    masked_value = (0.0 + 4.5) / 5  # masking sets the log-mel to 0 before normalisation
    # every example has whole masked mel rows (frequency mask) when the drawn width is >= 1
    rows = np.all(np.isclose(train_out[..., 0], masked_value), axis=2)
    cols = np.all(np.isclose(train_out[..., 0], masked_value), axis=1)
    assert rows.any() and cols.any()
    assert rows.sum(axis=1).max() <= 47 and cols.sum(axis=1).max() <= 39


def test_fmax_jitter_range_without_masking():
    wav = np.random.default_rng(2).standard_normal([1, 32000]).astype(np.float32)
    layer = LogMelSpectrogram()
    outs = {layer(wav, training=True).numpy().tobytes() for _ in range(5)}
    assert len(outs) > 1  # a fresh fmin/fmax draw per call


def test_get_config_round_trip():
    layer = LogMelSpectrogram(FrontendConfig(hop_length=480, n_mels=64, freqm=10))
    clone = LogMelSpectrogram.from_config(layer.get_config())
    assert clone.config == layer.config
    wav = np.random.default_rng(3).standard_normal([2, 40000]).astype(np.float32)
    np.testing.assert_array_equal(layer(wav).numpy(), clone(wav).numpy())


def test_graph_mode_any_length():
    fn = tf.function(
        lambda w: log_mel_spectrogram(w), input_signature=[tf.TensorSpec([None, None], tf.float32)]
    )
    for n in (32000, 48123):
        wav = np.random.default_rng(n).standard_normal([2, n]).astype(np.float32)
        # traced vs eager: grappler may fuse or reorder the front-end's float32 ops
        assert_close(fn(wav).numpy(), log_mel_spectrogram(wav).numpy(), OP_RTOL)


@pytest.mark.parametrize(
    "config",
    [FrontendConfig(hop_length=480), FrontendConfig(n_mels=64), FrontendConfig(n_fft=2048, win_length=1600),
     FrontendConfig(fmax=8000.0)],
    ids=["hop480", "mels64", "fft2048", "fmax8k"],
)  # fmt: skip
def test_inference_front_end_is_the_fft_path_summed_in_another_order(config):
    """The layer's eval path (example by example, power summed inside banded mel matmuls) gives the
    plain FFT path's log-mel up to the rounding of reordered float32 sums."""
    t = np.arange(17001) / 32000.0
    wave = 0.1 * np.random.default_rng(5).standard_normal((2, 17001)) + 0.3 * np.sin(2 * np.pi * 440.0 * t)
    wave = wave.astype(np.float32)
    got = inference_log_mel(wave, config).numpy()
    want = log_mel_spectrogram(wave, config).numpy()
    assert got.shape == want.shape == (2, config.n_mels, config.num_frames(17001), 1)
    assert_close(got, want, OP_RTOL)
    np.testing.assert_array_equal(LogMelSpectrogram(config)(wave, training=False).numpy(), got)


def test_inference_front_end_refuses_a_waveform_shorter_than_its_padding():
    config = FrontendConfig()
    assert inference_log_mel(np.zeros([1, config.min_samples], np.float32), config).shape[2] == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"at least {config.min_samples} samples"):
        inference_log_mel(np.zeros([1, config.min_samples - 1], np.float32), config)


def test_mel_bands_hold_every_weight_of_the_matrix():
    config = FrontendConfig(fmax=16000.0)  # filters reach the Nyquist bin
    banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, config.fmin, 16000.0).numpy()
    for bands, dense in ((mel_bands(banks), banks), (interleaved_mel_bands(config), np.repeat(banks, 2, axis=0))):
        rebuilt = np.zeros_like(dense)
        column = 0
        for start, stop, weights in bands:
            rebuilt[start:stop, column : column + weights.shape[1]] = weights
            column += weights.shape[1]
        assert column == config.n_mels
        np.testing.assert_array_equal(rebuilt, dense)
        assert sum((stop - start) * w.shape[1] for start, stop, w in bands) < 0.3 * dense.size  # the point of banding
