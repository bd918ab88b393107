"""Upstream-exact log-mel front-end (EfficientAT ``AugmentMelSTFT``) as TF ops and a Keras layer.

Maps float32 waveforms ``[batch, samples]`` at 32 kHz to ``[batch, n_mels, frames, 1]`` (NHWC, mel as
height, time as width), reproducing the PyTorch reference to float32 round-off:

1. pre-emphasis as a *valid* convolution: ``y[n] = x[n+1] - 0.97 x[n]`` (length N-1);
2. ``torch.stft(center=True)``: reflect-pad n_fft/2 on both sides, frames every ``hop`` samples;
3. the *symmetric* Hann window of ``win_length`` taps, zero-padded to ``n_fft`` in the centre;
4. power ``re^2 + im^2`` (not ``|X|^2`` through a square root);
5. Kaldi/HTK triangular mel banks (``torchaudio.compliance.kaldi.get_mel_banks``), zero Nyquist row;
6. ``log(mel + 1e-5)``, then the fixed affine ``(x + 4.5) / 5``.

The training-only augmentations of upstream (fmin/fmax jitter, frequency and time masking) live in
:class:`LogMelSpectrogram` and run only when ``training=True``.

Inference (:func:`inference_log_mel`, the layer with ``training=False``, hence the SavedModel) computes
the same maths with fewer passes over memory: one example at a time, so that each stage's tensors
stay in the caches; the power read from the spectrum's interleaved real and imaginary parts; the mel
projection as banded matmuls over the bins each group of filters touches (docs/design.md, "SavedModel
front-end"). Neither ``map_fn`` nor ``bitcast`` is a TFLite builtin: traced inside
:func:`~eat_keras.builtin_ops.builtin_ops_only`, the layer takes :func:`log_mel_spectrogram` instead.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from eat_keras.builtin_ops import builtin_ops_requested
from eat_keras.frontend_config import FrontendConfig  # importable from here too

PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
# "fast normalisation" of upstream: a fixed affine map, no dataset statistics.
NORM_SHIFT = 4.5
NORM_SCALE = 5.0


def _kaldi_mel(freq: tf.Tensor) -> tf.Tensor:
    return 1127.0 * tf.math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(
    n_mels: int,
    n_fft: int,
    sample_rate: int,
    fmin: tf.Tensor | float,
    fmax: tf.Tensor | float,
) -> tf.Tensor:
    """Kaldi/HTK mel filterbank as a ``[n_fft // 2 + 1, n_mels]`` float32 tensor (Nyquist row zero).

    Follows ``torchaudio.compliance.kaldi.get_mel_banks`` with ``vtln_warp_factor=1``: band edges
    equally spaced on ``1127 ln(1 + f/700)``, unnormalised triangles in the mel domain. The band
    edges are computed in float64 like torchaudio's Python scalars, the weights in float32 like its
    tensors. fmin/fmax may be tensors so that training can jitter them inside a graph.
    """
    fmin64 = tf.cast(fmin, tf.float64)
    fmax64 = tf.cast(fmax, tf.float64)
    mel_low = 1127.0 * tf.math.log(1.0 + fmin64 / 700.0)
    mel_high = 1127.0 * tf.math.log(1.0 + fmax64 / 700.0)
    delta = (mel_high - mel_low) / (n_mels + 1)
    band = tf.range(n_mels, dtype=tf.float32)[tf.newaxis, :]
    mel_low32 = tf.cast(mel_low, tf.float32)
    delta32 = tf.cast(delta, tf.float32)
    left = mel_low32 + band * delta32
    centre = mel_low32 + (band + 1.0) * delta32
    right = mel_low32 + (band + 2.0) * delta32
    bin_width = float(sample_rate) / float(n_fft)
    mel = _kaldi_mel(bin_width * tf.range(n_fft // 2, dtype=tf.float32))[:, tf.newaxis]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = tf.maximum(0.0, tf.minimum(up, down))
    # torchaudio returns n_fft/2 bins; upstream appends a zero weight for the Nyquist bin.
    return tf.pad(banks, [[0, 1], [0, 0]])


def symmetric_hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """``torch.hann_window(win_length, periodic=False)`` zero-padded to n_fft, centred (as torch.stft)."""
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / (win_length - 1))
    left = (n_fft - win_length) // 2
    padded = np.zeros(n_fft, dtype=np.float64)
    padded[left : left + win_length] = window
    return padded.astype(np.float32)


def power_spectrogram(waveform: tf.Tensor, config: FrontendConfig) -> tf.Tensor:
    """Pre-emphasis and centred STFT power, ``[batch, frames, n_fft // 2 + 1]``."""
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    emphasised = waveform[:, 1:] - PREEMPHASIS * waveform[:, :-1]
    half = config.n_fft // 2
    padded = tf.pad(emphasised, [[0, 0], [half, half]], mode="REFLECT")
    frames = tf.signal.frame(padded, config.n_fft, config.hop_length, pad_end=False)
    window = tf.constant(symmetric_hann_window(config.win_length, config.n_fft))
    spectrum = tf.signal.rfft(frames * window)
    return tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))


def log_mel_from_power(power: tf.Tensor, mel_banks: tf.Tensor, constant_left: bool = False) -> tf.Tensor:
    """``[batch, frames, bins]`` power → ``[batch, n_mels, frames, 1]`` log-mel (NHWC, not normalised).

    By default one 2-D matmul ``[batch * frames, bins] @ [bins, n_mels]`` and a transpose: TF's CPU
    kernels run that ~5× faster than a broadcast batch matmul. ``constant_left`` writes it
    ``banks^T @ power^T`` instead, with the constant as the *left* operand, which TFLite's
    dynamic-range quantizer leaves in float32 (as the right operand, in a ``FULLY_CONNECTED``, it would
    quantize the power spectrum on the fly and wreck the log-mel).
    """
    if constant_left:
        mel = tf.linalg.matmul(tf.transpose(mel_banks), power, transpose_b=True)
    else:
        bins, n_mels = tf.shape(mel_banks)[0], tf.shape(mel_banks)[1]
        flat = tf.linalg.matmul(tf.reshape(power, [-1, bins]), mel_banks)
        mel = tf.transpose(tf.reshape(flat, [tf.shape(power)[0], tf.shape(power)[1], n_mels]), [0, 2, 1])
    return tf.expand_dims(tf.math.log(mel + LOG_OFFSET), -1)


def normalize(log_mel: tf.Tensor) -> tf.Tensor:
    return (log_mel + NORM_SHIFT) / NORM_SCALE


#: mel filters per banded matmul (inference front-end and the TFLite factored DFT)
MEL_GROUP = 16

#: a band of the mel projection: rows ``[start, stop)`` of the power and their ``[stop - start, filters]`` weights
MelBand = tuple[int, int, np.ndarray]


def mel_bands(weights: np.ndarray, align: int = 1, group: int = MEL_GROUP) -> tuple[MelBand, ...]:
    """The ``[rows, n_mels]`` mel matrix ``weights`` cut into groups of ``group`` filters, each kept
    over the rows its filters touch (widened to multiples of ``align``): Kaldi triangles are narrow,
    so the bands hold about a fifth of a dense matmul's products. Outputs concatenate in filter order."""
    rows = weights.shape[0]
    bands = []
    for first in range(0, weights.shape[1], group):
        block = weights[:, first : first + group]
        used = np.flatnonzero(np.abs(block).sum(axis=1))
        if used.size == 0:  # filters beyond fmax: all-zero columns still need outputs
            used = np.array([0])
        start = used[0] // align * align
        stop = min(-(-(used[-1] + 1) // align) * align, rows)
        bands.append((int(start), int(stop), block[start:stop].astype(np.float32)))
    return tuple(bands)


@functools.lru_cache(maxsize=8)
def interleaved_mel_bands(config: FrontendConfig) -> tuple[MelBand, ...]:
    """:func:`mel_bands` of the eval-mode mel matrix over the squared spectrum read as interleaved
    ``[re_0, im_0, re_1, ...]`` (each row of the matrix twice): the power ``re^2 + im^2`` is summed
    inside the matmul instead of in a pass of its own."""
    with tf.init_scope():  # numpy constants even when first called inside a graph
        banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, config.fmin, config.effective_fmax)
        banks = banks.numpy()
    return mel_bands(np.repeat(banks, 2, axis=0))


def _example_log_mel(waveform: tf.Tensor, config: FrontendConfig, bands: tuple[MelBand, ...]) -> tf.Tensor:
    """One example ``[1, N]`` → normalised log-mel ``[n_mels, frames]`` (eval mode)."""
    emphasised = waveform[0, 1:] - PREEMPHASIS * waveform[0, :-1]
    half = config.n_fft // 2
    # torch's reflect padding as slices, reverses and a concat: TF's MirrorPad is slower
    padded = tf.concat([tf.reverse(emphasised[1 : half + 1], [0]), emphasised, tf.reverse(emphasised[-half - 1 : -1], [0])], 0)
    frames = tf.signal.frame(padded, config.n_fft, config.hop_length, pad_end=False)
    spectrum = tf.signal.rfft(frames * symmetric_hann_window(config.win_length, config.n_fft))
    # complex64 viewed as float32 pairs: no copies into separate real and imaginary tensors
    squares = tf.math.square(tf.reshape(tf.bitcast(spectrum, tf.float32), [tf.shape(frames)[0], -1]))
    # the log offset as each matmul's bias: grappler fuses it into the matmul
    mel = tf.concat([tf.matmul(squares[:, start:stop], weights) + LOG_OFFSET for start, stop, weights in bands], axis=1)
    return normalize(tf.math.log(tf.transpose(mel)))


def inference_log_mel(waveform: tf.Tensor, config: FrontendConfig = FrontendConfig()) -> tf.Tensor:
    """Eval-mode front-end, waveform ``[B, N]`` → ``[B, n_mels, T, 1]``, equal to
    :func:`log_mel_spectrogram` up to float32 round-off and faster on TensorFlow's CPU kernels.

    Examples go through one at a time (two in flight): a 10 s example's frames and spectrum are
    ~4 MB, a batch's are ~8x that, and each stage reads its input back from memory.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    bands = interleaved_mel_bands(config)
    # the reflect padding's slices would silently come out short; MirrorPad refused such input
    length_check = tf.debugging.assert_greater_equal(
        tf.shape(waveform)[1], config.min_samples, message=f"the waveform needs at least {config.min_samples} samples"
    )
    with tf.control_dependencies([length_check]):
        waveform = tf.identity(waveform)
    mels = tf.map_fn(
        lambda i: _example_log_mel(waveform[i : i + 1], config, bands),
        tf.range(tf.shape(waveform)[0]),
        fn_output_signature=tf.TensorSpec([config.n_mels, None], tf.float32),
        parallel_iterations=1 if tf.executing_eagerly() else 2,  # eagerly, map_fn warns that it runs one at a time
    )
    return tf.expand_dims(mels, -1)


def log_mel_spectrogram(
    waveform: tf.Tensor, config: FrontendConfig = FrontendConfig(), constant_left: bool = False
) -> tf.Tensor:
    """Plain-function form of the eval-mode front-end: waveform ``[B, N]`` → ``[B, n_mels, T, 1]``.

    ``constant_left``: see :func:`log_mel_from_power` (for dynamic-range quantized TFLite files).
    """
    banks = kaldi_mel_banks(
        config.n_mels, config.n_fft, config.sample_rate, config.fmin, config.effective_fmax
    )
    return normalize(log_mel_from_power(power_spectrogram(waveform, config), banks, constant_left))


def _mask_along_axis(x: tf.Tensor, mask_param: int, axis: int) -> tf.Tensor:
    """torchaudio ``mask_along_axis_iid``: one random band per example, set to 0 (log domain)."""
    size = tf.shape(x)[axis]
    batch = tf.shape(x)[0]
    width = tf.random.uniform([batch]) * float(mask_param)
    start = tf.random.uniform([batch]) * (tf.cast(size, tf.float32) - width)
    start_i = tf.cast(tf.floor(start), tf.int32)
    end_i = start_i + tf.cast(tf.floor(width), tf.int32)
    positions = tf.range(size)[tf.newaxis, :]
    masked = (positions >= start_i[:, tf.newaxis]) & (positions < end_i[:, tf.newaxis])
    if axis == 1:
        masked = masked[:, :, tf.newaxis, tf.newaxis]
    else:
        masked = masked[:, tf.newaxis, :, tf.newaxis]
    return tf.where(masked, tf.zeros_like(x), x)


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class LogMelSpectrogram(tf_keras.layers.Layer):
    """Keras layer: waveform ``[B, N]`` at ``sample_rate`` → normalised log-mel ``[B, n_mels, T, 1]``.

    In inference the mel matrix is a constant. With ``training=True`` it draws one fmin/fmax per call
    (shared by the batch, as upstream) and applies frequency/time masking when ``freqm``/``timem``
    are non-zero.
    """

    def __init__(self, config: FrontendConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = FrontendConfig(**config)
        self.config = config or FrontendConfig()

    def _training_banks(self) -> tf.Tensor:
        c = self.config
        fmin = c.fmin + tf.cast(tf.random.uniform([], 0, max(c.fmin_aug_range, 1), tf.int32), tf.float32)
        fmax = (
            c.effective_fmax
            + c.fmax_aug_range // 2
            - tf.cast(tf.random.uniform([], 0, max(c.fmax_aug_range, 1), tf.int32), tf.float32)
        )
        return kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, fmin, fmax)

    def call(self, waveform: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            if builtin_ops_requested():  # map_fn and bitcast are not TFLite builtins
                return log_mel_spectrogram(waveform, self.config)
            return inference_log_mel(waveform, self.config)
        log_mel = log_mel_from_power(power_spectrogram(waveform, self.config), self._training_banks())
        if self.config.freqm > 0:
            log_mel = _mask_along_axis(log_mel, self.config.freqm, axis=1)
        if self.config.timem > 0:
            log_mel = _mask_along_axis(log_mel, self.config.timem, axis=2)
        return normalize(log_mel)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        input_shape = tf.TensorShape(input_shape)
        n = input_shape[1]
        frames = None if n is None else self.config.num_frames(n)
        return tf.TensorShape([input_shape[0], self.config.n_mels, frames, 1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict()}
