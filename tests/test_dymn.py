"""DyMN: dynamic conv, DyReLU, context generator and coordinate attention against references of the
upstream formulas; golden parity from the upstream state dict and from its batch-1 ONNX export (any
batch and length afterwards); exact parameter counts; builtin-only TFLite conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import CLIPS
from eat_keras.errors import ArchitectureMismatchError
from eat_keras.litert import make_interpreter
from eat_keras.layers import ContextGenerator, CoordinateAttention, DynamicConv, DynamicReLU, builtin_ops_only
from eat_keras.models import EfficientATNet, ModelConfig, count_parameters
from eat_keras.models.blocks import InvertedResidual
from eat_keras.models.dymn import DynamicInvertedResidual, context_size
from eat_keras.presets import get_preset
from eat_keras.weights.architecture import infer_config_from_state
from eat_keras.weights.loader import load_tagger_from_file
from eat_keras.weights.mapping import assign_state_dict, weight_slots
from eat_keras.weights.slots import expected_source_shapes
from tolerances import OP_RTOL, assert_close

TOL = 1e-4  # issue maximum; measured ~8e-6
BN_EPS = 1e-3
GOLDEN = "dymn04_synth"
SOURCES = {"state_dict.pt": "state_dict.pt", "onnx": "dymn04_synth_opset13.onnx"}


# --- references of the upstream formulas (NumPy, NHWC) ---------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _randomise(layer: tf_keras.layers.Layer, rng: np.random.Generator) -> None:
    """Random weights everywhere; BatchNorm variances positive."""
    for w in layer.weights:
        value = rng.standard_normal(w.shape).astype(np.float32) * 0.5
        if "moving_variance" in w.name:
            value = np.abs(value) + 0.5
        w.assign(value)


def _avg_pool_count_include_pad(seq: np.ndarray, stride: int) -> np.ndarray:
    """torch AvgPool1d(3, stride, padding=1, count_include_pad=True) along axis 1 of [B, L, H]."""
    padded = np.pad(seq, [(0, 0), (1, 1), (0, 0)])
    out_len = (seq.shape[1] + 2 - 3) // stride + 1
    return np.stack([padded[:, i * stride : i * stride + 3].sum(axis=1) / 3.0 for i in range(out_len)], 1)


def _dynamic_conv_reference(layer: DynamicConv, x: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Upstream: aggregate one kernel per sample, then convolve each sample with its own kernel."""
    att_w, att_b = (w.numpy() for w in layer.attention.weights)
    attention = _softmax((context @ att_w + att_b) / layer.temperature)  # [B, K]
    kernels = layer.kernel.numpy()
    s, k = layer.strides, layer.kernel_size
    outputs = []
    for b in range(x.shape[0]):  # a direct per-sample convolution, as upstream's grouped conv
        if layer.depthwise:
            w_b = np.einsum("k,ijck->ijc", attention[b], kernels)  # [k, k, C]
            p = (k - 1) // 2
            xp = np.pad(x[b], [(p, p), (p, p), (0, 0)])
            f_out = (xp.shape[0] - k) // s + 1
            t_out = (xp.shape[1] - k) // s + 1
            y = np.zeros((f_out, t_out, x.shape[-1]), np.float64)
            for i in range(k):
                for j in range(k):
                    y += xp[i : i + s * (f_out - 1) + 1 : s, j : j + s * (t_out - 1) + 1 : s] * w_b[i, j]
        else:
            w_b = np.einsum("k,kio->io", attention[b], kernels)
            y = x[b, ::s, ::s] @ w_b
        outputs.append(y)
    return np.stack(outputs).astype(np.float32)


# --- layer unit tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depthwise, kernel, stride, freq, time",
    [
        (True, 3, 1, 8, 9),
        (True, 3, 2, 8, 9),
        (True, 5, 2, 7, 12),
        (True, 5, 1, 6, 5),
        (False, 1, 1, 7, 10),
        (False, 1, 2, 7, 10),
    ],
)
@pytest.mark.parametrize("temperature", [1.0, 30.0])
@pytest.mark.parametrize(
    "batch, builtin_only",  # the three depthwise forms: batch folded into channels, TFLite's two
    [(3, False), (3, True), (1, False)],
)
def test_dynamic_conv_equals_per_sample_kernel_conv(depthwise, kernel, stride, freq, time, temperature, batch, builtin_only):
    rng = np.random.default_rng(0)
    channels, context_dim = 6, 5
    filters = channels if depthwise else 4
    layer = DynamicConv(filters, kernel, strides=stride, depthwise=depthwise, temperature=temperature)
    x = rng.standard_normal((batch, freq, time, channels)).astype(np.float32)  # different samples
    context = rng.standard_normal((batch, context_dim)).astype(np.float32) * 3.0
    layer(x, context)
    _randomise(layer, rng)
    if builtin_only:
        with builtin_ops_only():
            got = layer(x, context).numpy()
    else:
        got = layer(x, context).numpy()
    want = _dynamic_conv_reference(layer, x, context)
    p = (kernel - 1) // 2
    assert got.shape == (batch, (freq + 2 * p - kernel) // stride + 1, (time + 2 * p - kernel) // stride + 1, filters)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_dynamic_conv_matches_upstream_grouped_conv_in_torch():
    """Upstream's own algorithm (batch folded into groups) in torch, on upstream's weight layout."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    B, C, H, K, k, s = 3, 8, 5, 4, 5, 2
    layer = DynamicConv(C, k, strides=s, depthwise=True)
    x = rng.standard_normal((B, 9, 14, C)).astype(np.float32)
    context = rng.standard_normal((B, H)).astype(np.float32)
    layer(x, context)
    _randomise(layer, rng)
    upstream_weight = layer.kernel.numpy().transpose(3, 2, 0, 1).reshape(1, 1, K, -1)  # [1,1,K,C·k·k]
    att_w, att_b = (torch.from_numpy(w.numpy()) for w in layer.attention.weights)
    attention = torch.softmax(torch.from_numpy(context) @ att_w + att_b, dim=-1).view(B, 1, 1, K)
    aggregate = (attention @ torch.from_numpy(upstream_weight)).transpose(1, 2).reshape(B * C, 1, k, k)
    x_nchw = torch.from_numpy(x).permute(0, 3, 1, 2).reshape(1, B * C, 9, 14)
    out = torch.nn.functional.conv2d(x_nchw, aggregate, stride=s, padding=(k - 1) // 2, groups=B * C)
    want = out.view(B, C, out.shape[-2], out.shape[-1]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(layer(x, context).numpy(), want, atol=2e-5, rtol=1e-5)


def _assert_training_form_equals_inference(layer, x: tf.Tensor, context: tf.Tensor) -> None:
    """A layer's training form (its own gradient code) gives the output and every gradient that
    TensorFlow's differentiation of the inference form gives."""

    def forward_and_gradients(training: bool) -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            tape.watch([x, context])
            y = layer(x, context, training=training)
            loss = tf.reduce_sum(y * tf.sin(y))  # an output gradient that differs position by position
        return [t.numpy() for t in [y, *tape.gradient(loss, [x, context, *layer.trainable_variables])]]

    for got, want in zip(forward_and_gradients(True), forward_and_gradients(False)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize(
    "kernel, stride, dilation, freq, time",
    [(3, 1, 1, 8, 9), (3, 2, 1, 8, 9), (5, 2, 1, 7, 12), (5, 2, 1, 8, 8), (5, 1, 1, 6, 5), (3, 1, 2, 9, 10)],
)
def test_dynamic_depthwise_training_gradients_equal_autodiff(kernel, stride, dilation, freq, time):
    """In training the per-sample filters get their gradient from depthwise_filter_gradient; the
    output and every gradient equal TensorFlow's own differentiation of the inference path."""
    rng = np.random.default_rng(2)
    layer = DynamicConv(6, kernel, strides=stride, depthwise=True, dilation=dilation)
    x = tf.constant(rng.standard_normal((3, freq, time, 6)).astype(np.float32))
    context = tf.constant(rng.standard_normal((3, 5)).astype(np.float32))
    layer(x, context)
    _randomise(layer, rng)

    _assert_training_form_equals_inference(layer, x, context)


def test_dyrelu_reads_coefficients_channel_major():
    rng = np.random.default_rng(2)
    B, C, H = 2, 5, 3
    layer = DynamicReLU()
    x = rng.standard_normal((B, 4, 6, C)).astype(np.float32) * 2.0
    context = rng.standard_normal((B, H)).astype(np.float32)
    layer(x, context)
    _randomise(layer, rng)
    w, b = (v.numpy() for v in layer.coef.weights)
    theta = 2.0 * _sigmoid(context @ w + b) - 1.0
    coef = theta.reshape(B, C, 4) * [1.0, 1.0, 0.5, 0.5] + [1.0, 0.0, 0.0, 0.0]  # upstream view(B, C, 4)
    # upstream's 5-D form: x[..., None] * slopes + intercepts, max over the M = 2 maps
    mapped = x[..., None] * coef[:, None, None, :, :2] + coef[:, None, None, :, 2:]
    want = mapped.max(axis=-1)
    np.testing.assert_allclose(layer(x, context).numpy(), want, atol=1e-5, rtol=1e-5)
    # reading θ as [B, 4, C] would give different numbers for these weights
    wrong = theta.reshape(B, 4, C).transpose(0, 2, 1) * [1.0, 1.0, 0.5, 0.5] + [1.0, 0.0, 0.0, 0.0]
    assert not np.allclose(coef, wrong)


def test_dyrelu_training_form_equals_the_maximum_and_its_gradients():
    """Training computes max(u1, u2) as u2 + relu(u1 - u2); output and gradients are the maximum's."""
    rng = np.random.default_rng(3)
    layer = DynamicReLU()
    x = tf.constant(rng.standard_normal((3, 4, 6, 5)).astype(np.float32) * 2.0)
    context = tf.constant(rng.standard_normal((3, 7)).astype(np.float32))
    layer(x, context)
    _randomise(layer, rng)

    _assert_training_form_equals_inference(layer, x, context)


def test_dyrelu_with_zero_coefficients_is_relu():
    layer = DynamicReLU()
    x = np.linspace(-3, 3, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    layer(x, np.ones((2, 7), np.float32))
    for w in layer.weights:
        w.assign(np.zeros(w.shape, np.float32))
    np.testing.assert_allclose(layer(x, np.ones((2, 7), np.float32)).numpy(), np.maximum(x, 0.0))


def test_context_pooling_counts_padding_at_borders():
    layer = ContextGenerator(4, 6, stride=2)
    ones = tf.ones([1, 5, 1, 1])
    # positions 0, 2, 4 of [0, 1, 1, 1, 1, 1, 0]: the zero padding is in the divisor 3
    np.testing.assert_allclose(layer._pool(ones, axis=1).numpy().ravel(), [2 / 3, 1.0, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(
        layer._pool(tf.ones([1, 1, 6, 1]), axis=2).numpy().ravel(), [2 / 3, 1.0, 1.0], rtol=1e-6
    )


@pytest.mark.parametrize("stride, freq, time", [(1, 8, 11), (2, 8, 11), (2, 7, 10)])
def test_context_generator_matches_upstream_formula(stride, freq, time):
    rng = np.random.default_rng(3)
    B, C, H, C_exp = 2, 5, 4, 6
    layer = ContextGenerator(H, C_exp, stride=stride)
    x = rng.standard_normal((B, freq, time, C)).astype(np.float32)
    layer(x)
    _randomise(layer, rng)
    h_c, g_f, g_t = (t.numpy() for t in layer(x, training=False))

    kernel = layer.joint.conv.kernel.numpy()[0, 0]  # [C, H]
    bn = layer.joint.bn
    gamma, beta, mean, var = (v.numpy() for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    joint = np.concatenate([x.mean(axis=2), x.mean(axis=1)], axis=1) @ kernel  # [B, F+T, H]
    joint = _hardswish((joint - mean) / np.sqrt(var + BN_EPS) * gamma + beta)
    freq_seq, time_seq = joint[:, :freq], joint[:, freq:]
    if stride > 1:
        freq_seq = _avg_pool_count_include_pad(freq_seq, stride)
        time_seq = _avg_pool_count_include_pad(time_seq, stride)
    wf, bf = (v.numpy() for v in layer.conv_f.weights)
    wt, bt = (v.numpy() for v in layer.conv_t.weights)
    np.testing.assert_allclose(h_c, joint.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(g_f, (freq_seq @ wf[0, 0] + bf)[:, :, None, :], atol=1e-5)
    np.testing.assert_allclose(g_t, (time_seq @ wt[0, 0] + bt)[:, None, :, :], atol=1e-5)
    out_f = (freq + 2 * 1 - 3) // 2 + 1 if stride > 1 else freq
    assert g_f.shape == (B, out_f, 1, C_exp)


def test_coordinate_attention():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    g_f = rng.standard_normal((2, 3, 1, 5)).astype(np.float32)
    g_t = rng.standard_normal((2, 1, 4, 5)).astype(np.float32)
    got = CoordinateAttention()(x, g_f, g_t).numpy()
    assert_close(got, x * _sigmoid(g_f) * _sigmoid(g_t), OP_RTOL)  # TF's sigmoid vs NumPy's


@pytest.mark.parametrize(
    "layer",
    [
        ContextGenerator(16, 24, stride=2, name="ctx"),
        DynamicConv(24, 5, strides=2, depthwise=True, temperature=30.0, name="dw"),
        DynamicConv(16, 1, num_kernels=3, name="pw"),
        DynamicReLU(name="dyrelu"),
        CoordinateAttention(name="ca"),
    ],
    ids=lambda layer: layer.name,
)
def test_layer_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_dynamic_block_get_config_round_trip():
    spec = EfficientATNet(ModelConfig(arch="dymn", width_mult=0.4)).blocks[12].spec
    block = DynamicInvertedResidual(spec, context_size(spec.expanded_channels, 0.4), temperature=30.0)
    clone = DynamicInvertedResidual.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    assert clone.spec == spec and clone.temperature == 30.0


def test_context_sizes_match_upstream_table():
    want = {
        0.4: [16, 16, 16, 16, 16, 16, 24, 24, 24, 24, 48, 48, 48, 48, 48],
        1.0: [32, 32, 32, 32, 32, 32, 64, 48, 48, 48, 120, 128, 128, 128, 128],
        2.0: [64, 64, 64, 64, 64, 64, 120, 104, 96, 96, 240, 256, 256, 256, 256],
    }
    from eat_keras.models.blocks import block_specs

    for width, sizes in want.items():
        assert [context_size(s.expanded_channels, width) for s in block_specs(width)] == sizes


def test_replace_se_blocks():
    net = EfficientATNet(ModelConfig(arch="dymn", width_mult=0.4, use_dy_blocks="replace_se"))
    dynamic = [i for i, b in enumerate(net.blocks) if isinstance(b, DynamicInvertedResidual)]
    assert dynamic == [3, 4, 5, 10, 11, 12, 13, 14]
    static = [b for b in net.blocks if isinstance(b, InvertedResidual)]
    assert len(static) == 7 and all(b.se is None for b in static)


def test_replace_se_state_dict_is_recognised_and_fills_every_weight():
    """A state dict with upstream's replace_se names (shapes from the mapping) loads completely."""
    config = ModelConfig(arch="dymn", width_mult=0.4, use_dy_blocks="replace_se")
    net = EfficientATNet(config).build_for_inference()
    rng = np.random.default_rng(5)
    state = {}
    for slot in weight_slots(net):
        for key, shape in expected_source_shapes(slot).items():
            state[key] = rng.standard_normal(shape).astype(np.float32)
        if slot.kind == "constant":
            state[slot.prefix] = getattr(slot.layer, slot.attr)
    assert "layers.0.block.0.0.weight" in state and "layers.3.depth_conv.weight" in state
    inferred = infer_config_from_state(state, "synthetic")
    assert inferred["arch"] == "dymn" and inferred["use_dy_blocks"] == "replace_se"
    assert inferred["width_mult"] == 0.4
    assign_state_dict(net, state, source="synthetic")


# --- golden parity ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dymn_imported(golden_dir: Path):
    return {name: load_tagger_from_file(golden_dir / GOLDEN / file) for name, file in SOURCES.items()}


@pytest.fixture(scope="module")
def golden_top10(golden_dir: Path):
    return json.loads((golden_dir / GOLDEN / "top10.json").read_text())


def _label_names(golden_dir: Path) -> list[str]:
    lines = (golden_dir / "class_labels_indices.csv").read_text().splitlines()[1:]
    import csv

    return [row[2] for row in csv.reader(lines)]


@pytest.mark.slow
@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("seconds", [10, 2])
def test_golden_parity_batch1_and_batch4(source, seconds, dymn_imported, golden_dir, golden_logmel, golden_top10):
    net = dymn_imported[source].net
    names = _label_names(golden_dir)
    keys = [c if seconds == 10 else f"{c}_2s" for c in CLIPS]
    batch4 = net(np.concatenate([golden_logmel[k] for k in keys]), training=False)
    for row, key in enumerate(keys):
        logits = np.load(golden_dir / GOLDEN / f"{key}_logits.npy").reshape(-1)
        embedding = np.load(golden_dir / GOLDEN / f"{key}_embedding.npy").reshape(-1)
        single = net(golden_logmel[key], training=False)
        for out, i in ((single, 0), (batch4, row)):
            got = out["logits"].numpy()[i]
            assert np.abs(got - logits).max() <= TOL, (key, i)
            assert np.abs(out["embedding"].numpy()[i] - embedding).max() <= TOL, (key, i)
            top10 = [names[j] for j in np.argsort(-got, kind="stable")[:10]]
            assert top10 == [name for name, _ in golden_top10[key]], key


@pytest.mark.slow
def test_onnx_import_infers_architecture_and_stays_dynamic(dymn_imported, golden_dir, tmp_path):
    config = dymn_imported["onnx"].config
    assert (config.arch, config.width_mult, config.head_type, config.num_classes) == ("dymn", 0.4, "mlp", 527)
    assert config.use_dy_blocks == "all" and config.strides == (2, 2, 2, 2)
    # without config.json beside it, τ and everything else come from the graph itself
    (tmp_path / "model.onnx").write_bytes((golden_dir / GOLDEN / SOURCES["onnx"]).read_bytes())
    alone = load_tagger_from_file(tmp_path / "model.onnx").config
    assert alone == config and alone.dyconv_temperature == 1.0
    # exported at [1, 1, 128, 200]; the Keras model takes any batch and length
    out = dymn_imported["onnx"].net(np.zeros([3, 128, 137, 1], np.float32), training=False)
    assert out["logits"].shape == (3, 527) and out["frame_logits"].shape == (3, 5, 527)


@pytest.mark.slow
def test_mismatched_files_name_tensor_and_shapes(golden_dir, tmp_path):
    from eat_keras.weights.pt_reader import read_pt_state_dict

    state = read_pt_state_dict(golden_dir / GOLDEN / "state_dict.pt")
    net = EfficientATNet(ModelConfig(arch="dymn", width_mult=0.4)).build_for_inference()
    bad = dict(state, **{"layers.3.depth_conv.weight": np.zeros((1, 1, 4, 288), np.float32)})
    with pytest.raises(ArchitectureMismatchError, match=r"layers\.3\.depth_conv\.weight has shape \(1, 1, 4, 288\), expected \(1, 1, 4, 800\)"):
        assign_state_dict(net, bad)
    bad = dict(state, **{"layers.7.depth_act.lambdas": np.ones(4, np.float32)})
    with pytest.raises(ArchitectureMismatchError, match=r"layers\.7\.depth_act\.lambdas must equal"):
        assign_state_dict(net, bad)
    with pytest.raises(ArchitectureMismatchError, match=r"classifier\.5\.weight.*\(527, 512\), expected \(10, 512\)"):
        load_tagger_from_file(golden_dir / GOLDEN / SOURCES["onnx"], overrides={"num_classes": 10})


# --- parameter counts and TFLite --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,upstream",  # sum(p.numel()) of upstream's instantiated models (spec §5.1)
    [("dymn04_as", 1_961_239), ("dymn10_as", 10_548_479), ("dymn20_as", 39_966_143)],
)
def test_parameter_counts_equal_upstream_exactly(name, upstream):
    preset = get_preset(name)
    assert preset.exact_params == upstream
    assert count_parameters(EfficientATNet(preset.config).build_for_inference()) == upstream


def _builtin_operator_names() -> set[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {name for name in vars(schema.BuiltinOperator) if name.isupper()}


def _builtin_only_interpreter(fn: tf.types.experimental.ConcreteFunction) -> Any:
    # without a trackable object the converter freezes the function directly (seconds, not a minute)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = make_interpreter(converter.convert())
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops <= _builtin_operator_names(), ops - _builtin_operator_names()
    assert not any("flex" in op.lower() or "custom" in op.lower() for op in ops)
    assert {"BATCH_MATMUL", "DEPTHWISE_CONV_2D"} <= ops  # the dynamic convs are inside
    return interpreter


def _invoke(interpreter: Any, x: np.ndarray) -> np.ndarray:
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.slow
def test_waveform_tagger_converts_to_tflite_with_builtin_ops_only(dymn_imported, golden_waveforms):
    tagger = dymn_imported["state_dict.pt"]
    serve = tf.function(
        lambda waveform: tagger(waveform, training=False)["logits"],
        input_signature=[tf.TensorSpec([None, 64000], tf.float32)],
    )
    with builtin_ops_only():  # the TF front-end's map_fn and bitcast are not builtins
        concrete = serve.get_concrete_function()
    interpreter = _builtin_only_interpreter(concrete)
    assert "RFFT2D" in {op["op_name"] for op in interpreter._get_ops_details()}  # front-end inside
    waveform = np.stack([golden_waveforms[c][:64000] for c in CLIPS[:2]]).astype(np.float32)  # batch 2
    np.testing.assert_allclose(_invoke(interpreter, waveform), serve(waveform).numpy(), atol=1e-3)


@pytest.mark.slow
def test_one_tflite_graph_serves_any_batch_and_length(dymn_imported, golden_logmel):
    net = dymn_imported["state_dict.pt"].net
    serve = tf.function(
        lambda mel: net(mel, training=False)["logits"],
        input_signature=[tf.TensorSpec([None, 128, None, 1], tf.float32)],
    )
    with builtin_ops_only():  # traced for TFLite builtins (in TF, the batch is folded into channels)
        concrete = serve.get_concrete_function()
    interpreter = _builtin_only_interpreter(concrete)
    odd = np.concatenate([golden_logmel[c][:, :, 300:437] for c in CLIPS[:3]])  # batch 3, 137 frames
    for mel in (golden_logmel["music"], odd):
        np.testing.assert_allclose(_invoke(interpreter, mel), serve(mel).numpy(), atol=1e-3)
