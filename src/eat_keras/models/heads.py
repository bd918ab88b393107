"""Classification heads. Each maps the final feature map ``[B, F, T, C]`` to clip logits and
frame-level logits ``[B, T, classes]`` (for sound-event use before pooling over time)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.layers import ConvBNAct, hard_swish

# Upstream initialises every Linear with N(0, 0.01) and zero bias (new heads included).
_LINEAR_INIT = {"stddev": 0.01}


def _dense(units: int, name: str) -> tf_keras.layers.Dense:
    return tf_keras.layers.Dense(
        units, kernel_initializer=tf_keras.initializers.RandomNormal(**_LINEAR_INIT), name=name
    )


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class MLPHead(tf_keras.layers.Layer):
    """``mlp``: global mean → Dense(hidden) → Hardswish → Dropout → Dense(classes).

    Frame logits apply the same MLP to the frequency-mean of each time frame; their time-mean is not
    the clip logit (the MLP is non-linear), they serve to localise events.
    """

    def __init__(self, hidden_units: int, num_classes: int, dropout: float = 0.2, **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_units = hidden_units
        self.num_classes = num_classes
        self.dropout_rate = dropout
        self.hidden = _dense(hidden_units, "hidden")
        self.dropout = tf_keras.layers.Dropout(dropout, name="dropout")
        self.classifier = _dense(num_classes, "classifier")

    def _mlp(self, x: tf.Tensor, training: bool | None) -> tf.Tensor:
        x = hard_swish(self.hidden(x))
        return self.classifier(self.dropout(x, training=training))

    def call(self, fmap: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        logits = self._mlp(tf.reduce_mean(fmap, axis=[1, 2]), training)
        frame_logits = self._mlp(tf.reduce_mean(fmap, axis=1), training)
        return logits, frame_logits

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "num_classes": self.num_classes,
            "dropout": self.dropout_rate,
        }


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class FullyConvolutionalHead(tf_keras.layers.Layer):
    """``fully_convolutional``: 1x1 conv (no bias) → BN (torch defaults eps 1e-5) → global mean.

    Linear up to the pooling, so the time-mean of the frame logits equals the clip logits.
    """

    def __init__(self, num_classes: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv_bn = ConvBNAct(
            num_classes, 1, activation=None, bn_epsilon=1e-5, bn_momentum=0.9, name="conv_bn"
        )

    def call(self, fmap: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        x = self.conv_bn(fmap, training=training)
        frame_logits = tf.reduce_mean(x, axis=1)
        return tf.reduce_mean(frame_logits, axis=1), frame_logits

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class AttentionPoolingHead(tf_keras.layers.Layer):
    """``multihead_attention_pooling`` (PSLA style): per-frame attention and values, H heads.

    frequency-mean → Dense(classes * 2 * H) → [B, T, 2, H, classes]; attention = clipped sigmoid
    normalised over time; clip logits = Σ_h w_h Σ_t att · val. No released checkpoint uses it.
    """

    def __init__(self, num_classes: int, num_heads: int = 4, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.subspace_proj = _dense(num_classes * 2 * num_heads, "subspace_proj")

    def build(self, input_shape: tf.TensorShape) -> None:
        self.head_weight = self.add_weight(
            name="head_weight",
            shape=(1, self.num_heads, 1),
            initializer=tf_keras.initializers.Constant(1.0 / self.num_heads),
        )
        super().build(input_shape)

    def call(self, fmap: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        x = self.subspace_proj(tf.reduce_mean(fmap, axis=1))
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], 2, self.num_heads, self.num_classes])
        att = tf.clip_by_value(tf.math.sigmoid(x[:, :, 0]), 1e-7, 1.0 - 1e-7)
        att = att / tf.reduce_sum(att, axis=1, keepdims=True)
        val = x[:, :, 1]
        per_head = tf.reduce_sum(att * val, axis=1)  # [B, H, classes]
        logits = tf.reduce_sum(per_head * self.head_weight, axis=1)
        frame_logits = tf.reduce_sum(val * self.head_weight[:, tf.newaxis], axis=2)
        return logits, frame_logits

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_heads": self.num_heads,
        }


def build_head(head_type: str, num_classes: int, hidden_units: int, dropout: float):
    if head_type == "mlp":
        return MLPHead(hidden_units, num_classes, dropout, name="head")
    if head_type == "fully_convolutional":
        return FullyConvolutionalHead(num_classes, name="head")
    if head_type == "attention_pooling":
        return AttentionPoolingHead(num_classes, name="head")
    raise ValueError(f"unknown head_type {head_type!r}")
