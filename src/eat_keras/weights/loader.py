"""Build a tagger from an upstream weight file: ``.pt`` state dict or exported ``.onnx``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eat_keras.errors import WeightFileError
from eat_keras.models import AudioTagger, ModelConfig, build_tagger
from eat_keras.models.registry import registered_archs
from eat_keras.weights import onnx_reader
from eat_keras.weights.architecture import (
    TENSOR_DETERMINED_FIELDS,
    infer_config_from_state,
    resolve_config,
)
from eat_keras.weights.mapping import assign_state_dict, strip_wrapper_prefix, weight_slots
from eat_keras.weights.pt_reader import read_pt_state_dict

PT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ONNX_SUFFIXES = (".onnx",)


def is_weight_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PT_SUFFIXES + ONNX_SUFFIXES


def _check_against_preset(config: ModelConfig, preset_config: ModelConfig | None, source: str) -> None:
    """A preset's file must hold the architecture the preset promises."""
    if preset_config is None:
        return
    for field in TENSOR_DETERMINED_FIELDS:
        got, want = getattr(config, field), getattr(preset_config, field)
        if got != want:
            raise WeightFileError(f"{source}: file holds {field}={got!r}, the preset needs {want!r}")


def load_tagger_from_file(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    preset_config: ModelConfig | None = None,
) -> AudioTagger:
    """Infer the architecture from the file, build the Keras tagger and assign every weight.

    ``overrides`` (ModelConfig fields, ``frontend`` as a dict) win over what is inferred. With
    ``preset_config``, the architecture the file holds must be the preset's, or the file is refused.
    """
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    # the settings that do not come from the tensors are checked before the file is read
    resolve_config({}, path, overrides)
    if suffix in ONNX_SUFFIXES:
        ops = onnx_reader.read_parametric_ops(path)
        inferred = onnx_reader.infer_config_from_ops(ops, source)
        config = resolve_config(inferred, path, overrides)
        _check_against_preset(config, preset_config, source)
        tagger = build_tagger(config, class_names)
        state = onnx_reader.state_dict_from_ops(ops, weight_slots(tagger.net), source)
    elif suffix in PT_SUFFIXES:
        stem_keys = tuple(spec.state_dict.stem_key for spec in registered_archs())
        state = strip_wrapper_prefix(read_pt_state_dict(path), stem_keys)
        inferred = infer_config_from_state(state, source)
        config = resolve_config(inferred, path, overrides)
        _check_against_preset(config, preset_config, source)
        tagger = build_tagger(config, class_names)
    else:
        raise WeightFileError(
            f"{path}: unknown weight file type {suffix!r}; expected one of {PT_SUFFIXES + ONNX_SUFFIXES}"
        )
    assign_state_dict(tagger.net, state, source=source)
    return tagger
