"""AudioSet class names in model output order.

The release models emit 527 logits ordered like upstream's ``metadata/class_labels_indices.csv``
(``index,mid,display_name``). The file is not bundled with the package (it is CC BY 4.0 data that
upstream ships); :func:`audioset_labels` finds it on disk or downloads it once into the cache, and
pins it by sha256 so that a changed upstream file cannot silently reorder the labels.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path

from eat_keras import hub
from eat_keras.errors import EatKerasError

__all__ = [
    "AUDIOSET_LABELS_FILE",
    "AUDIOSET_LABELS_URL",
    "AUDIOSET_LABELS_SHA256",
    "LABEL_LIST_FILE",
    "read_label_csv",
    "read_class_names",
    "short_list",
    "write_label_list",
    "audioset_labels",
]

AUDIOSET_LABELS_FILE = "class_labels_indices.csv"
AUDIOSET_LABELS_URL = (
    "https://raw.githubusercontent.com/fschmid56/EfficientAT/main/metadata/class_labels_indices.csv"
)
#: the one-name-per-line label list that exported artifacts carry (SavedModel asset, beside .tflite files)
LABEL_LIST_FILE = "labels.txt"
#: sha256 of upstream's file (527 rows); checked for cached and downloaded copies.
AUDIOSET_LABELS_SHA256 = "cdd1049833c4b86127c2773ac0d14a2754b6a6d0d1798002ed5c66e699708429"


def read_label_csv(path: str | os.PathLike[str]) -> list[str]:
    """Read class names, ordered by index.

    Accepts the AudioSet ``index,mid,display_name`` CSV (with a header row; names may be quoted and
    contain commas) or a plain text file with one label per line (blank lines ignored). In the CSV
    the indices must be exactly 0..N-1, each once: a gap or duplicate would shift every label after
    it, which is worse than failing.

    Raises:
        EatKerasError: unreadable file, no labels, or bad/missing/duplicate indices.
    """
    p = Path(path)
    try:
        # utf-8-sig: tolerate a BOM from spreadsheet exports.
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EatKerasError(f"{p}: cannot read label file ({exc})") from exc

    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise EatKerasError(f"{p}: label file holds no labels")

    header = [field.strip().lower() for field in next(csv.reader([lines[0]]))]
    if "index" not in header or "display_name" not in header:
        return [line.strip() for line in lines]  # plain list, one label per line

    by_index: dict[int, str] = {}
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
    for row in reader:
        line = reader.line_num
        raw_index, name = row.get("index"), row.get("display_name")
        if raw_index is None or name is None:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            raise EatKerasError(f"{p}: line {line} has too few columns")
        try:
            index = int(raw_index)
        except ValueError:
            raise EatKerasError(f"{p}: line {line}: index {raw_index!r} is not an integer") from None
        if index in by_index:
            raise EatKerasError(f"{p}: line {line}: index {index} appears twice")
        by_index[index] = name.strip()
    if not by_index:
        raise EatKerasError(f"{p}: label file holds no labels")
    n = len(by_index)
    if sorted(by_index) != list(range(n)):
        missing = sorted(set(range(n)) - set(by_index))
        raise EatKerasError(
            f"{p}: indices must be 0..{n - 1}; missing {missing[:5]}"
            + ("..." if len(missing) > 5 else "")
        )
    return [by_index[i] for i in range(n)]


def short_list(names: Sequence[str], limit: int = 3) -> str:
    """At most ``limit`` names (long ones cut) and how many more: a set of 527 AudioSet classes
    named in full would make an error message of 8 KB."""
    shown = [repr(name if len(name) <= 40 else name[:37] + "...") for name in list(names)[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_label_count(names: list[str], num_classes: int, source: object) -> list[str]:
    """``names`` if it names exactly ``num_classes`` outputs (a short or long list would misname them)."""
    if len(names) != num_classes:
        raise EatKerasError(f"{source}: {len(names)} labels for a {num_classes}-class model")
    return names


def read_class_names(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """:func:`read_label_csv`, checked to name exactly ``num_classes`` outputs."""
    return check_label_count(read_label_csv(path), num_classes, path)


def write_label_list(path: Path, names: list[str]) -> None:
    """One name per line: the ``labels.txt`` that exported artifacts carry (:func:`read_label_csv` reads it)."""
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    # mtime/size are part of the key so an edited file is re-read; the path alone decides otherwise.
    return tuple(read_label_csv(path))


def audioset_labels(explicit: str | os.PathLike[str] | None = None) -> list[str]:
    """The AudioSet class names (527 for the release models), in output order.

    Lookup: ``explicit``; then ``$EAT_LABELS`` (the csv file itself); then
    ``class_labels_indices.csv`` in ``$EAT_LABELS_DIR`` or ``$EAT_WEIGHTS_DIR``; then the cache;
    then a download from upstream (sha256-checked). Parsed once per file per process.

    Raises:
        EatKerasError: a given path does not exist or the file is malformed.
        DownloadError: the file is not found anywhere and cannot be downloaded.
    """
    if explicit is None and os.environ.get("EAT_LABELS"):
        explicit = os.environ["EAT_LABELS"]
    # Module globals are read at call time so that tests (and users) can point the URL elsewhere.
    path = hub.resolve_file(
        AUDIOSET_LABELS_FILE,
        AUDIOSET_LABELS_URL,
        sha256=AUDIOSET_LABELS_SHA256,
        explicit=explicit,
        search_env=("EAT_LABELS_DIR", "EAT_WEIGHTS_DIR"),
    )
    resolved = path.resolve()
    st = resolved.stat()
    return list(_read_cached(str(resolved), st.st_mtime_ns, st.st_size))
