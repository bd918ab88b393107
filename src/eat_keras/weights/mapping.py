"""Upstream (PyTorch) parameter names ↔ Keras weights.

:func:`weight_slots` lists, in forward order, every weight-bearing unit of an :class:`EfficientATNet`
with the upstream module path it corresponds to. The same list drives both importers: the ``.pt``
path looks tensors up by name, the ONNX path pairs the list with the graph's parametric ops in data-
flow order (see ``onnx_reader``). :func:`assign_state_dict` then converts layouts (OIHW → HWIO,
Linear [out, in] → [in, out], DyMN's stacked dynamic kernels), checks every shape, assigns each Keras
weight exactly once, checks constant buffers (DyReLU's) and fails if any source tensor is left unused.
How each kind of slot maps is one entry of :data:`SLOT_KINDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tf_keras

from eat_keras.errors import ArchitectureMismatchError, WeightFileError
from eat_keras.layers import ConvBNAct
from eat_keras.models.blocks import InvertedResidual
from eat_keras.models.heads import AttentionPoolingHead, FullyConvolutionalHead, MLPHead
from eat_keras.models.network import EfficientATNet

# Buffers upstream stores that carry no information for inference.
IGNORED_SUFFIXES = (".num_batches_tracked",)

# Slot kinds (see SLOT_KINDS below for their upstream tensors and Keras targets).
CONV_BN = "conv_bn"  # torchvision ConvNormActivation: conv without bias + BatchNorm (ConvBNAct)
LINEAR = "linear"  # nn.Linear (Dense)
PARAMETER = "parameter"  # a bare nn.Parameter held in a Keras attribute
CONV_BIAS = "conv_bias"  # nn.Conv2d with bias, no norm (Conv2D)
BN = "bn"  # a stand-alone BatchNorm2d (BatchNormalization)
DYNAMIC_CONV = "dynamic_conv"  # DyMN DynamicConv: K stacked kernels + attention Linear
CONSTANT = "constant"  # a buffer fixed by the architecture: checked, never assigned

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


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


def _block_slots(prefix: str, block: InvertedResidual) -> Iterator[WeightSlot]:
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


def _head_slots(head: tf_keras.layers.Layer) -> Iterator[WeightSlot]:
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


def weight_slots(net: EfficientATNet) -> list[WeightSlot]:
    """Every weight-bearing unit of ``net`` in forward (data-flow) order, with upstream names."""
    if net.config.arch != "mn":
        from eat_keras.weights.dymn_mapping import dymn_weight_slots  # DyMN names differ

        return dymn_weight_slots(net)
    slots = [WeightSlot("features.0", CONV_BN, net.stem)]
    for i, block in enumerate(net.blocks):
        slots.extend(_block_slots(f"features.{i + 1}", block))
    slots.append(WeightSlot(f"features.{len(net.blocks) + 1}", CONV_BN, net.last_conv))
    slots.extend(_head_slots(net.head))
    return slots


# --- layout conversion -------------------------------------------------------------------------


def _torch_conv_to_keras(weight: np.ndarray, depthwise: bool) -> np.ndarray:
    # torch OIHW → Keras HWIO; depthwise torch [C, 1, kh, kw] → Keras [kh, kw, C, 1].
    return weight.transpose(2, 3, 0, 1) if depthwise else weight.transpose(2, 3, 1, 0)


def _keras_conv_to_torch_shape(shape: tuple[int, ...], depthwise: bool) -> tuple[int, ...]:
    kh, kw, a, b = shape
    return (a, b, kh, kw) if depthwise else (b, a, kh, kw)


Shape = tuple[int, ...]
Assignment = tuple[object, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SlotKind:
    """How one kind of slot maps: its upstream keys, their shapes (derived from the built Keras
    layer) and the (Keras variable, value) pairs made from the tensors (given in key order)."""

    keys: Callable[[WeightSlot], list[str]]
    shapes: Callable[[WeightSlot], list[Shape]]
    values: Callable[[WeightSlot, list[np.ndarray]], list[Assignment]]


def _suffixed(*suffixes: str) -> Callable[[WeightSlot], list[str]]:
    return lambda slot: [f"{slot.prefix}.{s}" if s else slot.prefix for s in suffixes]


def _bn_shapes(bn: tf_keras.layers.BatchNormalization) -> list[Shape]:
    return [tuple(bn.gamma.shape)] * len(_BN_FIELDS)


def _bn_values(bn: tf_keras.layers.BatchNormalization, tensors: list[np.ndarray]) -> list[Assignment]:
    gamma, beta, mean, var = tensors
    return [(bn.gamma, gamma), (bn.beta, beta), (bn.moving_mean, mean), (bn.moving_variance, var)]


# -- conv_bn: ConvBNAct ----------------------------------------------------------------------------
def _conv_bn_keys(slot: WeightSlot) -> list[str]:
    conv, norm = slot.conv_bn_names
    return [f"{slot.prefix}.{conv}.weight"] + [f"{slot.prefix}.{norm}.{f}" for f in _BN_FIELDS]


def _conv_bn_shapes(slot: WeightSlot) -> list[Shape]:
    layer = slot.layer
    assert isinstance(layer, ConvBNAct)
    kernel = tuple(layer.conv.weights[0].shape)
    return [_keras_conv_to_torch_shape(kernel, layer.depthwise)] + _bn_shapes(layer.bn)


def _conv_bn_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    layer = slot.layer
    weight = _torch_conv_to_keras(tensors[0], layer.depthwise)
    return [(layer.conv.weights[0], weight)] + _bn_values(layer.bn, tensors[1:])


# -- conv_bias: Conv2D with bias -------------------------------------------------------------------
def _conv_bias_shapes(slot: WeightSlot) -> list[Shape]:
    kernel = tuple(slot.layer.kernel.shape)
    return [_keras_conv_to_torch_shape(kernel, False), (kernel[3],)]


def _conv_bias_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    weight, bias = tensors
    return [(slot.layer.kernel, _torch_conv_to_keras(weight, False)), (slot.layer.bias, bias)]


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
        _suffixed(*_BN_FIELDS),
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


def _expected_source_shapes(slot: WeightSlot) -> dict[str, Shape]:
    """Shapes the upstream tensors of ``slot`` must have, derived from the (built) Keras layer."""
    kind = SLOT_KINDS[slot.kind]
    return dict(zip(kind.keys(slot), kind.shapes(slot)))


def _keras_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[Assignment]:
    """(Keras variable, value) pairs for one slot; ``tensors`` ordered as ``slot.source_keys()``."""
    return SLOT_KINDS[slot.kind].values(slot, tensors)


def constant_values(slots: list[WeightSlot]) -> dict[str, np.ndarray]:
    """Upstream buffers whose value the architecture fixes (CONSTANT slots), by key."""
    return {
        slot.prefix: np.asarray(getattr(slot.layer, slot.attr)) for slot in slots if slot.kind == CONSTANT
    }


def strip_wrapper_prefix(state: Mapping[str, np.ndarray], anchors: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Drop a common wrapper prefix (``module.``, ``m.``, ``model.`` …) found before an anchor key."""
    for key in state:
        for anchor in anchors:
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if all(k.startswith(prefix) for k in state):
                    return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _brief(value: np.ndarray) -> str:
    """A short rendering of a small array's values (a corrupt file's could be millions long)."""
    return np.array2string(np.asarray(value).ravel(), threshold=8, edgeitems=2, max_line_width=10**6)


def _finite_float32(value: np.ndarray, key: str, source: str) -> np.ndarray:
    """``value`` as float32, refused if any entry is NaN or infinite (a model built from it would
    score every input NaN) or overflows float32."""
    if value.dtype.kind not in "fiub":
        raise WeightFileError(f"{source}: tensor {key} holds {value.dtype} values, expected numbers")
    with np.errstate(over="ignore"):
        result = value.astype(np.float32)
    if not np.isfinite(result).all():
        bad = int(np.size(result) - np.count_nonzero(np.isfinite(result)))
        raise WeightFileError(
            f"{source}: tensor {key} holds {bad} non-finite value(s) (NaN, Inf or beyond float32); "
            "the file is corrupt or comes from a diverged training run"
        )
    return result


def assign_state_dict(
    net: EfficientATNet,
    state: Mapping[str, np.ndarray],
    source: str = "checkpoint",
    extra_checks: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Assign upstream-named tensors to ``net`` (which must be built).

    Every Keras weight receives exactly one tensor and every tensor in ``state`` (other than
    ``num_batches_tracked``) must be consumed; otherwise :class:`ArchitectureMismatchError` names
    the offending tensor. Buffers whose value the architecture fixes (CONSTANT slots, e.g. DyReLU's
    ``lambdas`` and ``init_v``) must be present with exactly that value; ``extra_checks`` adds
    further such tensors (key → required value).
    """
    used: set[str] = set()
    assignments: list[Assignment] = []
    arch = f"{net.config.arch} width {net.config.width_mult:g}, {net.config.head_type} head"
    slots = weight_slots(net)
    # constants the architecture fixes (DyReLU's lambdas/init_v) come from the slots themselves
    checks = {**constant_values(slots), **dict(extra_checks or {})}
    for slot in slots:
        if slot.kind == CONSTANT:
            continue
        expected = _expected_source_shapes(slot)
        tensors = []
        for key, shape in expected.items():
            if key not in state:
                raise ArchitectureMismatchError(
                    f"{source}: tensor {key} (expected shape {shape} for {arch}) is missing"
                )
            value = np.asarray(state[key])
            if tuple(value.shape) != shape:
                raise ArchitectureMismatchError(
                    f"{source}: tensor {key} has shape {tuple(value.shape)}, expected {shape} "
                    f"for {arch}, {net.config.num_classes} classes"
                )
            tensors.append(_finite_float32(value, key, source))
            used.add(key)
        assignments.extend(_keras_values(slot, tensors))
    for key, value in checks.items():
        value = np.asarray(value)
        got = None if key not in state else np.asarray(state[key])
        if got is None or got.shape != value.shape or not np.allclose(got, value):
            raise ArchitectureMismatchError(
                f"{source}: constant {key} must equal {_brief(value)} (shape {value.shape}), "
                f"got {'nothing' if got is None else _brief(got)}"
            )
        used.add(key)
    unused = [k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES)]
    if unused:
        raise ArchitectureMismatchError(
            f"{source}: {len(unused)} tensor(s) have no place in a {arch} model, first: "
            f"{unused[0]} with shape {tuple(np.shape(state[unused[0]]))}"
        )
    variables = [v for v, _ in assignments]
    if len({id(v) for v in variables}) != len(variables):  # pragma: no cover - mapping bug guard
        raise AssertionError("a Keras weight was assigned twice")
    missing = {id(w) for w in net.weights} - {id(v) for v in variables}
    if missing:  # pragma: no cover - mapping bug guard
        names = [w.name for w in net.weights if id(w) in missing]
        raise AssertionError(f"Keras weights without a source tensor: {names[:5]}")
    for variable, value in assignments:
        variable.assign(value)
