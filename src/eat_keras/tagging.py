"""Tag waveforms: whole clip in one pass (as upstream inference) or in fixed windows.

Windows follow upstream ``windowed_inference``: starts every ``hop`` seconds, the last window
zero-padded to full length; unlike upstream, a clip shorter than one window gives one window over
the whole clip instead of none. Windows run through the model in batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

from typing import TYPE_CHECKING

import numpy as np

from eat_keras.audio import check_min_length, seconds_to_samples
from eat_keras.errors import EatKerasError

if TYPE_CHECKING:  # tagging through a .tflite file must not import TensorFlow
    from eat_keras.models import AudioTagger

MIN_SECONDS = 1.0  # the length range the models are validated for (1 s upward)


@dataclasses.dataclass
class LabelScore:
    index: int
    label: str
    score: float


@dataclasses.dataclass
class WindowResult:
    start: float  # seconds
    end: float
    top: list[LabelScore]
    scores: np.ndarray  # all class scores of this window


def prepare_waveform(waveform: np.ndarray, sample_rate: int, path: str | None, pad_short: bool) -> np.ndarray:
    """Check the minimum length (or zero-pad to it when asked)."""
    min_samples = int(MIN_SECONDS * sample_rate)
    if len(waveform) < min_samples and pad_short:
        return np.pad(waveform, (0, min_samples - len(waveform)))
    check_min_length(waveform, min_samples, path, sample_rate)
    return waveform


def window_samples(window_s: float, hop_s: float | None, sample_rate: int, fixed_window: bool = False) -> tuple[int, int]:
    """Window and hop in samples (:func:`~eat_keras.audio.seconds_to_samples`).

    Raises:
        EatKerasError: a window shorter than :data:`MIN_SECONDS` (unless the artifact fixes it), a
            hop that is not positive (None means the window length), or a non-finite length.
    """
    window = seconds_to_samples(window_s, sample_rate)
    if not fixed_window and window < int(MIN_SECONDS * sample_rate):
        raise EatKerasError(f"windows must be at least {MIN_SECONDS:g} s long; got {window_s:g} s")
    if hop_s is None:
        return window, window
    hop = seconds_to_samples(hop_s, sample_rate)
    if hop < 1:
        raise EatKerasError(f"the hop must be positive; got {hop_s:g} s")
    return window, hop


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    if num_samples <= window:
        return [0]
    return [i * hop for i in range(math.ceil((num_samples - window) / hop) + 1)]


def _batches(waveform: np.ndarray, starts: list[int], window: int, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of windows, the last window zero-padded. One buffer serves every batch (each is
    consumed before the next is read): no fresh pages per batch. A streamed file decodes straight
    into it (:meth:`~eat_keras.audio.AudioFileSignal.read_into`)."""
    buffer = np.empty((min(batch_size, len(starts)), window), np.float32)
    read_into = getattr(waveform, "read_into", None)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = buffer[: len(chunk)]
        for row, start in zip(batch, chunk):
            if read_into is not None:
                filled = read_into(start, row)
            else:
                piece = waveform[start : start + window]
                filled = len(piece)
                row[:filled] = piece
            row[filled:] = 0.0
        yield batch


def top_labels(scores: np.ndarray, class_names: list[str], k: int) -> list[LabelScore]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [LabelScore(int(i), class_names[i], float(scores[i])) for i in order]


ScoresFn = Callable[[np.ndarray], np.ndarray]  # [batch, samples] float32 → [batch, classes] scores


def tag_waveform(
    tagger: AudioTagger,
    waveform: np.ndarray,
    top_k: int = 10,
    window_s: float | None = None,
    hop_s: float | None = None,
    batch_size: int = 8,
) -> list[WindowResult]:
    """Scores of ``waveform`` (mono, at the model's sample rate): one result, or one per window."""
    import tensorflow as tf

    names = tagger.class_names or [f"class_{i}" for i in range(tagger.config.num_classes)]
    predict = tagger.predict_function_for_waveforms()
    return tag_with(
        lambda batch: predict(tf.constant(batch, tf.float32))["scores"].numpy(),
        names, tagger.config.frontend.sample_rate, waveform, top_k, window_s, hop_s, batch_size,
    )


def tag_with(
    scores_fn: ScoresFn,
    class_names: list[str],
    sample_rate: int,
    waveform: np.ndarray,
    top_k: int = 10,
    window_s: float | None = None,
    hop_s: float | None = None,
    batch_size: int = 8,
    fixed_window: bool = False,
) -> list[WindowResult]:
    """:func:`tag_waveform` for any scoring function (a Keras model, SavedModel or TFLite file).

    ``fixed_window``: the function takes exactly ``window_s`` seconds (a TFLite file), so a clip
    shorter than one window is zero-padded instead of tagged at its own length. The batch array
    ``scores_fn`` gets is refilled for the next call: copy it to keep it.
    """
    sr = sample_rate
    if window_s is None:
        scores = scores_fn(waveform[np.newaxis].astype(np.float32))[0]
        return [WindowResult(0.0, len(waveform) / sr, top_labels(scores, class_names, top_k), scores)]
    window, hop = window_samples(window_s, hop_s, sr, fixed_window)
    if not fixed_window:
        window = min(window, len(waveform))
    starts = window_starts(len(waveform), window, hop)
    results = []
    for batch_start, batch in zip(range(0, len(starts), batch_size), _batches(waveform, starts, window, batch_size)):
        scores = scores_fn(batch)
        for row, s in enumerate(scores):
            start = starts[batch_start + row]
            results.append(WindowResult(start / sr, (start + window) / sr, top_labels(s, class_names, top_k), s))
    return results
