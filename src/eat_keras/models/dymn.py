"""DyMN: the dynamic EfficientAT network (upstream ``models/dymn``), registered as ``dymn``.

Same 15-block channel table, strides, stem, last conv and heads as MN (those come from
``EfficientATNet``); only the blocks differ. A dynamic block computes its own context from its input
(context is never passed between blocks) and uses it for dynamic convolutions, DyReLU and
coordinate attention instead of static convs, a static depthwise activation and SE.

Upstream names (``models/dymn/model.py``): ``in_c.{0,1}`` (stem), ``layers.0`` … ``layers.14``,
``out_c.{0,1}`` (last conv), ``classifier.*`` (same heads as MN). In the state dict ``layers.*``
comes *before* ``in_c`` (the ModuleList is registered first), so nothing may rely on key order; the
slot table is in forward (data-flow) order, which is what the ONNX importer pairs against. A dynamic
block ``layers.i`` in forward order::

    context_gen.joint_conv + joint_norm    conv_bn (children named joint_conv / joint_norm)
    context_gen.conv_f, context_gen.conv_t conv_bias
    exp_conv, exp_norm                     dynamic_conv, bn    (absent when exp == in)
    depth_conv, depth_norm                 dynamic_conv, bn
    depth_act.coef_net.0                   linear
    depth_act.lambdas, depth_act.init_v    constant (buffers fixed by the architecture)
    proj_conv, proj_norm                   dynamic_conv, bn

Static blocks of ``use_dy_blocks="replace_se"`` are MN blocks without SE: ``layers.i.block.j.*``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from eat_keras.layers import ContextGenerator, CoordinateAttention, DynamicConv, DynamicReLU
from eat_keras.layers.activations import get_activation
from eat_keras.layers.conv_bn import BN_EPSILON, BN_MOMENTUM
from eat_keras.errors import ArchitectureMismatchError
from eat_keras.models.blocks import BlockSpec, InvertedResidual, block_specs, make_divisible
from eat_keras.models.config import ModelConfig
from eat_keras.models.network import EfficientATNet
from eat_keras.models.registry import ArchSpec, StateDictSignature, register_arch
from eat_keras.weights.onnx_reader import DynamicConvOp, ParametricOp, block_table_fields
from eat_keras.weights.slots import (
    BN,
    CONSTANT,
    CONV_BIAS,
    CONV_BN,
    DYNAMIC_CONV,
    LINEAR,
    WeightSlot,
    backbone_slots,
    inverted_residual_slots,
)

# Upstream defaults of get_model: H = clip(make_divisible(exp // 4), 32·w, 128·w), each rounded.
CONTEXT_RATIO = 4
MIN_CONTEXT_SIZE = 32
MAX_CONTEXT_SIZE = 128
# use_dy_blocks="replace_se": dynamic blocks exactly where MN has SE, static blocks (no SE) elsewhere.
REPLACE_SE_DYNAMIC_BLOCKS = (3, 4, 5, 10, 11, 12, 13, 14)
# The AudioSet checkpoints were trained to the end of upstream's temperature schedule, so a DyMN
# starts at τ = 1.0; the files do not store it.
DEFAULT_TEMPERATURE = 1.0


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
        y = self.depth_norm(self.depth_conv(y, context, training=training), training=training)
        y = self.ca(self.depth_act(y, context, training=training), g_f, g_t)
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


# --- upstream weight names ------------------------------------------------------------------------


def _dynamic_block_slots(prefix: str, block: DynamicInvertedResidual) -> Iterator[WeightSlot]:
    context = block.context_gen
    yield WeightSlot(
        f"{prefix}.context_gen", CONV_BN, context.joint, conv_bn_names=("joint_conv", "joint_norm")
    )
    yield WeightSlot(f"{prefix}.context_gen.conv_f", CONV_BIAS, context.conv_f)
    yield WeightSlot(f"{prefix}.context_gen.conv_t", CONV_BIAS, context.conv_t)
    if block.exp_conv is not None:
        yield WeightSlot(f"{prefix}.exp_conv", DYNAMIC_CONV, block.exp_conv)
        yield WeightSlot(f"{prefix}.exp_norm", BN, block.exp_norm)
    yield WeightSlot(f"{prefix}.depth_conv", DYNAMIC_CONV, block.depth_conv)
    yield WeightSlot(f"{prefix}.depth_norm", BN, block.depth_norm)
    yield WeightSlot(f"{prefix}.depth_act.coef_net.0", LINEAR, block.depth_act.coef)
    yield WeightSlot(f"{prefix}.depth_act.lambdas", CONSTANT, block.depth_act, attr="LAMBDAS")
    yield WeightSlot(f"{prefix}.depth_act.init_v", CONSTANT, block.depth_act, attr="INIT_V")
    yield WeightSlot(f"{prefix}.proj_conv", DYNAMIC_CONV, block.proj_conv)
    yield WeightSlot(f"{prefix}.proj_norm", BN, block.proj_norm)


def _block_slots(prefix: str, block: tf_keras.layers.Layer) -> Iterator[WeightSlot]:
    if isinstance(block, DynamicInvertedResidual):
        return _dynamic_block_slots(prefix, block)
    return inverted_residual_slots(prefix, block)


def dymn_weight_slots(net: EfficientATNet) -> list[WeightSlot]:
    """Every weight-bearing unit of a DyMN ``net`` in forward order, with upstream names."""
    return backbone_slots(net, "in_c", lambda i: f"layers.{i}", "out_c", _block_slots)


def dymn_state_dict_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """Block 0 is dynamic only when every block is (in replace_se mode it has no SE to replace)."""
    return {"use_dy_blocks": "all" if "layers.0.depth_conv.weight" in state else "replace_se"}


def _last_conv_key(keys: Collection[str]) -> str:
    return "out_c.0.weight"


def dymn_onnx_fields(ops: Sequence[ParametricOp], source: str) -> dict[str, Any] | None:
    """A DyMN graph has dynamic convs: one depthwise per dynamic block, all at one temperature."""
    dynamic = [op for op in ops if isinstance(op, DynamicConvOp)]
    if not dynamic:
        return None
    fields = block_table_fields(ops, source)
    dynamic_blocks = sum(op.depthwise for op in dynamic)
    modes = {15: "all", len(REPLACE_SE_DYNAMIC_BLOCKS): "replace_se"}
    if dynamic_blocks not in modes:
        raise ArchitectureMismatchError(
            f"{source}: {dynamic_blocks} dynamic blocks; a DyMN has 15 (all) or "
            f"{len(REPLACE_SE_DYNAMIC_BLOCKS)} (replace_se)"
        )
    temperatures = sorted({op.temperature for op in dynamic})
    if len(temperatures) != 1:
        raise ArchitectureMismatchError(
            f"{source}: dynamic convs use {len(temperatures)} different temperatures, "
            f"e.g. {temperatures[0]:g} and {temperatures[-1]:g}; a DyMN uses one"
        )
    return {
        "arch": "dymn",
        **fields,
        "use_dy_blocks": modes[dynamic_blocks],
        "dyconv_temperature": temperatures[0],
    }


DYMN = register_arch(
    ArchSpec(
        name="dymn",
        display_name="DyMN",
        build_blocks=build_dymn_blocks,
        weight_slots=dymn_weight_slots,
        state_dict=StateDictSignature(
            stem_key="in_c.0.weight", last_conv_key=_last_conv_key, extra_fields=dymn_state_dict_fields
        ),
        onnx_fields=dymn_onnx_fields,
        default_config={"dyconv_temperature": DEFAULT_TEMPERATURE, "use_dy_blocks": "all"},
    )
)
