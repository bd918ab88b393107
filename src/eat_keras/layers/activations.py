"""Activations written out explicitly, so no converter can substitute a different approximation."""

from __future__ import annotations

import tensorflow as tf


def hard_swish(x: tf.Tensor) -> tf.Tensor:
    """PyTorch ``nn.Hardswish``: ``x * relu6(x + 3) / 6``.

    Written out because ``tf_keras.activations.hard_sigmoid`` is ``0.2x + 0.5`` (not ``x/6 + 0.5``),
    and ONNX exporters emit HardSigmoid with alpha 1/6 that converters sometimes drop.
    """
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


ACTIVATIONS = {
    "relu": tf.nn.relu,
    "hardswish": hard_swish,
    "sigmoid": tf.math.sigmoid,
    None: None,
}


def get_activation(name: str | None):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(map(str, ACTIVATIONS))}")
