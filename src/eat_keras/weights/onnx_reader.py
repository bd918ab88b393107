"""Read weights from ONNX files exported from upstream EfficientAT models.

Exports differ in ways that break name-based loading: with constant folding (the default) the
exporter fuses each BatchNorm into the preceding Conv and gives the result generated names
(``onnx::Conv_896``); wrappers add prefixes (``m.``); without folding BatchNormalization nodes
keep the state-dict names. So the reader ignores names: it lists the graph's parametric ops
(Conv [+ BatchNormalization], Gemm, MatMul [+ Add]) in data-flow order, infers the architecture
from their shapes and attributes, and pairs them one by one with the model's weight slots
(``mapping.weight_slots``), checking every shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eat_keras.errors import ArchitectureMismatchError, WeightFileError
from eat_keras.weights.architecture import default_label_type, width_from_channels
from eat_keras.weights.mapping import CONV_BN, LINEAR, WeightSlot, _expected_source_shapes


@dataclasses.dataclass
class ConvOp:
    name: str  # ONNX name of the weight initialiser (for error messages)
    weight: np.ndarray  # [O, I/groups, kh, kw]
    bias: np.ndarray | None
    group: int
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    # (scale, bias, mean, var, epsilon) of a BatchNormalization node fed by this conv
    batchnorm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.weight.shape[0] and self.weight.shape[1] == 1


@dataclasses.dataclass
class LinearOp:
    name: str
    weight: np.ndarray  # [out, in] as torch.nn.Linear stores it
    bias: np.ndarray | None


ParametricOp = ConvOp | LinearOp


def load_onnx_model(path: Path):
    import onnx  # imported lazily: only the ONNX import path needs it

    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, truncated files various others
        raise WeightFileError(f"{path}: not a readable ONNX model (truncated or corrupt?): {exc}") from exc
    if not model.graph.node:
        raise WeightFileError(f"{path}: ONNX model has an empty graph (truncated or corrupt?)")
    return model


class _Graph:
    """Constant tensors (initialisers, Constant and Identity-of-constant nodes) and consumers."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.nodes = list(graph.node)
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name: str, path: Path) -> np.ndarray:
        if name not in self.constants:
            raise WeightFileError(f"{path}: op input {name!r} is not a constant; unsupported export")
        return self.constants[name]

    def only_consumer(self, output: str, op_type: str) -> Any | None:
        users = self.consumers.get(output, [])
        if len(users) == 1 and users[0].op_type == op_type:
            return users[0]
        return None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def read_parametric_ops(path: Path) -> list[ParametricOp]:
    """Conv / Linear ops of an ONNX graph in its (topological = data-flow) order."""
    path = Path(path)
    graph = _Graph(load_onnx_model(path))
    ops: list[ParametricOp] = []
    for node in graph.nodes:
        attrs = _attrs(node)
        if node.op_type == "Conv" and node.input[1] in graph.constants:
            weight = graph.const(node.input[1], path)
            bias = graph.const(node.input[2], path) if len(node.input) > 2 and node.input[2] else None
            op = ConvOp(
                node.input[1],
                weight,
                bias,
                int(attrs.get("group", 1)),
                tuple(attrs.get("strides", (1, 1))),
                tuple(attrs.get("dilations", (1, 1))),
            )
            bn = graph.only_consumer(node.output[0], "BatchNormalization")
            if bn is not None:
                op.batchnorm = (
                    *(graph.const(n, path) for n in bn.input[1:5]),
                    float(_attrs(bn).get("epsilon", 1e-5)),
                )
            ops.append(op)
        elif node.op_type == "Gemm" and node.input[1] in graph.constants:
            weight = graph.const(node.input[1], path)
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise WeightFileError(f"{path}: Gemm {node.name} has unsupported attributes {attrs}")
            weight = weight if attrs.get("transB", 0) else weight.T
            bias = graph.const(node.input[2], path) if len(node.input) > 2 and node.input[2] else None
            ops.append(LinearOp(node.input[1], weight, bias))
        elif node.op_type == "MatMul" and node.input[1] in graph.constants:
            weight = graph.const(node.input[1], path).T  # MatMul right operand is [in, out]
            add = graph.only_consumer(node.output[0], "Add")
            bias = None
            if add is not None:
                other = [n for n in add.input if n != node.output[0]]
                if other and other[0] in graph.constants:
                    bias = graph.const(other[0], path)
            ops.append(LinearOp(node.input[1], weight, bias))
    if not ops:
        raise WeightFileError(f"{path}: the ONNX graph holds no Conv/Gemm/MatMul weights")
    return ops


def infer_config_from_ops(ops: Sequence[ParametricOp], source: str) -> dict[str, Any]:
    """Width, head, classes and strides of an MN graph from its ops."""
    convs = [op for op in ops if isinstance(op, ConvOp)]
    if len(convs) < 3 or convs[0].weight.shape[1] != 1:
        raise ArchitectureMismatchError(f"{source}: graph does not start with the 1-channel stem conv")
    if isinstance(ops[-1], LinearOp):
        head, classes = "mlp", int(ops[-1].weight.shape[0])
        last_conv = convs[-1]
    else:
        head, classes = "fully_convolutional", int(convs[-1].weight.shape[0])
        last_conv = convs[-2]
    width = width_from_channels(int(convs[0].weight.shape[0]), int(last_conv.weight.shape[0]), source)
    depthwise = [op for op in convs if op.depthwise]
    if len(depthwise) != 15:
        raise ArchitectureMismatchError(
            f"{source}: found {len(depthwise)} depthwise convolutions, an MN has 15"
        )
    # Blocks 1, 3, 6 and 12 (0-based) carry the configurable strides C1..C4.
    strides = tuple(int(depthwise[i].strides[0]) for i in (1, 3, 6, 12))
    return {
        "arch": "mn",
        "width_mult": width,
        "head_type": head,
        "num_classes": classes,
        "strides": strides,
        "label_type": default_label_type(classes),
    }


def state_dict_from_ops(
    ops: Sequence[ParametricOp], slots: Sequence[WeightSlot], source: str
) -> dict[str, np.ndarray]:
    """Pair ops with slots in order and return upstream-named tensors for ``assign_state_dict``.

    A conv whose BatchNorm was folded by the exporter gets an identity BatchNorm (gamma 1, mean 0,
    var 1 - eps) whose beta is the folded bias.
    """
    state: dict[str, np.ndarray] = {}
    remaining = list(ops)
    for slot in slots:
        keys = slot.source_keys()
        expected = _expected_source_shapes(slot)
        if not remaining:
            raise ArchitectureMismatchError(
                f"{source}: graph ends before {slot.prefix} (expected {slot.kind} with "
                f"weight shape {expected[keys[0]]})"
            )
        op = remaining.pop(0)
        want = ConvOp if slot.kind == CONV_BN else LinearOp if slot.kind == LINEAR else None
        if want is None or not isinstance(op, want):
            raise ArchitectureMismatchError(
                f"{source}: at {slot.prefix} expected a {slot.kind} op, found {type(op).__name__} "
                f"{op.name} with weight shape {op.weight.shape}"
            )
        if tuple(op.weight.shape) != expected[keys[0]]:
            raise ArchitectureMismatchError(
                f"{source}: tensor {op.name} (for {slot.prefix}) has shape {tuple(op.weight.shape)}, "
                f"expected {expected[keys[0]]}"
            )
        if isinstance(op, LinearOp):
            channels = op.weight.shape[0]
            state[keys[0]] = op.weight
            state[keys[1]] = op.bias if op.bias is not None else np.zeros(channels, np.float32)
            continue
        channels = op.weight.shape[0]
        eps = float(slot.layer.bn.epsilon)
        state[keys[0]] = op.weight
        if op.batchnorm is not None:
            gamma, beta, mean, var, onnx_eps = op.batchnorm
            if op.bias is not None:  # conv bias before BN shifts the mean
                mean = mean - op.bias
            # keep var + eps identical when the export's epsilon differs from the Keras layer's
            var = var + (onnx_eps - eps)
        else:
            gamma = np.ones(channels, np.float32)
            beta = op.bias if op.bias is not None else np.zeros(channels, np.float32)
            mean = np.zeros(channels, np.float32)
            var = np.full(channels, 1.0 - eps, np.float32)
        for key, value in zip(keys[1:], (gamma, beta, mean, var)):
            state[key] = np.asarray(value, np.float32)
    if remaining:
        op = remaining[0]
        raise ArchitectureMismatchError(
            f"{source}: {len(remaining)} op(s) left after the model's last layer, first "
            f"{op.name} with weight shape {op.weight.shape}"
        )
    return state
