"""The inference log-mel front-end as a two-stage factored DFT: convolutions and matmuls only.

Same maths as :func:`eat_keras.frontend.log_mel_spectrogram` (pre-emphasis, reflect padding,
symmetric Hann window, 1024-point DFT power, Kaldi mel matrix, log, affine), written for
LiteRT/XNNPACK, whose ``RFFT2D`` is not delegated and runs in double precision, and whose
``MIRROR_PAD`` copies element by element: together most of the front-end's time (docs/design.md).
Here the DFT is a Cooley-Tukey split ``n_fft = Q * P`` (``n = Q a + b``, ``k = k1 + P k2``):

1. stage 1, per residue ``b`` of the sample index modulo ``Q``, a length-``P`` DFT over ``a`` with the
   window and the twiddle factor ``exp(-2 pi i k1 n / n_fft)`` folded into the weights. Frames are
   never materialised: one *grouped* convolution (``Q`` groups) slides over the signal cut into rows
   of ``hop`` samples, so framing, windowing and stage 1 are one op;
2. stage 2, a length-``Q`` complex DFT over ``b``, is one fully connected layer on ``[re | im]``;
3. power, then the mel projection, whose rows are permuted to the ``(k2, k1)`` bin layout (bins above
   Nyquist are the conjugates of bins below it: their mel weight goes to the one computed copy), done
   as a few banded matmuls over the bins each group of 16 filters touches.

Stages 1-3 run on pieces of ~250 frames (:data:`FRAMES_PER_PIECE`) whose outputs are concatenated.
Real input is exploited once (``k1 <= P / 2`` only) and taps outside the window are skipped, which
leaves ~100 k multiply-adds per frame in large GEMMs instead of ~800 k for a dense DFT matrix.
Agreement with the FFT path is at float32 round-off (tested against golden log-mels).

Training keeps :class:`eat_keras.frontend.LogMelSpectrogram`: its mel matrix changes every step.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

from eat_keras.frontend import (
    LOG_OFFSET,
    PREEMPHASIS,
    FrontendConfig,
    MelBand,
    kaldi_mel_banks,
    mel_bands,
    normalize,
    symmetric_hann_window,
)

#: the stage-1 group count; 32 balances the two stages for n_fft = 1024 (~33 M and ~70 M MACs per 10 s)
MAX_RADIX = 32
#: frames per piece of the DFT/power/mel stages. XNNPACK runs one operator at a time, so each stage's
#: output (~4.4 kB a frame) goes through memory before the next reads it; ~250 frames (~1.1 MB) stay
#: near the two cores' L2 caches (docs/design.md, "TFLite front-end").
FRAMES_PER_PIECE = 250


@dataclasses.dataclass(frozen=True)
class FactoredDFTPlan:
    """Constant weights of the factored front-end for one :class:`FrontendConfig`."""

    radix: int  # Q: groups of stage 1, length of stage 2
    first_tap: int  # a0: first row (of Q samples) where the window is non-zero
    chunks: int  # hop-long rows one frame spans after skipping leading zero taps
    stage1: np.ndarray  # grouped conv filter [chunks, 1, hop / Q, Q * 2 * (P / 2 + 1)]
    stage2: np.ndarray  # [2Q, 2Q]: [re_b | im_b] -> [re_k2 | im_k2], k2 in "chunk pair" order
    # mel projection, banded: (start, stop, weights [stop - start, filters]) per group of filters,
    # over the power laid out [k2 (chunk pair order), k1]; outputs concatenate in filter order
    mel_groups: tuple[MelBand, ...]

    @property
    def half_bins(self) -> int:  # P / 2 + 1
        return self.stage1.shape[-1] // (2 * self.radix)


def radix_for(config: FrontendConfig) -> int | None:
    """Largest power of two ≤ MAX_RADIX dividing both n_fft and hop with an even P; None if < 4."""
    common = math.gcd(config.n_fft, config.hop_length)
    radix = MAX_RADIX
    while radix >= 4:
        if common % radix == 0 and (config.n_fft // radix) % 2 == 0:
            return radix
        radix //= 2
    return None


@functools.lru_cache(maxsize=8)
def make_plan(config: FrontendConfig) -> FactoredDFTPlan:
    """The constants for ``config`` (numpy, computed eagerly even when called inside a graph)."""
    radix = radix_for(config)
    if radix is None:
        raise ValueError(f"no factored DFT for n_fft={config.n_fft}, hop={config.hop_length}")
    n_fft, hop = config.n_fft, config.hop_length
    q, p = radix, n_fft // radix
    half = p // 2 + 1
    rows_per_hop = hop // q
    window = symmetric_hann_window(config.win_length, n_fft).astype(np.float64)
    nonzero = np.flatnonzero(window)
    first_tap = int(nonzero[0]) // q
    taps = int(nonzero[-1]) // q + 1 - first_tap
    chunks = -(-taps // rows_per_hop)
    # stage 1: weights[b, a, k1, re/im] over the taps a of residue b (beyond n_fft: zero weight).
    # 34 outputs per group fill 3 of XNNPACK's 16-wide tiles; the 32-output packings measured
    # slower or no faster overall (docs/design.md, "TFLite front-end")
    a = np.arange(first_tap, first_tap + chunks * rows_per_hop)[None, :, None]
    b = np.arange(q)[:, None, None]
    k1 = np.arange(half)[None, None, :]
    n = q * a + b
    w = np.where(n < n_fft, window[np.minimum(n, n_fft - 1)], 0.0)
    theta = 2.0 * np.pi * k1 * n / n_fft
    weights = np.stack([w * np.cos(theta), -w * np.sin(theta)], axis=-1)  # [Q, taps, half, 2]
    # grouped conv filter: [chunk, 1, sample within the hop row (group-local channel), group b * outputs]
    stage1 = (
        weights.reshape(q, chunks, rows_per_hop, half * 2)
        .transpose(1, 2, 0, 3)
        .reshape(chunks, 1, rows_per_hop, q * half * 2)
    )
    # stage 2: X[k1 + P k2] = sum_b Z[b, k1] exp(-2 pi i b k2 / Q); rows [re_b | im_b]. Output k2 in
    # the order 0, Q-1, 1, Q-2, ...: natural bins [P c, P c + P) are k1 = 0..P/2 of k2 = c plus the
    # conjugates k1 = P/2-1..1 of k2 = Q-1-c, so each chunk of P bins becomes one contiguous slice
    order = np.stack([np.arange(q // 2), q - 1 - np.arange(q // 2)], axis=1).reshape(-1)
    phase = 2.0 * np.pi * np.outer(np.arange(q), order) / q
    cos, sin = np.cos(phase), np.sin(phase)
    stage2 = np.block([[cos, -sin], [sin, cos]])
    # mel rows in the [k2 position, k1] layout; each bin 0..n_fft/2 gets exactly one computed copy
    with tf.init_scope():
        banks = kaldi_mel_banks(config.n_mels, n_fft, config.sample_rate, config.fmin, config.effective_fmax).numpy()
    mel = np.zeros((q, half, config.n_mels))
    for position, j2 in enumerate(order):
        for j1 in range(half):
            k = j1 + p * j2
            if k <= n_fft // 2:
                mel[position, j1] = banks[k]
            elif 0 < j1 < p // 2:  # above Nyquist, the conjugate of bin n_fft - k, computed nowhere else
                mel[position, j1] = banks[n_fft - k]
    # banded over whole chunk pairs
    groups = mel_bands(mel.reshape(q * half, config.n_mels), align=2 * half)
    return FactoredDFTPlan(
        radix=q,
        first_tap=first_tap,
        chunks=chunks,
        stage1=stage1.astype(np.float32),
        stage2=stage2.astype(np.float32),
        mel_groups=tuple(groups),
    )


def _reflect_pad(x: tf.Tensor, pad: int) -> tf.Tensor:
    """torch's reflect padding of the last axis as slices, reverses and a concat (``MIRROR_PAD`` is
    an element-by-element kernel in LiteRT)."""
    left = tf.reverse(x[:, 1 : pad + 1], axis=[1])
    right = tf.reverse(x[:, -pad - 1 : -1], axis=[1])
    return tf.concat([left, x, right], axis=1)


def factored_log_mel(waveform: tf.Tensor, config: FrontendConfig, plan: FactoredDFTPlan | None = None) -> tf.Tensor:
    """Waveform ``[B, N]`` (static N) → normalised log-mel ``[B, n_mels, frames, 1]``, eval mode."""
    plan = plan or make_plan(config)
    signal = hop_rows(waveform, config, plan)
    frames = config.num_frames(waveform.shape[1])
    pieces = [mel_piece(signal, plan, config, first, last) for first, last in frame_pieces(frames)]
    mel = tf.concat(pieces, axis=1) if len(pieces) > 1 else pieces[0]  # [B, frames, n_mels]
    # expand_dims, not [..., None]: the latter adds a no-op STRIDED_SLICE to TFLite graphs
    return tf.expand_dims(normalize(tf.math.log(tf.transpose(mel, [0, 2, 1]))), -1)


def hop_rows(waveform: tf.Tensor, config: FrontendConfig, plan: FactoredDFTPlan) -> tf.Tensor:
    """Pre-emphasis and reflect padding, cut into rows of one hop from the first non-zero tap on, the
    samples of each row grouped by residue ``b``: ``[B, N]`` → ``[B, frames - 1 + chunks, 1, hop]``."""
    num_samples = waveform.shape[1]
    if num_samples is None:
        raise ValueError("the factored front-end needs a static number of samples")
    q, hop = plan.radix, config.hop_length
    emphasised = waveform[:, 1:] - PREEMPHASIS * waveform[:, :-1]
    padded = _reflect_pad(emphasised, config.n_fft // 2)
    # zeros past the end meet zero weights
    rows = config.num_frames(num_samples) - 1 + plan.chunks
    start = q * plan.first_tap
    shortfall = start + rows * hop - padded.shape[1]
    if shortfall > 0:
        padded = tf.concat([padded, tf.zeros([tf.shape(padded)[0], shortfall])], axis=1)
    signal = padded[:, start : start + rows * hop]
    # [B, rows, hop/Q, Q] -> channels grouped by residue b: [B, rows, 1, Q * hop/Q]
    signal = tf.reshape(signal, [-1, rows, hop // q, q])
    return tf.reshape(tf.transpose(signal, [0, 1, 3, 2]), [-1, rows, 1, hop])


def frame_pieces(frames: int) -> list[tuple[int, int]]:
    """``[first, last)`` frame ranges of about FRAMES_PER_PIECE frames each, covering ``frames``."""
    count = max(1, round(frames / FRAMES_PER_PIECE))
    bounds = np.linspace(0, frames, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def stage1(signal: tf.Tensor, plan: FactoredDFTPlan, first: int, last: int) -> tf.Tensor:
    """Frames ``[first, last)`` of the hop rows → windowed length-P DFTs per residue, laid out as
    rows ``(frame, k1)`` of ``[re_b | im_b]``: ``[B * frames * half, 2Q]``."""
    q, half, frames = plan.radix, plan.half_bins, last - first
    rows = last - 1 + plan.chunks - first
    if rows < signal.shape[1]:  # no full-range slice: TFLite would keep it as a copy
        signal = signal[:, first : first + rows]
    z = tf.nn.conv2d(signal, plan.stage1, strides=1, padding="VALID")
    # [B, frames, Q, half, 2] -> rows (frame, k1) with [re_b | im_b]
    z = tf.transpose(tf.reshape(z, [-1, frames, q, half, 2]), [0, 1, 3, 4, 2])
    return tf.reshape(z, [-1, 2 * q])


def stage2(z: tf.Tensor, plan: FactoredDFTPlan) -> tf.Tensor:
    """The length-Q DFT over residues: ``[rows, 2Q]`` → ``[rows, re_k2 | im_k2]``."""
    return tf.matmul(z, plan.stage2)


def power_spectrum(spectrum: tf.Tensor, plan: FactoredDFTPlan) -> tf.Tensor:
    """``|X|^2`` laid out per frame as ``(k2, k1)``: ``[B * frames * half, 2Q]`` → ``[B * frames, Q * half]``."""
    q, half = plan.radix, plan.half_bins
    real, imag = spectrum[:, :q], spectrum[:, q:]
    power = tf.reshape(real * real + imag * imag, [-1, half, q])
    return tf.reshape(tf.transpose(power, [0, 2, 1]), [-1, q * half])


def mel_projection(power: tf.Tensor, plan: FactoredDFTPlan) -> tf.Tensor:
    """Banded mel matmuls plus the log offset: ``[B * frames, Q * half]`` → ``[B * frames, n_mels]``."""
    # the log offset as each matmul's bias: LiteRT folds it into the FULLY_CONNECTED, no separate add
    return tf.concat(
        [tf.matmul(power[:, start:stop], weights) + LOG_OFFSET for start, stop, weights in plan.mel_groups], axis=1
    )


def mel_piece(signal: tf.Tensor, plan: FactoredDFTPlan, config: FrontendConfig, first: int, last: int) -> tf.Tensor:
    """Frames ``[first, last)``: hop rows ``[B, rows, 1, hop]`` → mel power + log offset ``[B, frames, n_mels]``."""
    power = power_spectrum(stage2(stage1(signal, plan, first, last), plan), plan)
    return tf.reshape(mel_projection(power, plan), [-1, last - first, config.n_mels])
