"""Running ``.tflite`` files: the LiteRT interpreter with XNNPACK, without importing TensorFlow.

Kept apart from :mod:`eat_keras.export.tflite` so that an app (or ``eat-keras tag --model
FILE.tflite``) that only runs exported files pays neither TensorFlow's import time (~5 s on a small
machine) nor its memory (~600 MB): ``ai_edge_litert`` and numpy are all it loads.
"""

from __future__ import annotations

import json
import mmap
import warnings
from pathlib import Path
from typing import Any

import numpy as np

NUM_THREADS = 2
#: the flatbuffer metadata entry in which `eat-keras export` stores the model's settings as JSON
#: (label type, clip length, sample rate, configuration), readable without TensorFlow
SETTINGS_METADATA = "eat_keras_settings"


def interpreter_class() -> Any:
    """``ai_edge_litert.interpreter.Interpreter`` when installed, else ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the environment
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


def make_interpreter(model: bytes | str | Path, num_threads: int = NUM_THREADS) -> Any:
    """A LiteRT interpreter (see :func:`interpreter_class`) with the default delegate (XNNPACK) and
    ``num_threads`` threads, tensors allocated."""
    kwargs = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = interpreter_class()(**kwargs, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def read_settings(model: bytes | str | Path) -> dict[str, Any] | None:
    """The settings `eat-keras export` stored in a ``.tflite`` (see :data:`SETTINGS_METADATA`), or
    None for files without them (older exports, other tools' files)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - depends on the environment
        from tensorflow.lite.python import schema_py_generated as schema
    if isinstance(model, (bytes, bytearray)):
        return _settings_in(schema.Model.GetRootAs(bytes(model), 0))
    # mapped, not read: only the pages of the metadata table and the entry are touched (the
    # interpreter has read the weights already)
    with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _settings_in(schema.Model.GetRootAs(data, 0))


def _settings_in(root: Any) -> dict[str, Any] | None:
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name() == SETTINGS_METADATA.encode():
            return json.loads(root.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def run_tflite(interpreter: Any, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run the default signature on one input array; returns ``{output name: array}``."""
    runner = interpreter.get_signature_runner()
    (input_name,) = runner.get_input_details()
    return runner(**{input_name: np.asarray(inputs, np.float32)})
