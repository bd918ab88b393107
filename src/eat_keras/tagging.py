"""Tag waveforms: whole clip in one pass (as upstream inference) or in fixed windows.

Windows follow upstream ``windowed_inference``: starts every ``hop`` seconds, the last window
zero-padded to full length; unlike upstream, a clip shorter than one window gives one window over
the whole clip instead of none, and no window starts past the end. Windows run through the model in
batches.

The model's memory grows with the audio of one call, so a whole file, a window and a batch of
windows are each limited in length (:data:`MAX_INPUT_SECONDS`, :data:`MAX_BATCH_SECONDS`); a file
tagged in windows is read window by window (:func:`open_for_tagging`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

from typing import TYPE_CHECKING, Any

import numpy as np

from eat_keras.audio import audio_info, check_min_length, format_duration, open_audio, seconds_to_samples
from eat_keras.errors import AudioError, EatKerasError

if TYPE_CHECKING:  # tagging through a .tflite file must not import TensorFlow
    from eat_keras.models import AudioTagger

MIN_SECONDS = 1.0  # the length range the models are validated for (1 s upward)
#: The longest audio one model call takes (a whole file or one window): the Keras model's memory
#: grows with its input, and 60 s keep a whole `tag` run, TensorFlow included, under 1 GB.
MAX_INPUT_SECONDS = 60.0
#: the most audio one batch of windows holds: the default batch of eight 10 s windows
MAX_BATCH_SECONDS = 80.0
#: The shortest hop: at most ten windows per second of audio. Shorter hops multiply the work (a
#: 1-sample hop makes 288k windows of a 10 s clip) for windows whose scores barely differ.
MIN_HOP_SECONDS = 0.1


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
        EatKerasError: a window shorter than :data:`MIN_SECONDS` or longer than
            :data:`MAX_INPUT_SECONDS` (unless the artifact fixes it), a hop that is not positive
            or shorter than :data:`MIN_HOP_SECONDS` (None means the window length), or a
            non-finite length.
    """
    window = seconds_to_samples(window_s, sample_rate)
    if not fixed_window and window < int(MIN_SECONDS * sample_rate):
        raise EatKerasError(f"windows must be at least {MIN_SECONDS:g} s long; got {window_s:g} s")
    if not fixed_window and window > MAX_INPUT_SECONDS * sample_rate:
        raise EatKerasError(
            f"windows are limited to {MAX_INPUT_SECONDS:g} s (the model's memory grows with its input); "
            f"got {window_s:g} s"
        )
    if hop_s is None:
        return window, window
    hop = seconds_to_samples(hop_s, sample_rate)
    if hop < 1:
        raise EatKerasError(f"the hop must be positive; got {hop_s:g} s")
    if hop_s < MIN_HOP_SECONDS:
        raise EatKerasError(
            f"the hop must be at least {MIN_HOP_SECONDS:g} s (ten windows per second of audio); got {hop_s:g} s"
        )
    return window, hop


def window_starts(num_samples: int, window: int, hop: int) -> range:
    """Starts every ``hop`` samples until a window reaches the end of the signal; a hop longer than
    the window skips audio, but no window starts past the end. A range: no list per window."""
    if num_samples <= window:
        return range(1)
    count = -(-(num_samples - window) // hop) + 1
    return range(0, min(count * hop, num_samples), hop)


def _batches(waveform: np.ndarray, starts: range, window: int, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of windows, the last window zero-padded. One buffer serves every batch (each is
    consumed before the next is read): no fresh pages per batch. A streamed file decodes straight
    into it (:meth:`~eat_keras.audio.AudioFileSignal.read_into`), window after window in order."""
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


def tag_waveform(tagger: AudioTagger, waveform: np.ndarray, **options: Any) -> list[WindowResult]:
    """Scores of ``waveform`` (mono, at the model's sample rate): one result, or one per window;
    ``options`` (``top_k``, ``window_s``, ``hop_s``, ``batch_size``) as :func:`tag_with`."""
    import tensorflow as tf

    from eat_keras.models.tagger import check_sample_dtype

    check_sample_dtype(getattr(waveform, "dtype", np.float32))  # windows are copied into float32
    names = tagger.class_names or [f"class_{i}" for i in range(tagger.config.num_classes)]
    predict = tagger.predict_function_for_waveforms()
    return tag_with(
        lambda batch: predict(tf.constant(batch, tf.float32))["scores"].numpy(),
        names, tagger.config.frontend.sample_rate, waveform, **options,
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
    ``scores_fn`` gets is refilled for the next call: copy it to keep it. A batch holds at most
    :data:`MAX_BATCH_SECONDS` of audio (at least one window).
    """
    sr = sample_rate
    if window_s is None:
        whole = np.asarray(waveform if isinstance(waveform, np.ndarray) else waveform[0 : len(waveform)])
        scores = scores_fn(whole[np.newaxis].astype(np.float32))[0]
        return [WindowResult(0.0, len(whole) / sr, top_labels(scores, class_names, top_k), scores)]
    window, hop = window_samples(window_s, hop_s, sr, fixed_window)
    if not fixed_window:
        window = min(window, len(waveform))
    starts = window_starts(len(waveform), window, hop)
    batch_size = max(1, min(batch_size, int(MAX_BATCH_SECONDS * sr) // window))
    results = []
    for batch_start, batch in zip(range(0, len(starts), batch_size), _batches(waveform, starts, window, batch_size)):
        scores = scores_fn(batch)
        for row, s in enumerate(scores):
            start = starts[batch_start + row]
            results.append(WindowResult(start / sr, (start + window) / sr, top_labels(s, class_names, top_k), s))
    return results


@contextlib.contextmanager
def open_for_tagging(path: str, sample_rate: int, windowed: bool) -> Iterator[np.ndarray]:
    """The waveform of ``path`` for :func:`tag_with`. In windows, a long file is decoded (and
    resampled) window by window; whole, a file longer than :data:`MAX_INPUT_SECONDS` is refused from
    its header, before anything is decoded.

    Raises:
        AudioError: the file cannot be used (see :func:`~eat_keras.audio.load_audio`), or is too long
            to tag whole.
    """
    if not windowed:
        seconds = audio_info(path).seconds
        if seconds > MAX_INPUT_SECONDS:
            raise AudioError(
                f"{path} is {format_duration(seconds)} long: whole-file tagging is limited to "
                f"{MAX_INPUT_SECONDS:g} s; tag it in windows with --window 10"
            )
    with open_audio(path, sample_rate, stream=True) as waveform:
        # a short file at a high rate or with many channels is streamed too: read it whole here
        yield waveform if windowed or isinstance(waveform, np.ndarray) else waveform[0 : len(waveform)]
