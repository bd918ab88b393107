"""The eat-keras model folder: ``eat_keras.json`` (config, class names, provenance) + TF checkpoint.

It is what ``eat-keras convert`` writes and what ``--model DIR`` reads. The manifest names the
checkpoint and is replaced last, in one rename, so an interrupted write never leaves a half model
(see :func:`save_tagger`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from eat_keras import __version__
from eat_keras.errors import WeightFileError
from eat_keras.models.config import ModelConfig
from eat_keras.models.tagger import AudioTagger

MANIFEST = "eat_keras.json"
WEIGHTS_PREFIX = "weights"
FORMAT_VERSION = 1


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def save_tagger(
    tagger: AudioTagger,
    out_dir: str | Path,
    source: str | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``tagger`` to ``out_dir``; ``training`` records how a fine-tuned model was trained (e.g.
    its clip length, which evaluation reuses).

    The checkpoint goes under a fresh prefix and the manifest, which names it, is swapped in last
    (one atomic rename): an interrupted write leaves the earlier model whole. Only model files are
    replaced: whatever else the folder holds (``eat-keras export`` writes ``1/`` and ``tflite/``
    into ``saved_models/<name>/`` too) is kept.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{WEIGHTS_PREFIX}-{uuid.uuid4().hex[:12]}"
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "eat_keras_version": __version__,
        "config": tagger.config.to_dict(),
        "class_names": tagger.class_names,
        "source": source,
        "weights": prefix,
        # the clip length travels with the model (convert of a fine-tuned folder keeps it)
        "training": {**({"clip_seconds": tagger.clip_seconds} if tagger.clip_seconds else {}), **(training or {})},
    }
    tagger.save_weights(str(out_dir / prefix))
    partial = out_dir / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(partial, out_dir / MANIFEST)
    # earlier checkpoints (and orphans of interrupted writes): weights.* (before prefixes) or weights-*
    for old in out_dir.glob(f"{WEIGHTS_PREFIX}[.-]*"):
        if not old.name.startswith(f"{prefix}."):
            old.unlink()
    return out_dir


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightFileError(f"{path}: unreadable model manifest: {exc}") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise WeightFileError(f"{path}: unsupported model folder format {manifest.get('format')!r}")
    return manifest


def load_tagger_dir(model_dir: str | Path) -> AudioTagger:
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    config = ModelConfig.from_dict(manifest["config"])
    clip_seconds = manifest.get("training", {}).get("clip_seconds")
    tagger = AudioTagger(config, class_names=manifest.get("class_names"), clip_seconds=clip_seconds)
    tagger.build_for_inference()
    try:
        prefix = manifest.get("weights", WEIGHTS_PREFIX)  # folders written before prefixes: "weights"
        tagger.load_weights(str(model_dir / prefix)).assert_existing_objects_matched()
    except (ValueError, AssertionError, OSError) as exc:
        raise WeightFileError(f"{model_dir}: weights do not match its eat_keras.json: {exc}") from exc
    return tagger
