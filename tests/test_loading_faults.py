"""Malformed model files and bad model settings are refused in one line, before anything is built.

ONNX faults use tiny graphs made here with ``onnx.helper`` and mutations of the golden mn04 export:
every check runs while the graph is read, before a Keras model exists. Settings (DyMN temperature,
front-end hop and mel bins, width) are refused by ModelConfig / FrontendConfig, so the Python API
and every CLI command get the same check, and they are checked before any weight file is read.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from cli_process import run_cli

from eat_keras.errors import ConfigError, EatKerasError, UnknownPresetError, WeightFileError
from eat_keras.frontend import FrontendConfig
from eat_keras.labels import AUDIOSET_LABELS_FILE, check_label_count, read_label_csv, short_list
from eat_keras.loading import _preset_fields, load_tagger
from eat_keras.models.config import ModelConfig
from eat_keras.presets import PRESETS, get_preset
from eat_keras.weights import onnx_reader
from eat_keras.weights.loader import load_tagger_from_file

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

GOLDEN_ONNX = "mn04_as/mn04_as_opset13.onnx"


# --- tiny graphs -------------------------------------------------------------------------------


def _conv_graph(weight: np.ndarray | None = None) -> onnx.ModelProto:
    """x [1, 1, 8, 8] → Conv(w) → y: a valid graph with one constant-weight conv."""
    w = np.ones([2, 1, 3, 3], np.float32) if weight is None else weight
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[1, 1], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _dynamic_conv_graph(temperature: float) -> onnx.ModelProto:
    """The DynamicConv pattern of upstream DyMN exports: Gemm → Div τ → Softmax → MatMul(kernels)
    → Reshape → the weight input of a Conv."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(size=[4, 8]).astype(np.float32), "attention.weight"),
        numpy_helper.from_array(np.zeros(4, np.float32), "attention.bias"),
        numpy_helper.from_array(np.array(temperature, np.float32), "tau"),
        numpy_helper.from_array(rng.normal(size=[1, 1, 4, 18]).astype(np.float32), "kernels"),
        numpy_helper.from_array(np.array([2, 1, 3, 3], np.int64), "kernel_shape"),
    ]
    nodes = [
        helper.make_node("Gemm", ["h", "attention.weight", "attention.bias"], ["logits"], name="gemm", transB=1),
        helper.make_node("Div", ["logits", "tau"], ["scaled"], name="div"),
        helper.make_node("Softmax", ["scaled"], ["attention"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attention", "kernels"], ["mixed"], name="matmul"),
        helper.make_node("Reshape", ["mixed", "kernel_shape"], ["kernel"], name="reshape"),
        helper.make_node("Conv", ["x", "kernel"], ["y"], name="conv", strides=[1, 1], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dynamic",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _initializer(model: onnx.ModelProto, name: str):
    return next(t for t in model.graph.initializer if t.name == name)


def _set_strides(node, strides: list[int]) -> None:
    for attr in list(node.attribute):
        if attr.name == "strides":
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("strides", strides, attr_type=onnx.AttributeProto.INTS))


def test_the_tiny_graphs_are_read(tmp_path):
    """The unmutated tiny graphs pass every check of the reader (so the faults below are what fails)."""
    (conv,) = onnx_reader.read_parametric_ops(_save(_conv_graph(), tmp_path / "conv.onnx"))
    assert conv.weight.shape == (2, 1, 3, 3) and conv.strides == (1, 1)
    (dynamic,) = onnx_reader.read_parametric_ops(_save(_dynamic_conv_graph(2.0), tmp_path / "dyn.onnx"))
    assert isinstance(dynamic, onnx_reader.DynamicConvOp) and dynamic.temperature == 2.0


# --- initialisers whose dims disagree with their data --------------------------------------------


def test_initializer_dims_larger_than_raw_data(tmp_path):
    model = _conv_graph()
    _initializer(model, "w").dims[0] = 3  # 27 values declared, 18 stored
    with pytest.raises(WeightFileError, match=r"initializer 'w': its dims \[3, 1, 3, 3\] \(27 values\) disagree"):
        load_tagger_from_file(_save(model, tmp_path / "dims.onnx"))


def test_initializer_float_data_count_differs_from_dims(tmp_path):
    model = _conv_graph()
    tensor = _initializer(model, "w")
    tensor.ClearField("raw_data")
    tensor.float_data.extend([1.0] * 17)  # dims say 18
    with pytest.raises(WeightFileError, match=r"'w': its dims \[2, 1, 3, 3\] \(18 values\) disagree"):
        load_tagger_from_file(_save(model, tmp_path / "float_data.onnx"))


def test_initializer_with_huge_dims_is_refused_without_allocating(tmp_path):
    model = _conv_graph()
    _initializer(model, "w").dims[0] = 10**12
    with pytest.raises(WeightFileError, match="disagree with its data"):
        load_tagger_from_file(_save(model, tmp_path / "huge.onnx"))


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda t: t.dims.__setitem__(0, -2), "negative dims"),
        (lambda t: setattr(t, "data_type", 99), "unknown data type 99"),
        (lambda t: setattr(t, "data_type", TensorProto.INT32), "holds int32 values, expected floats"),
    ],
    ids=["negative dims", "unknown type", "integer weights"],
)
def test_initializer_type_and_dims_faults(tmp_path, mutate, words):
    model = _conv_graph()
    mutate(_initializer(model, "w"))
    with pytest.raises(WeightFileError, match=words):
        load_tagger_from_file(_save(model, tmp_path / "bad.onnx"))


def test_duplicate_initializer_is_refused(tmp_path):
    model = _conv_graph()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros([2, 1, 3, 3], np.float32), "w"))
    with pytest.raises(WeightFileError, match="initializer 'w' appears twice"):
        load_tagger_from_file(_save(model, tmp_path / "twice.onnx"))


# --- attributes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strides", [[], [0, 0], [1]], ids=["empty", "zero", "one value"])
def test_conv_strides_must_be_two_positive_values(tmp_path, strides):
    model = _conv_graph()
    _set_strides(model.graph.node[0], strides)
    with pytest.raises(WeightFileError, match=rf"Conv conv has group 1, strides {re_list(strides)}"):
        load_tagger_from_file(_save(model, tmp_path / "strides.onnx"))


def re_list(values: list[int]) -> str:
    return r"\[" + ", ".join(map(str, values)) + r"\]"


def test_attribute_of_the_wrong_type_is_refused(tmp_path):
    model = _conv_graph()
    model.graph.node[0].attribute.append(helper.make_attribute("group", "1"))
    with pytest.raises(WeightFileError, match="attribute group is not of type int"):
        load_tagger_from_file(_save(model, tmp_path / "group.onnx"))


# --- wiring: missing inputs, undefined names, cycles -----------------------------------------------


def test_node_with_fewer_inputs_than_its_op_needs(tmp_path):
    model = _conv_graph()
    del model.graph.node[0].input[1:]
    with pytest.raises(WeightFileError, match=r"node conv \(Conv\) has 1 input\(s\), the op needs 2"):
        load_tagger_from_file(_save(model, tmp_path / "one_input.onnx"))


def test_node_reading_a_name_nothing_produces(tmp_path):
    model = _conv_graph()
    model.graph.node[0].input[1] = "nowhere"
    with pytest.raises(WeightFileError, match="reads 'nowhere', which no initializer, graph input or earlier node"):
        load_tagger_from_file(_save(model, tmp_path / "undefined.onnx"))


def test_cycle_through_a_layout_op_is_refused(tmp_path):
    """A Reshape that feeds itself once made the DynamicConv search loop for ever."""
    model = _dynamic_conv_graph(1.0)
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    reshape.input[0] = "kernel"  # its own output
    with pytest.raises(WeightFileError, match="reads 'kernel', which no initializer, graph input or earlier node"):
        load_tagger_from_file(_save(model, tmp_path / "cycle.onnx"))


def test_node_without_output_and_dangling_graph_output(tmp_path):
    model = _conv_graph()
    del model.graph.node[0].output[:]
    with pytest.raises(WeightFileError, match=r"node conv \(Conv\) has no output"):
        load_tagger_from_file(_save(model, tmp_path / "no_output.onnx"))
    model = _conv_graph()
    model.graph.node[0].output[0] = "z"
    with pytest.raises(WeightFileError, match="graph output 'y' is produced by no node"):
        load_tagger_from_file(_save(model, tmp_path / "dangling.onnx"))


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_dynamic_conv_temperature_must_be_positive_and_finite(tmp_path, temperature):
    path = _save(_dynamic_conv_graph(temperature), tmp_path / "tau.onnx")
    with pytest.raises(WeightFileError, match="temperature .* is not a positive finite number"):
        load_tagger_from_file(path)


# --- mutations of a real export --------------------------------------------------------------------


def _mutated_golden(golden_dir: Path, tmp_path: Path, mutate) -> Path:
    model = onnx.load(str(golden_dir / GOLDEN_ONNX))
    mutate(model.graph)
    return _save(model, tmp_path / "mutated.onnx")


def _first_conv(graph, k: int = 2):
    return [n for n in graph.node if n.op_type == "Conv"][k]


def _grow_weight_dims(graph) -> None:
    next(t for t in graph.initializer if t.name == _first_conv(graph).input[1]).dims[0] += 1


def _empty_strides_everywhere(graph) -> None:
    for node in graph.node:
        if node.op_type == "Conv":
            _set_strides(node, [])


def _drop_weight_input(graph) -> None:
    del _first_conv(graph).input[1:]


def _reverse_node_order(graph) -> None:
    nodes = list(graph.node)[::-1]
    del graph.node[:]
    graph.node.extend(nodes)


def _nan_in_a_weight(graph) -> None:
    tensor = next(t for t in graph.initializer if t.name == _first_conv(graph).input[1])
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (_grow_weight_dims, "disagree with its data"),
        (_empty_strides_everywhere, r"strides \[\]"),
        (_drop_weight_input, "the op needs 2"),
        (_reverse_node_order, "earlier node produces"),
    ],
    ids=["dims", "empty strides", "missing input", "not topological"],
)
def test_mutated_golden_export_is_refused_while_reading(golden_dir, tmp_path, mutate, words):
    path = _mutated_golden(golden_dir, tmp_path, mutate)
    with pytest.raises(WeightFileError, match=words) as err:
        onnx_reader.read_parametric_ops(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_non_finite_weight_is_refused(golden_dir, tmp_path):
    """A NaN weight would make every score NaN: the file is refused, naming the tensor."""
    path = _mutated_golden(golden_dir, tmp_path, _nan_in_a_weight)
    with pytest.raises(WeightFileError, match=r"tensor features\.1\.block\.1\.0\.weight holds 1 non-finite value"):
        load_tagger_from_file(path)


# --- settings: ModelConfig / FrontendConfig --------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -1.0, "1"])
def test_dymn_temperature_must_be_positive_and_finite(value):
    with pytest.raises(ConfigError, match="DyMN temperature"):
        ModelConfig(arch="dymn", dyconv_temperature=value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -0.4, 4.5, True])
def test_width_multiplier_must_be_finite_and_in_range(value):
    with pytest.raises(ConfigError, match="width_mult"):
        ModelConfig(width_mult=value)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"dropout": math.nan}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"dilated": "yes"}, "dilated"),
        ({"strides": None}, "strides"),
        ({"frontend": "fast"}, "frontend must be"),
        ({"frontend": {"n_mel": 64}}, "unknown front-end config keys"),
    ],
)
def test_other_model_settings_are_checked(changes, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig.from_dict(changes)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"n_mels": 100000}, r"n_mels must be 1\.\.512 \(the FFT bins below Nyquist at n_fft 1024\)"),
        ({"n_mels": 513}, r"n_mels must be 1\.\.512"),
        ({"n_mels": 0}, "front-end sizes must be positive: n_mels=0"),
        ({"hop_length": 0}, "front-end sizes must be positive: hop_length=0"),
        ({"hop_length": -320}, "front-end sizes must be positive: hop_length=-320"),
        ({"hop_length": 1}, r"hop_length must be 32\.\.800 samples"),
        ({"hop_length": 100_000_000}, r"hop_length must be 32\.\.800 samples"),
        ({"hop_length": 320.5}, "hop_length must be an integer"),
        ({"n_fft": 65536, "win_length": 800}, "n_fft must be at most 4096"),
        ({"sample_rate": 1}, "sample_rate must be"),
        ({"fmax": math.nan}, "fmax must be a finite number"),
        ({"n_mels": "64"}, "n_mels must be an integer"),
    ],
)
def test_frontend_settings_are_checked(changes, words):
    with pytest.raises(ConfigError, match=words):
        FrontendConfig(**changes)


def test_frontend_range_limits_are_inclusive():
    assert FrontendConfig(n_mels=512).n_mels == 512
    assert FrontendConfig(hop_length=32).hop_length == 32
    assert FrontendConfig(hop_length=800).hop_length == 800
    assert FrontendConfig(n_mels=np.int64(64)).n_mels == 64  # numpy integers are fine, stored as int


def test_settings_are_checked_before_the_weight_file_is_looked_up(tmp_path):
    """No weight file exists here: reaching it would raise a WeightFileError instead."""
    missing = tmp_path / "missing.pt"
    with pytest.raises(ConfigError, match="DyMN temperature"):
        load_tagger("mn04_as", weights=missing, overrides={"dyconv_temperature": math.nan})
    with pytest.raises(ConfigError, match="n_mels must be"):
        load_tagger("mn04_as", weights=missing, overrides={"frontend": {"n_mels": 100000}})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="DyMN temperature"):
        load_tagger_from_file(garbage, overrides={"dyconv_temperature": 0.0})


def test_sidecar_json_settings_are_checked_before_the_file_is_read(tmp_path):
    (tmp_path / "config.json").write_text('{"frontend": {"hop_length": 1e8}}')
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="hop_length must be an integer"):
        load_tagger_from_file(garbage)


def test_frontend_override_keeps_the_presets_other_frontend_fields():
    """mn10_as_hop_5 with another mel count keeps its 5 ms hop."""
    fields = _preset_fields(PRESETS["mn10_as_hop_5"], {"frontend": {"n_mels": 64}})
    assert fields["frontend"]["hop_length"] == 160 and fields["frontend"]["n_mels"] == 64


# --- names and short messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("mn4_as", "mn04_as"), ("dymn4_as", "dymn04_as"), ("MN04_AS", "mn04_as")]
)
def test_near_miss_preset_names_get_a_suggestion(typo, suggestion):
    with pytest.raises(UnknownPresetError, match=rf"unknown model '{typo}'; did you mean {suggestion}\b"):
        get_preset(typo)


def test_unrelated_name_gets_no_suggestion():
    with pytest.raises(UnknownPresetError) as err:
        get_preset("resnet50")
    assert "did you mean" not in str(err.value)


def test_class_count_mismatch_message_is_short(golden_dir):
    names = read_label_csv(golden_dir / AUDIOSET_LABELS_FILE)
    with pytest.raises(EatKerasError) as err:
        check_label_count(names, 20, "labels.csv")
    assert "527 labels for a 20-class model" in str(err.value) and len(str(err.value)) < 300


def test_short_list_names_a_few_and_counts_the_rest():
    names = [f"class {i}" for i in range(527)]
    text = short_list(names)
    assert text == "'class 0', 'class 1', 'class 2' and 524 more"
    assert short_list(["a", "b"]) == "'a', 'b'"
    assert len(short_list(["x" * 1000] * 3)) < 150


# --- the command line ---------------------------------------------------------------------------


def _assert_one_error_line(result, *words: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.error_lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.error_lines[0]
    for word in words:
        assert word in line, line
    return line


def test_cli_convert_of_a_malformed_onnx_is_one_line(tmp_path):
    model = _conv_graph()
    _initializer(model, "w").dims[0] = 3
    path = _save(model, tmp_path / "bad_dims.onnx")
    result = run_cli(["convert", str(path), "--out", str(tmp_path / "out")], timeout=180)
    _assert_one_error_line(result, str(path), "dims [3, 1, 3, 3]", "disagree with its data")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_cli_convert_refuses_a_bad_temperature_before_reading_weights(tmp_path, value):
    """--weights names a file that does not exist: the temperature must be what is refused."""
    args = ["convert", "mn04_as", "--temperature", value, "--weights", str(tmp_path / "missing.pt")]
    result = run_cli([*args, "--out", str(tmp_path / "out")], timeout=180)
    line = _assert_one_error_line(result, "temperature", "must be a finite number > 0")
    assert "missing.pt" not in line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--hop", "0"], "hop_length=0"),
        (["--hop", "100000000"], "hop_length must be 32..800 samples"),
        (["--n-mels", "100000"], "n_mels must be 1..512"),
    ],
)
def test_cli_convert_refuses_front_end_settings(tmp_path, flags, words):
    args = ["convert", "mn04_as", *flags, "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")]
    _assert_one_error_line(run_cli(args, timeout=180), words)


def test_cli_suggests_a_preset_name(tmp_path):
    result = run_cli(["convert", "mn4_as", "--out", str(tmp_path / "out")], timeout=180)
    _assert_one_error_line(result, "unknown model 'mn4_as'", "did you mean mn04_as")
