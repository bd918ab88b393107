"""The factored-DFT front-end (TFLite export path) against golden upstream log-mels and the FFT path."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from eat_keras import frontend_dft
from eat_keras.frontend import FrontendConfig, log_mel_spectrogram
from eat_keras.frontend_dft import factored_log_mel, frame_pieces, make_plan, radix_for

CLIPS = ("metro_station-paris", "music", "speech", "typing")


@pytest.mark.parametrize("seconds", [10, 2])
def test_matches_golden_upstream_log_mel(golden_dir, seconds):
    suffix = "" if seconds == 10 else "_2s"
    waves = np.stack([np.load(golden_dir / "clips" / f"{c}_wav32k.npy")[: 32000 * seconds] for c in CLIPS])
    got = factored_log_mel(tf.constant(waves, tf.float32), FrontendConfig()).numpy()[..., 0]
    for i, clip in enumerate(CLIPS):
        want = np.load(golden_dir / "clips" / f"{clip}{suffix}_logmel.npy")[0, 0]
        assert got[i].shape == want.shape
        assert np.abs(got[i] - want).max() <= 5e-5, clip


def _noise_and_tone(num_samples: int, seed: int) -> tf.Tensor:
    """Two channels at a speech-like level: white noise at -20 dBFS plus a 440 Hz tone, so no band
    sits at the log floor."""
    t = np.arange(num_samples) / 32000.0
    wave = 0.1 * np.random.default_rng(seed).standard_normal((2, num_samples)) + 0.3 * np.sin(2 * np.pi * 440.0 * t)
    return tf.constant(wave, tf.float32)


@pytest.mark.parametrize(
    "config",
    [FrontendConfig(hop_length=480), FrontendConfig(n_mels=64), FrontendConfig(win_length=1024), FrontendConfig(fmax=8000.0)],
    ids=["hop480", "mels64", "win1024", "fmax8k"],
)
@pytest.mark.parametrize("num_samples", [32000, 40001, 17000])
def test_agrees_with_the_fft_path_for_other_configurations(config, num_samples):
    wave = _noise_and_tone(num_samples, seed=num_samples)
    got = factored_log_mel(wave, config).numpy()
    want = log_mel_spectrogram(wave, config).numpy()
    assert got.shape == want.shape == (2, config.n_mels, config.num_frames(num_samples), 1)
    np.testing.assert_allclose(got, want, atol=5e-5)


def test_pieces_cover_the_frames_in_order():
    assert frame_pieces(200) == [(0, 200)]
    assert frame_pieces(1000) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    for frames in (1, 7, 374, 375, 1001, 3001):
        pieces = frame_pieces(frames)
        assert pieces[0][0] == 0 and pieces[-1][1] == frames
        assert all(first < last for first, last in pieces)
        assert all(last == next_first for (_, last), (next_first, _) in zip(pieces, pieces[1:]))


@pytest.mark.parametrize("num_samples", [32000, 17000])
def test_pieces_join_without_seams(monkeypatch, num_samples):
    """Many small pieces of unequal length (7 or 8 frames) give the FFT path's log-mel: no seam at their joins."""
    monkeypatch.setattr(frontend_dft, "FRAMES_PER_PIECE", 7)
    config = FrontendConfig()
    wave = _noise_and_tone(num_samples, seed=7)
    assert len(frame_pieces(config.num_frames(num_samples))) > 5
    np.testing.assert_allclose(
        factored_log_mel(wave, config).numpy(), log_mel_spectrogram(wave, config).numpy(), atol=5e-5
    )


def test_every_bin_up_to_nyquist_has_exactly_one_mel_row():
    from eat_keras.frontend import kaldi_mel_banks

    config = FrontendConfig(fmax=16000.0)  # filters reach the Nyquist bin
    plan = make_plan(config)
    banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, config.fmin, 16000.0).numpy()
    rows = plan.radix * plan.half_bins
    dense = np.zeros((rows, config.n_mels), np.float32)
    column = 0
    for start, stop, weights in plan.mel_groups:
        dense[start:stop, column : column + weights.shape[1]] = weights
        column += weights.shape[1]
    assert column == config.n_mels
    # the banded groups hold every weight of the dense matrix: per-filter totals and the multiset of rows agree
    np.testing.assert_allclose(dense.sum(axis=0), banks.sum(axis=0), rtol=1e-6)
    nonzero = dense[np.abs(dense).sum(axis=1) > 0]
    want = banks[np.abs(banks).sum(axis=1) > 0]
    assert len(nonzero) == len(want)
    np.testing.assert_allclose(np.sort(nonzero.sum(axis=1)), np.sort(want.sum(axis=1)), rtol=1e-6)
    banded = sum((stop - start) * w.shape[1] for start, stop, w in plan.mel_groups)
    assert banded < 0.3 * rows * config.n_mels  # the point of the banding


def test_radix_needs_a_common_power_of_two():
    assert radix_for(FrontendConfig()) == 32
    assert radix_for(FrontendConfig(hop_length=321)) is None  # odd hop: the export keeps RFFT2D
