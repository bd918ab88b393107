"""Coordinate attention of DyMN (upstream ``models/dymn/dy_block.py::CoordAtt``)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class CoordinateAttention(tf_keras.layers.Layer):
    """``x · σ(g_f) · σ(g_t)``: recalibrates each channel per frequency bin and per time frame.

    It replaces MN's squeeze-and-excitation in dynamic blocks. It has no weights: the sequences
    ``g_f [B, F', 1, C]`` and ``g_t [B, 1, T', C]`` come from the block's ``ContextGenerator`` and
    broadcast against ``x [B, F', T', C]``. The logistic sigmoid is upstream's, not a hard sigmoid.
    """

    def call(self, x: tf.Tensor, g_f: tf.Tensor, g_t: tf.Tensor) -> tf.Tensor:
        return x * tf.math.sigmoid(g_f) * tf.math.sigmoid(g_t)

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
