"""Inverted-residual block specs (as a data table) and the static MN block.

The table is upstream's ``_mobilenet_v3_conf`` at width 1.0; :func:`block_specs` applies the width
multiplier with ``make_divisible`` and the configurable strides, exactly as upstream rounds them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.layers import ConvBNAct, SqueezeExcitation


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision ``_make_divisible``: round to a multiple of 8, never below 90 % of ``value``."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block after width scaling."""

    in_channels: int
    kernel_size: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str  # "relu" or "hardswish"
    stride: int  # configured stride (decides the residual)
    dilation: int

    @property
    def depthwise_stride(self) -> int:
        # upstream: a dilated block keeps resolution; its stride only disables the residual.
        return 1 if self.dilation > 1 else self.stride

    @property
    def has_expansion(self) -> bool:
        return self.expanded_channels != self.in_channels

    @property
    def use_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def squeeze_channels(self) -> int:
        return make_divisible(self.expanded_channels // 4, 8)


# (in, kernel, expanded, out, SE, activation, stride slot): stride slot i takes strides[i]; None is 1.
MN_BLOCK_TABLE: tuple[tuple[int, int, int, int, bool, str, int | None], ...] = (
    (16, 3, 16, 16, False, "relu", None),
    (16, 3, 64, 24, False, "relu", 0),  # C1
    (24, 3, 72, 24, False, "relu", None),
    (24, 5, 72, 40, True, "relu", 1),  # C2
    (40, 5, 120, 40, True, "relu", None),
    (40, 5, 120, 40, True, "relu", None),
    (40, 3, 240, 80, False, "hardswish", 2),  # C3
    (80, 3, 200, 80, False, "hardswish", None),
    (80, 3, 184, 80, False, "hardswish", None),
    (80, 3, 184, 80, False, "hardswish", None),
    (80, 3, 480, 112, True, "hardswish", None),
    (112, 3, 672, 112, True, "hardswish", None),
    (112, 5, 672, 160, True, "hardswish", 3),  # C4, dilated when requested
    (160, 5, 960, 160, True, "hardswish", None),
    (160, 5, 960, 160, True, "hardswish", None),
)
# The C4 stage (last three rows) is halved by reduced_tail and dilated by dilated.
_TAIL_START = 12
# Blocks (0-based) whose stride is configurable (C1..C4): (1, 3, 6, 12).
DOWNSAMPLING_BLOCKS = tuple(i for i, row in enumerate(MN_BLOCK_TABLE) if row[-1] is not None)


def block_specs(
    width_mult: float,
    strides: tuple[int, int, int, int] = (2, 2, 2, 2),
    dilated: bool = False,
    reduced_tail: bool = False,
) -> list[BlockSpec]:
    divider = 2 if reduced_tail else 1

    def scale(channels: int) -> int:
        return make_divisible(channels * width_mult, 8)

    specs = []
    for i, (cin, k, exp, cout, se, act, slot) in enumerate(MN_BLOCK_TABLE):
        tail = i >= _TAIL_START
        if tail:
            exp = exp // divider if i > _TAIL_START else exp
            cin = cin // divider if i > _TAIL_START else cin
            cout = cout // divider
        stride = 1 if slot is None else strides[slot]
        dilation = 2 if (dilated and tail) else 1
        specs.append(
            BlockSpec(scale(cin), k, scale(exp), scale(cout), se, act, stride, dilation)
        )
    return specs


def last_channels(width_mult: float, reduced_tail: bool = False) -> int:
    """Hidden width of the MLP head: ``make_divisible(1280 * w)`` (halved with reduced_tail)."""
    return make_divisible((1280 // (2 if reduced_tail else 1)) * width_mult, 8)


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class InvertedResidual(tf_keras.layers.Layer):
    """MN block: [expand 1x1] → depthwise kxk → [SE] → project 1x1 → [+ input]."""

    def __init__(self, spec: BlockSpec | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        spec = BlockSpec(**spec) if isinstance(spec, dict) else spec
        self.spec = spec
        self.expand = (
            ConvBNAct(spec.expanded_channels, 1, activation=spec.activation, name="expand")
            if spec.has_expansion
            else None
        )
        self.depthwise = ConvBNAct(
            spec.expanded_channels,
            spec.kernel_size,
            strides=spec.depthwise_stride,
            depthwise=True,
            dilation=spec.dilation,
            activation=spec.activation,
            name="depthwise",
        )
        self.se = (
            SqueezeExcitation(spec.expanded_channels, spec.squeeze_channels, name="se")
            if spec.use_se
            else None
        )
        self.project = ConvBNAct(spec.out_channels, 1, activation=None, name="project")

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        y = x
        if self.expand is not None:
            y = self.expand(y, training=training)
        y = self.depthwise(y, training=training)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y, training=training)
        return x + y if self.spec.use_residual else y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": dataclasses.asdict(self.spec)}
