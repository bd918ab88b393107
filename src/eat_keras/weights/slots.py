"""Weight slots: the units in which upstream (PyTorch) tensors map onto Keras weights.

A :class:`WeightSlot` is one weight-bearing module of upstream (a conv + BatchNorm, a Linear, a
DynamicConv, ...) paired with the Keras layer that holds its weights. Each family's slot table
(``ArchSpec.weight_slots``) lists its slots in forward order; the ``.pt`` path looks tensors up by
the slots' keys, the ONNX path pairs the slots with the graph's parametric ops in data-flow order.
How each kind of slot maps (its upstream keys, their shapes derived from the built Keras layer,
and the layout conversion OIHW → HWIO, Linear [out, in] → [in, out], DyMN's stacked dynamic
kernels) is one entry of :data:`SLOT_KINDS`.

The slot tables of the parts every family shares (the MN inverted-residual block and the heads)
are here too, so that no family's table depends on another's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import tf_keras

from eat_keras.layers import ConvBNAct
from eat_keras.models.blocks import InvertedResidual
from eat_keras.models.heads import AttentionPoolingHead, FullyConvolutionalHead, MLPHead

# Slot kinds (see SLOT_KINDS below for their upstream tensors and Keras targets).
CONV_BN = "conv_bn"  # torchvision ConvNormActivation: conv without bias + BatchNorm (ConvBNAct)
LINEAR = "linear"  # nn.Linear (Dense)
PARAMETER = "parameter"  # a bare nn.Parameter held in a Keras attribute
CONV_BIAS = "conv_bias"  # nn.Conv2d with bias, no norm (Conv2D)
BN = "bn"  # a stand-alone BatchNorm2d (BatchNormalization)
DYNAMIC_CONV = "dynamic_conv"  # DyMN DynamicConv: K stacked kernels + attention Linear
CONSTANT = "constant"  # a buffer fixed by the architecture: checked, never assigned

BN_FIELDS = ("weight", "bias", "running_mean", "running_var")

Shape = tuple[int, ...]
Assignment = tuple[object, np.ndarray]


@dataclasses.dataclass(frozen=True)
class WeightSlot:
    """One weight-bearing unit: upstream module path, its kind and the Keras layer that holds it.

    ``attr`` names the Keras attribute holding the value for PARAMETER (a variable) and CONSTANT
    (a numpy array) slots. ``conv_bn_names`` are the child names of conv and norm inside a CONV_BN
    module: torchvision's ``0``/``1``, or e.g. ``joint_conv``/``joint_norm`` in DyMN's ContextGen.
    """

    prefix: str
    kind: str
    layer: tf_keras.layers.Layer
    attr: str = ""
    conv_bn_names: tuple[str, str] = ("0", "1")

    def source_keys(self) -> list[str]:
        return SLOT_KINDS[self.kind].keys(self)


@dataclasses.dataclass(frozen=True)
class SlotKind:
    """How one kind of slot maps: its upstream keys, their shapes (derived from the built Keras
    layer) and the (Keras variable, value) pairs made from the tensors (given in key order)."""

    keys: Callable[[WeightSlot], list[str]]
    shapes: Callable[[WeightSlot], list[Shape]]
    values: Callable[[WeightSlot, list[np.ndarray]], list[Assignment]]


# --- layout conversion -------------------------------------------------------------------------


def torch_conv_to_keras(weight: np.ndarray, depthwise: bool) -> np.ndarray:
    # torch OIHW → Keras HWIO; depthwise torch [C, 1, kh, kw] → Keras [kh, kw, C, 1].
    return weight.transpose(2, 3, 0, 1) if depthwise else weight.transpose(2, 3, 1, 0)


def keras_conv_to_torch_shape(shape: tuple[int, ...], depthwise: bool) -> tuple[int, ...]:
    kh, kw, a, b = shape
    return (a, b, kh, kw) if depthwise else (b, a, kh, kw)


def _suffixed(*suffixes: str) -> Callable[[WeightSlot], list[str]]:
    return lambda slot: [f"{slot.prefix}.{s}" if s else slot.prefix for s in suffixes]


def _bn_shapes(bn: tf_keras.layers.BatchNormalization) -> list[Shape]:
    return [tuple(bn.gamma.shape)] * len(BN_FIELDS)


def _bn_values(bn: tf_keras.layers.BatchNormalization, tensors: list[np.ndarray]) -> list[Assignment]:
    gamma, beta, mean, var = tensors
    return [(bn.gamma, gamma), (bn.beta, beta), (bn.moving_mean, mean), (bn.moving_variance, var)]


# -- conv_bn: ConvBNAct ----------------------------------------------------------------------------
def _conv_bn_keys(slot: WeightSlot) -> list[str]:
    conv, norm = slot.conv_bn_names
    return [f"{slot.prefix}.{conv}.weight"] + [f"{slot.prefix}.{norm}.{f}" for f in BN_FIELDS]


def _conv_bn_shapes(slot: WeightSlot) -> list[Shape]:
    layer = slot.layer
    assert isinstance(layer, ConvBNAct)
    kernel = tuple(layer.conv.weights[0].shape)
    return [keras_conv_to_torch_shape(kernel, layer.depthwise)] + _bn_shapes(layer.bn)


def _conv_bn_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    layer = slot.layer
    weight = torch_conv_to_keras(tensors[0], layer.depthwise)
    return [(layer.conv.weights[0], weight)] + _bn_values(layer.bn, tensors[1:])


# -- conv_bias: Conv2D with bias -------------------------------------------------------------------
def _conv_bias_shapes(slot: WeightSlot) -> list[Shape]:
    kernel = tuple(slot.layer.kernel.shape)
    return [keras_conv_to_torch_shape(kernel, False), (kernel[3],)]


def _conv_bias_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    weight, bias = tensors
    return [(slot.layer.kernel, torch_conv_to_keras(weight, False)), (slot.layer.bias, bias)]


# -- dynamic_conv: DynamicConv ---------------------------------------------------------------------
# upstream ``weight`` is [1, att_groups=1, K, O·(I/g)·kh·kw], flattened in (out, in, kh, kw) order
def _dynamic_conv_shapes(slot: WeightSlot) -> list[Shape]:
    layer = slot.layer
    kernel = tuple(layer.kernel.shape)
    num_kernels = layer.num_kernels
    flat = int(np.prod(kernel)) // num_kernels
    attention = tuple(layer.attention.kernel.shape)
    return [(1, 1, num_kernels, flat), (attention[1], attention[0]), (attention[1],)]


def _dynamic_conv_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    layer = slot.layer
    weight, att_weight, att_bias = tensors
    num_kernels, k = layer.num_kernels, layer.kernel_size
    if layer.depthwise:  # [K, C, 1, kh, kw] → DepthwiseConv2D layout [kh, kw, C, K]
        kernel = weight.reshape(num_kernels, -1, 1, k, k)[:, :, 0].transpose(2, 3, 1, 0)
    else:  # 1x1: [K, O, I] → [K, I, O]
        out_channels = layer.filters
        kernel = weight.reshape(num_kernels, out_channels, -1).transpose(0, 2, 1)
    return [
        (layer.kernel, kernel),
        (layer.attention.kernel, att_weight.T),
        (layer.attention.bias, att_bias),
    ]


# -- linear: Dense ---------------------------------------------------------------------------------
def _linear_shapes(slot: WeightSlot) -> list[Shape]:
    kernel = tuple(slot.layer.kernel.shape)
    return [(kernel[1], kernel[0]), (kernel[1],)]


def _linear_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    weight, bias = tensors
    return [(slot.layer.kernel, weight.T), (slot.layer.bias, bias)]


SLOT_KINDS: dict[str, SlotKind] = {
    CONV_BN: SlotKind(_conv_bn_keys, _conv_bn_shapes, _conv_bn_values),
    CONV_BIAS: SlotKind(_suffixed("weight", "bias"), _conv_bias_shapes, _conv_bias_values),
    BN: SlotKind(
        _suffixed(*BN_FIELDS),
        lambda slot: _bn_shapes(slot.layer),
        lambda slot, tensors: _bn_values(slot.layer, tensors),
    ),
    DYNAMIC_CONV: SlotKind(
        _suffixed("weight", "residuals.0.weight", "residuals.0.bias"),
        _dynamic_conv_shapes,
        _dynamic_conv_values,
    ),
    LINEAR: SlotKind(_suffixed("weight", "bias"), _linear_shapes, _linear_values),
    PARAMETER: SlotKind(
        _suffixed(""),
        lambda slot: [tuple(getattr(slot.layer, slot.attr).shape)],
        lambda slot, tensors: [(getattr(slot.layer, slot.attr), tensors[0])],
    ),
    # checked against the layer's constant in assign_state_dict, nothing to assign
    CONSTANT: SlotKind(
        _suffixed(""), lambda slot: [tuple(np.shape(getattr(slot.layer, slot.attr)))], lambda slot, tensors: []
    ),
}


def expected_source_shapes(slot: WeightSlot) -> dict[str, Shape]:
    """Shapes the upstream tensors of ``slot`` must have, derived from the (built) Keras layer."""
    kind = SLOT_KINDS[slot.kind]
    return dict(zip(kind.keys(slot), kind.shapes(slot)))


def keras_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    """(Keras variable, value) pairs for one slot; ``tensors`` ordered as ``slot.source_keys()``."""
    return SLOT_KINDS[slot.kind].values(slot, tensors)


def constant_values(slots: list[WeightSlot]) -> dict[str, np.ndarray]:
    """Upstream buffers whose value the architecture fixes (CONSTANT slots), by key."""
    return {
        slot.prefix: np.asarray(getattr(slot.layer, slot.attr)) for slot in slots if slot.kind == CONSTANT
    }


# --- slot tables of the shared parts --------------------------------------------------------------


def inverted_residual_slots(prefix: str, block: InvertedResidual) -> Iterator[WeightSlot]:
    """An MN block as torchvision names it: ``{prefix}.block.j`` for its present parts in order."""
    j = 0
    if block.expand is not None:
        yield WeightSlot(f"{prefix}.block.{j}", CONV_BN, block.expand)
        j += 1
    yield WeightSlot(f"{prefix}.block.{j}", CONV_BN, block.depthwise)
    j += 1
    if block.se is not None:
        se_prefix = f"{prefix}.block.{j}.conc_se_layers.0"
        yield WeightSlot(f"{se_prefix}.fc1", LINEAR, block.se.fc1)
        yield WeightSlot(f"{se_prefix}.fc2", LINEAR, block.se.fc2)
        j += 1
    yield WeightSlot(f"{prefix}.block.{j}", CONV_BN, block.project)


def head_slots(head: tf_keras.layers.Layer) -> Iterator[WeightSlot]:
    """The classifier of every family (upstream ``classifier.*``)."""
    if isinstance(head, MLPHead):
        yield WeightSlot("classifier.2", LINEAR, head.hidden)
        yield WeightSlot("classifier.5", LINEAR, head.classifier)
    elif isinstance(head, FullyConvolutionalHead):
        yield WeightSlot("classifier", CONV_BN, head.conv_bn)
    elif isinstance(head, AttentionPoolingHead):
        yield WeightSlot("classifier.subspace_proj", LINEAR, head.subspace_proj)
        yield WeightSlot("classifier.head_weight", PARAMETER, head, attr="head_weight")
    else:  # pragma: no cover - guarded by ModelConfig validation
        raise TypeError(f"no upstream mapping for head {type(head).__name__}")


def backbone_slots(
    net: tf_keras.Model,
    stem: str,
    block_name: Callable[[int], str],
    last_conv: str,
    block_slots: Callable[[str, tf_keras.layers.Layer], Iterator[WeightSlot]],
) -> list[WeightSlot]:
    """Stem, blocks, last conv and head of an ``EfficientATNet`` in forward order: the stem and last
    conv under the given upstream names, block ``i`` as ``block_slots(block_name(i), block)``."""
    slots = [WeightSlot(stem, CONV_BN, net.stem)]
    for i, block in enumerate(net.blocks):
        slots.extend(block_slots(block_name(i), block))
    slots.append(WeightSlot(last_conv, CONV_BN, net.last_conv))
    slots.extend(head_slots(net.head))
    return slots
