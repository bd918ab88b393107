"""Files of a corpus job wherever they are: a local or mounted path, or any file system Beam reads
(``gs://``, ``s3://``, ``hdfs://``, ``azfs://`` with the matching Beam extra installed).

The audio decoder reads local files (it checks each header against the file's size before decoding),
so a file elsewhere is copied to a local temporary file for its decoding; the exported model is
copied, file by file, to where the workers read it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from apache_beam.io.filesystems import FileSystems

from eat_keras.errors import AudioError, EatKerasError

__all__ = ["is_local", "join", "local_copy", "matches_any", "read_text", "stage_folder"]


def is_local(path: str) -> bool:
    """A path the standard library opens: no scheme, or ``file://``."""
    return FileSystems.get_scheme(path) in (None, "file")


def join(folder: str, *names: str) -> str:
    return FileSystems.join(folder, *names)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """``path`` itself where it is local, else a local temporary copy (same suffix, so that the
    decoder's format checks see the same name) removed after the block."""
    if is_local(path):
        yield path.removeprefix("file://")
        return
    suffix = Path(path.rsplit("/", 1)[-1]).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix) as local:
        try:
            with FileSystems.open(path) as remote:
                shutil.copyfileobj(remote, local, 1 << 20)
            local.flush()
        except OSError as exc:  # the file is named in the errors output; the job goes on
            raise AudioError(f"{path}: cannot read ({exc})") from exc
        yield local.name


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def matches_any(pattern: str) -> bool:
    """Whether ``pattern`` (Beam's glob: ``*`` within a folder, ``**`` across folders) matches a file."""
    (result,) = FileSystems.match([pattern], limits=[1])
    return bool(result.metadata_list)


def stage_folder(local_folder: Path, target: str) -> str:
    """Copy every file under ``local_folder`` to the folder ``target`` (any Beam file system);
    returns ``target``. Where it is local the copy is skipped when ``target`` is ``local_folder``."""
    if is_local(target) and Path(target.removeprefix("file://")).resolve() == local_folder.resolve():
        return target
    try:
        for root, _, names in os.walk(local_folder):
            for name in names:
                relative = Path(root, name).relative_to(local_folder).as_posix()
                destination = join(target, *relative.split("/"))
                if is_local(destination):
                    Path(destination.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)
                with open(Path(root, name), "rb") as source, FileSystems.create(destination) as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, IOError) as exc:
        raise EatKerasError(f"cannot stage the model in {target} ({exc})") from exc
    return target
