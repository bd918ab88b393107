"""DyMN: the dynamic EfficientAT network (upstream ``models/dymn``).

Same 15-block channel table, strides, stem, last conv and heads as MN (those come from
``EfficientATNet``); only the blocks differ. A dynamic block computes its own context from its input
(context is never passed between blocks) and uses it for dynamic convolutions, DyReLU and
coordinate attention instead of static convs, a static depthwise activation and SE.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from eat_keras.layers import ContextGenerator, CoordinateAttention, DynamicConv, DynamicReLU
from eat_keras.layers.activations import get_activation
from eat_keras.layers.conv_bn import BN_EPSILON, BN_MOMENTUM
from eat_keras.models.blocks import BlockSpec, InvertedResidual, block_specs, make_divisible
from eat_keras.models.config import ModelConfig

# Upstream defaults of get_model: H = clip(make_divisible(exp // 4), 32·w, 128·w), each rounded.
CONTEXT_RATIO = 4
MIN_CONTEXT_SIZE = 32
MAX_CONTEXT_SIZE = 128
# use_dy_blocks="replace_se": dynamic blocks exactly where MN has SE, static blocks (no SE) elsewhere.
REPLACE_SE_DYNAMIC_BLOCKS = (3, 4, 5, 10, 11, 12, 13, 14)


def context_size(expanded_channels: int, width_mult: float) -> int:
    """Context size H of a dynamic block (upstream ``context_dim``)."""
    return int(
        np.clip(
            make_divisible(expanded_channels // CONTEXT_RATIO, 8),
            make_divisible(MIN_CONTEXT_SIZE * width_mult, 8),
            make_divisible(MAX_CONTEXT_SIZE * width_mult, 8),
        )
    )


def _batch_norm(name: str) -> tf_keras.layers.BatchNormalization:
    return tf_keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class DynamicInvertedResidual(tf_keras.layers.Layer):
    """Upstream ``DY_Block``. Forward order (names as upstream's modules):

    context_gen(block input) → [exp_conv 1x1 → exp_norm → static ReLU/hardswish] (absent when
    exp == in) → depth_conv kxk (stride) → depth_norm → depth_act (DyReLU, whatever RE/HS says) →
    ca (coordinate attention) → proj_conv 1x1 → proj_norm → (+ input if stride 1 and in == out).
    """

    def __init__(
        self,
        spec: BlockSpec | dict[str, Any],
        context_dim: int,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        spec = BlockSpec(**spec) if isinstance(spec, dict) else spec
        self.spec = spec
        self.context_dim = context_dim
        self.temperature = float(temperature)
        exp = spec.expanded_channels
        self.context_gen = ContextGenerator(
            context_dim, exp, stride=spec.depthwise_stride, name="context_gen"
        )
        if spec.has_expansion:
            self.exp_conv = DynamicConv(exp, 1, temperature=temperature, name="exp_conv")
            self.exp_norm = _batch_norm("exp_norm")
            self._exp_act = get_activation(spec.activation)
        else:
            self.exp_conv = self.exp_norm = self._exp_act = None
        self.depth_conv = DynamicConv(
            exp,
            spec.kernel_size,
            strides=spec.depthwise_stride,
            depthwise=True,
            dilation=spec.dilation,
            temperature=temperature,
            name="depth_conv",
        )
        self.depth_norm = _batch_norm("depth_norm")
        self.depth_act = DynamicReLU(name="depth_act")
        self.ca = CoordinateAttention(name="ca")
        self.proj_conv = DynamicConv(spec.out_channels, 1, temperature=temperature, name="proj_conv")
        self.proj_norm = _batch_norm("proj_norm")

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        context, g_f, g_t = self.context_gen(x, training=training)
        y = x
        if self.exp_conv is not None:
            y = self._exp_act(self.exp_norm(self.exp_conv(y, context), training=training))
        y = self.depth_norm(self.depth_conv(y, context), training=training)
        y = self.ca(self.depth_act(y, context), g_f, g_t)
        y = self.proj_norm(self.proj_conv(y, context), training=training)
        return x + y if self.spec.use_residual else y

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "spec": dataclasses.asdict(self.spec),
            "context_dim": self.context_dim,
            "temperature": self.temperature,
        }


def build_dymn_blocks(config: ModelConfig) -> list[tf_keras.layers.Layer]:
    """The 15 blocks of a DyMN (upstream ``layers.0`` … ``layers.14``)."""
    specs = block_specs(config.width_mult, config.strides, config.dilated, config.reduced_tail)
    blocks: list[tf_keras.layers.Layer] = []
    for i, spec in enumerate(specs):
        if config.use_dy_blocks == "all" or i in REPLACE_SE_DYNAMIC_BLOCKS:
            blocks.append(
                DynamicInvertedResidual(
                    spec,
                    context_size(spec.expanded_channels, config.width_mult),
                    temperature=config.dyconv_temperature,
                    name=f"block{i}",
                )
            )
        else:  # upstream builds these with the MN block and no SE config
            blocks.append(InvertedResidual(dataclasses.replace(spec, use_se=False), name=f"block{i}"))
    return blocks
