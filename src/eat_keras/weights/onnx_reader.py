"""Read weights from ONNX files exported from upstream EfficientAT models.

Exports differ in ways that break name-based loading: with constant folding (the default) the
exporter fuses each BatchNorm into the preceding Conv and gives the result generated names
(``onnx::Conv_896``); wrappers add prefixes (``m.``); without folding BatchNormalization nodes
keep the state-dict names. So the reader ignores names: it lists the graph's parametric ops
(Conv [+ BatchNormalization], Gemm, MatMul [+ Add]) in data-flow order, lets the registered model
families recognise their structure (``ArchSpec.onnx_fields``) and read the configuration from the
ops' shapes and attributes, and pairs the ops one by one with the model's weight slots
(``mapping.weight_slots``), checking every shape.

DyMN graphs are recognised by structure as well. Upstream DyMN exports only at a fixed shape
(batch 1; its adaptive pooling refuses dynamic axes), and the parts that matter look like this:

* DynamicConv: ``Gemm(h_c) [→ Div τ] → Softmax → MatMul(·, weight [1, 1, K, N])`` whose result,
  through Transpose/Reshape, is the *weight input* of a Conv (group, strides, kernel); the
  BatchNormalization after it stays a node (it cannot be folded into a runtime kernel);
* DyReLU: ``Gemm(h_c) → Sigmoid → … → Mul(lambdas) → Add(init_v)``;
* ContextGen: its joint conv + norm folded into one Conv with bias, ``conv_f`` / ``conv_t`` Convs
  with bias; stem and last conv folded as in MN.

The temperature τ is read from the Div constant (1.0 if there is none).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eat_keras.errors import ArchitectureMismatchError, WeightFileError
from eat_keras.models.blocks import DOWNSAMPLING_BLOCKS, MN_BLOCK_TABLE
from eat_keras.models.registry import registered_archs
from eat_keras.weights.architecture import width_from_channels
from eat_keras.weights import slots as slot_kinds
from eat_keras.weights.slots import WeightSlot


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


@dataclasses.dataclass
class DynamicConvOp:
    name: str  # ONNX name of the stacked-kernel initialiser
    weight: np.ndarray  # [1, 1, K, O·(I/g)·kh·kw], as upstream's DynamicConv.weight
    attention: LinearOp  # upstream ``residuals.0``
    temperature: float
    group: int  # upstream folds the batch into groups (groups·B); exports are batch 1
    strides: tuple[int, ...]
    dilations: tuple[int, ...]

    @property
    def depthwise(self) -> bool:
        return self.group > 1


@dataclasses.dataclass
class BatchNormOp:
    """A BatchNormalization node not fed directly by a constant-weight Conv (DyMN's exp/depth/proj
    norms, which follow a runtime-kernel conv)."""

    name: str  # ONNX name of the scale initialiser
    weight: np.ndarray  # scale (torch calls it ``weight``)
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float


@dataclasses.dataclass
class ConstantOp:
    """A constant the architecture fixes (DyReLU's ``lambdas``, ``init_v``), read to be verified."""

    name: str
    weight: np.ndarray


ParametricOp = ConvOp | LinearOp | DynamicConvOp | BatchNormOp | ConstantOp


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (parsers raise multi-line ones)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def load_onnx_model(path: Path):
    import onnx  # imported lazily: only the ONNX import path needs it

    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, truncated files various others
        raise WeightFileError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {_one_line(exc)}"
        ) from exc
    if not model.graph.node:
        raise WeightFileError(f"{path}: ONNX model has an empty graph (truncated or corrupt?)")
    return model


def _tensor_array(tensor: Any, path: Path, what: str) -> np.ndarray:
    """The values of a TensorProto, refused unless they fill exactly its declared dims."""
    from onnx import numpy_helper

    dims = [int(d) for d in tensor.dims]
    where = f"{path}: {what} {tensor.name!r}"
    if any(d < 0 for d in dims):
        raise WeightFileError(f"{where} has negative dims {dims} (corrupt file?)")
    try:
        value = numpy_helper.to_array(tensor)
    except KeyError:  # numpy_helper's table of element types
        raise WeightFileError(f"{where} has unknown data type {tensor.data_type} (corrupt file?)") from None
    except Exception as exc:  # decoding untrusted data: a wrong size, type code or layout
        raise WeightFileError(
            f"{where}: its dims {dims} ({math.prod(dims)} values) disagree with its data "
            f"({_one_line(exc)}; corrupt file?)"
        ) from None
    if list(value.shape) != dims:
        raise WeightFileError(f"{where} decodes to shape {list(value.shape)}, its dims say {dims}")
    return value


# Constant node attribute → (its AttributeProto type: TENSOR, FLOAT, FLOATS, INT, INTS; dtype)
_CONSTANT_KINDS = {
    "value": (4, None), "value_float": (1, np.float32), "value_floats": (6, np.float32),
    "value_int": (2, np.int64), "value_ints": (7, np.int64),
}


def _constant_node_value(node: Any, path: Path) -> np.ndarray | None:
    """The value of a Constant node, or None for kinds the importer never reads (sparse, strings)."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name not in _CONSTANT_KINDS:
            continue
        attr_type, dtype = _CONSTANT_KINDS[attr.name]
        if attr.type != attr_type:
            raise WeightFileError(f"{path}: Constant {node.output[0]!r}: attribute {attr.name} has the wrong type")
        if dtype is None:
            return _tensor_array(attr.t, path, f"Constant {node.output[0]!r}")
        return np.asarray(helper.get_attribute_value(attr), dtype)
    return None


def _min_inputs_and_outputs(node: Any, opsets: dict[str, int]) -> tuple[int, int]:
    """What the op's schema requires; (0, 1) for ops of unknown domains (custom ops)."""
    import onnx

    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, onnx.defs.onnx_opset_version()), domain)
    except Exception:  # SchemaError: not a standard op; only its output count can be checked
        return 0, 1
    return schema.min_input, max(1, schema.min_output)


def _check_wiring(graph: Any, opsets: dict[str, int], path: Path) -> None:
    """Every node has the inputs and outputs its op needs, reads only tensors defined before it
    (ONNX requires topological order, which also rules out cycles) and defines each output once."""
    defined = {t.name for t in graph.input}  # IR < 4 lists initialisers among the inputs too
    initializers: set[str] = set()
    for init in graph.initializer:
        if init.name in initializers:
            raise WeightFileError(f"{path}: initializer {init.name!r} appears twice (corrupt file?)")
        initializers.add(init.name)
    defined |= initializers
    for node in graph.node:
        where = f"{path}: node {node.name or '(unnamed)'} ({node.op_type})"
        min_inputs, min_outputs = _min_inputs_and_outputs(node, opsets)
        if len(node.input) < min_inputs or not all(node.input[:min_inputs]):
            raise WeightFileError(f"{where} has {sum(map(bool, node.input))} input(s), the op needs {min_inputs}")
        if len(node.output) < min_outputs or not node.output[0]:
            raise WeightFileError(f"{where} has no output (corrupt file?)")
        for name in node.input:
            if name and name not in defined:
                raise WeightFileError(
                    f"{where} reads {name!r}, which no initializer, graph input or earlier node produces"
                )
        for name in filter(None, node.output):
            if name in defined:
                raise WeightFileError(f"{where} defines {name!r}, which is already defined")
            defined.add(name)
    for output in graph.output:
        if output.name not in defined:
            raise WeightFileError(f"{path}: graph output {output.name!r} is produced by no node")


class _Graph:
    """Constant tensors (initialisers, Constant and Identity-of-constant nodes), and each tensor's
    producing node and consuming nodes, of a graph whose wiring has been checked."""

    def __init__(self, model: Any, path: Path) -> None:
        graph = model.graph
        self.path = path
        _check_wiring(graph, {o.domain: int(o.version) for o in model.opset_import}, path)
        self.constants: dict[str, np.ndarray] = {
            init.name: _tensor_array(init, path, "initializer") for init in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant":
                value = _constant_node_value(node, path)
                if value is not None:
                    self.constants[node.output[0]] = value
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.nodes = list(graph.node)
        self.consumers: dict[str, list[Any]] = {}
        self.producer: dict[str, Any] = {}
        for node in self.nodes:
            for name in filter(None, node.input):
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node

    def const(self, name: str, path: Path) -> np.ndarray:
        if name not in self.constants:
            raise WeightFileError(f"{path}: op input {name!r} is not a constant; unsupported export")
        return self.constants[name]

    def weight(self, name: str, ndim: int) -> np.ndarray:
        """A constant that holds learned values: floating point, of the rank its op needs."""
        value = self.const(name, self.path)
        if value.dtype.kind != "f":
            raise WeightFileError(f"{self.path}: weight {name!r} holds {value.dtype} values, expected floats")
        if value.ndim != ndim:
            raise WeightFileError(
                f"{self.path}: weight {name!r} has shape {list(value.shape)}, its op needs {ndim} dimension(s)"
            )
        return value

    def only_consumer(self, output: str, op_type: str | None = None) -> Any | None:
        users = self.consumers.get(output, [])
        if len(users) == 1 and (op_type is None or users[0].op_type == op_type):
            return users[0]
        return None

    def constant_operand(self, node: Any, data: str) -> np.ndarray | None:
        """The constant other input of a binary node whose data input is ``data``."""
        others = [n for n in node.input if n != data]
        if len(others) == 1 and others[0] in self.constants:
            return self.constants[others[0]]
        return None


_ATTRIBUTE_TYPES = {"int": 2, "float": 1, "ints": 7}  # onnx.AttributeProto.{INT, FLOAT, INTS}


def _attr(node: Any, name: str, kind: str, default: Any, path: Path) -> Any:
    """Attribute ``name`` of ``node``, refused unless it has the type the op defines."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            if attr.type != _ATTRIBUTE_TYPES[kind]:
                raise WeightFileError(
                    f"{path}: {node.op_type} {node.name}: attribute {name} is not of type {kind} (corrupt file?)"
                )
            value = helper.get_attribute_value(attr)
            return tuple(value) if kind == "ints" else value
    return default


def _conv_geometry(node: Any, path: Path) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(group, strides, dilations) of a 2-D Conv node, each checked to be usable."""
    group = _attr(node, "group", "int", 1, path)
    strides = _attr(node, "strides", "ints", (1, 1), path)
    dilations = _attr(node, "dilations", "ints", (1, 1), path)
    if group < 1 or len(strides) != 2 or len(dilations) != 2 or min(strides + dilations) < 1:
        raise WeightFileError(
            f"{path}: Conv {node.name} has group {group}, strides {list(strides)}, dilations "
            f"{list(dilations)}; a 2-D conv needs a positive group and two positive strides and dilations"
        )
    return group, strides, dilations


def _epsilon(node: Any, path: Path) -> float:
    epsilon = float(_attr(node, "epsilon", "float", 1e-5, path))
    if not math.isfinite(epsilon) or epsilon < 0:
        raise WeightFileError(f"{path}: BatchNormalization {node.name} has epsilon {epsilon}")
    return epsilon


# Nodes that only move data around between the parts of a DynamicConv.
_LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def _optional_bias(graph: _Graph, node: Any) -> np.ndarray | None:
    """The third input of a Conv or Gemm (its bias), if it has one."""
    return graph.weight(node.input[2], 1) if len(node.input) > 2 and node.input[2] else None


def _linear_from_gemm(graph: _Graph, node: Any, path: Path) -> LinearOp:
    defaults = (("transA", "int", 0), ("transB", "int", 0), ("alpha", "float", 1.0), ("beta", "float", 1.0))
    attrs = {name: _attr(node, name, kind, default, path) for name, kind, default in defaults}
    if attrs["transA"] or attrs["alpha"] != 1.0 or attrs["beta"] != 1.0:
        raise WeightFileError(f"{path}: Gemm {node.name} has unsupported attributes {attrs}")
    weight = graph.weight(node.input[1], 2)
    weight = weight if attrs["transB"] else weight.T
    return LinearOp(node.input[1], weight, _optional_bias(graph, node))


def _softmax_temperature(graph: _Graph, node: Any, broken: Callable[[str], WeightFileError]) -> float:
    """τ of a ``Div(logits, τ)`` (or ``Mul(logits, 1/τ)``) node before the attention Softmax."""
    scale = graph.constant_operand(node, node.input[0])
    if scale is None or scale.size != 1 or scale.dtype.kind not in "fiu":
        raise broken(f"{node.op_type} {node.name} before the Softmax is not by a scalar constant")
    value = float(scale.reshape(-1)[0])
    temperature = value if node.op_type == "Div" else 1.0 / value if value else math.inf
    if not (math.isfinite(temperature) and temperature > 0):
        raise broken(f"its temperature {temperature} is not a positive finite number")
    return temperature


def _dynamic_conv(graph: _Graph, matmul: Any, path: Path) -> tuple[DynamicConvOp, Any] | None:
    """A DynamicConv whose stacked kernels are ``matmul``'s constant operand, with the Gemm that
    computes its attention logits; None if ``matmul`` is not one."""
    weight = graph.constants.get(matmul.input[1])
    if weight is None or weight.ndim != 4 or weight.shape[:2] != (1, 1):
        return None

    def broken(what: str) -> WeightFileError:
        return WeightFileError(
            f"{path}: MatMul {matmul.name} with stacked kernels {matmul.input[1]} {weight.shape}: "
            f"{what}; not an export of upstream DynamicConv"
        )

    softmax = graph.producer.get(matmul.input[0])
    if softmax is None or softmax.op_type != "Softmax":
        raise broken("its attention is not a Softmax")
    node, temperature = graph.producer.get(softmax.input[0]), 1.0
    if node is not None and node.op_type in ("Div", "Mul"):
        temperature = _softmax_temperature(graph, node, broken)
        node = graph.producer.get(node.input[0])
    while node is not None and node.op_type in _LAYOUT_OPS:
        node = graph.producer.get(node.input[0])
    if node is None or node.op_type != "Gemm" or node.input[1] not in graph.constants:
        raise broken("the Softmax input does not come from a Gemm with constant weights")
    gemm = node
    # follow the aggregated kernel through layout ops to the Conv that uses it as its weight
    frontier, seen, conv = [matmul.output[0]], {matmul.output[0]}, None
    while frontier and conv is None:
        tensor = frontier.pop()
        for user in graph.consumers.get(tensor, []):
            if user.op_type == "Conv" and len(user.input) > 1 and user.input[1] == tensor:
                conv = user
            elif user.op_type in _LAYOUT_OPS and user.output[0] not in seen:
                seen.add(user.output[0])  # a tensor reached twice (a diamond) is followed once
                frontier.append(user.output[0])
    if conv is None:
        raise broken("its aggregated kernel feeds no Conv")
    if weight.dtype.kind != "f":
        raise broken(f"its kernels hold {weight.dtype} values, expected floats")
    op = DynamicConvOp(
        matmul.input[1], weight, _linear_from_gemm(graph, gemm, path), temperature, *_conv_geometry(conv, path)
    )
    return op, gemm


def _dyrelu_constants(graph: _Graph, gemm: Any) -> list[ConstantOp]:
    """``[lambdas, init_v]`` if ``gemm`` computes DyReLU coefficients, else ``[]``.

    Upstream: ``θ = 2σ(Gemm) − 1 → Reshape → · lambdas → + init_v``; both are 1-D of length 2M.
    MN's SE (Gemm → Sigmoid → Mul by the feature map) has no such constants.
    """
    node = graph.only_consumer(gemm.output[0], "Sigmoid")
    lambdas = None
    for _ in range(16):  # the chain is a handful of elementwise/layout nodes long
        if node is None:
            return []
        const_names = [n for n in node.input if n in graph.constants]
        if node.op_type in ("Mul", "Add") and len(const_names) == 1:
            const_name = const_names[0]
            value = graph.constants[const_name]
            if value.ndim == 1 and value.size > 1:
                if node.op_type == "Mul":
                    lambdas = ConstantOp(const_name, value)
                elif lambdas is not None:
                    return [lambdas, ConstantOp(const_name, value)]
        node = graph.only_consumer(node.output[0])
    return []


def _conv_op(graph: _Graph, node: Any, fused_batchnorms: set[str], path: Path) -> ConvOp:
    """A Conv with constant weights, with the BatchNormalization it alone feeds (if any)."""
    op = ConvOp(node.input[1], graph.weight(node.input[1], 4), _optional_bias(graph, node), *_conv_geometry(node, path))
    bn = graph.only_consumer(node.output[0], "BatchNormalization")
    if bn is not None:
        op.batchnorm = (*(graph.weight(n, 1) for n in bn.input[1:5]), _epsilon(bn, path))
        fused_batchnorms.add(bn.output[0])
    return op


def _matmul_linear(graph: _Graph, node: Any) -> LinearOp:
    """A MatMul by a constant (+ the Add of a constant bias) as a linear layer."""
    weight = graph.weight(node.input[1], 2).T  # MatMul right operand is [in, out]
    add = graph.only_consumer(node.output[0], "Add")
    bias = None
    if add is not None:
        other = [n for n in add.input if n != node.output[0]]
        if other and other[0] in graph.constants:
            bias = graph.weight(other[0], 1)
    return LinearOp(node.input[1], weight, bias)


def read_parametric_ops(path: Path) -> list[ParametricOp]:
    """Parametric ops of an ONNX graph in its (topological = data-flow) order.

    Conv (+ a BatchNormalization it feeds directly), Gemm / MatMul (+ Add) as linear layers, and for
    DyMN: DynamicConv (at its stacked-kernel MatMul; its attention Gemm is part of it), the
    BatchNormalization nodes after dynamic convs, and DyReLU's constants after its Gemm.
    """
    path = Path(path)
    graph = _Graph(load_onnx_model(path), path)
    dynamic: dict[str, DynamicConvOp] = {}  # by MatMul output
    attention_gemms: set[str] = set()  # Gemm outputs that belong to a DynamicConv
    for node in graph.nodes:
        if node.op_type == "MatMul" and (found := _dynamic_conv(graph, node, path)) is not None:
            dynamic[node.output[0]] = found[0]
            attention_gemms.add(found[1].output[0])
    ops: list[ParametricOp] = []
    fused_batchnorms: set[str] = set()
    for node in graph.nodes:
        if node.op_type == "Conv" and node.input[1] in graph.constants:
            ops.append(_conv_op(graph, node, fused_batchnorms, path))
        elif node.op_type == "BatchNormalization" and node.output[0] not in fused_batchnorms:
            scale, bias, mean, var = (graph.weight(n, 1) for n in node.input[1:5])
            ops.append(BatchNormOp(node.input[1], scale, bias, mean, var, _epsilon(node, path)))
        elif node.op_type == "Gemm" and node.input[1] in graph.constants:
            if node.output[0] in attention_gemms:
                continue  # already part of its DynamicConvOp
            ops.append(_linear_from_gemm(graph, node, path))
            ops.extend(_dyrelu_constants(graph, node))
        elif node.op_type == "MatMul" and node.output[0] in dynamic:
            ops.append(dynamic[node.output[0]])
        elif node.op_type == "MatMul" and node.input[1] in graph.constants:
            ops.append(_matmul_linear(graph, node))
    if not ops:
        raise WeightFileError(f"{path}: the ONNX graph holds no Conv/Gemm/MatMul weights")
    return ops


def infer_config_from_ops(ops: Sequence[ParametricOp], source: str) -> dict[str, Any]:
    """The ModelConfig fields the ops fix, as read by the one registered family that claims them
    (``ArchSpec.onnx_fields``)."""
    claims = [
        fields
        for spec in registered_archs()
        if spec.onnx_fields is not None and (fields := spec.onnx_fields(ops, source)) is not None
    ]
    if len(claims) != 1:
        names = [spec.name for spec in registered_archs() if spec.onnx_fields is not None]
        raise ArchitectureMismatchError(
            f"{source}: the graph matches {len(claims)} of the model families with ONNX import {names}, "
            "expected exactly one"
        )
    return claims[0]


def block_table_fields(ops: Sequence[ParametricOp], source: str) -> dict[str, Any]:
    """Width, head, classes, strides and dilation of a network on MN_BLOCK_TABLE (MN, DyMN)."""
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
    # one depthwise conv per block, static (MN, DyMN replace_se) or dynamic (DyMN)
    depthwise = [op for op in ops if isinstance(op, (ConvOp, DynamicConvOp)) and op.depthwise]
    if len(depthwise) != len(MN_BLOCK_TABLE):
        raise ArchitectureMismatchError(
            f"{source}: found {len(depthwise)} depthwise convolutions, MN and DyMN have {len(MN_BLOCK_TABLE)}"
        )
    # A dilated C4 stage (upstream `dilated=True`) runs its depthwise convs at stride 1, dilation 2.
    strides = tuple(int(depthwise[i].strides[0]) for i in DOWNSAMPLING_BLOCKS)
    if any(s not in (1, 2) for s in strides):
        raise ArchitectureMismatchError(f"{source}: downsampling blocks have strides {list(strides)}, MN has 1 or 2")
    return {
        "width_mult": width,
        "head_type": head,
        "num_classes": classes,
        "strides": strides,
        "dilated": int(depthwise[DOWNSAMPLING_BLOCKS[-1]].dilations[0]) > 1,
    }


# --- pairing ops with weight slots -------------------------------------------------------------


def _describe(op: ParametricOp) -> str:
    return f"{type(op).__name__} {op.name} with weight shape {tuple(op.weight.shape)}"


def _conv_bn_tensors(op: ConvOp, slot: WeightSlot, source: str) -> list[np.ndarray]:
    """A conv whose BatchNorm was folded by the exporter gets an identity BatchNorm (gamma 1,
    mean 0, var 1 - eps) whose beta is the folded bias."""
    channels = op.weight.shape[0]
    eps = float(slot.layer.bn.epsilon)
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
    return [op.weight, gamma, beta, mean, var]


def _conv_bias_tensors(op: ConvOp, slot: WeightSlot, source: str) -> list[np.ndarray]:
    if op.batchnorm is not None:
        raise ArchitectureMismatchError(
            f"{source}: at {slot.prefix} expected a conv with bias and no norm, {_describe(op)} "
            "feeds a BatchNormalization"
        )
    bias = op.bias if op.bias is not None else np.zeros(op.weight.shape[0], np.float32)
    return [op.weight, bias]


def _linear_tensors(op: LinearOp, slot: WeightSlot, source: str) -> list[np.ndarray]:
    bias = op.bias if op.bias is not None else np.zeros(op.weight.shape[0], np.float32)
    return [op.weight, bias]


def _dynamic_conv_tensors(op: DynamicConvOp, slot: WeightSlot, source: str) -> list[np.ndarray]:
    layer = slot.layer
    if op.depthwise != layer.depthwise or int(op.strides[0]) != layer.strides:
        raise ArchitectureMismatchError(
            f"{source}: {_describe(op)} (for {slot.prefix}) is a "
            f"{'depthwise' if op.depthwise else '1x1'} conv with stride {op.strides[0]}, expected "
            f"{'depthwise' if layer.depthwise else '1x1'} with stride {layer.strides}"
        )
    attention = op.attention
    bias = attention.bias if attention.bias is not None else np.zeros(attention.weight.shape[0], np.float32)
    return [op.weight, attention.weight, bias]


def _batchnorm_tensors(op: BatchNormOp, slot: WeightSlot, source: str) -> list[np.ndarray]:
    eps = float(slot.layer.epsilon)
    return [op.weight, op.bias, op.mean, op.var + (op.epsilon - eps)]


def _constant_tensors(op: ConstantOp, slot: WeightSlot, source: str) -> list[np.ndarray]:
    return [op.weight]


# slot kind → (op type it pairs with, tensors in ``slot.source_keys()`` order)
_OP_FOR_SLOT: dict[str, tuple[type, Callable[[Any, WeightSlot, str], list[np.ndarray]]]] = {
    slot_kinds.CONV_BN: (ConvOp, _conv_bn_tensors),
    slot_kinds.CONV_BIAS: (ConvOp, _conv_bias_tensors),
    slot_kinds.LINEAR: (LinearOp, _linear_tensors),
    slot_kinds.DYNAMIC_CONV: (DynamicConvOp, _dynamic_conv_tensors),
    slot_kinds.BN: (BatchNormOp, _batchnorm_tensors),
    slot_kinds.CONSTANT: (ConstantOp, _constant_tensors),
}


def state_dict_from_ops(
    ops: Sequence[ParametricOp], slots: Sequence[WeightSlot], source: str
) -> dict[str, np.ndarray]:
    """Pair ops with slots in order and return upstream-named tensors for ``assign_state_dict``
    (which then checks every remaining shape and DyReLU's constants)."""
    state: dict[str, np.ndarray] = {}
    remaining = list(ops)
    for slot in slots:
        keys = slot.source_keys()
        expected = slot_kinds.expected_source_shapes(slot)
        if not remaining:
            raise ArchitectureMismatchError(
                f"{source}: graph ends before {slot.prefix} (expected {slot.kind} with "
                f"weight shape {expected[keys[0]]})"
            )
        op = remaining.pop(0)
        want, tensors_of = _OP_FOR_SLOT.get(slot.kind, (None, None))
        if want is None or not isinstance(op, want):
            raise ArchitectureMismatchError(
                f"{source}: at {slot.prefix} expected a {slot.kind} op, found {_describe(op)}"
            )
        if tuple(op.weight.shape) != expected[keys[0]]:
            raise ArchitectureMismatchError(
                f"{source}: tensor {op.name} (for {slot.prefix}) has shape {tuple(op.weight.shape)}, "
                f"expected {expected[keys[0]]}"
            )
        for key, value in zip(keys, tensors_of(op, slot, source)):
            state[key] = np.asarray(value, np.float32)
    if remaining:
        raise ArchitectureMismatchError(
            f"{source}: {len(remaining)} op(s) left after the model's last layer, first "
            f"{_describe(remaining[0])}"
        )
    return state
