"""TagAudio: file patterns in, the top labels of every file or window out, as ``eat-keras tag --json``
gives them, on any Beam runner.

Patterns are matched (``fileio.MatchAll``), the files spread over the workers, each decoded and
resampled by :mod:`eat_keras.audio` and cut into windows as :func:`eat_keras.tagging.tag_with` cuts
them, the windows scored by :class:`~eat_keras.beam.handler.EatKerasModelHandler` under
``KeyedModelHandler`` (the key is the file and the window), and each window's top labels picked by
:func:`eat_keras.tagging.top_labels`. A file that cannot be tagged (undecodable, empty, too short,
too long to tag whole) becomes one record of the errors output, and the job goes on.

Parallelism is across files: the windows of one file are decoded in order (a long file is read
window by window, in bounded memory) and scored on the worker that decodes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from eat_keras.audio import SAMPLE_RATE
from eat_keras.beam.handler import ERROR_OUTPUT, EatKerasModelHandler
from eat_keras.beam.runinference import KeyedModelHandler, RunInference
from eat_keras.beam.storage import local_copy
from eat_keras.errors import EatKerasError
from eat_keras.tagging import open_for_tagging, prepare_waveform, top_labels, window_samples, window_starts

__all__ = ["ERRORS", "METRICS_NAMESPACE", "TAGS", "TagAudio", "TagSettings", "file_windows"]

TAGS, ERRORS = "tags", "errors"
METRICS_NAMESPACE = "eat_keras"

WindowKey = tuple[str, float, float]  # the file as matched, the window's start and end in seconds


@dataclasses.dataclass(frozen=True)
class TagSettings:
    """What ``eat-keras tag`` takes besides the model and the files, and what each record holds."""

    window_s: float | None = None
    hop_s: float | None = None
    top_k: int = 10
    pad_short: bool = False
    all_scores: bool = False
    embeddings: bool = False
    max_batch_size: int = 8
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise EatKerasError(f"--top-k must be at least 1; got {self.top_k}")
        if self.max_batch_size < 1:
            raise EatKerasError(f"--batch-size must be at least 1; got {self.max_batch_size}")
        if self.hop_s is not None and self.window_s is None:
            raise EatKerasError("--hop needs --window")
        if self.window_s is not None:
            window_samples(self.window_s, self.hop_s, self.sample_rate)  # bad lengths fail before the job starts

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("scores", "embedding") if self.embeddings else ("scores",)


def _window(waveform: Any, start: int, length: int) -> np.ndarray:
    """``length`` samples from ``start``, zero-padded past the end (a streamed file decodes into it)."""
    row = np.zeros(length, np.float32)
    read_into = getattr(waveform, "read_into", None)
    if read_into is not None:
        read_into(start, row)
    else:
        piece = waveform[start : start + length]
        row[: len(piece)] = piece
    return row


def file_windows(path: str, settings: TagSettings) -> Iterator[tuple[WindowKey, np.ndarray]]:
    """The windows of ``path`` keyed by file and time, as ``eat-keras tag`` scores them: the whole
    file (up to 60 s), or windows every hop, the last zero-padded, a file shorter than one window
    whole. Raises :class:`AudioError` naming ``path`` for a file that cannot be tagged."""
    sr = settings.sample_rate
    windowed = settings.window_s is not None
    with local_copy(path) as local:
        try:
            with open_for_tagging(local, sr, windowed) as signal:
                waveform = prepare_waveform(signal, sr, local, settings.pad_short)
                if not windowed:
                    yield (path, 0.0, len(waveform) / sr), np.asarray(waveform, np.float32)
                    return
                window, hop = window_samples(settings.window_s, settings.hop_s, sr)
                window = min(window, len(waveform))
                for start in window_starts(len(waveform), window, hop):
                    yield (path, start / sr, (start + window) / sr), _window(waveform, start, window)
        except EatKerasError as exc:
            raise type(exc)(str(exc).replace(local, path)) from None  # a remote file's local copy is no one's name


def error_record(path: str, message: str) -> dict[str, str]:
    return {"path": path, "error": message if path in message else f"{path}: {message}"}


class DecodeWindows(beam.DoFn):
    """A file's windows, or one errors record."""

    def __init__(self, settings: TagSettings) -> None:
        self.settings = settings
        self.files = Metrics.counter(METRICS_NAMESPACE, "files")
        self.windows = Metrics.counter(METRICS_NAMESPACE, "windows")
        self.errors = Metrics.counter(METRICS_NAMESPACE, "errors")

    def process(self, path: str) -> Iterator[Any]:
        try:
            for element in file_windows(path, self.settings):
                self.windows.inc()
                yield element
        except EatKerasError as exc:
            self.errors.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(path, str(exc)))
            return
        self.files.inc()


def window_record(
    key: WindowKey, inference: dict[str, Any], class_names: Sequence[str], settings: TagSettings
) -> dict[str, Any]:
    """One window: the file, its start and end, and the top labels as ``eat-keras tag --json``
    writes them; the score of every class and the embedding where asked."""
    path, start, end = key
    scores = inference["scores"]
    top = top_labels(scores, list(class_names), settings.top_k)
    record: dict[str, Any] = {
        "path": path, "start": start, "end": end,
        "labels": [{"index": t.index, "label": t.label, "score": round(t.score, 6)} for t in top],
    }  # fmt: skip
    if settings.all_scores:
        record["scores"] = [float(s) for s in scores]
    if settings.embeddings:
        record["embedding"] = [float(e) for e in inference["embedding"]]
    return record


class FormatWindows(beam.DoFn):
    """A scored window's record, or an errors record for a window the model refused."""

    def __init__(self, class_names: Sequence[str], settings: TagSettings) -> None:
        self.class_names, self.settings = list(class_names), settings
        self.errors = Metrics.counter(METRICS_NAMESPACE, "refused_windows")

    def process(self, element: tuple[WindowKey, Any]) -> Iterator[Any]:
        key, prediction = element
        inference = prediction.inference
        if ERROR_OUTPUT in inference:
            self.errors.inc()
            path, start, end = key
            reason = f"window {start:g}-{end:g} s: {inference[ERROR_OUTPUT]}"
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(path, reason))
            return
        yield window_record(key, inference, self.class_names, self.settings)


def _keep_not_done(item: tuple[str, dict[str, list]]) -> Iterator[str]:
    path, sides = item
    if sides["todo"] and not sides["done"]:
        yield path


class WithoutDone(beam.PTransform):
    """The paths that ``done`` (the paths of earlier outputs) does not hold."""

    def __init__(self, done: beam.PCollection) -> None:
        super().__init__()
        self.done = done

    def expand(self, paths: beam.PCollection):
        keyed = {
            "todo": paths | "KeyTodo" >> beam.Map(lambda path: (path, None)),
            "done": self.done | "KeyDone" >> beam.Map(lambda path: (path, None)),
        }
        return keyed | "Join" >> beam.CoGroupByKey() | "NotDone" >> beam.FlatMap(_keep_not_done)


class TagAudio(beam.PTransform):
    """``pipeline | TagAudio(patterns, saved_model_dir, class_names)``: a dict of two PCollections,
    :data:`TAGS` (one record per window, :func:`window_record`) and :data:`ERRORS` (``path``,
    ``error``). ``done``: paths to leave out (the files of an earlier run's outputs)."""

    def __init__(
        self,
        patterns: Sequence[str],
        saved_model_dir: str,
        class_names: Sequence[str],
        settings: TagSettings | None = None,
        done: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self.patterns, self.saved_model_dir, self.class_names = list(patterns), saved_model_dir, list(class_names)
        self.settings, self.done = settings or TagSettings(), done

    def model_handler(self) -> KeyedModelHandler:
        s = self.settings
        handler = EatKerasModelHandler(
            self.saved_model_dir, outputs=s.outputs, max_batch_size=s.max_batch_size, sample_rate=s.sample_rate
        )
        return KeyedModelHandler(handler)

    def expand(self, root: beam.pvalue.PBegin):
        paths = (
            root
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Distinct" >> beam.Distinct()
        )
        if self.done is not None:
            paths = paths | "SkipDone" >> WithoutDone(self.done)
        # Distinct (and SkipDone) group by path: the files are spread over the workers already, and a
        # Reshuffle would add a stage to every job (its fixed cost shows in short jobs)
        decoded = paths | "Decode" >> beam.ParDo(DecodeWindows(self.settings)).with_outputs(ERRORS, main=TAGS)
        scored = decoded[TAGS] | "Score" >> RunInference(self.model_handler())
        format_windows = beam.ParDo(FormatWindows(self.class_names, self.settings)).with_outputs(ERRORS, main=TAGS)
        formatted = scored | "Format" >> format_windows
        errors = (decoded[ERRORS], formatted[ERRORS]) | "Errors" >> beam.Flatten()
        return {TAGS: formatted[TAGS], ERRORS: errors}
