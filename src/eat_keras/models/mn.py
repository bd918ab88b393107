"""MN: the MobileNetV3-based EfficientAT network (upstream ``models/mn``), registered as ``mn``.

Upstream names its modules ``features.0`` (stem), ``features.1`` … ``features.15`` (the blocks,
torchvision's inverted residuals), ``features.16`` (last conv) and ``classifier.*`` (the head).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

import tf_keras

from eat_keras.models.blocks import InvertedResidual, block_specs
from eat_keras.models.config import ModelConfig
from eat_keras.models.network import EfficientATNet
from eat_keras.models.registry import ArchSpec, StateDictSignature, register_arch
from eat_keras.weights.onnx_reader import DynamicConvOp, ParametricOp, block_table_fields
from eat_keras.weights.slots import WeightSlot, backbone_slots, inverted_residual_slots


def build_mn_blocks(config: ModelConfig) -> list[tf_keras.layers.Layer]:
    """The 15 static inverted-residual blocks (upstream ``features.1`` … ``features.15``)."""
    specs = block_specs(config.width_mult, config.strides, config.dilated, config.reduced_tail)
    return [InvertedResidual(spec, name=f"block{i}") for i, spec in enumerate(specs)]


def mn_weight_slots(net: EfficientATNet) -> list[WeightSlot]:
    """Every weight-bearing unit of an MN ``net`` in forward order, with upstream names."""
    return backbone_slots(
        net, "features.0", lambda i: f"features.{i + 1}", f"features.{len(net.blocks) + 1}", inverted_residual_slots
    )


def mn_last_conv_key(keys: Collection[str]) -> str:
    """The last conv is the highest-numbered ``features.N`` module."""
    numbers = [int(m.group(1)) for key in keys if (m := re.match(r"features\.(\d+)\.", key))]
    return f"features.{max(numbers)}.0.weight"


def mn_onnx_fields(ops: Sequence[ParametricOp], source: str) -> dict[str, Any] | None:
    """An MN graph has only static convs (dynamic ones make it a DyMN)."""
    if any(isinstance(op, DynamicConvOp) for op in ops):
        return None
    return {"arch": "mn", **block_table_fields(ops, source)}


MN = register_arch(
    ArchSpec(
        name="mn",
        display_name="MN",
        build_blocks=build_mn_blocks,
        weight_slots=mn_weight_slots,
        state_dict=StateDictSignature(stem_key="features.0.0.weight", last_conv_key=mn_last_conv_key),
        onnx_fields=mn_onnx_fields,
    )
)
