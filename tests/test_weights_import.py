"""Weight import: upstream .pt and user-exported ONNX (folded and unfolded BN) reproduce the golden
upstream logits and embeddings; wrong files are refused with the tensor, expected and actual shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIPS
from eat_keras.errors import ArchitectureMismatchError, WeightFileError
from eat_keras.loading import load_tagger
from eat_keras.weights.loader import load_tagger_from_file

TOL = 1e-4  # issue maximum; measured ~2e-5

SOURCES = {
    "mn04_as.pt": ("../weights/mn04_as_mAP_432.pt", "mn04_as"),
    "mn04_as_opset13.onnx": ("mn04_as/mn04_as_opset13.onnx", "mn04_as"),
    "mn04_as_opset17_unfolded.onnx": ("mn04_as/mn04_as_opset17_unfolded.onnx", "mn04_as"),
    "mn04_fc_s2211.pt": ("mn04_fc_s2211_synth/state_dict.pt", "mn04_fc_s2211_synth"),
    "mn04_fc_s2211.onnx": ("mn04_fc_s2211_synth/mn04_fc_s2211_synth_opset13.onnx", "mn04_fc_s2211_synth"),
}


@pytest.fixture(scope="session")
def imported(golden_dir):
    return {name: load_tagger_from_file(golden_dir / rel) for name, (rel, _) in SOURCES.items()}


def _golden(golden_dir: Path, folder: str, key: str):
    logits = np.load(golden_dir / folder / f"{key}_logits.npy").reshape(-1)
    embedding = np.load(golden_dir / folder / f"{key}_embedding.npy").reshape(-1)
    return logits, embedding


def _top10(x):
    return list(np.argsort(-x, kind="stable")[:10])


@pytest.mark.slow
@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("seconds", [10, 2])
def test_golden_parity_batch1_and_batch4(source, seconds, imported, golden_dir, golden_logmel):
    folder = SOURCES[source][1]
    net = imported[source].net
    keys = [c if seconds == 10 else f"{c}_2s" for c in CLIPS]
    batch4 = net(np.concatenate([golden_logmel[k] for k in keys]), training=False)
    for row, key in enumerate(keys):
        logits, embedding = _golden(golden_dir, folder, key)
        single = net(golden_logmel[key], training=False)
        for out, i in ((single, 0), (batch4, row)):
            got_logits = out["logits"].numpy()[i]
            assert np.abs(got_logits - logits).max() <= TOL, (key, i)
            assert np.abs(out["embedding"].numpy()[i] - embedding).max() <= TOL, (key, i)
            assert _top10(got_logits) == _top10(logits), key


@pytest.mark.slow
def test_waveform_in_end_to_end(imported, golden_dir, golden_waveforms):
    """Front-end and network together, from the 32 kHz waveform (batch 4, 10 s and 2 s)."""
    fn = imported["mn04_as.pt"].predict_function_for_waveforms()
    for n, suffix in ((320000, ""), (64000, "_2s")):
        out = fn(np.stack([golden_waveforms[c][:n] for c in CLIPS]))
        for row, clip in enumerate(CLIPS):
            logits, embedding = _golden(golden_dir, "mn04_as", clip + suffix)
            assert np.abs(out["logits"].numpy()[row] - logits).max() <= TOL
            assert np.abs(out["embedding"].numpy()[row] - embedding).max() <= TOL


def test_architecture_is_inferred(imported):
    mn04 = imported["mn04_as_opset13.onnx"].config
    assert (mn04.arch, mn04.width_mult, mn04.head_type, mn04.num_classes, mn04.strides) == (
        "mn", 0.4, "mlp", 527, (2, 2, 2, 2))
    fc = imported["mn04_fc_s2211.onnx"].config  # strides read from the graph
    assert (fc.head_type, fc.strides) == ("fully_convolutional", (2, 2, 1, 1))
    fc_pt = imported["mn04_fc_s2211.pt"].config  # strides from the config.json beside the file
    assert (fc_pt.head_type, fc_pt.strides) == ("fully_convolutional", (2, 2, 1, 1))


def test_fine_tuned_head_class_count_is_inferred(tmp_path, shared_dir):
    torch = pytest.importorskip("torch")
    from eat_keras.weights.pt_reader import read_pt_state_dict

    state = read_pt_state_dict(shared_dir / "weights" / "mn04_as_mAP_432.pt")
    state["classifier.5.weight"] = np.random.default_rng(0).normal(0, 0.01, (20, 512)).astype(np.float32)
    state["classifier.5.bias"] = np.zeros(20, np.float32)
    path = tmp_path / "finetuned_20.pt"
    torch.save({"model." + k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
    tagger = load_tagger(path)
    assert tagger.config.num_classes == 20 and tagger.config.label_type == "single_label"
    assert tagger.class_names == [f"class_{i}" for i in range(20)]
    assert tagger(np.zeros([1, 32000], np.float32))["logits"].shape == (1, 20)


def test_preset_refuses_a_file_of_another_architecture(golden_dir, monkeypatch, tmp_path):
    # the fully-convolutional checkpoint placed where mn04_as's file is expected
    shutil.copy(golden_dir / "mn04_fc_s2211_synth" / "state_dict.pt", tmp_path / "mn04_as_mAP_432.pt")
    monkeypatch.setenv("EAT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightFileError, match="head_type='fully_convolutional', the preset needs 'mlp'"):
        load_tagger("mn04_as")


def test_onnx_of_another_width_names_the_tensor(golden_dir):
    with pytest.raises(ArchitectureMismatchError, match=r"shape \(8, 1, 3, 3\), expected \(16, 1, 3, 3\)"):
        load_tagger_from_file(golden_dir / "mn04_as" / "mn04_as_opset13.onnx", overrides={"width_mult": 1.0})


def test_pt_shape_mismatch_names_tensor(shared_dir):
    with pytest.raises(ArchitectureMismatchError) as err:
        load_tagger_from_file(shared_dir / "weights" / "mn04_as_mAP_432.pt", overrides={"num_classes": 20})
    assert "classifier.5.weight has shape (527, 512), expected (20, 512)" in str(err.value)


def test_onnx_head_mismatch(golden_dir):
    with pytest.raises(ArchitectureMismatchError, match="expected a linear op, found ConvOp"):
        load_tagger_from_file(
            golden_dir / "mn04_fc_s2211_synth" / "mn04_fc_s2211_synth_opset13.onnx",
            overrides={"head_type": "mlp"},
        )


def test_truncated_onnx_is_refused(golden_dir, tmp_path):
    data = (golden_dir / "mn04_as" / "mn04_as_opset13.onnx").read_bytes()
    for fraction in (0.5, 0.97):
        path = tmp_path / f"cut_{fraction}.onnx"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(WeightFileError, match=str(path)):
            load_tagger_from_file(path)


def test_state_dict_with_extra_tensor_is_refused(tmp_path, shared_dir):
    torch = pytest.importorskip("torch")
    from eat_keras.weights.pt_reader import read_pt_state_dict

    state = read_pt_state_dict(shared_dir / "weights" / "mn04_as_mAP_432.pt")
    state["features.3.block.9.0.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    path = tmp_path / "extra.pt"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
    with pytest.raises(ArchitectureMismatchError, match=r"features.3.block.9.0.weight with shape \(4, 4, 1, 1\)"):
        load_tagger_from_file(path)


def test_unknown_file_kind(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(WeightFileError, match="unknown weight file type"):
        load_tagger_from_file(path)


def test_sidecar_json_supplies_strides_and_frontend(tmp_path):
    """README: what a .pt cannot tell comes from flags, else a config.json beside it, else the name."""
    import json

    from eat_keras.weights.architecture import resolve_config

    weights = tmp_path / "finetuned_hop_15.pt"  # the name alone would say hop 480
    (tmp_path / "config.json").write_text(
        json.dumps({"strides": [2, 2, 1, 1], "frontend": {"hop_length": 640, "n_mels": 64}, "optimizer": "adam"})
    )
    config = resolve_config({"width_mult": 0.4}, weights, None)
    assert (config.strides, config.frontend.hop_length, config.frontend.n_mels) == ((2, 2, 1, 1), 640, 64)
    overridden = resolve_config({"width_mult": 0.4}, weights, {"frontend": {"hop_length": 320}})
    assert (overridden.frontend.hop_length, overridden.frontend.n_mels) == (320, 64)
    # another tool's config.json (no ModelConfig key) is not read
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768}))
    assert resolve_config({}, weights, None).frontend.hop_length == 480


def test_invalid_sidecar_values_are_a_config_error(tmp_path):
    import json

    from eat_keras.errors import ConfigError, EatKerasError
    from eat_keras.weights.architecture import resolve_config

    (tmp_path / "config.json").write_text(json.dumps({"strides": [2, 2, 1]}))
    with pytest.raises(ConfigError, match="strides"):
        resolve_config({}, tmp_path / "w.pt", None)
    (tmp_path / "config.json").write_text(json.dumps({"frontend": {"n_mels": 0}}))
    with pytest.raises(EatKerasError, match="n_mels=0"):
        resolve_config({}, tmp_path / "w.pt", None)
    (tmp_path / "config.json").write_text(json.dumps({"strides": 2211}))
    with pytest.raises(ConfigError, match="config.json: strides must be a list"):
        resolve_config({}, tmp_path / "w.pt", None)


def test_label_type_from_the_sidecar_or_else_from_the_class_count(tmp_path):
    import json

    from eat_keras.weights.architecture import resolve_config

    assert resolve_config({"num_classes": 527}, tmp_path / "w.pt", None).label_type == "multi_label"
    assert resolve_config({"num_classes": 10}, tmp_path / "w.pt", None).label_type == "single_label"
    (tmp_path / "config.json").write_text(json.dumps({"label_type": "multi_label"}))
    assert resolve_config({"num_classes": 10}, tmp_path / "w.pt", None).label_type == "multi_label"
    overridden = resolve_config({"num_classes": 10}, tmp_path / "w.pt", {"label_type": "single_label"})
    assert overridden.label_type == "single_label"
