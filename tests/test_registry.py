"""Adding a model family takes one registration through the public registry, nothing else.

A toy family (the first two MN blocks between the usual stem, last conv and head, under its own
upstream names) is registered here, built, given weights from a synthetic upstream state dict (by
``assign_state_dict`` and by the ``.pt`` loader, which must recognise the family from its stem key)
and exported as a SavedModel.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Collection, Iterator

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from eat_keras.errors import ArchitectureMismatchError, ConfigError
from eat_keras.export.saved_model import export_saved_model, frozen
from eat_keras.models import ArchSpec, EfficientATNet, ModelConfig, StateDictSignature, build_tagger
from eat_keras.models.blocks import InvertedResidual, block_specs
from eat_keras.models.registry import arch_names, get_arch, register_arch, unregister_arch
from eat_keras.weights.architecture import infer_config_from_state
from eat_keras.weights.loader import load_tagger_from_file
from eat_keras.weights.mapping import assign_state_dict, weight_slots
from eat_keras.weights.slots import WeightSlot, backbone_slots, expected_source_shapes, inverted_residual_slots
from tolerances import OP_RTOL, assert_close

TOY = "toy2"
CLASSES = ["hum", "click", "hiss"]


def toy_blocks(config: ModelConfig) -> list[tf_keras.layers.Layer]:
    specs = block_specs(config.width_mult, config.strides)[:2]
    return [InvertedResidual(spec, name=f"block{i}") for i, spec in enumerate(specs)]


def toy_slots(net: EfficientATNet) -> list[WeightSlot]:
    return backbone_slots(net, "stem", lambda i: f"blocks.{i}", "last", inverted_residual_slots)


def toy_last_conv_key(keys: Collection[str]) -> str:
    return "last.0.weight"


@pytest.fixture(scope="module")
def toy_family() -> Iterator[ArchSpec]:
    spec = register_arch(
        ArchSpec(
            name=TOY,
            display_name="Toy",
            build_blocks=toy_blocks,
            weight_slots=toy_slots,
            state_dict=StateDictSignature(stem_key="stem.0.weight", last_conv_key=toy_last_conv_key),
            default_config={"width_mult": 0.1, "label_type": "single_label"},
        )
    )
    yield spec
    unregister_arch(TOY)


@pytest.fixture(scope="module")
def toy_config(toy_family) -> ModelConfig:
    return ModelConfig.for_arch(TOY, num_classes=len(CLASSES))


def synthetic_state_dict(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Random tensors under every upstream name of a freshly built toy net, in upstream layouts;
    variances positive, as a BatchNorm's are."""
    rng = np.random.default_rng(seed)
    state = {}
    for slot in weight_slots(build_tagger(config).net):
        for key, shape in expected_source_shapes(slot).items():
            values = rng.normal(0.0, 0.3, shape).astype(np.float32)
            state[key] = np.abs(values) + 0.5 if key.endswith("running_var") else values
    return state


def test_registered_family_builds_from_its_defaults(toy_config):
    assert TOY in arch_names() and get_arch(TOY).display_name == "Toy"
    assert toy_config.width_mult == 0.1 and toy_config.label_type == "single_label"
    tagger = build_tagger(toy_config, CLASSES)
    assert [type(b) for b in tagger.net.blocks] == [InvertedResidual, InvertedResidual]
    out = tagger(tf.zeros([2, 32000]), training=False)
    assert out["scores"].shape == (2, len(CLASSES))
    np.testing.assert_allclose(out["scores"].numpy().sum(axis=1), 1.0, rtol=1e-6)  # softmax


def test_registry_refuses_unknown_and_duplicate_families(toy_family):
    with pytest.raises(ConfigError, match=r"arch must be one of \('mn', 'dymn', 'toy2'\), got 'toy3'"):
        ModelConfig(arch="toy3")
    with pytest.raises(ValueError, match="already registered"):
        register_arch(toy_family)


def test_synthetic_state_dict_is_assigned_exactly(toy_config):
    state = synthetic_state_dict(toy_config, seed=1)
    assert "blocks.1.block.0.0.weight" in state and "last.0.weight" in state  # the toy's own names
    assert infer_config_from_state(state, "toy") == {
        "arch": TOY, "width_mult": 0.1, "head_type": "mlp", "num_classes": len(CLASSES)
    }
    tagger = build_tagger(toy_config, CLASSES)
    assign_state_dict(tagger.net, state, source="toy")
    stem = tagger.net.stem
    np.testing.assert_array_equal(stem.conv.weights[0].numpy(), state["stem.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stem.bn.moving_variance.numpy(), state["stem.1.running_var"])
    np.testing.assert_array_equal(tagger.net.head.classifier.kernel.numpy(), state["classifier.5.weight"].T)
    with pytest.raises(ArchitectureMismatchError, match="blocks.1.block.1.1.bias.*is missing"):
        assign_state_dict(tagger.net, {k: v for k, v in state.items() if k != "blocks.1.block.1.1.bias"})
    with pytest.raises(ArchitectureMismatchError, match="have no place.*blocks.2.block.0.0.weight"):
        assign_state_dict(tagger.net, {**state, "blocks.2.block.0.0.weight": state["blocks.1.block.0.0.weight"]})


def test_pt_file_of_the_family_loads_and_exports(toy_config, tmp_path):
    torch = pytest.importorskip("torch")
    state = synthetic_state_dict(toy_config, seed=2)
    path = tmp_path / "toy_model.pt"
    # a training wrapper's prefix, found and stripped through the family's stem key
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in state.items()}, path)
    tagger = load_tagger_from_file(path, overrides={"label_type": "single_label"}, class_names=CLASSES)
    assert tagger.config == toy_config
    np.testing.assert_array_equal(tagger.net.last_conv.bn.beta.numpy(), state["last.1.bias"])

    exported = export_saved_model(tagger, tmp_path / "export", "toy")
    loaded = tf.saved_model.load(str(exported))
    assert json.loads(loaded.config_json.numpy())["arch"] == TOY
    waveform = tf.constant(np.random.default_rng(3).uniform(-0.5, 0.5, (2, 32000)).astype(np.float32))
    got = loaded.signatures["serving_default"](waveform=waveform)
    want = frozen(lambda w: tagger(w, training=False), tf.TensorSpec([None, None], tf.float32))(waveform)
    for key in ("logits", "scores", "embedding"):
        assert_close(got[key].numpy(), want[key].numpy(), what=key)
    assert np.ptp(got["logits"].numpy()) > 0  # the mapped weights reach the output
    # frame times follow the family's own blocks: the stem's 2 times the two blocks' strides
    frames = loaded.signatures["frame_scores"](waveform=waveform)
    steps = np.diff(frames["frame_start"].numpy())
    hop = toy_config.frontend.hop_length / toy_config.frontend.sample_rate
    stride = 2 * np.prod([spec.depthwise_stride for spec in block_specs(0.1, toy_config.strides)[:2]])
    assert_close(steps, np.full_like(steps, stride * hop), OP_RTOL, what="frame step")


@pytest.mark.parametrize("first", ["eat_keras.models.dymn", "eat_keras.models.mn", "eat_keras.weights.mapping"])
def test_the_built_in_families_load_whichever_module_comes_first(first):
    """A program may import a family module before anything else (as test_dymn.py does)."""
    code = f"import {first}; from eat_keras.models.registry import arch_names, get_arch; " \
        "print(sorted(get_arch(n).name for n in arch_names()))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['dymn', 'mn']"


def test_a_built_in_name_cannot_be_taken(toy_config):
    spec = get_arch(TOY)
    with pytest.raises(ValueError, match="'mn' is a built-in model family"):
        register_arch(dataclasses.replace(spec, name="mn"))
