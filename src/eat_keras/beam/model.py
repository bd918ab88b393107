"""The model of a corpus job: exported to a SavedModel once, on the machine that starts the job, and
staged where the workers load it.

``MODEL`` may be a preset name, a weight file or a model folder (exported here), or an exported
SavedModel folder (used as it is). Staged under the pipeline's ``temp_location`` (for workers on
other machines) in a folder named by its content's hash, so jobs with different models never mix
their files; without a ``temp_location`` the workers read the local folder, which only local runners
can.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from eat_keras.beam.storage import is_local, join, local_copy, stage_folder
from eat_keras.errors import EatKerasError
from eat_keras.labels import LABEL_LIST_FILE, read_class_names, read_label_csv

__all__ = ["StagedModel", "stage_model"]

#: the SavedModel's version folder written under the job's work folder
EXPORTED_NAME = "model"


@dataclasses.dataclass(frozen=True)
class StagedModel:
    """Where the workers load the SavedModel from, and the class names of its outputs."""

    saved_model_dir: str
    class_names: list[str]


def _is_saved_model(model: str) -> bool:
    if not is_local(model):
        return True  # gs://... names an exported folder: the workers load it where it is
    return (Path(model) / "saved_model.pb").is_file()


def _export(model: str, weights: str | None, labels: str | None, work_dir: Path) -> Path:
    from eat_keras.export.saved_model import export_saved_model
    from eat_keras.loading import load_tagger

    tagger = load_tagger(model, weights, None, labels)
    return export_saved_model(tagger, work_dir, EXPORTED_NAME, version=1)


def _class_names(saved_model_dir: str, labels: str | None) -> list[str]:
    """The SavedModel's own ``assets/labels.txt``, or ``labels`` for as many classes."""
    with local_copy(join(saved_model_dir, "assets", LABEL_LIST_FILE)) as own_file:
        try:
            own = read_label_csv(own_file)
        except EatKerasError:
            raise EatKerasError(f"{saved_model_dir}: not a SavedModel from eat-keras export (no labels)") from None
    return read_class_names(labels, len(own)) if labels is not None else own


def _content_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for root, dirs, names in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(names):
            path = Path(root, name)
            digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_model(
    model: str, work_dir: Path, staging_root: str | None, weights: str | None = None, labels: str | None = None
) -> StagedModel:
    """Export ``model`` into ``work_dir`` unless it is a SavedModel, and stage it under
    ``staging_root`` (None: the workers read it where it is)."""
    if _is_saved_model(model):
        if weights is not None:
            raise EatKerasError(f"{model}: an exported SavedModel holds its weights; --weights applies to presets")
        if not is_local(model):
            return StagedModel(model, _class_names(model, labels))
        local = Path(model)
    else:
        local = _export(model, weights, labels, work_dir)
        labels = None  # the export carries them
    class_names = _class_names(str(local), labels)
    if staging_root is None:
        return StagedModel(str(local.resolve()), class_names)
    target = join(staging_root, f"eat-keras-model-{_content_digest(local)}")
    return StagedModel(stage_folder(local, target), class_names)
