"""MN: the MobileNetV3-based EfficientAT network (upstream ``models/mn``)."""

from __future__ import annotations

import tf_keras

from eat_keras.models.blocks import InvertedResidual, block_specs
from eat_keras.models.config import ModelConfig


def build_mn_blocks(config: ModelConfig) -> list[tf_keras.layers.Layer]:
    """The 15 static inverted-residual blocks (upstream ``features.1`` … ``features.15``)."""
    specs = block_specs(config.width_mult, config.strides, config.dilated, config.reduced_tail)
    return [InvertedResidual(spec, name=f"block{i}") for i, spec in enumerate(specs)]
