"""Upstream (PyTorch) parameter names ↔ Keras weights.

:func:`weight_slots` lists, in forward order, every weight-bearing unit of an :class:`EfficientATNet`
with the upstream module path it corresponds to. The same list drives both importers: the ``.pt``
path looks tensors up by name, the ONNX path pairs the list with the graph's parametric ops in data-
flow order (see ``onnx_reader``). :func:`assign_state_dict` then converts layouts (OIHW → HWIO,
Linear [out, in] → [in, out]), checks every shape, assigns each Keras weight exactly once and fails
if any source tensor is left unused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
import tf_keras

from eat_keras.errors import ArchitectureMismatchError
from eat_keras.layers import ConvBNAct, SqueezeExcitation
from eat_keras.models.blocks import InvertedResidual
from eat_keras.models.heads import AttentionPoolingHead, FullyConvolutionalHead, MLPHead
from eat_keras.models.network import EfficientATNet

# Buffers upstream stores that carry no information for inference.
IGNORED_SUFFIXES = (".num_batches_tracked",)

CONV_BN = "conv_bn"
LINEAR = "linear"
PARAMETER = "parameter"


@dataclasses.dataclass(frozen=True)
class WeightSlot:
    """One weight-bearing unit: upstream module path, its kind and the Keras layer that holds it."""

    prefix: str
    kind: str
    layer: tf_keras.layers.Layer
    attr: str = ""  # for PARAMETER slots: the Keras attribute holding the variable

    def source_keys(self) -> list[str]:
        p = self.prefix
        if self.kind == CONV_BN:
            return [f"{p}.0.weight"] + [
                f"{p}.1.{n}" for n in ("weight", "bias", "running_mean", "running_var")
            ]
        if self.kind == LINEAR:
            return [f"{p}.weight", f"{p}.bias"]
        return [p]


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


def _expected_source_shapes(slot: WeightSlot) -> dict[str, tuple[int, ...]]:
    """Shapes the upstream tensors of ``slot`` must have, derived from the (built) Keras layer."""
    keys = slot.source_keys()
    layer = slot.layer
    if slot.kind == CONV_BN:
        assert isinstance(layer, ConvBNAct)
        kernel = tuple(layer.conv.weights[0].shape)
        channels = (kernel[2] * kernel[3],) if layer.depthwise else (kernel[3],)
        return {keys[0]: _keras_conv_to_torch_shape(kernel, layer.depthwise), **{k: channels for k in keys[1:]}}
    if slot.kind == LINEAR:
        kernel = tuple(layer.kernel.shape)
        return {keys[0]: (kernel[1], kernel[0]), keys[1]: (kernel[1],)}
    return {keys[0]: tuple(getattr(layer, slot.attr).shape)}


def _keras_values(slot: WeightSlot, tensors: list[np.ndarray]) -> list[tuple[object, np.ndarray]]:
    """(Keras variable, value) pairs for one slot; ``tensors`` ordered as ``slot.source_keys()``."""
    layer = slot.layer
    if slot.kind == CONV_BN:
        weight, gamma, beta, mean, var = tensors
        bn = layer.bn
        return [
            (layer.conv.weights[0], _torch_conv_to_keras(weight, layer.depthwise)),
            (bn.gamma, gamma),
            (bn.beta, beta),
            (bn.moving_mean, mean),
            (bn.moving_variance, var),
        ]
    if slot.kind == LINEAR:
        weight, bias = tensors
        return [(layer.kernel, weight.T), (layer.bias, bias)]
    return [(getattr(layer, slot.attr), tensors[0])]


def strip_wrapper_prefix(state: Mapping[str, np.ndarray], anchors: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Drop a common wrapper prefix (``module.``, ``m.``, ``model.`` …) found before an anchor key."""
    for key in state:
        for anchor in anchors:
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if all(k.startswith(prefix) for k in state):
                    return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def assign_state_dict(
    net: EfficientATNet,
    state: Mapping[str, np.ndarray],
    source: str = "checkpoint",
    extra_checks: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Assign upstream-named tensors to ``net`` (which must be built).

    Every Keras weight receives exactly one tensor and every tensor in ``state`` (other than
    ``num_batches_tracked``) must be consumed; otherwise :class:`ArchitectureMismatchError` names
    the offending tensor. ``extra_checks`` are tensors whose value is fixed by the architecture
    (e.g. DyReLU's ``lambdas``): they must be present with exactly that value.
    """
    used: set[str] = set()
    assignments: list[tuple[object, np.ndarray]] = []
    arch = f"{net.config.arch} width {net.config.width_mult:g}, {net.config.head_type} head"
    for slot in weight_slots(net):
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
            tensors.append(value.astype(np.float32))
            used.add(key)
        assignments.extend(_keras_values(slot, tensors))
    for key, value in (extra_checks or {}).items():
        if key not in state or not np.allclose(state[key], value):
            raise ArchitectureMismatchError(
                f"{source}: constant {key} must equal {value.tolist()}, "
                f"got {None if key not in state else np.asarray(state[key]).tolist()}"
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
