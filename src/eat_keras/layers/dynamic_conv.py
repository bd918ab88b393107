"""Dynamic convolution (upstream ``models/dymn/dy_block.py::DynamicConv``), batch- and length-agnostic.

Upstream keeps K = 4 kernels, mixes them per sample with ``a = softmax(Linear(h_c) / τ)`` and runs
one grouped conv with ``groups = B·C`` on the batch folded into channels. That needs per-sample
(runtime) kernels inside a grouped conv, which TFLite has no builtin for and which only works for
the batch size it was traced with. Convolution without bias is linear in its kernel, so the same
result is obtained exactly, for any batch and length, with ops that TFLite has as builtins:

* **1x1 (expand / project): aggregate, then batched matmul.** ``W_b = Σ_k a[b,k] W_k`` is one small
  ``[B, K] @ [K, C_in·C_out]`` matmul; the conv is ``[B, F·T, C_in] @ [B, C_in, C_out]``
  (BATCH_MATMUL). Same MACs as a static 1x1 conv.
* **depthwise kxk**, by where the graph runs:

  - a batch fixed at 1 (the exported TFLite files): the kernel is aggregated first and one depthwise
    conv runs with that runtime filter; LiteRT has it as a builtin, and it is far faster there;
  - any batch in TensorFlow (SavedModel, Keras, training): upstream's own formulation, the batch
    folded into the channels and one depthwise conv with the ``B·C`` per-sample filters: the
    fastest in TF, but not a TFLite builtin for a dynamic batch (see the end of this docstring).
    In training the per-sample filters get their gradient from a forward depthwise conv
    (:func:`depthwise_filter_gradient`) instead of TF's filter-gradient op, which is slow on
    these shapes;
  - any batch, TFLite builtins only (traced inside :func:`~eat_keras.builtin_ops.builtin_ops_only`,
    for converting an any-batch graph to TFLite): all K kernels at once, then contract. One static ``DepthwiseConv2D``
    with ``depth_multiplier=K`` (TF orders its outputs ``c·K + k``) gives ``[B, F', T', C·K]``;
    viewed as ``[B, F'·T'·C, K]`` it is contracted with the attention ``[B, K, 1]`` by a batched
    matmul. K× the MACs of a static depthwise conv, yet the fastest builtin-only, any-batch variant.

Each form is the fastest of the alternatives measured for where it runs (docs/design.md,
"Dynamic convolution formulations"; ``tools/bench_dymn.py --formulations``).

The folded variant needs a runtime filter whose channel count is ``B·C``: with a dynamic batch the
TFLite converter rejects it (``tf.DepthwiseConv2dNative`` falls back to Flex), so a graph meant for
TFLite with a dynamic batch is traced inside :func:`~eat_keras.builtin_ops.builtin_ops_only`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.builtin_ops import builtin_ops_requested
from eat_keras.layers.conv_bn import torch_padded_depthwise_conv, torch_padding

DEFAULT_NUM_KERNELS = 4


def depthwise_filter_gradient(
    x: tf.Tensor, dy: tf.Tensor, kernel_size: int, strides: int = 1, dilation: int = 1
) -> tf.Tensor:
    """Gradient w.r.t. the ``[k, k, C, 1]`` filter of :func:`torch_padded_depthwise_conv` on a
    one-sample input ``x [1, F, T, C]``, given the output gradient ``dy [1, F', T', C]``.

    ``dW[i, j, c] = Σ_{f,t} x_pad[f·s + i·d, t·s + j·d, c] · dy[f, t, c]`` is itself a depthwise
    correlation of the padded input with ``dy`` as the filter (dilated by the stride), read at every
    ``d``-th position. TF's oneDNN ``DepthwiseConv2dNativeBackpropFilter`` is many times slower than
    that forward conv for 5x5 kernels over the thousands of channels of a batch folded into C.
    """
    pad = torch_padding(kernel_size, dilation)
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    dy_filter = tf.transpose(dy, [1, 2, 3, 0])  # [F', T', C, 1]
    taps = tf.nn.depthwise_conv2d(padded, dy_filter, [1, 1, 1, 1], "VALID", dilations=[strides, strides])
    span = (kernel_size - 1) * dilation + 1
    return tf.transpose(taps[:, :span:dilation, :span:dilation, :], [1, 2, 3, 0])


def _with_filter_gradient(y: tf.Tensor, x: tf.Tensor, filters: tf.Tensor, strides: int, dilation: int) -> tf.Tensor:
    """``y`` (the conv of ``x`` with ``stop_gradient(filters)``) whose gradient reaches ``filters``
    through :func:`depthwise_filter_gradient`; ``x``'s gradient still flows through the conv itself."""

    @tf.custom_gradient
    def attach(y: tf.Tensor, x: tf.Tensor, filters: tf.Tensor) -> tuple[tf.Tensor, Any]:
        def gradient(dy: tf.Tensor) -> tuple[tf.Tensor, None, tf.Tensor]:
            return dy, None, depthwise_filter_gradient(x, dy, int(filters.shape[0]), strides, dilation)

        return tf.identity(y), gradient

    return attach(y, x, filters)


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class DynamicConv(tf_keras.layers.Layer):
    """Input ``[B, F, T, C_in]`` and context ``[B, H]`` → ``[B, F', T', filters]``, no bias.

    Either a 1x1 conv (``depthwise=False``, ``kernel_size=1``) or a depthwise kxk conv
    (``depthwise=True``, ``filters == C_in``), with stride and PyTorch's symmetric padding
    ``(k - 1) // 2 * dilation``. ``temperature`` divides the attention logits before the softmax;
    pretrained AudioSet models use 1.0 (it is not stored in checkpoints).

    Weights: ``kernel`` — 1x1: ``[K, C_in, C_out]``; depthwise: ``[kh, kw, C, K]`` (the
    ``DepthwiseConv2D`` layout with depth multiplier K) — and ``attention`` (Dense H → K, upstream
    ``residuals.0``).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 1,
        strides: int = 1,
        depthwise: bool = False,
        dilation: int = 1,
        num_kernels: int = DEFAULT_NUM_KERNELS,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not depthwise and kernel_size != 1:
            raise ValueError("DynamicConv supports 1x1 convs and depthwise convs only")
        if strides > 1 and dilation > 1:
            raise ValueError("strides > 1 together with dilation > 1 is not supported")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.depthwise = depthwise
        self.dilation = dilation
        self.num_kernels = num_kernels
        self.temperature = float(temperature)
        # upstream initialises every Linear N(0, 0.01), zero bias
        self.attention = tf_keras.layers.Dense(
            num_kernels,
            kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
            name="attention",
        )

    def build(self, input_shape: tf.TensorShape) -> None:
        in_channels = int(input_shape[-1])
        if self.depthwise and in_channels != self.filters:
            raise ValueError(f"depthwise DynamicConv needs filters == input channels ({in_channels})")
        k, n = self.kernel_size, self.num_kernels
        if self.depthwise:
            shape = (k, k, in_channels, n)
            fan_out = in_channels * k * k  # torch kaiming fan_out of one [C, 1, k, k] kernel
        else:
            shape = (n, in_channels, self.filters)
            fan_out = self.filters
        self.kernel = self.add_weight(
            name="kernel",
            shape=shape,
            initializer=tf_keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / fan_out)),
        )
        super().build(input_shape)

    def kernel_attention(self, context: tf.Tensor) -> tf.Tensor:
        """``softmax(Linear(h_c) / τ)`` over the K kernels: ``[B, K]``."""
        return tf.nn.softmax(self.attention(context) / self.temperature, axis=-1)

    def _pointwise(self, x: tf.Tensor, attention: tf.Tensor) -> tf.Tensor:
        if self.strides > 1:  # a 1x1 conv without padding just subsamples
            x = x[:, :: self.strides, :: self.strides, :]
        shape = tf.shape(x)
        batch, in_channels = shape[0], x.shape[-1]
        kernels = tf.reshape(self.kernel, [self.num_kernels, in_channels * self.filters])
        per_sample = tf.reshape(tf.matmul(attention, kernels), [batch, in_channels, self.filters])
        y = tf.matmul(tf.reshape(x, [batch, -1, in_channels]), per_sample)
        return tf.reshape(y, [batch, shape[1], shape[2], self.filters])

    def _depthwise(self, x: tf.Tensor, attention: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Aggregate the K kernels per sample, then one depthwise conv with those runtime filters
        (in training, with the filter gradient of :func:`_with_filter_gradient`)."""
        conv = functools.partial(torch_padded_depthwise_conv, strides=self.strides, dilation=self.dilation)
        k, channels = self.kernel_size, self.filters
        flat = tf.reshape(self.kernel, [k * k * channels, self.num_kernels])
        if x.shape[0] == 1:
            # A batch fixed at 1 (the TFLite files' [1, N] input): a builtin DEPTHWISE_CONV_2D with a
            # runtime filter, several times faster on LiteRT/XNNPACK than the K-wide form.
            return conv(x, tf.reshape(tf.matmul(flat, attention, transpose_b=True), [k, k, channels, 1]))
        if builtin_ops_requested():
            y = conv(x, self.kernel)  # [B, F', T', C·K], channel c·K + k
            shape = tf.shape(y)
            y = tf.matmul(tf.reshape(y, [shape[0], -1, self.num_kernels]), tf.expand_dims(attention, -1))
            return tf.reshape(y, [shape[0], shape[1], shape[2], self.filters])
        # Any batch (SavedModel, Keras): upstream's grouped conv, the batch folded into the channels
        # ([B, F, T, C] -> [1, F, T, B·C]) against the B·C per-sample filters. The TFLite converter
        # cannot make this builtin for a dynamic batch (hence the branch above), but in TF it is
        # about twice as fast as the K-wide conv + batched matmul.
        shape = tf.shape(x)
        batch = shape[0]
        per_sample = tf.reshape(tf.matmul(attention, flat, transpose_b=True), [batch, k, k, channels])
        filters = tf.reshape(tf.transpose(per_sample, [1, 2, 0, 3]), [k, k, batch * channels, 1])
        folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, shape[1], shape[2], batch * channels])
        if training:
            y = conv(folded, tf.stop_gradient(filters))
            y = _with_filter_gradient(y, folded, filters, self.strides, self.dilation)
        else:
            y = conv(folded, filters)
        out = tf.shape(y)
        return tf.transpose(tf.reshape(y, [out[1], out[2], batch, channels]), [2, 0, 1, 3])

    def call(self, x: tf.Tensor, context: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        attention = self.kernel_attention(context)
        return self._depthwise(x, attention, training) if self.depthwise else self._pointwise(x, attention)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "depthwise": self.depthwise,
            "dilation": self.dilation,
            "num_kernels": self.num_kernels,
            "temperature": self.temperature,
        }
