"""Runtimes of the benchmark routes: one class per way of running an artifact.

A route is built from JSON-able arguments (``files``: input name → artifact path, plus options), so
the peak-RSS probe can rebuild it in a fresh process from :meth:`Route.spec`. ``load`` opens what
the given inputs need; ``run`` does one call on one input and returns a NumPy array, so every
route's time includes getting the result back to the host. Runtimes are imported inside ``load``:
a probe process imports only what its route needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from tools.bench.inputs import BenchInput

BATCH_CHECK_TOL = 1e-4  # a resized interpreter must reproduce the per-example outputs


class Route:
    """Base class; subclasses set ``runtime`` and implement ``_load`` and ``run``."""

    runtime: ClassVar[str]
    modules: ClassVar[tuple[str, ...]]  # what load() imports; the probe times importing them apart

    def __init__(self, files: dict[str, str], num_threads: int = 2, **options: Any) -> None:
        self.files = dict(files)
        self.num_threads = num_threads
        self.options = options
        self.batch_modes: dict[str, str] = {}  # input name -> how a batch > 1 is run, for the report

    def spec(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "files": self.files, "num_threads": self.num_threads, **self.options}

    def runtime_modules(self, standalone: bool) -> tuple[str, ...]:
        return self.modules

    def load(self, inputs: Sequence[BenchInput], standalone: bool = False) -> None:
        """Open the artifacts of ``inputs``. ``standalone``: as a single-purpose app would (the
        peak-RSS probe); only LiteRT cares (see :class:`LiteRTRoute`)."""
        self._load(inputs, standalone)

    def _load(self, inputs: Sequence[BenchInput], standalone: bool) -> None:
        raise NotImplementedError

    def run(self, inp: BenchInput) -> np.ndarray:
        raise NotImplementedError


class SavedModelRoute(Route):
    """``tf.saved_model.load`` and one signature; options ``signature``, ``output``."""

    runtime = "tensorflow"
    modules = ("tensorflow",)

    def _load(self, inputs: Sequence[BenchInput], standalone: bool) -> None:
        import tensorflow as tf

        (path,) = {self.files[inp.name] for inp in inputs}  # one folder serves every shape
        self._tf = tf
        self._loaded = tf.saved_model.load(path)  # keep a reference: it owns the variables
        self._fn = self._loaded.signatures[self.options["signature"]]
        for inp in inputs:
            if inp.batch > 1:
                self.batch_modes[inp.name] = "native batch"

    def run(self, inp: BenchInput) -> np.ndarray:
        out = self._fn(waveform=self._tf.constant(inp.waveform))
        return out[self.options["output"]].numpy()


def _layout(inp: BenchInput, feed: str) -> np.ndarray:
    """The array a LiteRT file takes, batch first: waveform [B, N], log-mel [B, 128, T] or NHWC."""
    if feed == "waveform":
        return inp.waveform
    if feed == "log_mel":
        return inp.log_mel
    if feed == "log_mel_nhwc":
        return np.ascontiguousarray(inp.log_mel[..., np.newaxis])
    raise ValueError(f"unknown feed {feed!r}")


@dataclasses.dataclass
class _Slot:
    interpreter: Any
    input_index: int
    output_index: int
    feed: np.ndarray
    batched: bool  # one invoke on the whole batch (resized input) vs one invoke per example


class LiteRTRoute(Route):
    """Fixed-shape ``[1, ...]`` .tflite files on the LiteRT interpreter (XNNPACK, ``num_threads``);
    option ``feed`` (see :func:`_layout`). A batch > 1 runs as one invoke if the file can be resized
    to it and then gives the per-example results, else as sequential invokes."""

    runtime = "litert"

    def runtime_modules(self, standalone: bool) -> tuple[str, ...]:
        return ("ai_edge_litert.interpreter",) if standalone else ("eat_keras.export.tflite",)

    def _open(self, path: str, standalone: bool) -> Any:
        if standalone:
            # What eat_keras.export.tflite.make_interpreter does, without importing that module:
            # it imports TensorFlow (~600 MB RSS), which a LiteRT-only app does not load.
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=path, num_threads=self.num_threads)
            interpreter.allocate_tensors()
            return interpreter
        from eat_keras.export.tflite import make_interpreter

        return make_interpreter(path, num_threads=self.num_threads)

    def _slot(self, interpreter: Any, feed: np.ndarray, batched: bool) -> _Slot:
        return _Slot(
            interpreter,
            interpreter.get_input_details()[0]["index"],
            interpreter.get_output_details()[0]["index"],  # scores (eat-keras) / logits (onnx2tf)
            feed,
            batched,
        )

    def _load(self, inputs: Sequence[BenchInput], standalone: bool) -> None:
        feed_kind = self.options["feed"]
        self._slots: dict[str, _Slot] = {}
        single: dict[str, _Slot] = {}  # path -> batch-1 slot, shared by the inputs of one shape
        for inp in sorted(inputs, key=lambda i: i.batch):
            path = self.files[inp.name]
            feed = _layout(inp, feed_kind)
            if inp.batch == 1:
                if path not in single:
                    single[path] = self._slot(self._open(path, standalone), feed, batched=False)
                self._slots[inp.name] = dataclasses.replace(single[path], feed=feed)
                continue
            sequential = self._slot(self._open(path, standalone), feed, batched=False)
            self._slots[inp.name], self.batch_modes[inp.name] = self._batched_or_sequential(
                path, feed, sequential, standalone
            )

    def _batched_or_sequential(
        self, path: str, feed: np.ndarray, sequential: _Slot, standalone: bool
    ) -> tuple[_Slot, str]:
        try:
            interpreter = self._open(path, standalone)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, list(feed.shape), strict=False)
            interpreter.allocate_tensors()
            batched = self._slot(interpreter, feed, batched=True)
            got = self._invoke(batched)
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:160]
            return sequential, f"{len(feed)} sequential invokes (resize_tensor_input failed: {reason})"
        want = self._invoke(sequential)
        if got.shape != want.shape or not np.allclose(got, want, atol=BATCH_CHECK_TOL, rtol=0):
            return sequential, f"{len(feed)} sequential invokes (the resized graph gives wrong outputs)"
        return batched, "one invoke (input resized to the batch)"

    @staticmethod
    def _invoke(slot: _Slot) -> np.ndarray:
        it = slot.interpreter
        if slot.batched:
            it.set_tensor(slot.input_index, slot.feed)
            it.invoke()
            return it.get_tensor(slot.output_index)
        outputs = []
        for row in range(len(slot.feed)):
            it.set_tensor(slot.input_index, slot.feed[row : row + 1])
            it.invoke()
            outputs.append(it.get_tensor(slot.output_index))
        return np.concatenate(outputs)

    def run(self, inp: BenchInput) -> np.ndarray:
        return self._invoke(self._slots[inp.name])


def _onnx_input(inp: BenchInput) -> np.ndarray:
    return np.ascontiguousarray(inp.log_mel[:, np.newaxis])  # [B, 1, 128, T]


class OrtRoute(Route):
    """onnxruntime on the upstream ONNX, log-mel ``[B, 1, 128, T]`` in (model only)."""

    runtime = "onnxruntime"
    modules = ("onnxruntime",)

    def _load(self, inputs: Sequence[BenchInput], standalone: bool) -> None:
        from tools.bench.seed_pipeline import ort_session

        sessions: dict[str, Any] = {}
        self._calls: dict[str, tuple[Any, str, np.ndarray]] = {}
        for inp in inputs:
            path = self.files[inp.name]
            if path not in sessions:
                sessions[path] = ort_session(path, self.num_threads)
            session = sessions[path]
            self._calls[inp.name] = (session, session.get_inputs()[0].name, _onnx_input(inp))
            if inp.batch > 1:
                self.batch_modes[inp.name] = "native batch"

    def run(self, inp: BenchInput) -> np.ndarray:
        session, name, feed = self._calls[inp.name]
        return session.run(None, {name: feed})[0]


class SeedRoute(Route):
    """The seed pipeline: TF front-end (``tf.function``, fixed input shape) then onnxruntime."""

    runtime = "tensorflow+onnxruntime"
    modules = ("tensorflow", "onnxruntime")

    def _load(self, inputs: Sequence[BenchInput], standalone: bool) -> None:
        import tensorflow as tf

        from tools.bench.seed_pipeline import ort_session, seed_log_mel_function

        self._tf = tf
        sessions: dict[str, Any] = {}
        self._calls: dict[str, tuple[Any, Any, str]] = {}
        for inp in inputs:
            path = self.files[inp.name]
            if path not in sessions:
                sessions[path] = ort_session(path, self.num_threads)
            session = sessions[path]
            front_end = seed_log_mel_function(inp.batch, inp.spec.samples)
            self._calls[inp.name] = (front_end, session, session.get_inputs()[0].name)
            if inp.batch > 1:
                self.batch_modes[inp.name] = "native batch"

    def run(self, inp: BenchInput) -> np.ndarray:
        front_end, session, name = self._calls[inp.name]
        log_mel = front_end(self._tf.constant(inp.waveform)).numpy()
        return session.run(None, {name: log_mel})[0]


ROUTE_CLASSES: dict[str, type[Route]] = {c.__name__: c for c in (SavedModelRoute, LiteRTRoute, OrtRoute, SeedRoute)}


def route_from_spec(spec: dict[str, Any]) -> Route:
    spec = dict(spec)
    return ROUTE_CLASSES[spec.pop("class")](**spec)
