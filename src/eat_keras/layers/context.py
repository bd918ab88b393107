"""DyMN context generator (upstream ``models/dymn/dy_block.py::ContextGen``).

Every dynamic block derives, from its *input* feature map, one small context that steers all of its
dynamic parts: the global context vector ``h_c`` parameterises the dynamic convolutions' kernel
attention and DyReLU's coefficients, the per-frequency and per-time sequences ``g_f`` / ``g_t``
drive coordinate attention.

Layout: NHWC with mel as height (F) and time as width (T), i.e. upstream ``[B, C, F, T]`` is
``[B, F, T, C]`` here.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.layers.conv_bn import ConvBNAct

# Coordinate-attention sequences are pooled with a 3-tap mean when the block downsamples, so that
# they line up with the depthwise conv's output positions.
_CA_POOL_SIZE = 3


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class ContextGenerator(tf_keras.layers.Layer):
    """Block input ``[B, F, T, C_in]`` → ``(h_c [B, H], g_f [B, F', 1, C_exp], g_t [B, 1, T', C_exp])``.

    1. frequency profile = mean over T, time profile = mean over F; both are sequences of C_in-vectors,
       concatenated along the sequence axis (F + T positions);
    2. one shared 1x1 conv (no bias) → BN (eps 1e-3) → hardswish maps every position to H channels;
    3. ``h_c`` = mean over all F + T positions *after* the activation;
    4. the sequences are split back; for a stride ``s > 1`` block each is average-pooled with a
       3-tap window, stride ``s`` and one zero of padding on each side, **counting the padding**
       (torch ``count_include_pad=True``: the divisor is always 3, also at the borders, which Keras'
       ``'same'`` pooling does not do) — so explicit zero padding, then a VALID pool;
    5. 1x1 convs *with* bias map H → C_exp (``conv_f``, ``conv_t``).

    Means are ``tf.reduce_mean`` (not adaptive pooling), so any number of frames works in one graph.
    """

    def __init__(self, context_dim: int, expanded_channels: int, stride: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.context_dim = context_dim
        self.expanded_channels = expanded_channels
        self.stride = stride
        self.joint = ConvBNAct(context_dim, 1, activation="hardswish", name="joint")
        self.conv_f = self._coordinate_conv("conv_f")
        self.conv_t = self._coordinate_conv("conv_t")

    def _coordinate_conv(self, name: str) -> tf_keras.layers.Conv2D:
        # torch's Conv2d: kaiming-normal (fan_out) kernel, zero bias
        return tf_keras.layers.Conv2D(
            self.expanded_channels, 1, use_bias=True, kernel_initializer="he_normal", name=name
        )

    def _pool(self, sequence: tf.Tensor, axis: int) -> tf.Tensor:
        """3-tap mean with stride ``self.stride`` along ``axis`` (1 = F, 2 = T), zero padding counted."""
        if self.stride == 1:
            return sequence
        pad = [[0, 0], [0, 0], [0, 0], [0, 0]]
        pad[axis] = [1, 1]
        window = [1, 1]
        window[axis - 1] = _CA_POOL_SIZE
        strides = [1, 1]
        strides[axis - 1] = self.stride
        return tf.nn.avg_pool2d(tf.pad(sequence, pad), window, strides, "VALID")

    def call(
        self, x: tf.Tensor, training: bool | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        batch = tf.shape(x)[0]
        num_freq = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        num_time = tf.shape(x)[2]
        freq_profile = tf.reduce_mean(x, axis=2)  # [B, F, C_in]: mean over time
        time_profile = tf.reduce_mean(x, axis=1)  # [B, T, C_in]: mean over frequency
        # expand_dims, not [:, :, tf.newaxis]: a new-axis strided slice on a dynamic shape is not a
        # TFLite builtin
        joint = tf.expand_dims(tf.concat([freq_profile, time_profile], axis=1), axis=2)
        joint = self.joint(joint, training=training)  # [B, F + T, 1, H]
        context = tf.reduce_mean(joint, axis=[1, 2])  # h_c: after the activation, over F + T
        freq_seq = joint[:, :num_freq]  # [B, F, 1, H]
        time_seq = tf.reshape(joint[:, num_freq:], [batch, 1, num_time, self.context_dim])
        g_f = self.conv_f(self._pool(freq_seq, axis=1))  # [B, F', 1, C_exp]
        g_t = self.conv_t(self._pool(time_seq, axis=2))  # [B, 1, T', C_exp]
        return context, g_f, g_t

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "context_dim": self.context_dim,
            "expanded_channels": self.expanded_channels,
            "stride": self.stride,
        }
