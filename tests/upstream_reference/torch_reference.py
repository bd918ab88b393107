"""PyTorch reference of upstream EfficientAT MN and DyMN (``fschmid56/EfficientAT``), for checks only.

The oracle the tests compare eat-keras against, and the source of the benchmark's "upstream-exported"
ONNX files for models whose upstream export we do not have (mn10, dymn10), with the same weights
eat-keras loads. The modules mirror upstream's module tree and forward code (``models/mn/``,
``models/dymn/``), so that

* ``state_dict()`` keys and shapes are upstream's (upstream checkpoints load with ``strict=True``);
* the eval-mode forward returns ``(logits, embedding)`` exactly as upstream does, including the
  ``squeeze()`` / ``unsqueeze(0)`` of the batch axis that a traced export freezes at batch 1;
* the TorchScript ONNX export gives the graph upstream's code gives (same ops, same names).

Architecture comes from an eat-keras :class:`~eat_keras.models.config.ModelConfig` (usually a
preset's), but channel rounding and the block table are re-derived here from upstream, not imported
from eat-keras, so the reference stays an independent check. Not part of the runtime package.

CLI, from the repo root::

    PYTHONPATH=tests python -m upstream_reference.torch_reference make --preset mn10_as --out DIR \
        [--time-frames N] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from eat_keras.models.config import ModelConfig

__all__ = [
    "NetSettings",
    "MN",
    "DyMN",
    "build_reference",
    "load_upstream_state_dict",
    "synthetic_state_dict",
    "export_onnx",
    "make_files",
    "main",
]

# BatchNorm of the backbone and DyMN context nets: torch momentum 0.01 / eps 1e-3 (upstream's
# ``partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)``). The fc head's BN keeps torch defaults.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
DYCONV_KERNELS = 4  # K of every DynamicConv
DYRELU_M = 2  # DyReLU-B pieces
MHA_HEADS = 4

# Default trace lengths: upstream DyMN only exports at a fixed shape, and users export it for 2 s
# clips ([1, 1, 128, 200]); MN exports with dynamic axes, traced on a 10 s clip.
DYMN_EXPORT_FRAMES = 200
MN_EXPORT_FRAMES = 1000


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision ``_make_divisible``: nearest multiple of 8, never below 90 % of ``value``."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvNormActivation(nn.Sequential):
    """Stand-in for ``torchvision.ops.misc.ConvNormActivation`` (same children ``0``/``1``/``2``).

    Padding ``(k - 1) // 2 * dilation``; conv bias only without a norm layer; activation in place.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = _bn,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dilation: int = 1,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)


# --------------------------------------------------------------------------------------------------
# Block table (upstream ``_mobilenet_v3_conf`` / ``_dymn_conf``)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block after width scaling (upstream ``InvertedResidualConfig``)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int
    dilation: int
    width_mult: float

    @property
    def activation(self) -> Callable[..., nn.Module]:
        return nn.Hardswish if self.use_hs else nn.ReLU

    @property
    def depthwise_stride(self) -> int:
        # upstream: a dilated block keeps its resolution; its stride then only disables the residual
        return 1 if self.dilation > 1 else self.stride

    @property
    def use_res_connect(self) -> bool:
        return self.stride == 1 and self.input_channels == self.out_channels


def block_configs(
    width_mult: float,
    strides: Sequence[int] = (2, 2, 2, 2),
    dilated: bool = False,
    reduced_tail: bool = False,
) -> tuple[list[BlockConfig], int]:
    """The 15 block configs and the MLP hidden width ``last_channel``."""
    div = 2 if reduced_tail else 1
    d = 2 if dilated else 1
    s1, s2, s3, s4 = strides
    # (in, kernel, expanded, out, SE, HS, stride, dilation) at width 1.0
    table = [
        (16, 3, 16, 16, False, False, 1, 1),
        (16, 3, 64, 24, False, False, s1, 1),  # C1
        (24, 3, 72, 24, False, False, 1, 1),
        (24, 5, 72, 40, True, False, s2, 1),  # C2
        (40, 5, 120, 40, True, False, 1, 1),
        (40, 5, 120, 40, True, False, 1, 1),
        (40, 3, 240, 80, False, True, s3, 1),  # C3
        (80, 3, 200, 80, False, True, 1, 1),
        (80, 3, 184, 80, False, True, 1, 1),
        (80, 3, 184, 80, False, True, 1, 1),
        (80, 3, 480, 112, True, True, 1, 1),
        (112, 3, 672, 112, True, True, 1, 1),
        (112, 5, 672, 160 // div, True, True, s4, d),  # C4
        (160 // div, 5, 960 // div, 160 // div, True, True, 1, d),
        (160 // div, 5, 960 // div, 160 // div, True, True, 1, d),
    ]

    def adjust(c: int) -> int:
        return make_divisible(c * width_mult, 8)

    configs = [
        BlockConfig(adjust(i), k, adjust(e), adjust(o), se, hs, s, dil, width_mult)
        for i, k, e, o, se, hs, s, dil in table
    ]
    return configs, adjust(1280 // div)


# --------------------------------------------------------------------------------------------------
# MN (models/mn/block_types.py, models/mn/model.py)


class SqueezeExcitation(nn.Module):
    """Channel SE (``se_dims='c'``): mean over F, T → fc1 → ReLU → fc2 → logistic sigmoid → × x."""

    def __init__(self, input_dim: int, squeeze_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim, squeeze_dim)
        self.fc2 = nn.Linear(squeeze_dim, input_dim)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.mean(x, [2, 3], keepdim=True)
        shape = scale.size()
        scale = self.fc1(scale.squeeze(2).squeeze(2))
        scale = self.fc2(self.activation(scale))
        return self.scale_activation(scale).view(shape) * x


class ConcurrentSEBlock(nn.Module):
    """Upstream's SE container. Released models have one channel SE and ``se_agg='max'``; the
    stack + max over a single entry is an identity but is kept: it is in upstream's ONNX graph."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, make_divisible(channels // 4, 8))])

    def forward(self, x: Tensor) -> Tensor:
        outs = [layer(x) for layer in self.conc_se_layers]
        return torch.max(torch.stack(outs, dim=0), dim=0)[0]


class InvertedResidual(nn.Module):
    """[expand 1x1] → depthwise kxk → [SE] → project 1x1 → [+ input]; keys ``block.{j}.*``."""

    def __init__(self, cnf: BlockConfig, use_se: bool = True) -> None:
        super().__init__()
        self.use_res_connect = cnf.use_res_connect
        act = cnf.activation
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                ConvNormActivation(cnf.input_channels, cnf.expanded_channels, 1, activation_layer=act)
            )
        layers.append(
            ConvNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                cnf.kernel,
                stride=cnf.depthwise_stride,
                groups=cnf.expanded_channels,
                activation_layer=act,
                dilation=cnf.dilation,
            )
        )
        if use_se and cnf.use_se:
            layers.append(ConcurrentSEBlock(cnf.expanded_channels))
        layers.append(ConvNormActivation(cnf.expanded_channels, cnf.out_channels, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MultiHeadAttentionPooling(nn.Module):
    """Upstream ``multihead_attention_pooling`` head (PSLA style). No released model uses it."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int = MHA_HEADS, epsilon: float = 1e-7) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.epsilon = epsilon
        self.subspace_proj = nn.Linear(in_dim, out_dim * 2 * num_heads)
        self.head_weight = nn.Parameter(torch.tensor([1.0 / num_heads] * num_heads).view(1, -1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.mean(x, dim=2).transpose(1, 2)  # [B, T, C]
        b, n, _ = x.shape
        x = self.subspace_proj(x).reshape(b, n, 2, self.num_heads, self.out_dim).permute(2, 0, 3, 1, 4)
        att, val = x[0], x[1]
        att = torch.clamp(torch.sigmoid(att), self.epsilon, 1.0 - self.epsilon)
        att = att / torch.sum(att, dim=2, keepdim=True)
        out = torch.sum(att * val, dim=2) * self.head_weight
        return torch.sum(out, dim=1)


def _classifier(head_type: str, in_channels: int, hidden: int, num_classes: int, dropout: float) -> nn.Module:
    if head_type == "mlp":
        return nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(start_dim=1),
            nn.Linear(in_channels, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(hidden, num_classes),
        )
    if head_type == "fully_convolutional":
        return nn.Sequential(
            nn.Conv2d(in_channels, num_classes, kernel_size=(1, 1), bias=False),
            nn.BatchNorm2d(num_classes),  # torch defaults (eps 1e-5), unlike the backbone
            nn.AdaptiveAvgPool2d((1, 1)),
        )
    if head_type == "attention_pooling":
        return MultiHeadAttentionPooling(in_channels, num_classes)
    raise ValueError(f"unknown head_type {head_type!r}")


@dataclasses.dataclass(frozen=True)
class NetSettings:
    """The constructor arguments upstream's MN and DyMN share, with upstream's defaults."""

    width_mult: float = 1.0
    strides: Sequence[int] = (2, 2, 2, 2)
    head_type: str = "mlp"
    num_classes: int = 527
    dropout: float = 0.2
    n_mels: int = 128  # input height; only used for the export's dummy input

    @classmethod
    def from_config(cls, config: ModelConfig) -> NetSettings:
        return cls(
            width_mult=config.width_mult,
            strides=config.strides,
            head_type=config.head_type,
            num_classes=config.num_classes,
            dropout=config.dropout,
            n_mels=int(config.frontend.n_mels),
        )


def _stem(configs: Sequence[BlockConfig]) -> nn.Module:
    """Upstream's first conv (``in_c``): 1 channel to the first block's input, stride 2."""
    return ConvNormActivation(1, configs[0].input_channels, 3, stride=2, activation_layer=nn.Hardswish)


def _tail_and_classifier(
    configs: Sequence[BlockConfig], last_channel: int, settings: NetSettings
) -> tuple[nn.Module, nn.Module]:
    """Upstream's last 1x1 conv (``out_c``, 6x the last block's channels) and the head after it."""
    last_in = configs[-1].out_channels
    tail = ConvNormActivation(last_in, 6 * last_in, 1, activation_layer=nn.Hardswish)
    head = _classifier(settings.head_type, 6 * last_in, last_channel, settings.num_classes, settings.dropout)
    return tail, head


class MN(nn.Module):
    """Upstream ``models.mn.model.MN`` (``se_dims='c'``, ``se_agg='max'``)."""

    def __init__(
        self, settings: NetSettings = NetSettings(), dilated: bool = False, reduced_tail: bool = False
    ) -> None:
        super().__init__()
        self.n_mels = settings.n_mels
        configs, last_channel = block_configs(settings.width_mult, settings.strides, dilated, reduced_tail)
        stem = _stem(configs)
        blocks = [InvertedResidual(cnf) for cnf in configs]
        tail, head = _tail_and_classifier(configs, last_channel, settings)
        self.features = nn.Sequential(stem, *blocks, tail)
        self.classifier = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.features:  # as upstream's _forward_impl (it also collects feature maps)
            x = layer(x)
        features = F.adaptive_avg_pool2d(x, (1, 1)).squeeze()
        x = self.classifier(x).squeeze()
        if features.dim() == 1 and x.dim() == 1:
            # squeezed batch dimension (batch 1); a traced export freezes this branch
            features = features.unsqueeze(0)
            x = x.unsqueeze(0)
        return x, features


# --------------------------------------------------------------------------------------------------
# DyMN (models/dymn/dy_block.py, models/dymn/model.py)

_Context = tuple[Tensor, Tensor, Tensor]


class DynamicWrapper(nn.Module):
    """Wraps a static module so it takes (and ignores) the context ``g``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, g: _Context) -> Tensor:
        return self.module(x)


class DynamicConv(nn.Module):
    """K kernels mixed per sample by ``softmax(Linear(h_c) / temperature)``; no bias.

    ``weight`` is ``[1, att_groups=1, K, out * in/groups * k * k]``. As upstream, the batch is folded
    into the channels and one grouped conv with ``groups * B`` groups applies the per-sample kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
        groups: int = 1,
        k: int = DYCONV_KERNELS,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.k = k
        self.temperature = temperature  # not in the state dict; 1.0 for every *_as checkpoint
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        weight = torch.empty(k, out_channels, in_channels // groups, kernel_size, kernel_size)
        for i in range(k):
            nn.init.kaiming_normal_(weight[i], mode="fan_out", nonlinearity="relu")
        self.weight = nn.Parameter(weight.view(1, 1, k, -1))

    def forward(self, x: Tensor, g: _Context) -> Tensor:
        b, _, f, t = x.size()
        g_c = g[0].view(b, -1)
        residuals = self.residuals(g_c).view(b, 1, 1, -1)
        attention = F.softmax(residuals / self.temperature, dim=-1)  # [B, 1, 1, K]
        aggregate = (attention @ self.weight).transpose(1, 2).reshape(
            b, self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size
        )
        aggregate = aggregate.view(
            b * self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size
        )
        x = x.view(1, -1, f, t)
        out = F.conv2d(
            x,
            aggregate,
            None,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups * b,
        )
        return out.view(b, self.out_channels, out.size(-2), out.size(-1))


class DyReLUB(nn.Module):
    """DyReLU-B: per-channel coefficients from the global context; output ``max(a1 x + b1, a2 x + b2)``.

    ``coef_net`` output is channel-major ``[B, C, 2M]`` = (a1, a2, b1, b2) per channel.
    """

    def __init__(self, channels: int, context_dim: int, M: int = DYRELU_M) -> None:
        super().__init__()
        self.channels = channels
        self.M = M
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * M * channels))
        self.sigmoid = nn.Sigmoid()
        self.register_buffer("lambdas", torch.Tensor([1.0] * M + [0.5] * M).float())
        self.register_buffer("init_v", torch.Tensor([1.0] + [0.0] * (2 * M - 1)).float())

    def forward(self, x: Tensor, g: _Context) -> Tensor:
        b = x.size(0)
        theta = 2 * self.sigmoid(self.coef_net(g[0].view(b, -1))) - 1
        relu_coefs = theta.view(-1, self.channels, 1, 1, 2 * self.M) * self.lambdas + self.init_v
        x_mapped = x.unsqueeze(-1) * relu_coefs[:, :, :, :, : self.M] + relu_coefs[:, :, :, :, self.M :]
        if self.M == 2:
            return torch.maximum(x_mapped[:, :, :, :, 0], x_mapped[:, :, :, :, 1])
        return torch.max(x_mapped, dim=-1)[0]


class CoordAtt(nn.Module):
    """Coordinate attention: ``x * sigmoid(g_cf) * sigmoid(g_ct)`` (the convs live in ContextGen)."""

    def forward(self, x: Tensor, g: _Context) -> Tensor:
        a_f = g[1].sigmoid()
        a_t = g[2].sigmoid()
        return x * a_f * a_t


class ContextGen(nn.Module):
    """Per-block context from the block input: (h_c [B,H,1,1], g_cf [B,C_exp,F',1], g_ct [B,C_exp,1,T'])."""

    def __init__(self, context_dim: int, in_ch: int, exp_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(in_ch, context_dim, kernel_size=(1, 1), stride=1, padding=0, bias=False)
        self.joint_norm = _bn(context_dim)
        self.joint_act = nn.Hardswish(inplace=True)
        self.conv_f = nn.Conv2d(context_dim, exp_ch, kernel_size=(1, 1), stride=1, padding=0)
        self.conv_t = nn.Conv2d(context_dim, exp_ch, kernel_size=(1, 1), stride=1, padding=0)
        self.pool_f: nn.Module
        self.pool_t: nn.Module
        if stride > 1:
            # count_include_pad=True (torch default): the divisor stays 3 at the borders
            self.pool_f = nn.AvgPool2d(kernel_size=(3, 1), stride=(stride, 1), padding=(1, 0))
            self.pool_t = nn.AvgPool2d(kernel_size=(1, 3), stride=(1, stride), padding=(0, 1))
        else:
            self.pool_f = nn.Sequential()
            self.pool_t = nn.Sequential()

    def forward(self, x: Tensor, g: _Context | None = None) -> _Context:
        # upstream's adaptive pooling with a None size: this is what blocks a dynamic-axes export
        cf = F.adaptive_avg_pool2d(x, (None, 1))
        ct = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
        f, t = cf.size(2), ct.size(2)
        g_cat = torch.cat([cf, ct], dim=2)
        g_cat = self.joint_act(self.joint_norm(self.joint_conv(g_cat)))
        h_cf, h_ct = torch.split(g_cat, [f, t], dim=2)
        h_ct = h_ct.permute(0, 1, 3, 2)
        h_c = torch.mean(g_cat, dim=2, keepdim=True)
        g_cf, g_ct = self.conv_f(self.pool_f(h_cf)), self.conv_t(self.pool_t(h_ct))
        return h_c, g_cf, g_ct


class DYBlock(nn.Module):
    """Upstream ``DY_Block``: context → dyn expand → BN → act → dyn depthwise → BN → DyReLU-B →
    coordinate attention → dyn project → BN → (+ input)."""

    def __init__(self, cnf: BlockConfig, temperature: float = 1.0) -> None:
        super().__init__()
        self.use_res_connect = cnf.use_res_connect
        w = cnf.width_mult
        self.context_dim = int(
            np.clip(
                make_divisible(cnf.expanded_channels // 4, 8),
                make_divisible(32 * w, 8),
                make_divisible(128 * w, 8),
            )
        )
        H = self.context_dim
        self.exp_conv: nn.Module
        self.exp_norm: nn.Module
        if cnf.expanded_channels != cnf.input_channels:
            self.exp_conv = DynamicConv(
                cnf.input_channels, cnf.expanded_channels, H, kernel_size=1, temperature=temperature
            )
            self.exp_norm = _bn(cnf.expanded_channels)
            self.exp_act = DynamicWrapper(cnf.activation(inplace=True))
        else:
            self.exp_conv = DynamicWrapper(nn.Identity())
            self.exp_norm = nn.Identity()
            self.exp_act = DynamicWrapper(nn.Identity())
        stride = cnf.depthwise_stride
        self.depth_conv = DynamicConv(
            cnf.expanded_channels,
            cnf.expanded_channels,
            H,
            kernel_size=cnf.kernel,
            stride=stride,
            dilation=cnf.dilation,
            padding=(cnf.kernel - 1) // 2 * cnf.dilation,
            groups=cnf.expanded_channels,
            temperature=temperature,
        )
        self.depth_norm = _bn(cnf.expanded_channels)
        self.depth_act = DyReLUB(cnf.expanded_channels, H)
        self.ca = CoordAtt()
        self.proj_conv = DynamicConv(
            cnf.expanded_channels, cnf.out_channels, H, kernel_size=1, temperature=temperature
        )
        self.proj_norm = _bn(cnf.out_channels)
        self.context_gen = ContextGen(H, cnf.input_channels, cnf.expanded_channels, stride=stride)

    def forward(self, x: Tensor, g: _Context | None = None) -> Tensor:
        inp = x
        g = self.context_gen(x, g)
        x = self.exp_act(self.exp_norm(self.exp_conv(x, g)), g)
        x = self.depth_act(self.depth_norm(self.depth_conv(x, g)), g)
        x = self.ca(x, g)
        x = self.proj_norm(self.proj_conv(x, g))
        if self.use_res_connect:
            x += inp
        return x


# Blocks upstream makes dynamic with use_dy_blocks="replace_se": exactly MN's SE blocks.
_REPLACE_SE_DYNAMIC = tuple(i in (3, 4, 5, 10, 11, 12, 13, 14) for i in range(15))


class DyMN(nn.Module):
    """Upstream ``models.dymn.model.DyMN``. ``temperature`` is the DynamicConv softmax temperature
    (1.0 for pretrained AudioSet models; upstream's un-pretrained default would be 30)."""

    def __init__(
        self, settings: NetSettings = NetSettings(), temperature: float = 1.0, use_dy_blocks: str = "all"
    ) -> None:
        super().__init__()
        if settings.head_type not in ("mlp", "fully_convolutional"):
            raise ValueError(f"upstream DyMN has no {settings.head_type!r} head")
        if use_dy_blocks not in ("all", "replace_se"):
            raise ValueError(f"unknown use_dy_blocks {use_dy_blocks!r}")
        self.n_mels = settings.n_mels
        configs, last_channel = block_configs(settings.width_mult, settings.strides)
        dynamic = (True,) * 15 if use_dy_blocks == "all" else _REPLACE_SE_DYNAMIC
        # registered before in_c, as upstream: state-dict order is layers.*, in_c, out_c, classifier
        self.layers = nn.ModuleList(
            DYBlock(cnf, temperature) if dy else InvertedResidual(cnf, use_se=False)
            for cnf, dy in zip(configs, dynamic)
        )
        self.in_c = _stem(configs)
        self.out_c, self.classifier = _tail_and_classifier(configs, last_channel, settings)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.in_c(x)
        for layer in self.layers:
            x = layer(x)
        x = self.out_c(x)
        embed = F.adaptive_avg_pool2d(x, (1, 1)).view(x.size(0), -1)
        logits = self.classifier(x).squeeze()
        if logits.dim() == 1:
            logits = logits.unsqueeze(0)  # squeezed batch dimension
        return logits, embed


# --------------------------------------------------------------------------------------------------
# Construction and weights


def build_reference(config: ModelConfig) -> MN | DyMN:
    """The upstream network for an eat-keras ``ModelConfig``, in eval mode."""
    model: MN | DyMN
    settings = NetSettings.from_config(config)
    if config.arch == "mn":
        model = MN(settings, dilated=config.dilated, reduced_tail=config.reduced_tail)
    elif config.arch == "dymn":
        if config.dilated or config.reduced_tail:
            raise ValueError("upstream DyMN exposes neither dilated nor reduced_tail")
        model = DyMN(settings, temperature=config.dyconv_temperature, use_dy_blocks=config.use_dy_blocks)
    else:
        raise ValueError(f"unknown arch {config.arch!r}")
    return model.eval()


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "model_state", "network", "weights")


def load_upstream_state_dict(path: str | Path) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` of a checkpoint, unwrapping ``{"state_dict": ...}``-style
    containers and a ``module.`` / ``model.`` prefix (as eat-keras' reader does)."""
    obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "model.", "m."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# Synthetic weights (see synthetic_state_dict). Tuned by hand so that, for seeds 0-7 of mn04/mn10/
# dymn04/dymn10, logits on the golden clips stay within about ±20, differ between clips (std over
# clips 0.16-1.3 per class) and keep float32 rounding (vs float64) below 3.5e-5.
DY_SPECIFIC = 0.2  # kernel-specific part of each DynamicConv kernel, next to a shared part
ATT_W = 0.5  # weight scale of the kernel-attention Linear (residuals.0)
DYRELU_W = 0.25  # weight scale of DyReLU's coef_net
CA_W, CA_B = 0.25, 1.0  # coordinate-attention convs: weight scale, bias mean (gates near 0.7)
PROJ_GAMMA = 0.3  # mean BN gamma closing each dynamic block's branch
BN_VAR_FLOOR = 0.05
HEAD_SPREAD = 2.0


def _calibration_input(generator: torch.Generator, n_mels: int, frames: int, batch: int = 8) -> Tensor:
    """Diverse log-mel-like inputs in normalised units (silence is -1.40): per example a random level
    and spectral tilt, smooth texture, on/off envelopes, tonal lines and clicks, so that BN statistics
    include between-clip variation as a dataset's would."""

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator)

    def smooth(x: Tensor, k: int) -> Tensor:
        return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)

    silence = -1.40
    freq = torch.linspace(0.0, 1.0, n_mels).view(1, 1, n_mels, 1)
    level = rand(batch, 1, 1, 1) * 1.6 - 0.8
    tilt = rand(batch, 1, 1, 1) * 2.0 - 0.5
    noise = torch.randn(batch, 1, n_mels, frames, generator=generator)
    texture = smooth(smooth(noise, 5), 5) * (1.0 + 3.0 * rand(batch, 1, 1, 1))
    content = level - tilt * freq + texture + 0.15 * noise
    # tonal lines: a few mel bins raised over the whole clip
    lines = (rand(batch, 1, n_mels, 1) < 0.04).float() * rand(batch, 1, n_mels, 1) * 1.5
    # clicks: broadband frames with a short decay (typing, impacts)
    clicks = (rand(batch, 1, 1, frames) < 0.03).float() * (0.5 + 2.0 * rand(batch, 1, 1, frames))
    clicks = F.conv1d(
        F.pad(clicks.view(batch, 1, frames), (3, 0)), torch.tensor([[[0.125, 0.25, 0.5, 1.0]]])
    ).view(batch, 1, 1, frames)
    content = content + lines + clicks
    # on/off envelope: stretches of near-silence between events
    gate = torch.sigmoid(8.0 * smooth(torch.randn(batch, 1, 1, frames, generator=generator), 31) * 3.0)
    gate = torch.maximum(gate, (rand(batch, 1, 1, 1) < 0.5).float())  # half the clips are continuous
    x = silence + gate * (content - silence)
    return torch.clamp(x, silence, 3.0)


def synthetic_state_dict(
    model: MN | DyMN,
    seed: int = 0,
    logit_std: float = 3.0,
    logit_mean: float = -1.5,
    calibration_frames: int = 400,
) -> OrderedDict[str, Tensor]:
    """Random weights for ``model``'s architecture in which every tensor matters.

    Convs and linears are drawn from normal distributions scaled by fan-in; DyMN's dynamic parts
    (kernel attention, DyReLU coefficients, coordinate attention) vary with the input but within
    bounds that keep the net stable (see the comment in the code). BatchNorm affine parameters are
    random, and the running statistics are calibrated on a diverse batch of log-mel-like inputs
    (the statistics each BN actually sees, perturbed), so activations stay O(1) through the whole
    net on real clips too. Finally the MLP
    head is centred on the calibration embeddings and scaled so that logits have roughly
    ``logit_std`` spread around ``logit_mean`` (AudioSet-like: most classes off, a few on) and differ
    between clips. Deterministic for a given ``seed``; ``model`` itself is not modified.
    """
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).eval()

    def normal_(t: Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)

    def uniform_(t: Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    with torch.no_grad():
        # DyMN's input-dependent parts get their own draws (children of these modules are skipped
        # by the generic rules): what they modulate must not swing far from what the BN calibration
        # saw, or per-channel gain mismatches compound over the 15 blocks (fully random dynamic parts
        # gave 1e9 logits on inputs other than the calibration batch). So the K kernels of a
        # DynamicConv share a common part, DyReLU and coordinate attention stay near their
        # midpoints, and each dynamic block's branch is damped before the residual sum.
        own: set[int] = set()
        for module in net.modules():
            if id(module) in own:
                continue
            if isinstance(module, DynamicConv):
                n = module.weight.shape[-1]
                fan_in = module.in_channels // module.groups * module.kernel_size**2
                shared = torch.randn(1, n, generator=gen)
                specific = torch.randn(module.k, n, generator=gen)
                w = (shared + DY_SPECIFIC * specific) / math.sqrt((1 + DY_SPECIFIC**2) * fan_in)
                module.weight.copy_(w.view_as(module.weight))
                attention = module.residuals[0]
                normal_(attention.weight, ATT_W / math.sqrt(attention.in_features))
                normal_(attention.bias, 0.5)
                own.add(id(attention))
            elif isinstance(module, DyReLUB):
                coef = module.coef_net[0]
                normal_(coef.weight, DYRELU_W / math.sqrt(coef.in_features))
                normal_(coef.bias, 0.2)
                own.add(id(coef))
            elif isinstance(module, ContextGen):
                for conv in (module.conv_f, module.conv_t):
                    normal_(conv.weight, CA_W / math.sqrt(conv.in_channels))
                    normal_(conv.bias, 0.5, mean=CA_B)
                    own.add(id(conv))
            elif isinstance(module, DYBlock):
                uniform_(module.proj_norm.weight, 0.5 * PROJ_GAMMA, 1.5 * PROJ_GAMMA)
                normal_(module.proj_norm.bias, 0.25)
                own.add(id(module.proj_norm))
            elif isinstance(module, nn.Conv2d):
                normal_(module.weight, 1.0 / math.sqrt(module.weight[0].numel()))
                if module.bias is not None:
                    normal_(module.bias, 0.3)
            elif isinstance(module, nn.Linear):  # SE and head layers
                normal_(module.weight, 1.5 / math.sqrt(module.in_features))
                normal_(module.bias, 0.3)
            elif isinstance(module, nn.BatchNorm2d):
                uniform_(module.weight, 0.6, 1.4)
                normal_(module.bias, 0.25)
            elif isinstance(module, MultiHeadAttentionPooling):
                uniform_(module.head_weight, 0.5 / module.num_heads, 1.5 / module.num_heads)

        # One forward pass sets every BN's running statistics from the input it actually receives
        # (pre-hooks run in execution order, so later layers see already calibrated inputs).
        def calibrate(bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0]
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            jitter = torch.randn(mean.shape, generator=gen)
            assert isinstance(bn, nn.BatchNorm2d)
            bn.running_mean.copy_(mean + 0.1 * torch.sqrt(var + 1e-4) * jitter)
            # Floor relative to the layer: a channel that barely varies on the calibration batch
            # would otherwise amplify any deviation on real inputs, compounding through the blocks.
            scale = torch.rand(var.shape, generator=gen) * 0.6 + 0.7
            spread = var + BN_VAR_FLOOR * var.mean()
            bn.running_var.copy_(torch.clamp(spread * scale, min=1e-3))

        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        handles = [bn.register_forward_pre_hook(calibrate) for bn in bns]
        x = _calibration_input(gen, net.n_mels, calibration_frames)
        try:
            net(x)
        finally:
            for h in handles:
                h.remove()

        if isinstance(net.classifier, nn.Sequential) and isinstance(net.classifier[-1], nn.Linear):
            _calibrate_mlp_head(net, x, gen, logit_std, logit_mean)

    return OrderedDict((k, v.detach().clone()) for k, v in net.state_dict().items())


def _calibrate_mlp_head(
    net: MN | DyMN, x: Tensor, gen: torch.Generator, logit_std: float, logit_mean: float
) -> None:
    """Make the MLP head respond to what differs between inputs, not only to the common part.

    Random backbones give pooled embeddings whose between-clip variation is small next to their
    per-channel offsets, so a plain random head gives nearly the same logits for every clip. The
    first Linear therefore sees each embedding channel centred on its calibration mean and divided
    by its within-map spread (times HEAD_SPREAD, a compromise: dividing by the far smaller
    between-example spread gives livelier logits but amplifies float32 rounding past 1e-4), and
    the output Linear is scaled to ``logit_std``.
    """
    fmap = net.features(x) if isinstance(net, MN) else _dymn_features(net, x)
    emb = F.adaptive_avg_pool2d(fmap, (1, 1)).flatten(1)
    spread = HEAD_SPREAD * fmap.std(dim=(0, 2, 3)) + 1e-4
    fc1, out = net.classifier[2], net.classifier[-1]
    assert isinstance(fc1, nn.Linear) and isinstance(out, nn.Linear)
    fc1.weight.div_(spread)
    fc1.bias.copy_(-(fc1.weight @ emb.mean(0)) + 0.5 * torch.randn(fc1.bias.shape, generator=gen))
    hidden = net.classifier[3](fc1(emb))
    z = hidden @ out.weight.T
    out.weight.mul_(logit_std / float(z.std()))
    out.bias.copy_(torch.randn(out.bias.shape, generator=gen) + logit_mean)


def _dymn_features(net: DyMN, x: Tensor) -> Tensor:
    x = net.in_c(x)
    for layer in net.layers:
        x = layer(x)
    return net.out_c(x)


# --------------------------------------------------------------------------------------------------
# ONNX export


class _ExportWrapper(nn.Module):
    """Thin wrapper as users (and golden/) export: parameters are prefixed ``m.``, output = logits."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, input_values: Tensor) -> Tensor:
        return self.m(input_values)[0]


def export_onnx(
    model: MN | DyMN,
    path: str | Path,
    time_frames: int | None = None,
    dynamic: bool | None = None,
    batch: int = 1,
) -> Path:
    """TorchScript export, opset 13, constant folding, input ``input_values`` = ``[B, 1, n_mels, T]``,
    output ``logits``; traced at batch ``batch`` (the fixed batch of a fixed-shape export).

    ``dynamic`` (default: True for MN, False for DyMN) declares batch (axis 0) and time (axis 3)
    dynamic. Upstream DyMN cannot be exported that way (its ContextGen's adaptive pooling refuses
    symbolic sizes), so it is exported at the fixed traced shape ``[1, 1, n_mels, time_frames]``.
    Note that upstream's forward squeezes the batch axis: the traced MN graph is only correct for
    batch 1 (batch B > 1 gives logits of shape [1, B, classes]), exactly as in upstream's export.
    """
    is_dymn = isinstance(model, DyMN)
    if dynamic is None:
        dynamic = not is_dymn
    if dynamic and is_dymn:
        raise ValueError("upstream DyMN cannot be exported with dynamic axes; export at a fixed shape")
    frames = time_frames or (DYMN_EXPORT_FRAMES if is_dymn else MN_EXPORT_FRAMES)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _ExportWrapper(model).eval()
    dummy = torch.randn(batch, 1, model.n_mels, frames, generator=torch.Generator().manual_seed(0))
    dynamic_axes = (
        {"input_values": {0: "batch_size", 3: "time_steps"}, "logits": {0: "batch_size"}} if dynamic else None
    )
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter is deliberate: it is how users (and golden/) exported these models
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            export_params=True,
            opset_version=13,
            do_constant_folding=True,
            input_names=["input_values"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            dynamo=False,
        )
    return path


# --------------------------------------------------------------------------------------------------
# CLI


def make_files(
    preset: str, out_dir: str | Path, time_frames: int | None = None, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``<preset>_synth_state_dict.pt`` and ``<preset>_synth_opset13.onnx`` into ``out_dir``."""
    from eat_keras.presets import get_preset  # imports TensorFlow; only needed here

    model = build_reference(get_preset(preset).config)
    state = synthetic_state_dict(model, seed=seed)
    model.load_state_dict(state, strict=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pt_path = out_dir / f"{preset}_synth_state_dict.pt"
    torch.save(state, pt_path)
    onnx_path = export_onnx(model, out_dir / f"{preset}_synth_opset13.onnx", time_frames=time_frames)
    return pt_path, onnx_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m upstream_reference.torch_reference",
        description="Dev-only PyTorch reference of upstream EfficientAT MN / DyMN.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="synthetic-weight state dict + upstream-style ONNX for a preset")
    make.add_argument("--preset", required=True, help="eat-keras preset name, e.g. mn10_as, dymn10_as")
    make.add_argument("--out", required=True, type=Path, help="output directory")
    make.add_argument(
        "--time-frames",
        type=int,
        default=None,
        help=f"trace length T (default {MN_EXPORT_FRAMES} for MN, dynamic anyway; "
        f"{DYMN_EXPORT_FRAMES} for DyMN, whose export is fixed at [1, 1, 128, T])",
    )
    make.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pt_path, onnx_path = make_files(args.preset, args.out, args.time_frames, args.seed)
    print(pt_path)
    print(onnx_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
