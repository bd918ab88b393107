"""Adding an export format is one entry in the public table; ``eat-keras export`` reads the rest.

A toy format (a text file of the class names, with a flag of its own) is registered here and
written through the command line from a tiny model folder. The built-in formats' flags show the
exporters' own defaults.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from eat_keras.cli import build_parser, main
from eat_keras.errors import ConfigError
from eat_keras.export.formats import (
    EXPORT_FORMATS,
    ExportFormat,
    ExportRequest,
    chosen_formats,
    register_export_format,
    unregister_export_format,
)
from eat_keras.export.options import DEFAULT_FORMATS

NAMES = ["dog", "rain", "crying baby"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from eat_keras.models import ModelConfig, build_tagger
    from eat_keras.models.saving import save_tagger

    tagger = build_tagger(ModelConfig(width_mult=0.1, num_classes=len(NAMES)), class_names=NAMES)
    return save_tagger(tagger, tmp_path_factory.mktemp("table") / "tiny")


def _add_toy_flags(group) -> None:
    group.add_argument("--toy-greeting", default="hello", help="first line of the toy file")


def _check_toy_flags(options) -> None:
    if not options.toy_greeting.strip():
        raise ConfigError("--toy-greeting must not be blank")


@pytest.fixture
def toy_requests() -> Iterator[list[ExportRequest]]:
    """Registers the toy format; the list collects the requests its writer was given."""
    requests: list[ExportRequest] = []

    def write(request: ExportRequest) -> list[Path]:
        requests.append(request)
        path = request.out_dir / request.name / "toy.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([request.options.toy_greeting, *request.tagger.class_names]))
        return [path]

    register_export_format(
        ExportFormat(
            name="toy", help="class names as text", write=write, describe=lambda path: f"wrote toy {path}",
            add_flags=_add_toy_flags, check_flags=_check_toy_flags,
        )
    )  # fmt: skip
    yield requests
    unregister_export_format("toy")


def _export_parser() -> argparse.ArgumentParser:
    (subcommands,) = [a for a in build_parser()._actions if a.dest == "command"]
    return subcommands.choices["export"]


def test_export_offers_the_tables_formats_and_their_flags(toy_requests, capsys):
    (format_flag,) = [a for a in _export_parser()._actions if a.dest == "format"]
    assert tuple(format_flag.choices) == tuple(EXPORT_FORMATS) == ("saved_model", "tflite", "toy")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = capsys.readouterr().out
    assert "toy (--format toy):\n  --toy-greeting" in help_text
    assert "(SavedModel for TF apps and TF Serving, TFLite for LiteRT/MediaPipe, class names as text)" in (
        " ".join(build_parser().format_help().split())
    )


def test_a_registered_format_is_written_by_export(toy_requests, tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["export", str(tiny_folder), "--out", str(out), "--format", "toy", "--toy-greeting", "hi"]
    assert main(argv) == 0
    written = out / "tiny" / "toy.txt"
    assert capsys.readouterr().out.splitlines() == [f"wrote toy {written}"]
    assert written.read_text().splitlines() == ["hi", *NAMES]
    assert sorted(p.name for p in (out / "tiny").iterdir()) == ["toy.txt"]  # no SavedModel: not chosen
    (request,) = toy_requests
    assert request.name == "tiny" and request.tagger.config.num_classes == len(NAMES)


def test_a_formats_flags_are_checked_before_the_model_is_loaded(toy_requests, tmp_path, capsys, monkeypatch):
    import eat_keras.loading

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eat_keras.loading, "load_tagger", never)
    code = main(["export", "mn04_as", "--out", str(tmp_path), "--format", "toy", "--toy-greeting", " "])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == ["eat-keras: error: --toy-greeting must not be blank"]
    assert toy_requests == [] and list(tmp_path.iterdir()) == []


def test_formats_chosen_together_are_written_once_each_in_table_order(toy_requests):
    chosen = chosen_formats(["toy", "saved_model", "toy"])
    assert [f.name for f in chosen] == ["saved_model", "toy"]
    with pytest.raises(ConfigError, match="'onnx'"):
        chosen_formats(["onnx"])


@pytest.mark.parametrize("name", ["saved_model", "Toy", "to-y", ""])
def test_registration_refuses_a_taken_or_unusable_name(name):
    with pytest.raises(ValueError):
        register_export_format(ExportFormat(name=name, help="", write="x:y"))
    assert tuple(EXPORT_FORMATS) == ("saved_model", "tflite")


def test_a_writer_named_by_text_is_imported_when_it_runs():
    assert ExportFormat(name="x", help="", write="eat_keras.export.formats:chosen_formats").writer() is chosen_formats


def test_export_flags_default_to_the_exporters_defaults():
    """The command line's defaults are the library's: export_tflite's signature and the options module."""
    from eat_keras.export.tflite import export_tflite

    args = _export_parser().parse_args(["mn04_as"])
    library = inspect.signature(export_tflite).parameters
    assert tuple(args.format) == DEFAULT_FORMATS
    assert args.window_seconds is library["window_seconds"].default is None  # default_windows(tagger)
    assert args.calibration_windows == library["max_calibration_windows"].default
    assert tuple(args.tflite_outputs) == tuple(library["outputs"].default)
    assert args.quantization is library["quantizations"].default is None
    assert args.version is None  # SavedModel: the next free version
