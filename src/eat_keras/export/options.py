"""Choices and defaults of the exporters, in one place that imports no TensorFlow.

The exporters (:mod:`eat_keras.export.tflite`, :mod:`eat_keras.export.saved_model`) check their
arguments against these, and ``eat-keras export`` offers them as its choices and shows them as its
defaults in ``--help`` without loading TensorFlow.
"""

from __future__ import annotations

#: what ``eat-keras export`` writes when no ``--format`` is given
DEFAULT_FORMATS = ("saved_model",)

# TFLite: one file per window length and quantization
QUANTIZATIONS = ("float32", "float16", "dynamic_int8", "int8")
#: written when none are named; full int8 is added when calibration audio is given
DEFAULT_QUANTIZATIONS = ("float32", "float16", "dynamic_int8")
#: output tensors a file may have; ``scores`` is always the first
OUTPUTS = ("scores", "logits", "embedding")
DEFAULT_OUTPUTS = ("scores",)
DEFAULT_WINDOW_SECONDS = (1.0, 10.0)
#: calibration windows of full int8, at most, spread over the calibration files
DEFAULT_CALIBRATION_WINDOWS = 100
TFLITE_DIR = "tflite"
