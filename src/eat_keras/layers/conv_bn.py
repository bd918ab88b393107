"""Conv (or depthwise conv) + BatchNorm + activation with PyTorch's symmetric padding."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.layers.activations import get_activation

# PyTorch momentum 0.01 is Keras momentum 0.99; upstream uses eps 1e-3 in the whole backbone.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99


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
        pad = (kernel_size - 1) // 2 * dilation
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
        pad = (self.kernel_size - 1) // 2 * self.dilation
        padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]] if pad else "VALID"
        strides = [1, self.strides, self.strides, 1]
        dilations = [self.dilation, self.dilation]
        if self.depthwise:
            # Not explicit padding: with oneDNN on (TF's default on recent Intel CPUs) grappler fuses
            # DepthwiseConv2dNative + BiasAdd and the fused kernel aborts the process on explicit
            # paddings (tensor_format.h "Invalid index from the dimension"). At stride 1, "SAME" is
            # the same symmetric padding; at stride 2 it is not (TF pads bottom/right), so pad first.
            if pad and self.strides == 1 and 2 * pad == (self.kernel_size - 1) * self.dilation:
                padding = "SAME"
            elif pad:
                x, padding = tf.pad(x, padding), "VALID"
            kernel = self.conv.depthwise_kernel * scale[:, tf.newaxis]
            y = tf.nn.depthwise_conv2d(x, kernel, strides, padding, dilations=dilations)
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
