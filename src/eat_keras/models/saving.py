"""The eat-keras model folder: ``eat_keras.json`` (config, class names, provenance) + TF checkpoint.

It is what ``eat-keras convert`` writes and what ``--model DIR`` reads. The manifest names the
checkpoint and is replaced last, in one rename, so an interrupted write never leaves a half model
(see :func:`save_tagger`).

The output-folder helpers below are shared with the exporters: a write that fails (read-only
folder, a file in the way, a full disk) is one :class:`OutputError` line and leaves no folder or
file behind that the failed call created; staging folders of killed exports are removed by the
next export into the same place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf

from eat_keras import __version__
from eat_keras.errors import ConfigError, EatKerasError, OutputError, WeightFileError
from eat_keras.models.config import ModelConfig
from eat_keras.models.tagger import AudioTagger

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: staging folders are then never taken for stale
    fcntl = None  # type: ignore[assignment]

MANIFEST = "eat_keras.json"
WEIGHTS_PREFIX = "weights"
FORMAT_VERSION = 1
STAGING_MARK = ".partial."

# TensorFlow's file writers (checkpoints, SavedModels) raise these instead of OSError
_TF_WRITE_ERRORS = (
    tf.errors.PermissionDeniedError,
    tf.errors.ResourceExhaustedError,
    tf.errors.FailedPreconditionError,
    tf.errors.NotFoundError,
    tf.errors.AlreadyExistsError,
    tf.errors.OutOfRangeError,  # EFBIG: a file over the size limit
    tf.errors.UnknownError,
)


def check_output_name(name: str) -> str:
    """``name`` when it is one plain folder name, so that it stays inside the output folder."""
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    if name in ("", ".", "..") or "\0" in name or any(s in name for s in separators):
        raise ConfigError(f"a model name must be one folder name, without '/', '\\' or '..'; got {name!r}")
    return name


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed write (``No space left on device``), from OSError or TF."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(getattr(exc, "message", exc)).split("[Op:")[0].strip()
    return text.rsplit("; ", 1)[-1]  # TF: "<path>; <strerror>"


@contextlib.contextmanager
def output_errors(target: str | Path) -> Iterator[None]:
    """Word a failed write under ``target`` as one :class:`OutputError` line."""
    try:
        yield
    except EatKerasError:
        raise
    except (OSError, *_TF_WRITE_ERRORS) as exc:
        raise OutputError(f"cannot write {target}: {_reason(exc)}") from exc


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = []
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {folder}: {existing} is a file, not a folder")
    with output_errors(folder):
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
    return missing[::-1]


@contextlib.contextmanager
def output_folder(folder: str | Path) -> Iterator[Path]:
    """``folder``, created with its missing parents; when the block fails, the folders this created
    are removed again with whatever was written into them."""
    folder = Path(folder)
    created = _make_folders(folder)
    try:
        yield folder
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
        raise


def _lock(folder: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``folder``, or None where that cannot be."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def staging_folder(parent: Path, stem: str) -> Iterator[Path]:
    """A fresh hidden ``parent/.<stem>.partial.XXXX`` folder to build an artifact in, locked for as
    long as this process works in it and removed afterwards (an artifact is renamed out first)."""
    with output_errors(parent):
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}{STAGING_MARK}", dir=parent))
    lock = _lock(staging)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging folders that killed exports left in ``parent``: those no live process
    holds locked (see :func:`staging_folder`). Returns what was removed."""
    removed = []
    for folder in sorted(parent.glob(f".*{STAGING_MARK}*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock = _lock(folder)
        if lock is None:
            continue  # an export at work in it, or no locks here
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)
        removed.append(folder)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    partial = out_dir / f".{MANIFEST}.partial"
    with output_folder(out_dir), output_errors(out_dir):
        try:
            tagger.save_weights(str(out_dir / prefix))
            partial.write_text(json.dumps(manifest, indent=1) + "\n")
            os.replace(partial, out_dir / MANIFEST)
        except BaseException:  # the earlier model stays whole: drop this call's files only
            for path in [partial, *out_dir.glob(f"{prefix}[._]*")]:
                _remove(path)
            raise
    # earlier checkpoints and orphans of interrupted writes (files, or TF's *_temp folders):
    # weights.* (before prefixes) or weights-*
    for old in out_dir.glob(f"{WEIGHTS_PREFIX}[.-]*"):
        if not old.name.startswith(f"{prefix}."):
            _remove(old)
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
