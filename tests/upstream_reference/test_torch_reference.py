"""The PyTorch reference is upstream: it reproduces the golden outputs and golden ONNX graphs of the
upstream code (from the real mn04_as checkpoint and the two synthetic golden state dicts), and the
synthetic mn10/dymn10 files it writes give the same logits in torch, onnxruntime and eat-keras.
Skips without torch, onnxruntime or ``../shared`` (or ``$EAT_SHARED_DIR``); add ``-s`` for the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from conftest import CLIPS  # noqa: E402
from shared_data import find_shared_dir  # noqa: E402
from tolerances import NETWORK_RTOL, OP_RTOL, assert_close  # noqa: E402

from upstream_reference.torch_reference import (  # noqa: E402
    DyMN,
    build_reference,
    export_onnx,
    load_upstream_state_dict,
    main,
    make_files,
    synthetic_state_dict,
)

SHARED = find_shared_dir()
pytestmark = pytest.mark.skipif(SHARED is None, reason="../shared (or $EAT_SHARED_DIR) with golden/ absent")
GOLDEN = SHARED / "golden" if SHARED else Path("/nonexistent")

KEYS_10S = CLIPS
KEYS_2S = tuple(f"{c}_2s" for c in CLIPS)
TOL = 1e-4


def _logmel(key: str) -> np.ndarray:
    """Golden upstream log-mel, NCHW ``[1, 1, 128, T]``."""
    return np.load(GOLDEN / "clips" / f"{key}_logmel.npy")


def _config(folder: str) -> Any:
    from eat_keras.models.config import ModelConfig
    from eat_keras.presets import get_preset

    if folder == "mn04_as":
        return get_preset("mn04_as").config
    return ModelConfig.from_dict(json.loads((GOLDEN / folder / "config.json").read_text()))


# folder -> (weights, ONNX file) of the golden references
GOLDEN_MODELS = {
    "mn04_as": (SHARED / "weights" / "mn04_as_mAP_432.pt" if SHARED else None, "mn04_as_opset13.onnx"),
    "dymn04_synth": (GOLDEN / "dymn04_synth" / "state_dict.pt", "dymn04_synth_opset13.onnx"),
    "mn04_fc_s2211_synth": (
        GOLDEN / "mn04_fc_s2211_synth" / "state_dict.pt",
        "mn04_fc_s2211_synth_opset13.onnx",
    ),
}


def _golden_reference(folder: str) -> Any:
    model = build_reference(_config(folder))
    model.load_state_dict(load_upstream_state_dict(GOLDEN_MODELS[folder][0]), strict=True)
    return model


@torch.no_grad()
def _torch_out(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, embedding = model(torch.from_numpy(x))
    return logits.numpy(), embedding.numpy()


# --- the reference is upstream ---------------------------------------------------------------------


@pytest.mark.parametrize("folder", list(GOLDEN_MODELS))
def test_reproduces_golden_outputs(folder: str) -> None:
    """Strict load of the upstream-named weights; batch 1 and batch 4, 10 s and 2 s."""
    model = _golden_reference(folder)
    worst = {"logits": 0.0, "embedding": 0.0}
    for keys in (KEYS_10S, KEYS_2S):
        batch_logits, batch_embedding = _torch_out(model, np.concatenate([_logmel(k) for k in keys]))
        for row, key in enumerate(keys):
            want_logits = np.load(GOLDEN / folder / f"{key}_logits.npy").reshape(-1)
            want_embedding = np.load(GOLDEN / folder / f"{key}_embedding.npy").reshape(-1)
            logits, embedding = _torch_out(model, _logmel(key))
            assert logits.shape == (1, want_logits.size) and embedding.shape == (1, want_embedding.size)
            for got_l, got_e in ((logits[0], embedding[0]), (batch_logits[row], batch_embedding[row])):
                worst["logits"] = max(worst["logits"], float(np.abs(got_l - want_logits).max()))
                worst["embedding"] = max(worst["embedding"], float(np.abs(got_e - want_embedding).max()))
    print(f"\n{folder}: max |Δ| vs golden logits {worst['logits']:.2e}, embedding {worst['embedding']:.2e}")
    assert worst["logits"] <= TOL and worst["embedding"] <= TOL


def _attr_value(attr: Any) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        array = onnx.numpy_helper.to_array(value)
        return (str(array.dtype), array.shape, array.tobytes())
    return value


def _graph_signature(path: Path) -> tuple[list[Any], dict[str, np.ndarray], list[Any], list[Any]]:
    """Nodes (op, name, inputs, outputs, attributes; order-free), initialisers, graph inputs/outputs.

    Order-free and without tensor names inside Constant attributes: golden's MN files list the
    Constant nodes hoisted to the top and name their tensors, which changes nothing in the graph.
    """
    graph = onnx.load(str(path)).graph
    nodes = sorted(
        (
            n.op_type,
            n.name,
            tuple(n.input),
            tuple(n.output),
            tuple(sorted((a.name, repr(_attr_value(a))) for a in n.attribute)),
        )
        for n in graph.node
    )
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}

    def io(values: Any) -> list[Any]:
        return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    return nodes, inits, io(graph.input), io(graph.output)


@pytest.mark.parametrize("folder", list(GOLDEN_MODELS))
def test_export_gives_the_golden_onnx_graph(folder: str, tmp_path: Path) -> None:
    """Same nodes, names, initialisers and I/O as golden's upstream export; same ORT outputs."""
    model = _golden_reference(folder)
    mine = export_onnx(model, tmp_path / "model.onnx")  # default: dynamic for MN, [1,1,128,200] DyMN
    golden = GOLDEN / folder / GOLDEN_MODELS[folder][1]
    nodes, inits, inputs, outputs = _graph_signature(mine)
    g_nodes, g_inits, g_inputs, g_outputs = _graph_signature(golden)
    assert (inputs, outputs) == (g_inputs, g_outputs)
    assert nodes == g_nodes
    assert sorted(inits) == sorted(g_inits)
    # The initialisers are torch's BatchNorm folding, computed on this CPU: a few roundings apart
    # from golden's, made on another one.
    for k in inits:
        assert_close(inits[k], g_inits[k], OP_RTOL, what=k)
    x = _logmel("music_2s")
    a = ort.InferenceSession(str(mine)).run(None, {"input_values": x})[0]
    # golden under ORT's basic graph optimisation (no fusions): a different operation order on purpose
    b = _ort_session(golden, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC).run(None, {"input_values": x})[0]
    print(f"\n{folder}: ORT mine vs golden ONNX max |Δ| {np.abs(a - b).max():.2e}")
    assert_close(a, b, NETWORK_RTOL, what="logits")


def _ort_session(path: Path, level: Any) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options)


def test_dymn_refuses_dynamic_axes(tmp_path: Path) -> None:
    model = build_reference(_config("dymn04_synth"))
    assert isinstance(model, DyMN)
    with pytest.raises(ValueError, match="dynamic axes"):
        export_onnx(model, tmp_path / "x.onnx", dynamic=True)


# --- synthetic weights: torch == onnxruntime == eat-keras ------------------------------------------

PRESETS = ("mn10_as", "dymn10_as", "mn04_as", "dymn04_as")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Path]]]:
    out = tmp_path_factory.mktemp("synth")
    yield {p: make_files(p, out, seed=0) for p in PRESETS}


def _assert_plausible(logits: np.ndarray) -> None:
    """Finite, in range, not saturated, and different for different clips."""
    assert np.isfinite(logits).all()
    assert np.abs(logits).max() < 40
    probs = 1 / (1 + np.exp(-logits))
    saturated = ((probs < 1e-3) | (probs > 1 - 1e-3)).mean()
    assert saturated < 0.2, saturated
    assert 0.02 < (logits > 0).mean() < 0.6
    assert logits.std(axis=0).mean() > 0.1  # between clips


@pytest.mark.parametrize("preset", PRESETS)
def test_synthetic_files_agree_in_torch_onnxruntime_and_eat_keras(preset: str, made: dict) -> None:
    from eat_keras.presets import get_preset
    from eat_keras.weights.loader import load_tagger_from_file

    pt_path, onnx_path = made[preset]
    config = get_preset(preset).config
    state = load_upstream_state_dict(pt_path)

    # upstream key names and shapes: those of the real mn04 checkpoint / golden dymn04 state dict
    upstream = {"mn04_as": GOLDEN_MODELS["mn04_as"][0], "dymn04_as": GOLDEN_MODELS["dymn04_synth"][0]}
    if preset in upstream:
        want = load_upstream_state_dict(upstream[preset])
        assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in want.items()}

    model = build_reference(config)
    model.load_state_dict(state, strict=True)
    # a .pt does not record strides or τ; mn10/dymn10 use the defaults, pass them anyway
    tagger = load_tagger_from_file(
        pt_path,
        overrides={"strides": config.strides, "dyconv_temperature": config.dyconv_temperature},
        preset_config=config,
    )
    session = ort.InferenceSession(str(onnx_path))
    dims = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    dymn = config.arch == "dymn"
    assert shape == ([1, 1, 128, 200] if dymn else ["batch_size", 1, 128, "time_steps"])

    keys = KEYS_2S if dymn else KEYS_2S + KEYS_10S  # the DyMN export only takes [1, 1, 128, 200]
    worst = {"keras-ort": 0.0, "keras-torch": 0.0, "ort-torch": 0.0, "embedding keras-torch": 0.0}
    all_logits = []
    for key in keys:
        x = _logmel(key)
        t_logits, t_embedding = _torch_out(model, x)
        o_logits = session.run(None, {"input_values": x})[0]
        out = tagger.net(x[:, 0, :, :, None], training=False)  # eat-keras is NHWC [B, mel, T, 1]
        k_logits, k_embedding = out["logits"].numpy(), out["embedding"].numpy()
        for name, d in (
            ("keras-ort", k_logits - o_logits),
            ("keras-torch", k_logits - t_logits),
            ("ort-torch", o_logits - t_logits),
            ("embedding keras-torch", k_embedding - t_embedding),
        ):
            worst[name] = max(worst[name], float(np.abs(d).max()))
        all_logits.append(t_logits[0])
    print(f"\n{preset} ({len(keys)} clips): " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert max(worst.values()) <= TOL, worst
    _assert_plausible(np.stack(all_logits))


def test_mn_export_keeps_upstreams_batch_squeeze(made: dict) -> None:
    """Upstream behaviour users meet: the traced squeeze()/unsqueeze(0) makes the dynamic-batch MN
    graph return [1, B, classes] for B > 1 (rows still right)."""
    session = ort.InferenceSession(str(made["mn04_as"][1]))
    x = np.concatenate([_logmel(k) for k in KEYS_2S[:2]])
    batch = session.run(None, {"input_values": x})[0]
    assert batch.shape == (1, 2, 527)
    single = session.run(None, {"input_values": x[:1]})[0]
    assert_close(batch[0, 0], single[0], NETWORK_RTOL, what="batch row vs batch of one")  # other blocking


def test_cli_fixed_dymn_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make", "--preset", "dymn04_as", "--out", str(tmp_path), "--time-frames", "300", "--seed", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / f"dymn04_as_synth_{s}") for s in ("state_dict.pt", "opset13.onnx")]
    dims = onnx.load(printed[1]).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 128, 300]


# --- variants the presets need beyond mn10/dymn10, against eat-keras -------------------------------


VARIANTS = (
    "mn10_as_fc_s2211",
    "dymn04_replace_se_as",
    "dymn04_im (tau 30)",
    "mn04 dilated",
    "mn04 attention_pooling",
)


def _variant_configs() -> dict[str, Any]:
    from eat_keras.models.config import ModelConfig
    from eat_keras.presets import get_preset

    return {
        "mn10_as_fc_s2211": get_preset("mn10_as_fc_s2211").config,
        "dymn04_replace_se_as": get_preset("dymn04_replace_se_as").config,
        "dymn04_im (tau 30)": get_preset("dymn04_im").config,
        "mn04 dilated": ModelConfig(arch="mn", width_mult=0.4, dilated=True),
        "mn04 attention_pooling": ModelConfig(arch="mn", width_mult=0.4, head_type="attention_pooling"),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_agree_with_eat_keras(variant: str, tmp_path: Path) -> None:
    from eat_keras.weights.loader import load_tagger_from_file

    config = _variant_configs()[variant]
    model = build_reference(config)
    state = synthetic_state_dict(model, seed=3)
    model.load_state_dict(state, strict=True)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    tagger = load_tagger_from_file(
        path,
        overrides={
            "strides": config.strides,
            "dyconv_temperature": config.dyconv_temperature,
            "dilated": config.dilated,
        },
    )
    worst = 0.0
    for key in ("typing_2s", "music"):
        x = _logmel(key)
        t_logits, t_embedding = _torch_out(model, x)
        out = tagger.net(x[:, 0, :, :, None], training=False)
        worst = max(worst, float(np.abs(out["logits"].numpy() - t_logits).max()))
        worst = max(worst, float(np.abs(out["embedding"].numpy() - t_embedding).max()))
        assert np.isfinite(t_logits).all() and np.abs(t_logits).max() < 100
    print(f"\n{variant}: eat-keras vs torch reference max |Δ| {worst:.2e}")
    assert worst <= TOL


def test_dilated_model_imports_from_onnx_as_dilated(tmp_path: Path) -> None:
    """A dilated C4 stage exports as stride-1, dilation-2 depthwise convs: the import must read the
    dilation (else it builds a non-dilated net of the same shapes), and frame times must use the
    blocks' real strides."""
    from eat_keras.export.saved_model import time_downsampling
    from eat_keras.models.config import ModelConfig
    from eat_keras.weights.loader import load_tagger_from_file

    model = build_reference(ModelConfig(arch="mn", width_mult=0.4, dilated=True))
    model.load_state_dict(synthetic_state_dict(model, seed=3), strict=True)
    tagger = load_tagger_from_file(export_onnx(model, tmp_path / "dilated.onnx"))
    assert tagger.config.dilated
    x = _logmel("music")
    out = tagger.net(x[:, 0, :, :, None], training=False)
    t_logits, _ = _torch_out(model, x)
    assert np.abs(out["logits"].numpy() - t_logits).max() <= TOL
    frames_in, frames_out = x.shape[-1], out["frame_logits"].shape[1]
    assert frames_out == -(-frames_in // time_downsampling(tagger))  # 1000 frames -> 63, step 16
