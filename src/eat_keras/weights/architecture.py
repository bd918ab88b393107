"""Infer the architecture (family, width, head, classes) from upstream-named tensors.

Weights fix the family, width, head type and class count. They do not fix the strides, hop size or
number of mel bins (the network is convolutional, its weights have the same shapes either way):
those come from explicit overrides, a ``config.json`` next to the file, upstream's file-name
conventions (``_s2211``, ``hop_15``, ``mels_64``) or the defaults, in that order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eat_keras.errors import ArchitectureMismatchError, ConfigError
from eat_keras.frontend import FrontendConfig
from eat_keras.models.blocks import block_specs
from eat_keras.models.config import ModelConfig
from eat_keras.models.registry import ArchSpec, get_arch, registered_archs

# Width multipliers of every upstream release (NAME_TO_WIDTH) plus the ImageNet-only 0.6.
KNOWN_WIDTHS = (0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 2.0, 3.0, 4.0)
AUDIOSET_CLASSES = 527
# What the tensors of a weight file determine; everything else comes from presets or overrides.
TENSOR_DETERMINED_FIELDS = ("arch", "width_mult", "head_type", "num_classes", "use_dy_blocks")
_HOP_MS_TO_SAMPLES = 32  # upstream hop_N names are in milliseconds at 32 kHz


def width_from_channels(stem_channels: int, last_channels: int, source: str) -> float:
    """The width multiplier whose channel table gives this stem width and last-conv width."""
    for width in KNOWN_WIDTHS:
        specs = block_specs(width)
        if specs[0].in_channels == stem_channels and 6 * specs[-1].out_channels == last_channels:
            return width
    raise ArchitectureMismatchError(
        f"{source}: stem with {stem_channels} and last conv with {last_channels} channels match no "
        f"EfficientAT width (known widths {KNOWN_WIDTHS})"
    )


def default_label_type(num_classes: int) -> str:
    # AudioSet heads are multi-label; a re-headed checkpoint is most often a single-label task
    # (ESC-50, a fine-tuned classifier). Users override with --label-type.
    return "multi_label" if num_classes == AUDIOSET_CLASSES else "single_label"


def state_dict_family(state: Mapping[str, np.ndarray], source: str) -> ArchSpec:
    """The registered family whose stem key (``StateDictSignature.stem_key``) the state dict holds."""
    families = registered_archs()
    for spec in families:
        if spec.state_dict.stem_key in state:
            return spec
    names = " or ".join(spec.display_name for spec in families)
    stems = " or ".join(spec.state_dict.stem_key for spec in families)
    raise ArchitectureMismatchError(
        f"{source}: not an EfficientAT {names} state dict (no {stems} among {len(state)} tensors; "
        f"first key {next(iter(state), None)!r})"
    )


def head_fields(state: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
    """Head type and class count from the ``classifier.*`` tensors every family shares."""
    if "classifier.5.weight" in state:
        return {"head_type": "mlp", "num_classes": int(state["classifier.5.weight"].shape[0])}
    if "classifier.0.weight" in state:
        return {"head_type": "fully_convolutional", "num_classes": int(state["classifier.0.weight"].shape[0])}
    if "classifier.subspace_proj.weight" in state:
        heads = int(np.shape(state["classifier.head_weight"])[1])
        classes = int(state["classifier.subspace_proj.weight"].shape[0]) // (2 * heads)
        return {"head_type": "attention_pooling", "num_classes": classes}
    raise ArchitectureMismatchError(f"{source}: no classifier tensors (classifier.*) found")


def infer_config_from_state(state: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
    """Architecture fields of :class:`ModelConfig` that the tensors determine."""
    spec = state_dict_family(state, source)
    signature = spec.state_dict
    last_key = signature.last_conv_key(state.keys())
    if last_key not in state:
        raise ArchitectureMismatchError(f"{source}: tensor {last_key} (last conv) is missing")
    fields: dict[str, Any] = {"arch": spec.name, **signature.extra_fields(state)}
    fields["width_mult"] = width_from_channels(
        int(state[signature.stem_key].shape[0]), int(state[last_key].shape[0]), source
    )
    return {**fields, **head_fields(state, source)}


def hints_from_name(name: str) -> dict[str, Any]:
    """Upstream naming conventions: ``_s2211`` strides, ``hop_15`` (ms), ``mels_64``, ``_fc``."""
    hints: dict[str, Any] = {}
    if m := re.search(r"_s([12])([12])([12])([12])(?![0-9])", name):
        hints["strides"] = tuple(int(g) for g in m.groups())
    frontend: dict[str, Any] = {}
    if m := re.search(r"hop_(\d+)", name):
        frontend["hop_length"] = int(m.group(1)) * _HOP_MS_TO_SAMPLES
    if m := re.search(r"mels_(\d+)", name):
        frontend["n_mels"] = int(m.group(1))
    if frontend:
        hints["frontend"] = frontend
    return hints


def sidecar_config(path: Path) -> dict[str, Any]:
    """``<file>.json`` or ``config.json`` next to a weight file: the ModelConfig keys it holds (as
    ``ModelConfig.to_dict`` writes them, ``frontend`` a dict of FrontendConfig keys); other keys are
    ignored, and a file with no ModelConfig key at all (some other tool's config) is skipped."""
    model_keys = set(ModelConfig.__dataclass_fields__)
    frontend_keys = set(FrontendConfig.__dataclass_fields__)
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(data, dict) or not model_keys & set(data):
                continue
            fields = {k: v for k, v in data.items() if k in model_keys}
            if "strides" in fields:
                if not isinstance(fields["strides"], list):
                    raise ConfigError(f"{candidate}: strides must be a list such as [2, 2, 1, 1], got {fields['strides']!r}")
                fields["strides"] = tuple(fields["strides"])
            if isinstance(fields.get("frontend"), dict):
                fields["frontend"] = {k: v for k, v in fields["frontend"].items() if k in frontend_keys}
            else:
                fields.pop("frontend", None)
            return fields
    return {}


def resolve_config(
    inferred: Mapping[str, Any], path: Path | None, overrides: Mapping[str, Any] | None
) -> ModelConfig:
    """Combine, by increasing priority: the family's defaults (``ArchSpec.default_config``) <
    file-name hints < sidecar json < inferred tensor facts < explicit overrides (a user who says
    strides=(2,2,1,1) means it)."""
    fields: dict[str, Any] = {}
    frontend: dict[str, Any] = {}
    layers = []
    if path is not None:
        layers += [hints_from_name(path.stem), sidecar_config(path)]
    layers += [dict(inferred), dict(overrides or {})]
    arch = next((layer["arch"] for layer in reversed(layers) if layer.get("arch") is not None), ModelConfig.arch)
    layers.insert(0, dict(get_arch(arch).default_config))
    for layer in layers:
        layer = dict(layer)
        fe = layer.pop("frontend", None)
        if isinstance(fe, FrontendConfig):
            fe = fe.to_dict()
        if fe is not None and not isinstance(fe, Mapping):
            raise ConfigError(f"frontend settings must be a dict of FrontendConfig fields, got {fe!r}")
        frontend.update(fe or {})
        fields.update({k: v for k, v in layer.items() if v is not None})
    unknown = set(fields) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown model config keys: {sorted(map(str, unknown))}")
    # not a tensor fact: the class count only suggests it, any layer above may say otherwise
    classes = fields.get("num_classes", AUDIOSET_CLASSES)
    fields.setdefault("label_type", default_label_type(classes if isinstance(classes, int) else AUDIOSET_CLASSES))
    return ModelConfig.from_dict({**fields, "frontend": frontend})
