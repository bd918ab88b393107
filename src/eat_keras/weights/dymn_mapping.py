"""Upstream DyMN parameter names ↔ Keras weights (the DyMN half of :func:`mapping.weight_slots`).

Upstream names (``models/dymn/model.py``): ``in_c.{0,1}`` (stem), ``layers.0`` … ``layers.14``,
``out_c.{0,1}`` (last conv), ``classifier.*`` (same heads as MN). In the state dict ``layers.*``
comes *before* ``in_c`` (the ModuleList is registered first), so nothing may rely on key order;
this list is in forward (data-flow) order, which is what the ONNX importer pairs against.

A dynamic block ``layers.i`` in forward order::

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

from collections.abc import Iterator

from eat_keras.models.dymn import DynamicInvertedResidual
from eat_keras.models.network import EfficientATNet
from eat_keras.weights.mapping import (
    BN,
    CONSTANT,
    CONV_BIAS,
    CONV_BN,
    DYNAMIC_CONV,
    LINEAR,
    WeightSlot,
    _block_slots,
    _head_slots,
)


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


def dymn_weight_slots(net: EfficientATNet) -> list[WeightSlot]:
    """Every weight-bearing unit of a DyMN ``net`` in forward order, with upstream names."""
    slots = [WeightSlot("in_c", CONV_BN, net.stem)]
    for i, block in enumerate(net.blocks):
        if isinstance(block, DynamicInvertedResidual):
            slots.extend(_dynamic_block_slots(f"layers.{i}", block))
        else:
            slots.extend(_block_slots(f"layers.{i}", block))
    slots.append(WeightSlot("out_c", CONV_BN, net.last_conv))
    slots.extend(_head_slots(net.head))
    return slots
