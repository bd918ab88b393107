"""Conv (or depthwise conv) + BatchNorm + activation with PyTorch's symmetric padding."""

from __future__ import annotations

import functools
from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.layers.activations import get_activation

# PyTorch momentum 0.01 is Keras momentum 0.99; upstream uses eps 1e-3 in the whole backbone.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99


def torch_padding(kernel_size: int, dilation: int = 1) -> int:
    """The zero padding upstream gives every conv on each side: ``(k - 1) // 2 * dilation``."""
    return (kernel_size - 1) // 2 * dilation


def torch_padded_depthwise_conv(x: tf.Tensor, kernel: tf.Tensor, strides: int = 1, dilation: int = 1) -> tf.Tensor:
    """``tf.nn.depthwise_conv2d`` with PyTorch's symmetric zero padding ``(k - 1) // 2 * dilation``,
    without a ``Pad`` op where it can: TF's CPU kernels copy the whole activation map for one
    (docs/design.md, "Depthwise padding").

    - odd ``k``, stride 1: ``"SAME"`` pads ``(k - 1) // 2 * dilation`` on each side, the same thing;
    - odd ``k``, stride 2, dilation 1, batch not fixed at 1: the kernel gets a zero last row and
      column, and ``"SAME"``. For ``k + 1`` taps SAME pads ``k // 2`` in front whatever the parity of
      the size (``k - 1`` in all for even sizes, ``k`` for odd ones, the larger half behind), so
      output ``i`` reads rows ``2i - k // 2 .. 2i + k // 2``, PyTorch's, and one more that meets the
      zero tap. Exact: the extra products are zeros;
    - otherwise, and where the batch is fixed at 1 (the exported TFLite files): ``tf.pad`` and
      ``"VALID"``. LiteRT/XNNPACK fuses that PAD into the conv, and runs 4x4 and 6x6 depthwise
      kernels slower than 3x3 and 5x5.

    Never explicit paddings: with oneDNN on grappler fuses DepthwiseConv2dNative + BiasAdd, and the
    fused kernel aborts the process on them (tensor_format.h "Invalid index from the dimension").
    """
    kernel_size = int(kernel.shape[0])
    pad = torch_padding(kernel_size, dilation)
    conv = functools.partial(
        tf.nn.depthwise_conv2d, strides=[1, strides, strides, 1], dilations=[dilation, dilation]
    )
    if not pad:
        return conv(x, kernel, padding="VALID")
    if kernel_size % 2 == 1 and strides == 1:
        return conv(x, kernel, padding="SAME")
    if kernel_size % 2 == 1 and strides == 2 and dilation == 1 and x.shape[0] != 1:
        return conv(x, tf.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]]), padding="SAME")
    return conv(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]), kernel, padding="VALID")


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class ConvBNAct(tf_keras.layers.Layer):
    """torchvision ``ConvNormActivation``: conv without bias → BatchNorm → optional activation.

    In inference (``training`` falsy) BatchNorm is folded into the conv.

    Padding is explicit and symmetric, ``(k - 1) // 2 * dilation`` on every side, followed by a VALID
    conv: TF's ``'same'`` pads asymmetrically for stride 2 on even sizes (128 mel bins is even).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        depthwise: bool = False,
        dilation: int = 1,
        activation: str | None = None,
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.depthwise = depthwise
        self.dilation = dilation
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        pad = torch_padding(kernel_size, dilation)
        self.pad = tf_keras.layers.ZeroPadding2D(pad, name="pad") if pad else None
        common = dict(
            kernel_size=kernel_size,
            strides=strides,
            dilation_rate=dilation,
            padding="valid",
            use_bias=False,
            name="conv",
        )
        if depthwise:
            self.conv = tf_keras.layers.DepthwiseConv2D(
                depthwise_initializer="he_normal", **common
            )
        else:
            self.conv = tf_keras.layers.Conv2D(filters, kernel_initializer="he_normal", **common)
        self.bn = tf_keras.layers.BatchNormalization(
            epsilon=bn_epsilon, momentum=bn_momentum, name="bn"
        )
        self._act = get_activation(activation)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        # the first call builds the sublayers (under their own names) through the unfolded path
        if not training and self.bn.built:
            x = self._folded_conv(x)
        else:
            if self.pad is not None:
                x = self.pad(x)
            x = self.bn(self.conv(x), training=training)
        return self._act(x) if self._act is not None else x

    def _folded_conv(self, x: tf.Tensor) -> tf.Tensor:
        """Inference: BatchNorm folded into the kernel and a bias, padding inside the conv op. On
        TF's CPU kernels this saves two passes over the activations per layer (the separate pad and
        the normalisation), and grappler fuses conv + bias (+ ReLU) into one oneDNN primitive."""
        bn = self.bn
        scale = bn.gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)
        bias = bn.beta - bn.moving_mean * scale
        pad = torch_padding(self.kernel_size, self.dilation)
        padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]] if pad else "VALID"
        strides = [1, self.strides, self.strides, 1]
        dilations = [self.dilation, self.dilation]
        if self.depthwise:
            kernel = self.conv.depthwise_kernel * scale[:, tf.newaxis]
            y = torch_padded_depthwise_conv(x, kernel, self.strides, self.dilation)
        else:
            y = tf.nn.conv2d(x, self.conv.kernel * scale, strides, padding, dilations=dilations)
        return tf.nn.bias_add(y, bias)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "depthwise": self.depthwise,
            "dilation": self.dilation,
            "activation": self.activation,
            "bn_epsilon": self.bn_epsilon,
            "bn_momentum": self.bn_momentum,
        }
