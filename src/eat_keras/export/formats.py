"""The formats ``eat-keras export`` writes, as one table: name → :class:`ExportFormat`.

The command reads everything about a format from here: its ``--format`` name and the help text of
the command, the flags of its own (one section of ``--help``), the check of those flags before any
model is loaded, the function that writes its artifacts and the ``wrote ...`` line printed for
each. Formats chosen together are written in table order. Adding a format is one
:func:`register_export_format` call::

    register_export_format(ExportFormat(
        name="onnx",
        help="ONNX for onnxruntime",
        write="my_package.onnx_export:write_onnx",  # or the function itself
        add_flags=add_onnx_flags,
    ))

A writer takes an :class:`ExportRequest` and returns what it wrote (paths, or records that
``describe`` turns into lines). This module imports no TensorFlow, so that ``eat-keras export
--help`` does not load it: the built-in writers import their exporter when they run.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eat_keras.errors import ConfigError
from eat_keras.export import options as export_options

__all__ = [
    "EXPORT_FORMATS",
    "ExportFormat",
    "ExportRequest",
    "chosen_formats",
    "register_export_format",
    "unregister_export_format",
]

# Names that fit ``--format NAME``.
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What a format's writer gets: the model, where to write it, and every flag of the command."""

    tagger: Any  # an AudioTagger, built
    out_dir: Path  # the parent folder (``--out``); a format writes under ``out_dir / name``
    name: str  # the model name, already checked to be one folder name
    options: Any  # the parsed flags (an argparse.Namespace); a format reads its own
    log: Callable[[str], None] = print  # progress lines (the command sends them to stderr)


def describe_path(artifact: Any) -> str:
    return f"wrote {artifact}"


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One entry of the table."""

    name: str
    help: str  # a few words, shown in the command's help
    # ExportRequest → the artifacts written, or its "module:function" (imported when it runs)
    write: Callable[[ExportRequest], Sequence[Any]] | str
    # an artifact → the line the command prints for it
    describe: Callable[[Any], str] = describe_path
    # adds the format's own flags to an argparse group headed ``flags_title``
    add_flags: Callable[[Any], None] | None = None
    flags_title: str = ""
    # refuses flags the format cannot use (one EatKerasError line) before the model is loaded
    check_flags: Callable[[Any], None] | None = None

    def writer(self) -> Callable[[ExportRequest], Sequence[Any]]:
        if callable(self.write):
            return self.write
        module, _, function = self.write.partition(":")
        return getattr(importlib.import_module(module), function)

    def title(self) -> str:
        return self.flags_title or f"{self.name} (--format {self.name})"


#: Every format ``eat-keras export`` can write, by name, in registration order.
EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(export_format: ExportFormat) -> ExportFormat:
    """Add ``export_format`` to the table; its name must be new."""
    if not _NAME.match(export_format.name):
        raise ValueError(f"export format names are lower-case identifiers, got {export_format.name!r}")
    if export_format.name in EXPORT_FORMATS:
        raise ValueError(f"an export format {export_format.name!r} is already registered")
    EXPORT_FORMATS[export_format.name] = export_format
    return export_format


def unregister_export_format(name: str) -> None:
    """Remove a format added by :func:`register_export_format` (tests and plugins that unload)."""
    EXPORT_FORMATS.pop(name, None)


def chosen_formats(names: Sequence[str]) -> list[ExportFormat]:
    """The formats called ``names``, each once, in table order."""
    unknown = sorted(set(names) - set(EXPORT_FORMATS))
    if unknown:
        raise ConfigError(f"export formats must be among {tuple(EXPORT_FORMATS)}, got {unknown}")
    return [export_format for name, export_format in EXPORT_FORMATS.items() if name in names]


# ---------------------------------------------------------------------------------------------------
# SavedModel


def add_saved_model_flags(group: Any) -> None:
    group.add_argument("--version", type=int, help="SavedModel version folder (default: next free integer)")


def check_saved_model_flags(options: Any) -> None:
    from eat_keras.export.saved_model import check_version

    check_version(options.version)


def write_saved_model(request: ExportRequest) -> list[Path]:
    from eat_keras.export.saved_model import export_saved_model

    return [export_saved_model(request.tagger, request.out_dir, request.name, request.options.version)]


def describe_saved_model(path: Path) -> str:
    return f"wrote SavedModel {path}"


# ---------------------------------------------------------------------------------------------------
# TFLite


def _words(values: Sequence[Any]) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def add_tflite_flags(group: Any) -> None:
    windows, quantizations, outputs = (
        export_options.DEFAULT_WINDOW_SECONDS, export_options.DEFAULT_QUANTIZATIONS, export_options.DEFAULT_OUTPUTS
    )  # fmt: skip
    group.add_argument(
        "--window-seconds", nargs="+", type=float, metavar="S",
        help=f"fixed input window(s) in seconds, one file per window (default: {_words(windows)}, plus a "
        "fine-tuned model's training clip length)",
    )  # fmt: skip
    group.add_argument(
        "--quantization", nargs="+", choices=export_options.QUANTIZATIONS, metavar="Q",
        help=f"{_words(export_options.QUANTIZATIONS)} (default: {_words(quantizations)}, plus int8 when calibration audio is known)",
    )  # fmt: skip
    group.add_argument(
        "--calibration", nargs="+", metavar="FILE",
        help="audio files to calibrate full int8 on (default: a fine-tuned model's training files, where its run "
        "folder lists them; int8 is then written too)",
    )  # fmt: skip
    group.add_argument(
        "--calibration-windows", type=int, default=export_options.DEFAULT_CALIBRATION_WINDOWS, metavar="N",
        help="at most N calibration windows, spread over the files (default: %(default)s)",
    )  # fmt: skip
    group.add_argument("--no-logmel", action="store_true", help="skip the log-mel-input files")
    group.add_argument(
        "--tflite-outputs", nargs="+", choices=export_options.OUTPUTS, default=list(outputs), metavar="OUT",
        help=f"output tensors, scores first (default: {_words(outputs)}; MediaPipe reads every output as a "
        "classifier head)",
    )  # fmt: skip
    group.add_argument("--no-metadata", action="store_true", help="write no MediaPipe metadata (no mediapipe needed)")
    group.add_argument(
        "--tflite-batch", action="store_true",
        help="also write files (*_batch.tflite) that take a batch of any size through the interpreter's "
        "resize_tensor_input, for servers: one invoke per batch",
    )  # fmt: skip


def tflite_calibration(request: ExportRequest) -> list[Any]:
    """``--calibration``, else the training files of the fine-tuning run the model comes from."""
    options = request.options
    if options.calibration:
        return list(options.calibration)
    from eat_keras.export.calibration import run_training_files

    found = run_training_files(getattr(options, "model", "") or "")
    if found is None:
        return []
    folder, files = found
    request.log(f"full int8: calibrating on the run's {len(files)} training files ({folder})")
    return files


def write_tflite(request: ExportRequest) -> list[Any]:
    from eat_keras.export.tflite import export_tflite

    options = request.options
    return export_tflite(
        request.tagger,
        request.out_dir,
        request.name,
        window_seconds=options.window_seconds,
        quantizations=options.quantization,
        calibration_files=tflite_calibration(request),
        max_calibration_windows=options.calibration_windows,
        log_mel=not options.no_logmel,
        outputs=options.tflite_outputs,
        metadata=not options.no_metadata,
        log=request.log,
        any_batch=options.tflite_batch,
    )


def describe_tflite(artifact: Any) -> str:
    size = artifact.path.stat().st_size / 1e6
    shape = "x".join(["N" if artifact.any_batch else "1", *map(str, artifact.input_shape[1:])])
    return f"wrote TFLite {artifact.path}  ({artifact.quantization}, {artifact.input_kind} {shape}, {size:.2f} MB)"


register_export_format(
    ExportFormat(
        name="saved_model",
        help="SavedModel for TF apps and TF Serving",
        write=write_saved_model,
        describe=describe_saved_model,
        add_flags=add_saved_model_flags,
        flags_title="SavedModel (--format saved_model): a version folder in OUT/NAME/",
        check_flags=check_saved_model_flags,
    )
)
register_export_format(
    ExportFormat(
        name="tflite",
        help="TFLite for LiteRT/MediaPipe",
        write=write_tflite,
        describe=describe_tflite,
        add_flags=add_tflite_flags,
        flags_title=f"TFLite (--format tflite): files in OUT/NAME/{export_options.TFLITE_DIR}/",
    )
)
