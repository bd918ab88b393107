"""What full int8 calibrates on when no ``--calibration`` files are named: the training files of the
fine-tuning run the exported model comes from, so that the activation ranges are those of the
user's own audio.

A run folder (``eat-keras finetune --out RUN``) holds ``finetune.json`` and, when it was given audio
files rather than a prepared folder, ``prepared/prepared.json`` listing every file with its side of
the split; the model folder is ``RUN/best``. This module imports no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from eat_keras.errors import EatKerasError

#: the run's configuration file, by which a run folder is recognised
RUN_CONFIG = "finetune.json"
#: where a run prepares the files it was given
RUN_PREPARED = "prepared"


def run_folder(model: str | Path) -> Path | None:
    """The fine-tuning run ``model`` (a run folder or a model folder inside one, e.g. ``RUN/best``)
    belongs to, or None."""
    path = Path(model).expanduser()
    for folder in (path, path.parent):
        if folder.is_dir() and (folder / RUN_CONFIG).is_file():
            return folder
    return None


def run_training_files(model: str | Path) -> tuple[Path, list[str]] | None:
    """``(prepared folder, training-side files)`` of the run ``model`` comes from; None where it
    comes from no run, or from one that read a prepared folder elsewhere (the run does not record
    where). Files that no longer exist are left out."""
    from eat_keras.train.prepare import MANIFEST_NAME, read_prepared

    run = run_folder(model)
    if run is None or not (run / RUN_PREPARED / MANIFEST_NAME).is_file():
        return None
    try:
        prepared = read_prepared(run / RUN_PREPARED)
    except EatKerasError:  # shards removed since training: the file list is still in the manifest
        return None
    files = [e.path for e in prepared.examples("train") if Path(e.path).is_file()]
    return (prepared.folder, files) if files else None
