"""TFLite export: one self-contained ``.tflite`` per window length and quantization, front-end inside.

Each waveform file maps a fixed window ``[1, N]`` float32 (mono, ``sample_rate`` Hz) to ``scores``
``[1, classes]``; the upstream log-mel front-end (pre-emphasis, reflect padding, framing, symmetric
Hann, DFT power, Kaldi mel matrix, log, affine) runs inside the graph as TFLite builtin ops, so
LiteRT, XNNPACK and MediaPipe run the file without Flex or custom ops. The DFT is the factored
convolution + matmul form of :mod:`eat_keras.frontend_dft` (XNNPACK runs it; ``RFFT2D`` would fall
back to a slow double-precision kernel), except in ``dynamic_int8`` files, which keep ``RFFT2D``
(see below). A log-mel variant ``[1, n_mels, frames]`` → ``scores`` serves targets that compute
the features themselves.

Files for servers (``any_batch``, ``*_batch.tflite``): the same graph inside a ``WHILE`` loop over a
batch of any size, which ``resize_tensor_input`` sets; each example runs the batch-1 graph
(:func:`each_example`).

Quantizations (``<name>_<window>s_<quant>.tflite``, ``<name>_logmel_<frames>f_<quant>.tflite``):

- ``float32``;
- ``float16``: weights stored as float16, computed in float32 (half the size);
- ``dynamic_int8``: int8 weights, float activations quantized on the fly;
- ``int8``: full-integer network calibrated on user audio, float32 input and output tensors; the
  int8 ranges of hard-swish inputs start at -3 (:func:`narrow_pre_hard_swish_ranges`).

The front-end always stays in float32 (its power spectrum spans ~14 decades, which int8 cannot
hold): for ``int8`` the front-end nodes are excluded from quantization with the converter's
selective-quantization debugger (``denylisted_nodes``); for ``dynamic_int8`` the mel projection is
a batch matmul with the constant mel matrix as left operand, which the dynamic-range quantizer
leaves in float. Every file is checked after conversion: builtin ops only, and no integer tensor
inside the front-end.

Outputs: ``scores`` only by default. MediaPipe treats every output tensor as a classification head,
so ``logits`` and ``embedding`` (``outputs=(...)``) would show up as two extra, meaningless heads in
``AudioClassifier`` results; they are for users of the plain interpreter. ``scores`` is always the
first output tensor.

Non-finite input: the interpreter cannot raise, so a waveform with NaN or Inf samples, or one whose
log-mel overflows float32, gives NaN in every output (:func:`nan_gate`), whatever kernels run the
file (XNNPACK passes NaN on by itself; TFLite's builtin kernels saturate Inf at the largest float
and would give finite, plausible scores). Full-int8 files carry no gate: integer tensors hold no NaN.

Metadata (sample rate, channels, packed ``labels.txt``) is written with MediaPipe's metadata writer,
see :mod:`eat_keras.export.metadata`. Files are written to a staging folder and renamed into
``<out>/<name>/tflite/``: an interrupted export leaves nothing under a final name, and the next
export into ``<out>/<name>/`` removes the staging folder a killed one left.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from eat_keras import __version__
from eat_keras.audio import seconds_to_samples
from eat_keras.labels import LABEL_LIST_FILE, write_label_list
from eat_keras.errors import EatKerasError
from eat_keras.export.options import (  # the choices and defaults, public here too
    DEFAULT_CALIBRATION_WINDOWS,
    DEFAULT_OUTPUTS,
    DEFAULT_QUANTIZATIONS,
    DEFAULT_WINDOW_SECONDS,
    OUTPUTS,
    QUANTIZATIONS,
    TFLITE_DIR,
)
from eat_keras.frontend import FrontendConfig, log_mel_spectrogram
from eat_keras.frontend_dft import factored_log_mel, radix_for
from eat_keras.litert import (  # noqa: F401 (public here too)
    NUM_THREADS,
    SETTINGS_METADATA,
    interpreter_class,
    make_interpreter,
    read_settings,
    run_tflite,
)
from eat_keras.models import AudioTagger
from eat_keras.models.saving import (
    check_output_name,
    output_errors,
    output_folder,
    remove_stale_staging,
    staging_folder,
)
from eat_keras.models.tagger import LOG_MEL_CEILING

#: name scope of the front-end ops in the converted graph; selects them for float-only checks
FRONTEND_SCOPE = "eat_frontend"

_INTEGER_TENSOR_TYPES = ("INT8", "UINT8", "INT16", "INT4")


class TFLiteExportError(EatKerasError):
    """A TFLite export was asked for something it cannot do, or produced a file that fails a check."""


@dataclasses.dataclass(frozen=True)
class TFLiteArtifact:
    """One exported file: where it is and what it holds."""

    path: Path
    input_kind: str  # "waveform" or "log_mel"
    quantization: str
    input_shape: tuple[int, ...]
    outputs: tuple[str, ...]
    window_seconds: float | None = None  # waveform files
    frames: int | None = None  # log-mel files
    any_batch: bool = False  # input_shape's batch of 1 may be resized to any size (resize_tensor_input)


# ---------------------------------------------------------------------------------------------------
# the graphs


class _ConversionModule(tf.Module):
    """Holds the tagger's variables (and nothing Keras-specific, which the converter would otherwise
    serialise layer by layer) and builds the fixed-shape functions that are converted."""

    def __init__(self, tagger: AudioTagger) -> None:
        super().__init__(name="eat_keras_tflite")
        self.__dict__["_tagger"] = tagger
        self.__dict__["_float_models"] = {}  # (input kind, length, outputs) -> float32 model bytes
        self.model_variables = list(tagger.variables)

    def _outputs(self, mel: tf.Tensor, outputs: Sequence[str], gate: bool) -> dict[str, tf.Tensor]:
        everything = self._tagger.clip_outputs(self._tagger.net(mel, training=False))
        if gate:
            nan_or_zero = nan_gate(mel)
            return {k: everything[k] + nan_or_zero for k in outputs}
        return {k: everything[k] for k in outputs}

    def waveform_function(
        self,
        num_samples: int,
        outputs: Sequence[str],
        frontend: str = "factored_dft",
        gate: bool = True,
        any_batch: bool = False,
    ) -> Any:
        """``frontend``: "factored_dft" (convolutions and matmuls, XNNPACK-delegated; see
        :mod:`eat_keras.frontend_dft`) or "rfft" (``RFFT2D``, mel matrix as the left matmul operand).
        ``gate``: NaN outputs for non-finite input (:func:`nan_gate`). ``any_batch``: a batch of any
        size, one example at a time (:func:`each_example`); else a batch of 1."""
        config = self._tagger.config.frontend
        if frontend == "factored_dft" and radix_for(config) is None:
            frontend = "rfft"

        def scores(waveform: tf.Tensor) -> dict[str, tf.Tensor]:
            with tf.name_scope(FRONTEND_SCOPE):
                if frontend == "factored_dft":
                    mel = factored_log_mel(waveform, config)
                else:
                    mel = log_mel_spectrogram(waveform, config, constant_left=True)
            return self._outputs(mel, outputs, gate)

        return _serving_function(scores, tf.TensorSpec([1, num_samples], tf.float32, name="waveform"), any_batch)

    def log_mel_function(self, frames: int, outputs: Sequence[str], gate: bool = True, any_batch: bool = False) -> Any:
        n_mels = self._tagger.config.frontend.n_mels

        def scores(log_mel: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._outputs(tf.expand_dims(log_mel, -1), outputs, gate)

        return _serving_function(scores, tf.TensorSpec([1, n_mels, frames], tf.float32, name="log_mel"), any_batch)


def _serving_function(fn: Callable[[tf.Tensor], dict[str, tf.Tensor]], example: tf.TensorSpec, any_batch: bool) -> Any:
    """The concrete function that is converted: ``fn`` on a batch of 1, or on any batch (the
    leading dimension left unknown) through :func:`each_example`."""
    if not any_batch:
        return tf.function(fn, input_signature=[example]).get_concrete_function()
    spec = tf.TensorSpec([None, *example.shape[1:]], example.dtype, name=example.name)
    shapes = tf.function(fn).get_concrete_function(example).structured_outputs  # traced apart, not converted
    return tf.function(lambda batch: each_example(fn, batch, shapes), input_signature=[spec]).get_concrete_function()


def each_example(
    fn: Callable[[tf.Tensor], dict[str, tf.Tensor]], inputs: tf.Tensor, shapes: dict[str, tf.Tensor]
) -> dict[str, tf.Tensor]:
    """``fn`` on each example ``[1, ...]`` of a batch of any size, in a loop (a ``WHILE`` op whose
    body XNNPACK runs); ``shapes``: ``fn``'s outputs for one example, for their sizes.

    Why: each example runs the batch-1 graph, which XNNPACK runs fastest (``PAD`` + ``VALID``
    depthwise convs, DyMN's aggregated filters) on tensors that stay in the caches, with one copy of
    the packed weights; a batch-N graph works on N-times larger tensors, and N copies of the graph
    pack the weights N times (docs/design.md, "TFLite files that take a batch"). Each result goes to
    its own row through a select, so a NaN of one example (:func:`nan_gate`) stays in its row."""
    batch = tf.shape(inputs)[0]
    example_shape = inputs.shape[1:]

    def body(i: tf.Tensor, rows: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        begin = tf.stack([i] + [0] * len(example_shape))
        result = fn(tf.slice(inputs, begin, [1, *example_shape]))
        this_row = tf.equal(tf.range(batch), i)[:, tf.newaxis]
        return i + 1, {key: tf.where(this_row, result[key], rows[key]) for key in rows}

    initial = {key: tf.zeros(tf.stack([batch, int(value.shape[1])])) for key, value in shapes.items()}
    _, rows = tf.while_loop(lambda i, rows: i < batch, body, [tf.constant(0), initial])
    return rows


def nan_gate(log_mel: tf.Tensor) -> tf.Tensor:
    """``[batch, 1]``: 0 where the example's log-mel passes the test on which the Keras model and
    the SavedModel raise (:func:`~eat_keras.models.tagger.log_mel_in_range`: finite and below
    :data:`~eat_keras.models.tagger.LOG_MEL_CEILING`), NaN otherwise. Added to the outputs, it leaves
    normal scores bit for bit and turns unscorable input into NaN. ``x * 0`` or ``x - x`` forms would
    be no use: the converter folds them to 0. Kernels that saturate an overflowing power at the
    largest float give a log-mel above the ceiling, so they are caught too.

    Finiteness is read off the mean, where ``log_mel_in_range`` takes the sum: float16 files store
    the infinity it is compared with as 65504, float16's largest value, which the sum of a mostly
    silent 10 s log-mel exceeds (128 000 values of -1.4); a finite log-mel's mean stays below 20."""
    axes = list(range(1, log_mel.shape.rank))
    below = tf.reduce_max(log_mel, axis=axes) < LOG_MEL_CEILING
    finite = tf.abs(tf.reduce_mean(log_mel, axis=axes)) < np.inf  # NaN compares false
    return tf.where(tf.logical_and(below, finite), 0.0, np.nan)[:, tf.newaxis]


# ---------------------------------------------------------------------------------------------------
# flatbuffer inspection and fix-ups


def read_model(model: bytes) -> Any:
    """A ``.tflite``'s flatbuffer as a mutable ``ModelT`` object tree."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _write_model(model_object: Any) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object))


def _with_settings(model: bytes, tagger: AudioTagger) -> bytes:
    """``model`` with the tagger's settings in a metadata entry (:data:`SETTINGS_METADATA`): what a
    runner needs to read the scores right (softmax or sigmoid) and the clip length it was tuned on.
    Added before MediaPipe's writer, which appends its label zip after the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    settings = {
        "label_type": tagger.config.label_type,
        "clip_seconds": tagger.clip_seconds,
        "sample_rate": tagger.config.frontend.sample_rate,
        "eat_keras_version": __version__,
        "config": tagger.config.to_dict(),
    }
    model_object = read_model(model)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(settings).encode(), np.uint8)
    model_object.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = SETTINGS_METADATA
    entry.buffer = len(model_object.buffers) - 1
    model_object.metadata = [*(model_object.metadata or []), entry]
    return _write_model(model_object)


def _model_bytes(model: bytes | str | Path) -> bytes:
    return model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()


def operator_code_name(code: Any) -> str:
    """An ``OperatorCodeT``'s name: builtins by their schema name (``CONV_2D``); custom ops, Flex ops
    included, as ``CUSTOM:<code>``."""
    from tensorflow.lite.python import schema_py_generated as schema

    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        return f"CUSTOM:{custom}"
    return _builtin_operator_names().get(builtin, f"UNKNOWN_{builtin}")


@functools.lru_cache(maxsize=1)
def _builtin_operator_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def operator_names(model: bytes | str | Path) -> list[str]:
    """Sorted distinct operators of a ``.tflite`` (file or bytes), read from the flatbuffer, named
    as :func:`operator_code_name` names them."""
    obj = read_model(_model_bytes(model))
    used = {op.opcodeIndex for subgraph in obj.subgraphs for op in subgraph.operators}
    return sorted({operator_code_name(obj.operatorCodes[index]) for index in used})


def check_builtin_only(model: bytes | str | Path) -> list[str]:
    """Return the operator list, or raise if it holds custom or Flex (SELECT_TF_OPS) operators."""
    names = operator_names(model)
    bad = [n for n in names if n.startswith(("CUSTOM", "FLEX", "UNKNOWN")) or n == "DELEGATE"]
    if bad:
        raise TFLiteExportError(f"the converted model uses non-builtin operators: {bad}")
    return names


def _tensor_type_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _in_frontend(tensor_name: bytes | str) -> bool:
    """Whether a converted tensor comes from the front-end's name scope (also inside the loop of a
    file that takes any batch: ``while/eat_frontend/...``)."""
    name = tensor_name.decode() if isinstance(tensor_name, bytes) else tensor_name
    return any(f"/{FRONTEND_SCOPE}/" in f"/{part}" for part in name.split(";"))


def frontend_tensor_names(model: bytes) -> list[str]:
    """Names of the tensors that the front-end ops produce (the converter keeps the name scope)."""
    obj = read_model(model)
    names = []
    for subgraph in obj.subgraphs:  # a loop's body is a subgraph of its own
        for op in subgraph.operators:
            for i in op.outputs:
                name = subgraph.tensors[i].name
                if _in_frontend(name):
                    names.append(name.decode() if isinstance(name, bytes) else name)
    return names


def check_frontend_float(model: bytes) -> int:
    """Raise if any front-end operator reads or writes an integer tensor (the ``QUANTIZE`` at its
    end may write one); return how many front-end operators there are (0 means the name scope was
    lost and nothing could be checked)."""
    from tensorflow.lite.python import schema_py_generated as schema

    type_names = _tensor_type_names()
    obj = read_model(model)
    count = 0
    for subgraph, op in ((g, op) for g in obj.subgraphs for op in g.operators):
        if not any(_in_frontend(subgraph.tensors[i].name) for i in op.outputs):
            continue
        count += 1
        code = obj.operatorCodes[op.opcodeIndex]
        # the QUANTIZE that hands the front-end's float output to an int8 network takes its name
        quantize = max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.QUANTIZE
        for i in list(op.inputs) + ([] if quantize else list(op.outputs)):
            tensor = subgraph.tensors[i] if i >= 0 else None
            if tensor is not None and type_names.get(tensor.type) in _INTEGER_TENSOR_TYPES:
                raise TFLiteExportError(f"front-end tensor {tensor.name!r} was quantized to {type_names[tensor.type]}")
    return count


def _finalize_io(model: bytes, input_name: str, outputs: Sequence[str]) -> bytes:
    """Put the output tensors in the requested order (``scores`` first: MediaPipe reads output 0
    as the main head) and give the I/O tensors plain names (``waveform``, ``scores``, ...)."""
    obj = read_model(model)
    subgraph = obj.subgraphs[0]
    if not obj.signatureDefs:
        # the converter falls back to its graph-def path, which drops signatures, when it cannot
        # save its temporary SavedModel
        raise TFLiteExportError(
            "the TFLite converter gave a model without its signature; it does so when it cannot write "
            f"its temporary SavedModel in {tempfile.gettempdir()} (a full or read-only disk)"
        )
    signature = obj.signatureDefs[0]

    def key(t: Any) -> str:
        return t.name.decode() if isinstance(t.name, bytes) else t.name

    by_name = {key(t): t for t in signature.outputs}
    if set(by_name) != set(outputs):
        raise TFLiteExportError(f"converted outputs {sorted(by_name)} differ from the requested {list(outputs)}")
    signature.outputs = [by_name[o] for o in outputs]
    subgraph.outputs = np.array([by_name[o].tensorIndex for o in outputs], dtype=np.int32)
    for o in outputs:
        subgraph.tensors[by_name[o].tensorIndex].name = o.encode()
    subgraph.tensors[int(subgraph.inputs[0])].name = input_name.encode()
    return _write_model(obj)


# ---------------------------------------------------------------------------------------------------
# conversion


def _base_converter(function: Any, module: tf.Module) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def _convert(
    module: _ConversionModule,
    input_kind: str,
    length: int,
    quantization: str,
    outputs: Sequence[str],
    calibration: Sequence[np.ndarray] | None = None,
    any_batch: bool = False,
) -> bytes:
    """One conversion: ``input_kind`` "waveform" (length = samples) or "log_mel" (length = frames);
    a batch of 1, or of any size (``any_batch``)."""
    # The dynamic-range quantizer would turn the factored front-end's DFT weights into int8 (it
    # quantizes every large constant conv/FC weight); the RFFT graph keeps its mel matrix float.
    frontend = "rfft" if quantization == "dynamic_int8" else "factored_dft"
    gate = quantization != "int8"  # an int8 output could not carry the NaN
    if input_kind == "waveform":
        function = module.waveform_function(length, outputs, frontend, gate, any_batch)
    else:
        function = module.log_mel_function(length, outputs, gate, any_batch)
    converter = _base_converter(function, module)
    float_key = (input_kind, length, tuple(outputs), frontend, gate, any_batch)
    if quantization == "float32":
        model = module._float_models[float_key] = converter.convert()
    elif quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        model = converter.convert()
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        model = converter.convert()
    elif quantization == "int8":
        float_model = None  # a log-mel file has no front-end to keep in float
        if input_kind == "waveform":
            if float_key not in module._float_models:
                module._float_models[float_key] = _base_converter(function, module).convert()
            float_model = module._float_models[float_key]
        model = _full_int8(converter, float_model, calibration)
    else:
        raise TFLiteExportError(f"unknown quantization {quantization!r}; choose from {QUANTIZATIONS}")
    if input_kind == "waveform" and check_frontend_float(model) == 0:
        raise TFLiteExportError("no front-end operators found in the converted graph (name scope lost)")
    model = _finalize_io(model, input_kind, outputs)
    check_builtin_only(model)
    return model


def _full_int8(
    converter: tf.lite.TFLiteConverter, float_model: bytes | None, calibration: Sequence[np.ndarray] | None
) -> bytes:
    """Full int8 of the network calibrated on ``calibration``; with ``float_model`` (waveform
    files) the front-end stays float32 (:func:`_selectively_quantize`)."""
    if not calibration:
        raise TFLiteExportError("full int8 quantization needs calibration audio (--calibration FILES)")
    samples = [np.asarray(x, np.float32)[np.newaxis] for x in calibration]

    def representative() -> Iterable[list[np.ndarray]]:
        for x in samples:
            yield [x]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    if float_model is None:
        return narrow_pre_hard_swish_ranges(converter.convert())
    return narrow_pre_hard_swish_ranges(_selectively_quantize(converter, float_model, representative))


#: hard-swish is 0 for every input at or below this value
HARD_SWISH_FLOOR = -3.0


def narrow_pre_hard_swish_ranges(model: bytes) -> bytes:
    """Int8 tensors read by a ``HARD_SWISH`` alone get the range ``[-3, max]`` instead of the
    calibrated ``[min, max]``: hard-swish maps everything at or below -3 to 0, so the values below
    are kept as well by the saturating int8 conversion, while the finer step halves the rounding
    error of those activations (docs/design.md, "Full int8"). The producing operator rescales to the
    tensor's new parameters when the file is loaded."""
    obj = read_model(model)
    for subgraph in obj.subgraphs:
        for index in _read_by_hard_swish_alone(obj, subgraph):
            _start_range_at(subgraph.tensors[index].quantization, HARD_SWISH_FLOOR)
    return _write_model(obj)


def _read_by_hard_swish_alone(obj: Any, subgraph: Any) -> list[int]:
    """The int8 tensors of ``subgraph`` whose only reader is a ``HARD_SWISH``."""
    from tensorflow.lite.python import schema_py_generated as schema

    readers: dict[int, list[str]] = {}
    for op in subgraph.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(operator_code_name(obj.operatorCodes[op.opcodeIndex]))
    return [
        i for i, names in readers.items()
        if names == ["HARD_SWISH"] and subgraph.tensors[i].type == schema.TensorType.INT8
    ]  # fmt: skip


def _start_range_at(quantization: Any, floor: float) -> None:
    """Per-tensor int8 parameters covering ``[floor, max]`` where they reached below ``floor``."""
    if quantization is None or quantization.scale is None or len(quantization.scale) != 1:
        return
    scale, zero_point = float(quantization.scale[0]), int(quantization.zeroPoint[0])
    low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
    if low >= floor - scale or high <= 0:  # within a step of the floor already (the zero point is rounded)
        return
    scale = (high - floor) / 255.0
    quantization.scale = np.array([scale], np.float32)
    quantization.zeroPoint = np.array([int(round(-128 - floor / scale))], np.int64)


def _selectively_quantize(
    converter: tf.lite.TFLiteConverter, float_model: bytes, representative: Callable[[], Any]
) -> bytes:
    """Full int8 for the network, float32 for the front-end: the converter's documented selective
    quantization (``QuantizationDebugger`` with ``denylisted_nodes``) over the front-end tensors,
    whose names are read from the float32 conversion of the same function."""
    denylist = frontend_tensor_names(float_model)
    if not denylist:
        raise TFLiteExportError("no front-end operators found in the converted graph (name scope lost)")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    with warnings.catch_warnings():
        # the debugger runs its calibration through tf.lite.Interpreter, which warns that it is deprecated
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative, debug_options=options
        )
        return bytes(debugger.get_nondebug_quantized_model())


def window_samples(seconds: float, config: FrontendConfig) -> int:
    samples = seconds_to_samples(seconds, config.sample_rate)
    if samples < config.min_samples:
        raise TFLiteExportError(f"window of {seconds:g} s is too short ({samples} samples)")
    return samples


def calibration_windows(
    files: Sequence[str | Path],
    num_samples: int,
    sample_rate: int,
    max_windows: int = DEFAULT_CALIBRATION_WINDOWS,
) -> list[np.ndarray]:
    """Non-overlapping windows of ``num_samples`` from each file (a shorter file, or the last part of
    a longer one when no full window fits, is zero-padded); at most ``max_windows``, spread evenly.
    Of more files than ``max_windows``, as many files spread over the list are read (a run's
    training set can hold thousands)."""
    from eat_keras.audio import load_audio

    if len(files) > max_windows:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_windows).round().astype(int)]
    windows: list[np.ndarray] = []
    for path in files:
        audio = load_audio(str(path), sample_rate)
        if len(audio) <= num_samples:
            windows.append(np.pad(audio, (0, num_samples - len(audio))))
            continue
        for start in range(0, len(audio) - num_samples + 1, num_samples):
            windows.append(audio[start : start + num_samples])
    if not windows:
        raise TFLiteExportError("no calibration audio")
    if len(windows) > max_windows:
        keep = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
        windows = [windows[i] for i in keep]
    return [np.asarray(w, np.float32) for w in windows]


def artifact_filename(
    name: str, quantization: str, window_seconds: float | None = None, frames: int | None = None, any_batch: bool = False
) -> str:
    """``<name>_<window>s_<quant>.tflite`` or ``<name>_logmel_<frames>f_<quant>.tflite``; files that
    take any batch end in ``_batch``."""
    suffix = "_batch" if any_batch else ""
    if window_seconds is not None:
        return f"{name}_{window_seconds:g}s_{quantization}{suffix}.tflite"
    return f"{name}_logmel_{frames}f_{quantization}{suffix}.tflite"


def _description(tagger: AudioTagger, name: str, input_desc: str, quantization: str, outputs: Sequence[str]) -> str:
    c = tagger.config
    return (
        f"{name}: EfficientAT {c.arch.upper()} (width {c.width_mult:g}, {c.num_classes} classes, "
        f"{c.label_type}) audio tagger. Input {input_desc}; outputs {', '.join(outputs)}; "
        f"{quantization}. Exported by eat-keras {__version__}."
    )


def default_windows(tagger: AudioTagger) -> tuple[float, ...]:
    """1 s and 10 s (short events, AudioSet clips), plus a fine-tuned model's training clip length."""
    windows = tuple(DEFAULT_WINDOW_SECONDS)
    if tagger.clip_seconds and tagger.clip_seconds not in windows:
        windows += (tagger.clip_seconds,)
    return windows


def export_tflite(
    tagger: AudioTagger,
    out_dir: str | Path,
    name: str,
    *,
    window_seconds: Sequence[float] | None = None,
    quantizations: Sequence[str] | None = None,
    calibration_files: Sequence[str | Path] = (),
    max_calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS,
    log_mel: bool = True,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    metadata: bool = True,
    log: Callable[[str], None] | None = None,
    any_batch: bool = False,
) -> list[TFLiteArtifact]:
    """Write the TFLite files of ``tagger`` into ``<out_dir>/<name>/tflite/`` and describe them.

    ``window_seconds`` defaults to :func:`default_windows`: 1 s and 10 s, plus the training clip
    length of a fine-tuned model, so that the deployed file is evaluated as training evaluated it.
    ``quantizations`` defaults to float32, float16 and dynamic_int8, plus int8 when
    ``calibration_files`` are given. With ``log_mel``, each window also gets a log-mel-input file
    with the same number of frames. ``outputs`` must start with ``scores``. ``metadata`` needs the
    ``mediapipe`` package. ``any_batch``: each window and quantization also gets a file that takes a
    batch of any size (``resize_tensor_input``; :func:`each_example`). Files are built in a staging
    folder and renamed into place one by one; files of an earlier export with the same names are
    replaced, others are kept. A failed write is one :class:`~eat_keras.errors.OutputError` and
    leaves no folder this call created.
    """
    if not tagger.class_names:
        raise TFLiteExportError("the tagger needs class names to be exported")
    window_seconds = default_windows(tagger) if window_seconds is None else window_seconds
    if quantizations is None:
        quantizations = DEFAULT_QUANTIZATIONS + (("int8",) if calibration_files else ())
    request = _Request(
        name, tuple(quantizations), tuple(calibration_files), max_calibration_windows, log_mel, tuple(outputs),
        metadata, any_batch,
    )  # fmt: skip
    request.check()
    if not window_seconds:
        raise TFLiteExportError("give at least one window length")
    check_output_name(name)
    if metadata:
        from eat_keras.export.metadata import require_mediapipe

        require_mediapipe()  # fail before converting anything if mediapipe is missing
    say = log or (lambda message: None)
    if not tagger.built:
        tagger.build_for_inference()
    module = _ConversionModule(tagger)

    final_dir = Path(out_dir) / name / TFLITE_DIR
    artifacts: list[TFLiteArtifact] = []
    with output_folder(final_dir.parent) as model_root:
        remove_stale_staging(model_root)
        with staging_folder(model_root, TFLITE_DIR) as staging:
            with output_errors(final_dir):
                staging.chmod(0o755)  # mkdtemp makes it private; it becomes the published folder
                write_label_list(staging / LABEL_LIST_FILE, tagger.class_names)
            for seconds in window_seconds:
                for job in _window_jobs(module, request, seconds):
                    say(f"converting {job.artifact.path.name}")
                    model = _file_bytes(module, request, job)
                    with output_errors(final_dir / job.artifact.path.name):
                        (staging / job.artifact.path.name).write_bytes(model)
                    artifacts.append(dataclasses.replace(job.artifact, path=final_dir / job.artifact.path.name))
            with output_errors(final_dir):
                _publish(staging, final_dir)
    return artifacts


@dataclasses.dataclass(frozen=True)
class _Request:
    """What :func:`export_tflite` was asked for, beyond the windows."""

    name: str
    quantizations: tuple[str, ...]
    calibration_files: tuple[str | Path, ...]
    max_calibration_windows: int
    log_mel: bool
    outputs: tuple[str, ...]
    metadata: bool
    any_batch: bool

    def check(self) -> None:
        """Refuse what no file can be made of, before anything is converted."""
        outputs = self.outputs
        if not outputs or outputs[0] != "scores" or len(set(outputs)) != len(outputs) or not set(outputs) <= set(OUTPUTS):
            raise TFLiteExportError(f"outputs must start with 'scores' and be distinct names from {OUTPUTS}; got {outputs}")
        unknown = [q for q in self.quantizations if q not in QUANTIZATIONS]
        if unknown:
            raise TFLiteExportError(f"unknown quantization {unknown}; choose from {QUANTIZATIONS}")
        if "int8" in self.quantizations and not self.calibration_files:
            raise TFLiteExportError("full int8 quantization needs calibration audio (--calibration FILES)")

    @property
    def batch_kinds(self) -> tuple[bool, ...]:
        """``any_batch`` of each file of a window and quantization: batch 1, then any batch if asked."""
        return (False, True) if self.any_batch else (False,)


@dataclasses.dataclass(frozen=True)
class _Job:
    """One file to convert: its description (path: the bare file name), input and calibration."""

    artifact: TFLiteArtifact
    length: int  # samples or frames
    calibration: list[np.ndarray] | None
    input_desc: str


def _window_jobs(module: _ConversionModule, request: _Request, seconds: float) -> list[_Job]:
    """The files of one window: waveform input, then log-mel input, each in every quantization."""
    tagger = module._tagger
    config = tagger.config.frontend
    samples = window_samples(seconds, config)
    frames = config.num_frames(samples)
    calibration = log_mel_calibration = None
    if "int8" in request.quantizations:
        calibration = calibration_windows(
            request.calibration_files, samples, config.sample_rate, request.max_calibration_windows
        )
        if request.log_mel:
            mel_fn = tf.function(lambda w: tagger.frontend(w, training=False)[..., 0])
            log_mel_calibration = [mel_fn(tf.constant(w[np.newaxis])).numpy()[0] for w in calibration]
    jobs = []
    for any_batch, quantization in itertools.product(request.batch_kinds, request.quantizations):
        filename = artifact_filename(request.name, quantization, window_seconds=seconds, any_batch=any_batch)
        artifact = TFLiteArtifact(
            Path(filename), "waveform", quantization, (1, samples), request.outputs, window_seconds=float(seconds),
            any_batch=any_batch,
        )  # fmt: skip
        desc = f"[{'batch' if any_batch else 1}, {samples}] waveform ({seconds:g} s at {config.sample_rate} Hz)"
        jobs.append(_Job(artifact, samples, calibration, desc))
    if request.log_mel:
        for any_batch, quantization in itertools.product(request.batch_kinds, request.quantizations):
            filename = artifact_filename(request.name, quantization, frames=frames, any_batch=any_batch)
            shape = (1, config.n_mels, frames)
            artifact = TFLiteArtifact(
                Path(filename), "log_mel", quantization, shape, request.outputs, frames=frames, any_batch=any_batch
            )
            desc = f"[{'batch' if any_batch else 1}, {config.n_mels}, {frames}] log-mel"
            jobs.append(_Job(artifact, frames, log_mel_calibration, desc))
    return jobs


def _file_bytes(module: _ConversionModule, request: _Request, job: _Job) -> bytes:
    """The finished file of ``job``: converted, checked, with settings and (optionally) metadata."""
    tagger = module._tagger
    artifact = job.artifact
    model = _convert(
        module, artifact.input_kind, job.length, artifact.quantization, request.outputs, job.calibration,
        artifact.any_batch,
    )  # fmt: skip
    model = _with_settings(model, tagger)
    if not request.metadata:
        return model
    from eat_keras.export.metadata import write_metadata

    return write_metadata(
        model,
        name=request.name,
        description=_description(tagger, request.name, job.input_desc, artifact.quantization, request.outputs),
        version=__version__,
        author="eat-keras export of EfficientAT (Florian Schmid et al.)",
        license="EfficientAT code and weights: MIT. AudioSet labels: CC BY 4.0.",
        class_names=tagger.class_names,
        input_kind=artifact.input_kind,
        sample_rate=tagger.config.frontend.sample_rate,
        outputs=request.outputs,
    )


def _publish(staging: Path, final_dir: Path) -> None:
    """Move the finished files into place: the whole folder in one rename when it is new, else file
    by file (each ``os.replace`` is atomic; files of other exports in the folder are kept)."""
    try:
        os.rename(staging, final_dir)
        return
    except OSError:
        if not final_dir.is_dir():
            raise
    for path in sorted(staging.iterdir()):
        os.replace(path, final_dir / path.name)


