"""Batch augmentations for fine-tuning, as TF ops vectorised over the batch (no Python loops).

Upstream's ESC-50 fine-tuning applies, per example: an integer gain in dB, a circular time roll, and
mixup on the log-mel spectrograms. These are :func:`random_gain`, :func:`time_roll` and
:func:`mixup` (which also mixes waveforms). :func:`training_log_mel` is the front-end's training
mode (fmin/fmax jitter of the mel filterbank, frequency/time masking when ``FrontendConfig.freqm`` /
``timem`` > 0) and :class:`GeneratorDropout` a dropout layer, both drawing from a generator.

Randomness comes from a ``tf.random.Generator`` (``rng``; default: the global generator): a
generator made with ``tf.random.Generator.from_seed(s)`` replays the same draws, and one created
outside a ``tf.function`` can be used inside it. Each call draws stateless seeds from it, so the
result depends only on the generator's state. Fine-tuning checkpoints that state; TensorFlow's
stateful random ops (``tf.random.uniform``, Keras' ``Dropout``) keep theirs inside the kernel,
where no checkpoint reaches it, so a resumed run would replay their first epoch's draws.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
import tf_keras

from eat_keras.frontend import FrontendConfig, kaldi_mel_banks, log_mel_from_power, normalize, power_spectrogram

__all__ = ["GeneratorDropout", "MixupResult", "mix_as", "mixup", "random_gain", "time_roll", "training_log_mel"]


class MixupResult(NamedTuple):
    """Output of :func:`mixup`: mixed inputs and targets, the per-sample ``lam`` ``[B]`` and the
    partner indices ``perm`` ``[B]`` (``x_mixed[i] = lam[i]·x[i] + (1 − lam[i])·x[perm[i]]``)."""

    x: tf.Tensor
    targets: tf.Tensor
    lam: tf.Tensor
    perm: tf.Tensor


def _generator(rng: tf.random.Generator | None) -> tf.random.Generator:
    return rng if rng is not None else tf.random.get_global_generator()


def _per_sample(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshape ``[B]`` to ``[B, 1, ..., 1]`` to broadcast against ``like`` (any rank)."""
    shape = tf.concat([tf.shape(values), tf.ones([tf.rank(like) - 1], tf.int32)], axis=0)
    return tf.reshape(tf.cast(values, like.dtype), shape)


def _mix(values: tf.Tensor, lam: tf.Tensor, perm: tf.Tensor) -> tf.Tensor:
    """``lam·values + (1 − lam)·values[perm]`` row by row."""
    partner = tf.gather(values, perm)
    return _per_sample(lam, values) * values + _per_sample(1.0 - lam, values) * partner


def mixup(
    x: tf.Tensor, targets: tf.Tensor, alpha: float = 0.3, rng: tf.random.Generator | None = None
) -> MixupResult:
    """Mixup as upstream: per sample ``λ ~ Beta(α, α)``, ``λ = max(λ, 1 − λ)``, partner from a
    random permutation of the batch; ``x`` (waveforms ``[B, N]`` or log-mels ``[B, F, T, 1]``) and
    ``targets`` ``[B, C]`` are mixed with the same λ.

    ``λ ≥ 0.5`` keeps each sample's own label dominant. Beta is drawn as ``G₁ / (G₁ + G₂)`` with
    gamma variates in float64 (small α makes float32 gammas underflow to 0/0).
    """
    seeds = _generator(rng).make_seeds(3)
    batch = tf.shape(x)[0]
    g1 = tf.random.stateless_gamma([batch], seeds[:, 0], alpha=alpha, dtype=tf.float64)
    g2 = tf.random.stateless_gamma([batch], seeds[:, 1], alpha=alpha, dtype=tf.float64)
    lam = tf.math.divide_no_nan(g1, g1 + g2)
    lam = tf.cast(tf.maximum(lam, 1.0 - lam), tf.float32)
    perm = tf.random.experimental.stateless_shuffle(tf.range(batch), seeds[:, 2])
    return MixupResult(_mix(x, lam, perm), _mix(targets, lam, perm), lam, perm)


def mix_as(values: tf.Tensor, mixed: MixupResult) -> tf.Tensor:
    """``values`` (one row per example) mixed with the pairs and weights of an earlier :func:`mixup`:
    a teacher's log-mels or scores follow the student's mix."""
    return _mix(values, mixed.lam, mixed.perm)


def random_gain(
    waveform: tf.Tensor, max_db: int = 12, rng: tf.random.Generator | None = None
) -> tf.Tensor:
    """Scale each example by ``10^(g/20)``, ``g`` a uniform integer dB in ``[−max_db, max_db)``.

    The half-open range is upstream's ``randint(0, 2·max_db) − max_db`` (ESC-50: −12…11 dB; the
    original recipe's ``gain_augment=2``: −2…1 dB; docs/design.md). ``max_db = 0`` returns the waveform unchanged.
    """
    if max_db <= 0:
        return waveform
    seed = _generator(rng).make_seeds(1)[:, 0]
    gain_db = tf.random.stateless_uniform(
        tf.shape(waveform)[:1], seed, minval=-max_db, maxval=max_db, dtype=tf.int32
    )
    return waveform * _per_sample(tf.pow(10.0, tf.cast(gain_db, tf.float32) / 20.0), waveform)


def time_roll(
    waveform: tf.Tensor, max_shift: int = 4000, rng: tf.random.Generator | None = None
) -> tf.Tensor:
    """Circularly shift each row of ``[B, N]`` by its own uniform integer ``s_i`` in
    ``[−max_shift, max_shift]`` (inclusive, as upstream's ``random_integers``):
    ``out[i, n] = x[i, (n − s_i) mod N]``, i.e. ``np.roll(x[i], s_i)``."""
    if max_shift <= 0:
        return waveform
    seed = _generator(rng).make_seeds(1)[:, 0]
    shape = tf.shape(waveform)
    shift = tf.random.stateless_uniform(
        shape[:1], seed, minval=-max_shift, maxval=max_shift + 1, dtype=tf.int32
    )
    source = tf.math.floormod(tf.range(shape[1])[tf.newaxis, :] - shift[:, tf.newaxis], shape[1])
    return tf.gather(waveform, source, batch_dims=1)


def training_log_mel(config: FrontendConfig, waveform: tf.Tensor, rng: tf.random.Generator | None = None) -> tf.Tensor:
    """:class:`~eat_keras.frontend.LogMelSpectrogram` with ``training=True``, its draws from ``rng``:
    one fmin/fmax per call (shared by the batch, as upstream: fmin raised by an integer in
    ``[0, fmin_aug_range)`` Hz, fmax moved by one in ``[-fmax_aug_range/2, fmax_aug_range/2)``),
    then one frequency and one time band per example masked when ``freqm`` / ``timem`` > 0."""
    seeds = _generator(rng).make_seeds(4)
    fmin_shift = tf.random.stateless_uniform([], seeds[:, 0], 0, max(config.fmin_aug_range, 1), tf.int32)
    fmax_shift = tf.random.stateless_uniform([], seeds[:, 1], 0, max(config.fmax_aug_range, 1), tf.int32)
    fmin = config.fmin + tf.cast(fmin_shift, tf.float32)
    fmax = config.effective_fmax + config.fmax_aug_range // 2 - tf.cast(fmax_shift, tf.float32)
    banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, fmin, fmax)
    log_mel = log_mel_from_power(power_spectrogram(waveform, config), banks)
    if config.freqm > 0:
        log_mel = _mask_band(log_mel, config.freqm, 1, seeds[:, 2])
    if config.timem > 0:
        log_mel = _mask_band(log_mel, config.timem, 2, seeds[:, 3])
    return normalize(log_mel)


def _mask_band(log_mel: tf.Tensor, width_param: int, axis: int, seed: tf.Tensor) -> tf.Tensor:
    """torchaudio ``mask_along_axis_iid`` on ``[B, F, T, 1]``: per example a band of width
    ``floor(u * width_param)`` along ``axis`` (1: mel bins, 2: frames) at a uniform start, set to 0."""
    size, batch = tf.shape(log_mel)[axis], tf.shape(log_mel)[0]
    draws = tf.random.stateless_uniform([2, batch], seed)
    width = draws[0] * float(width_param)
    start = tf.cast(tf.floor(draws[1] * (tf.cast(size, tf.float32) - width)), tf.int32)
    end = start + tf.cast(tf.floor(width), tf.int32)
    positions = tf.range(size)[tf.newaxis, :]
    masked = (positions >= start[:, tf.newaxis]) & (positions < end[:, tf.newaxis])
    masked = masked[:, :, tf.newaxis, tf.newaxis] if axis == 1 else masked[:, tf.newaxis, :, tf.newaxis]
    return tf.where(masked, tf.zeros_like(log_mel), log_mel)


class GeneratorDropout(tf_keras.layers.Layer):
    """Keras ``Dropout`` (inverted: kept units scaled by ``1 / (1 - rate)``) whose masks come from
    ``rng``. The generator is held outside Keras' tracking: saving the model saves no RNG state."""

    def __init__(self, rate: float, rng: tf.random.Generator, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rate = float(rate)
        self._draw_seed = lambda: rng.make_seeds(1)[:, 0]  # a function: Keras does not track it

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training or self.rate == 0.0:
            return inputs
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed=self._draw_seed())
