"""Channel squeeze-and-excitation as used by EfficientAT MN (``se_dims='c'``)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class SqueezeExcitation(tf_keras.layers.Layer):
    """mean over (F, T) → Dense+ReLU → Dense+**logistic** sigmoid → rescale channels.

    Upstream uses the logistic sigmoid here, not MobileNetV3's hard-sigmoid. Only the channel variant
    exists: upstream's frequency variant crashes at HEAD and its time variant needs a fixed length.
    """

    def __init__(self, channels: int, squeeze_channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.squeeze_channels = squeeze_channels
        # upstream initialises every Linear N(0, 0.01); one initializer object per layer.
        self.fc1 = tf_keras.layers.Dense(
            squeeze_channels, kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01), name="fc1"
        )
        self.fc2 = tf_keras.layers.Dense(
            channels, kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01), name="fc2"
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        s = tf.reduce_mean(x, axis=[1, 2])
        s = tf.math.sigmoid(self.fc2(tf.nn.relu(self.fc1(s))))
        # a reshape, not s[:, None, None, :]: TFLite keeps that as a RESHAPE plus a no-op STRIDED_SLICE
        return x * tf.reshape(s, [-1, 1, 1, self.channels])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "channels": self.channels,
            "squeeze_channels": self.squeeze_channels,
        }
