"""Dynamic ReLU, variant B with M = 2 (upstream ``models/dymn/dy_block.py::DyReLUB``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class DynamicReLU(tf_keras.layers.Layer):
    """``y = max(a1·x + b1, a2·x + b2)`` with per-sample, per-channel coefficients from the context.

    ``θ = 2σ(Dense(H → 4C)(h_c)) − 1`` is read **channel-major**, ``[B, C, 4]`` (channel c owns
    entries 4c … 4c+3; reading it as ``[B, 4, C]`` is a silent error), then scaled and shifted by
    upstream's constant buffers: ``coef = θ · LAMBDAS + INIT_V`` = ``(1 + θ0, θ1, θ2/2, θ3/2)`` =
    ``(a1, a2, b1, b2)``. With θ ≈ 0 this is a plain ReLU.

    Upstream builds a 5-D tensor and takes the max over its last axis; two 4-D affine maps and an
    elementwise maximum are the same numbers and convert to TFLite/ONNX without 5-D broadcasting.
    """

    # Buffers ``lambdas`` and ``init_v`` of upstream's state dict: fixed by the architecture (M = 2),
    # so they are constants here; weight import checks that a file holds exactly these values.
    LAMBDAS = np.array([1.0, 1.0, 0.5, 0.5], np.float32)
    INIT_V = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    NUM_COEFFICIENTS = 4  # 2·M: slopes a1, a2 then intercepts b1, b2

    def build(self, input_shape: tf.TensorShape) -> None:
        self.channels = int(input_shape[-1])
        # upstream initialises every Linear N(0, 0.01), zero bias
        self.coef = tf_keras.layers.Dense(
            self.NUM_COEFFICIENTS * self.channels,
            kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
            name="coef",
        )
        super().build(input_shape)

    def coefficients(self, context: tf.Tensor) -> tf.Tensor:
        """``[B, C, 4]`` = (a1, a2, b1, b2) per sample and channel."""
        theta = 2.0 * tf.math.sigmoid(self.coef(context)) - 1.0
        theta = tf.reshape(theta, [-1, self.channels, self.NUM_COEFFICIENTS])
        return theta * self.LAMBDAS + self.INIT_V

    def call(self, x: tf.Tensor, context: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        coef = self.coefficients(context)
        # each [B, 1, 1, C], broadcast over F and T
        a1, a2, b1, b2 = (
            tf.reshape(coef[:, :, i], [-1, 1, 1, self.channels]) for i in range(self.NUM_COEFFICIENTS)
        )
        if training:
            # the same maximum as u2 + relu(u1 - u2): its gradient makes fewer passes over the
            # activations than Maximum's (two selects and a product per branch)
            return x * a2 + b2 + tf.nn.relu(x * (a1 - a2) + (b1 - b2))
        return tf.maximum(x * a1 + b1, x * a2 + b2)

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
