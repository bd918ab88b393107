"""Labelled audio files, leak-free train/val/test splits, and the tf.data input pipeline.

Why this module is shaped as it is:

* **Splits are one partition.** The original recipe shuffled the file list separately (and unseeded)
  for its training and validation sets, so most "validation" files were training files (docs/design.md).
  :func:`split_examples` assigns every file to exactly one side, deterministically from a seed,
  and by *group* when the data has groups: ESC-50 cuts several 5 s clips from one Freesound
  recording (``src_file``); putting them on both sides would measure memorisation of the recording.
  :func:`check_no_leakage` then verifies the result by resolved path, group and file bytes.
* **Decode once.** Decoding FLAC/MP3 and resampling with soxr HQ costs far more than a training step
  on a small model, so :class:`AudioCache` decodes each file once (all files up front, so that a bad
  file fails before training starts, naming the file) and keeps the 32 kHz waveform in memory or as
  ``.npy`` files in a cache folder. Epochs only crop cached arrays.
* **Evaluation covers the whole file.** In ``mode="eval"`` each file is cut into consecutive windows
  of ``clip_samples`` (hop = ``clip_samples``, the last window zero-padded, a file shorter than one
  window is one padded window); every window carries its file's ``index``, and
  :func:`average_per_file` averages the windows' logits per file, so a file's prediction uses its
  full length rather than a crop.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import math
import os
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from eat_keras.audio import SAMPLE_RATE, load_audio
from eat_keras.errors import AudioError, ConfigError, EatKerasError

if TYPE_CHECKING:  # reading and splitting must not import TensorFlow: bad input fails fast
    import tensorflow as tf

__all__ = [
    "AUDIO_EXTENSIONS",
    "SIDES",
    "AudioCache",
    "Example",
    "average_per_file",
    "check_no_leakage",
    "check_unique_files",
    "class_counts",
    "class_names_of",
    "compile_group_pattern",
    "data_root",
    "example_key",
    "groups_from_names",
    "make_dataset",
    "manifest_columns",
    "num_windows",
    "read_esc50_manifest",
    "read_folder_dataset",
    "read_dataset",
    "read_manifest",
    "read_unlabelled_folder",
    "split_examples",
    "split_report",
]

#: Extensions (lower case) that :func:`read_folder_dataset` treats as audio; libsndfile reads them.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
     ".caf", ".w64"}
)  # fmt: skip

#: The sides of a split, in the order reports list them.
SIDES = ("train", "val", "test")

_SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip

_MAX_LISTED = 5  # leaks named in one error message


@dataclasses.dataclass(frozen=True)
class Example:
    """One audio file and its label; ``label`` is ``None`` for an unlabelled file, which trains
    only through distillation and is always on the training side.

    ``group`` ties files cut from one recording; a split keeps a group on one side. ``split``
    (train/val/test) and ``fold`` are optional assignments a manifest can carry.
    """

    path: str
    label: str | None
    group: str | None = None
    split: str | None = None
    fold: str | None = None


# --- reading ---------------------------------------------------------------------------------


def read_folder_dataset(root: str | os.PathLike[str], group_pattern: str | None = None) -> list[Example]:
    """Read the layout ``root/<class>/**/<file>``: the class is the sub-folder name.

    Audio files are recognised by extension, case-insensitively (:data:`AUDIO_EXTENSIONS`; the original
    recipe only saw lower-case ``*.wav``). Hidden files and folders (``.*``, e.g. macOS ``._x.wav``)
    are skipped. Paths are resolved; the result is sorted by class, then path. ``group_pattern``
    gives each file the group its name holds (:func:`groups_from_names`).
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise EatKerasError(f"{root_path}: data set folder not found")
    examples = []
    class_dirs = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        for file in sorted(class_dir.rglob("*")):
            hidden = any(part.startswith(".") for part in file.relative_to(class_dir).parts)
            if not hidden and file.suffix.lower() in AUDIO_EXTENSIONS and file.is_file():
                examples.append(Example(path=str(file.resolve()), label=class_dir.name))
    if not examples:
        raise EatKerasError(
            f"{root_path}: no audio files in any class sub-folder (expected root/<class>/<file> "
            f"with one of {', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    return groups_from_names(examples, group_pattern)


def read_unlabelled_folder(root: str | os.PathLike[str]) -> list[Example]:
    """Every audio file under ``root`` (any depth; hidden ones skipped) as an unlabelled example."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise EatKerasError(f"{root_path}: folder of unlabelled audio not found")
    files = sorted(
        f for f in root_path.rglob("*")
        if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(root_path).parts)
    )  # fmt: skip
    if not files:
        raise EatKerasError(f"{root_path}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return [Example(path=str(f.resolve()), label=None) for f in files]


def read_manifest(
    csv_path: str | os.PathLike[str],
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = None,
    split_column: str | None = None,
    fold_column: str | None = None,
) -> list[Example]:
    """Read a CSV manifest with one row per file; relative paths resolve against the CSV's folder.
    A row with an empty label is an unlabelled file (distillation).

    The optional columns default to ``group``, ``split`` and ``fold`` when the CSV has columns of
    those names. Split values are normalised to train/val/test (``validation``, ``dev``, ... are
    accepted). Empty optional cells mean "none".
    """
    csv_file = Path(csv_path).expanduser()
    columns, rows = _read_csv(csv_file)
    group_column = _default_column(columns, group_column, "group")
    split_column = _default_column(columns, split_column, "split")
    fold_column = _default_column(columns, fold_column, "fold")
    optional = [group_column, split_column, fold_column]
    _require_columns(csv_file, columns, [path_column, label_column, *optional])
    return _examples_from_rows(
        csv_file, rows, csv_file.resolve().parent, path_column, label_column,
        group_column, split_column, fold_column,
    )  # fmt: skip


def read_esc50_manifest(
    csv_path: str | os.PathLike[str], audio_dir: str | os.PathLike[str]
) -> list[Example]:
    """Read ESC-50's ``meta/esc50.csv`` format (also ESC-10 subsets of it).

    ``filename`` is looked up in ``audio_dir``, ``category`` is the label, ``fold`` the fold, and
    ``src_file`` (the Freesound recording the clip was cut from) the group.
    """
    csv_file = Path(csv_path).expanduser()
    columns, rows = _read_csv(csv_file)
    _require_columns(csv_file, columns, ["filename", "category", "fold", "src_file"])
    return _examples_from_rows(
        csv_file, rows, Path(audio_dir).expanduser().resolve(), "filename", "category",
        "src_file", None, "fold",
    )  # fmt: skip


def read_dataset(
    path: str | os.PathLike[str], folds: Iterable[str | int] | None = None, group_pattern: str | None = None
) -> list[Example]:
    """Read a data set in whichever layout ``path`` has: a folder with one sub-folder per class
    (:func:`read_folder_dataset`), an ESC-50 style meta CSV (columns ``filename``, ``category``,
    ``fold``: :func:`read_esc50_manifest`, audio in ``audio/`` beside the CSV or beside its folder)
    or any other CSV manifest (:func:`read_manifest`). ``folds`` keeps only those folds;
    ``group_pattern`` gives each file the group its name holds (:func:`groups_from_names`)."""
    source = Path(path).expanduser()
    if source.is_dir():
        examples = read_folder_dataset(source)
    elif source.suffix.lower() == ".csv" and source.is_file():
        header = manifest_columns(source)  # a binary or non-UTF-8 file fails here, in one line
        if {"filename", "category", "fold"} <= set(header):
            # audio/ beside the CSV (ESC-10 subsets), else ESC-50's own meta/ + audio/ layout
            candidates = (source.parent / "audio", source.parent.parent / "audio")
            audio_dir = next((d for d in candidates if d.is_dir()), candidates[0])
            examples = read_esc50_manifest(source, audio_dir)
        else:
            examples = read_manifest(source)
    else:
        raise EatKerasError(f"{path}: expected a folder of class folders or a CSV manifest")
    wanted = _fold_set(folds)
    if wanted:
        if all(e.fold is None for e in examples):
            raise EatKerasError(f"{path}: folds were given, but the data has no fold column")
        examples = [e for e in examples if e.fold in wanted]
    if not examples:
        raise EatKerasError(f"{path}: no labelled audio files{' in folds ' + ','.join(sorted(wanted)) if wanted else ''}")
    return groups_from_names(examples, group_pattern)


# --- groups from file names ------------------------------------------------------------------

_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def compile_group_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a group pattern: a regex with a ``(?P<group>...)`` as it is, else
    a template such as ``{fold}-{group}-{take}-{class}``, where ``{group}`` marks the part of the
    name that names the recording, any other ``{name}`` (or ``{}``) stands for any other part, and
    the rest matches itself. Each field takes at least one character and as few as it can, up to
    the text after it, so ``{fold}-{group}-{take}-{class}`` reads ``1-100038-A-14`` as fold 1, group
    100038, take A, class 14. :class:`ConfigError` for a pattern that names no group or does not
    compile."""
    if "(?P<group>" in pattern:
        regex = pattern
    else:
        fields = _TEMPLATE_FIELD.findall(pattern)
        if [f.strip() for f in fields].count("group") != 1:
            raise ConfigError(
                f"group pattern {pattern!r} must mark the recording once, as {{group}} in a template "
                "(e.g. '{fold}-{group}-{take}-{class}') or as (?P<group>...) in a regular expression"
            )
        pieces = _TEMPLATE_FIELD.split(pattern)  # literal, field, literal, field, ..., literal
        regex = "".join(
            re.escape(piece) if i % 2 == 0 else "(?P<group>.+?)" if piece.strip() == "group" else ".+?"
            for i, piece in enumerate(pieces)
        )
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ConfigError(f"group pattern {pattern!r} is not a valid regular expression ({exc})") from None


def groups_from_names(examples: list[Example], pattern: str | None) -> list[Example]:
    """``examples`` with the group their file name holds by ``pattern`` (:func:`compile_group_pattern`;
    ``None``: unchanged), so that a split keeps the clips cut from one recording on one side.

    The pattern must match the whole name without its extension (``1-100038-A-14`` of
    ``1-100038-A-14.wav``), or the whole name. A name it does not match, a group it leaves empty,
    or a manifest's group that the name contradicts is an :class:`EatKerasError` naming the file.
    """
    if pattern is None:
        return examples
    regex = compile_group_pattern(pattern)
    grouped, unmatched = [], []
    for e in examples:
        name = Path(e.path).name
        match = regex.fullmatch(Path(name).stem) or regex.fullmatch(name)
        if match is None or not match.group("group"):
            unmatched.append(e.path)
            continue
        if e.group is not None and e.group != match.group("group"):
            raise EatKerasError(
                f"{e.path}: the manifest gives group {e.group!r}, the group pattern {match.group('group')!r}; "
                "leave out the group pattern or the manifest's group column"
            )
        grouped.append(dataclasses.replace(e, group=match.group("group")))
    if unmatched:
        raise EatKerasError(
            f"group pattern {pattern!r} does not match the names of {len(unmatched)} of {len(examples)} files, "
            f"e.g. {unmatched[0]} (it must match the whole name, without or with the extension)"
        )
    return grouped


def manifest_columns(csv_path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV manifest, read from its header alone (to tell its format)."""
    return _read_csv(Path(csv_path).expanduser(), header_only=True)[0]


def _read_csv(
    csv_file: Path, header_only: bool = False
) -> tuple[list[str], list[tuple[int, dict[str, str | None]]]]:
    """Column names and ``(line number, row)`` pairs; a BOM from spreadsheet exports is dropped."""
    if not csv_file.is_file():
        raise EatKerasError(f"{csv_file}: manifest not found")
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(_text_lines(f, csv_file))
            columns = list(reader.fieldnames or [])
            rows = [] if header_only else [(reader.line_num, row) for row in reader]
            return columns, rows
    except UnicodeDecodeError as exc:
        raise EatKerasError(
            f"{csv_file}: not a text CSV manifest (bytes that are not UTF-8 near byte {exc.start})"
        ) from exc
    except (OSError, csv.Error) as exc:
        raise EatKerasError(f"{csv_file}: cannot read manifest ({exc})") from exc


def _text_lines(lines: Iterable[str], csv_file: Path) -> Iterator[str]:
    """The lines of a manifest; a NUL byte means a binary file, whose cells would become paths
    that no file system accepts."""
    for number, line in enumerate(lines, start=1):
        if "\0" in line:
            raise EatKerasError(f"{csv_file}, line {number}: a NUL byte: not a text CSV manifest")
        yield line


def _default_column(columns: list[str], given: str | None, name: str) -> str | None:
    if given is not None:
        return given
    return name if name in columns else None


def _require_columns(csv_file: Path, columns: list[str], wanted: list[str | None]) -> None:
    missing = [c for c in wanted if c is not None and c not in columns]
    if missing:
        raise EatKerasError(
            f"{csv_file}: no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(columns) or 'none'})"
        )


def _cell(row: Mapping[str, str | None], column: str | None) -> str | None:
    if column is None:
        return None
    value = (row.get(column) or "").strip()
    return value or None


def _examples_from_rows(
    csv_file: Path,
    rows: list[tuple[int, dict[str, str | None]]],
    base: Path,
    path_column: str,
    label_column: str,
    group_column: str | None,
    split_column: str | None,
    fold_column: str | None,
) -> list[Example]:
    examples = []
    for line, row in rows:
        path, label = _cell(row, path_column), _cell(row, label_column)
        if path is None:
            raise EatKerasError(f"{csv_file}, line {line}: empty {path_column!r}")
        split = _cell(row, split_column)
        examples.append(
            Example(
                path=str((base / Path(path).expanduser()).resolve()),
                label=label,
                group=_cell(row, group_column),
                split=None if split is None else _side_name(split, f"{csv_file}, line {line}"),
                fold=_cell(row, fold_column),
            )
        )
    if not examples:
        raise EatKerasError(f"{csv_file}: manifest has no rows")
    check_unique_files(examples, str(csv_file))
    return examples


def _side_name(split: str, where: str) -> str:
    side = _SPLIT_NAMES.get(split.strip().lower())
    if side is None:
        raise EatKerasError(f"{where}: unknown split {split!r} (use train, val or test)")
    return side


def check_unique_files(examples: Iterable[Example], source: str | None = None) -> None:
    """Raise :class:`EatKerasError` if one file (by resolved path) is listed twice or under two
    labels, naming the first few: a duplicate counts twice in training and in every metric, and
    a file under two labels lands on both sides of a split and teaches the model a coin toss."""
    labels: dict[str, list[str]] = defaultdict(list)
    for e in examples:
        labels[os.path.realpath(e.path)].append(e.label if e.label is not None else "unlabelled")
    conflicts = [
        f"{p} ({', '.join(sorted(set(ls)))})" for p, ls in labels.items() if len(set(ls)) > 1
    ]
    repeated = [f"{p} ({len(ls)} times)" for p, ls in labels.items() if len(ls) > len(set(ls))]
    problems = []
    if conflicts:
        problems.append(
            f"{len(conflicts)} file(s) under more than one label: {_first_few(conflicts)}"
        )
    if repeated:
        problems.append(f"{len(repeated)} file(s) listed more than once: {_first_few(repeated)}")
    if problems:
        where = f"{source}: " if source else ""
        raise EatKerasError(f"{where}{'; '.join(problems)} (list each file once, under one label)")


def _first_few(items: Sequence[str]) -> str:
    """``a, b, c and K more``, with at most :data:`_MAX_LISTED` items named."""
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


# --- classes ---------------------------------------------------------------------------------


def class_names_of(examples: Iterable[Example]) -> list[str]:
    """Sorted unique labels (unlabelled files have none): the class id of a label is its position in this list."""
    return sorted({e.label for e in examples if e.label is not None})


def class_counts(examples: Iterable[Example], class_names: Sequence[str]) -> np.ndarray:
    """``int64 [C]`` number of labelled examples per class, in ``class_names`` order (zeros included)."""
    index = _class_index(class_names)
    counts = np.zeros(len(class_names), dtype=np.int64)
    for e in examples:
        if e.label is not None:
            counts[_label_id(index, e)] += 1
    return counts


def _class_index(class_names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(class_names)}


def _label_id(index: Mapping[str, int], example: Example) -> int:
    try:
        return index[example.label]
    except KeyError:
        raise EatKerasError(
            f"{example.path}: label {example.label!r} is not one of the model's classes"
        ) from None


# --- splitting -------------------------------------------------------------------------------


def split_examples(
    examples: Iterable[Example],
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    test_folds: Iterable[str | int] | None = None,
    val_folds: Iterable[str | int] | None = None,
) -> dict[str, list[Example]]:
    """Partition ``examples`` into ``{"train", "val", "test"}`` (each sorted by path).

    Precedence:

    1. Examples carry a ``split`` (from a manifest): it is used as is, fractions and folds ignored.
    2. ``test_folds`` / ``val_folds`` given: those folds form the test / validation side. A side
       with no folds given is carved from the remaining folds by the fraction (rule 3); pass
       ``val_fraction=0`` for upstream ESC-50's "test fold k, train on the rest".
    3. Otherwise a seeded split stratified by class. When any example has a ``group``, whole groups
       are assigned (files without a group are their own group) and a group counts for its majority
       label (ties: the alphabetically first). Per class, ``round(n * fraction)`` groups (or files)
       go to each held-out side; with ``val_fraction > 0`` every class with at least 2 groups gets
       at least one validation group, and every class keeps at least one for training.

    Groups are ranked per class by a hash of ``(seed, group)``, files without a group by a hash of
    ``(seed, path below the data set's folder)``: the result does not depend on the input order or
    on where the data set is stored, changes with the seed, and moves few files when files are
    added to the data set (inside its folder: one outside moves the folder, and so every key).
    Unlabelled files (distillation) all go to the training side, and never change the labelled
    files' sides.
    """
    _check_fractions(val_fraction, test_fraction)
    everything = sorted(examples, key=_sort_key)
    if not everything:
        raise EatKerasError("no examples to split")
    check_unique_files(everything)
    unlabelled = _training_only(everything)
    ordered = [e for e in everything if e.label is not None]
    _check_classes(ordered)
    if any(e.split is not None for e in ordered):
        sides = _given_split(ordered)
    elif test_folds is None and val_folds is None:
        sides = _stratified_split(ordered, val_fraction, test_fraction, seed, data_root(ordered))
    else:
        sides = _fold_split(ordered, val_fraction, test_fraction, seed, test_folds, val_folds)
    if unlabelled:
        sides["train"] = sorted([*sides["train"], *unlabelled], key=_sort_key)
    return sides


def _training_only(examples: list[Example]) -> list[Example]:
    """The unlabelled examples; one a manifest puts on another side than train is refused."""
    unlabelled = [e for e in examples if e.label is None]
    elsewhere = [e.path for e in unlabelled if e.split is not None and _side_name(e.split, e.path) != "train"]
    if elsewhere:
        raise EatKerasError(
            f"{len(elsewhere)} unlabelled file(s) are given a validation or test split ({_first_few(elsewhere)}): "
            "files without a label train only (through distillation); give them a label or the train split"
        )
    return unlabelled


def _check_classes(labelled: list[Example]) -> None:
    if not labelled:
        raise EatKerasError("no labelled files to split")
    names = class_names_of(labelled)
    if len(names) < 2:
        raise EatKerasError(
            f"training needs at least two classes; all {len(labelled)} files are {names[0]!r}"
        )


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise EatKerasError(
            f"fractions must be in [0, 1), got val {val_fraction}, test {test_fraction}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise EatKerasError(
            f"val + test fractions leave nothing to train on ({val_fraction} + {test_fraction})"
        )


def _given_split(ordered: list[Example]) -> dict[str, list[Example]]:
    """The sides a manifest's split column gives (every example must have one)."""
    with_split = [e for e in ordered if e.split is not None]
    if len(with_split) != len(ordered):
        without = next(e for e in ordered if e.split is None)
        raise EatKerasError(
            f"{len(with_split)} of {len(ordered)} examples have a split, the others none "
            f"(e.g. {without.path})"
        )
    sides: dict[str, list[Example]] = {side: [] for side in SIDES}
    for e in ordered:
        sides[_side_name(e.split, e.path)].append(e)  # type: ignore[arg-type]
    return sides


def _fold_split(
    ordered: list[Example],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_folds: Iterable[str | int] | None,
    val_folds: Iterable[str | int] | None,
) -> dict[str, list[Example]]:
    """Rule 2 of :func:`split_examples`: the given folds form their sides, a side without folds is
    carved from the other folds by its fraction."""
    test_set, val_set = _fold_set(test_folds), _fold_set(val_folds)
    if test_set & val_set:
        both = ", ".join(sorted(test_set & val_set))
        raise EatKerasError(f"fold(s) {both} are both test and validation folds")
    no_fold = [e.path for e in ordered if e.fold is None]
    if no_fold:
        raise EatKerasError(
            f"folds were requested but {len(no_fold)} examples have none (e.g. {no_fold[0]})"
        )
    present = sorted({e.fold for e in ordered if e.fold is not None})
    unknown = sorted((test_set | val_set) - set(present))
    if unknown:
        raise EatKerasError(
            f"fold(s) {', '.join(unknown)} not in the data (folds: {', '.join(present)})"
        )
    rest = [e for e in ordered if e.fold not in test_set | val_set]
    carved = _stratified_split(
        rest,
        val_fraction if val_folds is None else 0.0,
        test_fraction if test_folds is None else 0.0,
        seed,
        data_root(ordered),
    )
    return {
        "train": carved["train"],
        "val": sorted([e for e in ordered if e.fold in val_set] + carved["val"], key=_sort_key),
        "test": sorted([e for e in ordered if e.fold in test_set] + carved["test"], key=_sort_key),
    }


def _sort_key(e: Example) -> tuple[str, str, str, str, str]:
    return (e.path, e.label or "", e.group or "", e.split or "", e.fold or "")


def _fold_set(folds: Iterable[str | int] | None) -> set[str]:
    return set() if folds is None else {str(f).strip() for f in folds}


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def data_root(examples: Sequence[Example]) -> str:
    """The deepest folder that holds every file: keys are paths relative to it, so a data set
    splits and shards the same wherever it is stored."""
    return os.path.commonpath([os.path.dirname(e.path) for e in examples])


def example_key(example: Example, root: str) -> str:
    return Path(os.path.relpath(example.path, root)).as_posix()


def _unit_of(e: Example, root: str) -> str:
    """What a split assigns as a whole: the group, else the file by its path below ``root``
    (prefixed: no name collisions)."""
    return f"group:{e.group}" if e.group is not None else f"file:{example_key(e, root)}"


def _majority_label(unit: list[Example]) -> str:
    counts = Counter(e.label for e in unit)
    return min(counts, key=lambda label: (-counts[label], label))


def _held_out_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Validation and test unit counts for one class of ``n`` units (see :func:`split_examples`)."""
    n_val = math.floor(n * val_fraction + 0.5)
    n_test = math.floor(n * test_fraction + 0.5)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    if test_fraction > 0 and n - n_val >= 2:
        n_test = max(n_test, 1)
    excess = n_val + n_test - (n - 1)  # keep one unit for training
    if excess > 0:
        cut = min(excess, n_test)
        n_test -= cut
        n_val -= excess - cut
    return n_val, n_test


def _stratified_split(
    examples: list[Example], val_fraction: float, test_fraction: float, seed: int, root: str
) -> dict[str, list[Example]]:
    units: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        units[_unit_of(e, root)].append(e)
    by_class: dict[str, list[str]] = defaultdict(list)
    for unit in units:
        by_class[_majority_label(units[unit])].append(unit)
    sides: dict[str, list[Example]] = {side: [] for side in SIDES}
    for label in sorted(by_class):
        ranked = sorted(by_class[label], key=lambda unit: (_digest(f"{seed}\0{unit}"), unit))
        n_val, n_test = _held_out_sizes(len(ranked), val_fraction, test_fraction)
        for rank, unit in enumerate(ranked):
            side = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            sides[side].extend(units[unit])
    return {side: sorted(items, key=_sort_key) for side, items in sides.items()}


# --- reporting and checking ------------------------------------------------------------------


def split_report(splits: Mapping[str, Sequence[Example]]) -> str:
    """A plain-text table of examples per class on each side, with totals (and group counts)."""
    sides = list(splits)
    names = class_names_of(e for items in splits.values() for e in items)
    per_side = {side: class_counts(splits[side], names) for side in sides}
    width = max([len("class"), len("total"), len("unlabelled")] + [len(n) for n in names])
    col = max([6] + [len(s) + 1 for s in sides])

    def line(name: str, values: Sequence[int]) -> str:
        cells = "".join(f"{v:>{col}d}" for v in [*values, sum(values)])
        return f"{name:<{width}}{cells}"

    lines = [f"{'class':<{width}}" + "".join(f"{s:>{col}}" for s in sides) + f"{'total':>{col}}"]
    for i, name in enumerate(names):
        lines.append(line(name, [int(per_side[s][i]) for s in sides]))
    unlabelled = [sum(e.label is None for e in splits[s]) for s in sides]
    if any(unlabelled):
        lines.append(line("unlabelled", unlabelled))
    lines.append(line("total", [len(splits[s]) for s in sides]))
    if any(e.group is not None for items in splits.values() for e in items):
        # a count of units, the same below any folder
        lines.append(line("groups", [len({_unit_of(e, root="/") for e in splits[s]}) for s in sides]))
    return "\n".join(lines)


def check_no_leakage(splits: Mapping[str, Sequence[Example]], check_content: bool = True) -> None:
    """Raise :class:`EatKerasError` if a file (by resolved path), a group, or, with
    ``check_content``, the same audio bytes under two names appear on more than one side.

    The content check hashes every file (blake2b); it catches copies that a path check misses, such
    as a clip exported twice into two class folders.
    """
    leaks: list[str] = []
    by_path: dict[str, dict[str, str]] = defaultdict(dict)  # resolved path -> side -> path
    by_group: dict[str, dict[str, str]] = defaultdict(dict)
    for side, items in splits.items():
        for e in items:
            by_path[os.path.realpath(e.path)].setdefault(side, e.path)
            if e.group is not None:
                by_group[e.group].setdefault(side, e.path)
    for path, sides in sorted(by_path.items()):
        if len(sides) > 1:
            leaks.append(f"file {path} is in {' and '.join(sides)}")
    for group, sides in sorted(by_group.items()):
        if len(sides) > 1:
            where = ", ".join(f"{side} ({p})" for side, p in sides.items())
            leaks.append(f"group {group!r} is in {where}")
    if check_content:
        by_content: dict[str, dict[str, str]] = defaultdict(dict)
        for path, sides in sorted(by_path.items()):
            digest = _file_digest(path)
            for side in sides:
                by_content[digest].setdefault(side, path)
        for sides in by_content.values():
            if len(sides) > 1 and len(set(sides.values())) > 1:
                where = " and ".join(f"{p} ({side})" for side, p in sides.items())
                leaks.append(f"same audio content: {where}")
    if leaks:
        more = f"; and {len(leaks) - _MAX_LISTED} more" if len(leaks) > _MAX_LISTED else ""
        raise EatKerasError("train/val/test leakage: " + "; ".join(leaks[:_MAX_LISTED]) + more)


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read audio file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


# --- decoded-audio cache and tf.data pipeline ------------------------------------------------


class AudioCache:
    """Decoded mono waveforms at ``sample_rate``: each file is decoded and resampled once.

    Without ``cache_dir`` the waveforms stay in memory (ESC-50: 2000 × 5 s ≈ 1.3 GB). With
    ``cache_dir`` each is an ``.npy`` file named by a hash of (resolved path, size, mtime,
    sample rate), read back memory-mapped, so a changed file is decoded again and one folder can
    serve many runs and splits. (A ``tf.data`` cache file would be keyed by its name only and would
    silently serve stale audio after the file list changes.) ``decode_count`` counts decodes.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        sample_rate: int = SAMPLE_RATE,
        num_workers: int | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EatKerasError(
                    f"{self.cache_dir}: cannot make the cache folder ({exc.strerror or exc})"
                ) from exc
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.decode_count = 0
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> np.ndarray:
        """The float32 ``[samples]`` waveform of ``path``, decoded only if it is not cached."""
        if self.cache_dir is None:
            with self._lock:
                cached = self._memory.get(path)
            if cached is None:
                cached = self._decode(path)
                with self._lock:
                    self._memory[path] = cached
            return cached
        entry = self._entry(path)
        if entry is not None and entry.is_file():
            try:
                return np.load(entry, mmap_mode="r")
            except (OSError, ValueError):
                pass  # damaged cache file: decode again and overwrite it
        waveform = self._decode(path)
        if entry is not None:
            self._store(entry, waveform)
        return waveform

    def _store(self, entry: Path, waveform: np.ndarray) -> None:
        tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, waveform)
            os.replace(tmp, entry)  # atomic: a reader never sees a half-written file
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EatKerasError(
                f"{self.cache_dir}: cannot write the cache ({exc.strerror or exc})"
            ) from exc

    def load_all(self, paths: Iterable[str]) -> None:
        """Decode every file not yet cached, in parallel; the first undecodable file raises
        :class:`~eat_keras.errors.AudioError` naming it."""
        missing = [p for p in dict.fromkeys(paths) if not self._is_cached(p)]
        if not missing:
            return
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            for _ in pool.map(self.get, missing):
                pass

    def _is_cached(self, path: str) -> bool:
        if self.cache_dir is None:
            with self._lock:
                return path in self._memory
        entry = self._entry(path)
        return entry is not None and entry.is_file()

    def _entry(self, path: str) -> Path | None:
        assert self.cache_dir is not None
        try:
            stat = os.stat(path)
        except OSError:
            return None  # load_audio words the error
        key = f"{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.sample_rate}"
        return self.cache_dir / f"{_digest(key)}.npy"

    def _decode(self, path: str) -> np.ndarray:
        waveform = load_audio(path, self.sample_rate)
        with self._lock:
            self.decode_count += 1
        return waveform


def make_dataset(
    examples: Sequence[Example],
    class_names: Sequence[str],
    *,
    mode: Literal["train", "eval"],
    clip_samples: int,
    batch_size: int,
    seed: int = 0,
    cache: AudioCache | None = None,
    drop_remainder: bool = False,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of dicts over ``examples``.

    Each batch holds ``waveform`` (float32 ``[B, clip_samples]``), ``label`` (int32 class id
    ``[B]``, position in ``class_names``), ``target`` (float32 one-hot ``[B, C]``) and ``index``
    (int32 ``[B]``, position of the file in ``examples``).

    * ``mode="train"``: one crop per file per epoch, in a shuffled order. A file longer than
      ``clip_samples`` is cropped at a uniform random offset, a shorter one zero-padded at the end
      (as upstream ESC-50). Each new iterator (epoch) ``e`` draws its order and offsets from
      ``(seed, e)``: a fresh data set with the same seed replays the same epochs. The first
      iterator is epoch ``first_epoch`` (0-based): a run resumed after ``k`` finished epochs passes
      ``k``, so that its epochs see the data the uninterrupted run would have seen.
      ``drop_remainder`` drops a last partial batch (e.g. for BatchNorm or SupCon: tiny batches).
    * ``mode="eval"``: every file in full, as consecutive windows of ``clip_samples`` (hop
      ``clip_samples``; the last window zero-padded; a file shorter than one window gives one
      padded window), in file order. Evaluation averages logits over these full-length windows:
      pass the logits and ``index`` of all batches to :func:`average_per_file`.

    With a ``cache`` all files are decoded up front through it (share one between data sets and
    runs), so a bad file fails here and no epoch decodes audio; a training set without one gets a
    fresh in-memory cache. An evaluation set without one decodes each file when its windows come
    and keeps none (memory does not grow with the number of files; the cardinality is unknown).
    Fine-tuning reads prepared shards instead (:func:`eat_keras.train.shards.prepared_dataset`).
    """
    _check_dataset_arguments(examples, mode, clip_samples, batch_size, drop_remainder, first_epoch)
    index = _class_index(class_names)
    labels = np.array([-1 if e.label is None else _label_id(index, e) for e in examples], dtype=np.int32)
    paths = [e.path for e in examples]
    if mode == "eval" and cache is None:  # one pass: decode each file as it comes, keep none
        generator, num_elements = _streamed_evaluation_elements(paths, labels, clip_samples), None
        return _batched(generator, num_elements, clip_samples, batch_size, drop_remainder, len(class_names))
    cache = cache if cache is not None else AudioCache()
    cache.load_all(paths)

    if mode == "train":
        generator = _training_elements(cache, paths, labels, clip_samples, seed, first_epoch)
        num_elements = len(paths)
    else:
        windows = [num_windows(cache.get(p).shape[0], clip_samples) for p in paths]
        generator = _evaluation_elements(cache, paths, labels, clip_samples, windows)
        num_elements = sum(windows)
    return _batched(generator, num_elements, clip_samples, batch_size, drop_remainder, len(class_names))


def _batched(
    generator: Callable[[], Iterator[dict[str, Any]]],
    num_elements: int | None,
    clip_samples: int,
    batch_size: int,
    drop_remainder: bool,
    num_classes: int,
) -> tf.data.Dataset:
    import tensorflow as tf

    signature = {
        "waveform": tf.TensorSpec([clip_samples], tf.float32),
        "label": tf.TensorSpec([], tf.int32),
        "index": tf.TensorSpec([], tf.int32),
    }
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    if num_elements is not None:  # tell tf.data, so Keras shows progress and counts steps
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_elements))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(
        lambda batch: {**batch, "target": tf.one_hot(batch["label"], num_classes)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_dataset_arguments(
    examples: Sequence[Example], mode: str, clip_samples: int, batch_size: int, drop_remainder: bool, first_epoch: int
) -> None:
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if clip_samples <= 0 or batch_size <= 0:
        raise ConfigError(
            f"clip_samples and batch_size must be positive, got {clip_samples}, {batch_size}"
        )
    if mode == "eval" and drop_remainder:
        raise ValueError("drop_remainder would leave evaluation windows out")
    if first_epoch < 0:
        raise ValueError(f"first_epoch must be >= 0, got {first_epoch}")
    if not examples:
        raise EatKerasError(f"no examples for the {mode} data set")


def average_per_file(values: tf.Tensor, index: tf.Tensor, num_files: int) -> tf.Tensor:
    """Mean of per-window ``values`` ``[W, ...]`` (e.g. logits) over the windows of each file:
    ``[num_files, ...]``, row ``i`` for ``examples[i]`` of an ``mode="eval"`` data set."""
    import tensorflow as tf

    return tf.math.unsorted_segment_mean(values, tf.cast(index, tf.int32), num_files)


def num_windows(num_samples: int, clip_samples: int) -> int:
    """Evaluation windows of a file: consecutive, the last zero-padded, at least one."""
    return max(1, -(-num_samples // clip_samples))


def _fit(waveform: np.ndarray, start: int, clip_samples: int) -> np.ndarray:
    """``waveform[start:start + clip_samples]`` as a new float32 array, zero-padded at the end."""
    out = np.zeros(clip_samples, dtype=np.float32)
    piece = waveform[start : start + clip_samples]
    out[: piece.shape[0]] = piece
    return out


def _training_elements(
    cache: AudioCache,
    paths: list[str],
    labels: np.ndarray,
    clip_samples: int,
    seed: int,
    first_epoch: int,
) -> Callable[[], Iterator[dict[str, np.ndarray | int]]]:
    # tf.data calls the generator once per iterator, i.e. per epoch
    epochs = itertools.count(first_epoch)

    def generate() -> Iterator[dict[str, np.ndarray | int]]:
        rng = np.random.default_rng([seed, next(epochs)])
        order = rng.permutation(len(paths))
        positions = rng.random(len(paths))  # drawn for all files, so crops do not depend on order
        for i in order:
            waveform = cache.get(paths[i])
            room = max(waveform.shape[0] - clip_samples, 0)
            start = int(positions[i] * (room + 1))
            yield {"waveform": _fit(waveform, start, clip_samples), "label": labels[i], "index": i}

    return generate


def _streamed_evaluation_elements(
    paths: list[str], labels: np.ndarray, clip_samples: int
) -> Callable[[], Iterator[dict[str, np.ndarray | int]]]:
    def generate() -> Iterator[dict[str, np.ndarray | int]]:
        for i, path in enumerate(paths):
            waveform = load_audio(path, SAMPLE_RATE)
            for w in range(num_windows(waveform.shape[0], clip_samples)):
                yield {"waveform": _fit(waveform, w * clip_samples, clip_samples), "label": labels[i], "index": i}

    return generate


def _evaluation_elements(
    cache: AudioCache, paths: list[str], labels: np.ndarray, clip_samples: int, windows: list[int]
) -> Callable[[], Iterator[dict[str, np.ndarray | int]]]:
    def generate() -> Iterator[dict[str, np.ndarray | int]]:
        for i, path in enumerate(paths):
            waveform = cache.get(path)
            for w in range(windows[i]):
                window = _fit(waveform, w * clip_samples, clip_samples)
                yield {"waveform": window, "label": labels[i], "index": i}

    return generate
