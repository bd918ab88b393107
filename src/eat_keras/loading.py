"""One entry point from a name or path to a ready tagger: ``load_tagger("mn04_as")``.

``model`` may be a preset name, an upstream ``.pt``/``.onnx`` file or an eat-keras model folder.
A preset's weights resolve from ``weights`` (explicit path), then ``$EAT_WEIGHTS_DIR``, then the user
cache, then a download from the release URL with sha256 check.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eat_keras import hub, labels
from eat_keras.errors import ConfigError, EatKerasError, WeightFileError
from eat_keras.frontend import FrontendConfig
from eat_keras.models import AudioTagger
from eat_keras.models.saving import MANIFEST, is_model_dir, load_tagger_dir
from eat_keras.presets import PRESETS, Preset, get_preset
from eat_keras.weights.architecture import AUDIOSET_CLASSES, TENSOR_DETERMINED_FIELDS, resolve_config
from eat_keras.weights.loader import is_weight_file, load_tagger_from_file


def default_class_names(num_classes: int, labels_file: str | Path | None = None) -> list[str]:
    """Names for a head: an explicit label file, the AudioSet labels for 527 classes, else class_i."""
    if labels_file is not None:
        return labels.read_class_names(labels_file, num_classes)
    if num_classes == AUDIOSET_CLASSES:
        return labels.check_label_count(labels.audioset_labels(), num_classes, "AudioSet labels")
    return [f"class_{i}" for i in range(num_classes)]


def _not_a_model_folder(path: Path) -> str:
    """Why an existing folder is not something :func:`load_tagger` reads, naming what it holds."""
    if (path / "saved_model.pb").is_file():
        return f"{path}: an exported SavedModel; convert and export start from a preset, .pt/.onnx or model folder"
    versions = sorted(
        (p.name for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()), key=int
    )
    if versions:
        return f"{path}: holds SavedModel versions {', '.join(versions)}; pass one of them, e.g. {path / versions[-1]}"
    return f"{path}: not an eat-keras model folder (no {MANIFEST})"


def _preset_fields(preset: Preset, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the preset supplies that the tensors cannot tell (strides, front-end, label type,
    temperature), with ``overrides`` applied; the file decides the architecture and is checked
    against the preset. Front-end overrides change single fields of the preset's front-end."""
    fields = {k: v for k, v in preset.config.to_dict().items() if k not in TENSOR_DETERMINED_FIELDS}
    extra = dict(overrides or {})
    frontend = extra.pop("frontend", None)
    if isinstance(frontend, FrontendConfig):
        frontend = frontend.to_dict()
    if frontend is not None and not isinstance(frontend, Mapping):
        raise ConfigError(f"frontend overrides must be a dict of FrontendConfig fields, got {frontend!r}")
    fields.update(extra)
    fields["frontend"] = {**fields["frontend"], **(frontend or {})}
    return fields


def load_tagger(
    model: str | Path,
    weights: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    labels_file: str | Path | None = None,
    with_class_names: bool = True,
) -> AudioTagger:
    """``with_class_names=False`` skips resolving label files (e.g. a backbone for fine-tuning)."""
    path = Path(model)
    if is_model_dir(path):
        if overrides or weights is not None:
            raise EatKerasError(
                f"{path}: a model folder fixes its architecture and weights; architecture flags and "
                "--weights apply to presets and .pt/.onnx files"
            )
        tagger = load_tagger_dir(path)
    elif path.is_dir() and str(model) not in PRESETS:  # e.g. `export mn04_as --out .` made ./mn04_as
        raise EatKerasError(_not_a_model_folder(path))
    else:
        if is_weight_file(path):
            if not path.is_file():
                raise WeightFileError(f"{path}: no such weight file")
            tagger = load_tagger_from_file(path, overrides=overrides)
        else:
            preset = get_preset(str(model))
            preset_fields = _preset_fields(preset, overrides)
            # bad settings (a NaN temperature, 100000 mel bins) fail before any weight file is
            # looked up, downloaded or read
            resolve_config(preset.config.to_dict(), None, preset_fields)
            weight_path = hub.resolve_file(
                preset.filename, preset.url, preset.sha256, explicit=weights
            )
            tagger = load_tagger_from_file(
                weight_path, overrides=preset_fields, preset_config=preset.config
            )
    if with_class_names and (tagger.class_names is None or labels_file is not None):
        tagger.class_names = default_class_names(tagger.config.num_classes, labels_file)
    return tagger
