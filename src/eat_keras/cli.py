"""``eat-keras`` command line: convert, tag, presets.

Errors caused by input (a missing or corrupt file, an unknown model, a mismatching checkpoint) are
printed as one line ``eat-keras: error: ...`` and give a non-zero exit; when tagging several files,
the others are still tagged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from eat_keras.errors import EatKerasError

DEFAULT_OUT = Path("saved_models")


def _error(message: str) -> None:
    print(f"eat-keras: error: {message}", file=sys.stderr)


def _parse_strides(text: str) -> tuple[int, int, int, int]:
    digits = text.replace(",", "").replace(" ", "")
    if len(digits) != 4 or any(d not in "12" for d in digits):
        raise argparse.ArgumentTypeError(f"strides must be four digits of 1 or 2, e.g. 2211; got {text!r}")
    return tuple(int(d) for d in digits)  # type: ignore[return-value]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig overrides from the architecture flags that were given."""
    fields: dict[str, Any] = {}
    if args.strides is not None:
        fields["strides"] = args.strides
    if args.label_type is not None:
        fields["label_type"] = args.label_type
    if args.temperature is not None:
        fields["dyconv_temperature"] = args.temperature
    frontend = {}
    if args.hop is not None:
        frontend["hop_length"] = args.hop
    if args.n_mels is not None:
        frontend["n_mels"] = args.n_mels
    if frontend:
        fields["frontend"] = frontend
    return fields


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture overrides (only for what a weight file cannot tell)")
    g.add_argument("--weights", help="explicit path to the preset's weight file")
    g.add_argument("--strides", type=_parse_strides, help="strides of the 4 downsampling stages, e.g. 2211")
    g.add_argument("--hop", type=int, help="front-end hop length in samples (upstream hop_N: N*32)")
    g.add_argument("--n-mels", type=int, help="number of mel bins")
    g.add_argument("--label-type", choices=("multi_label", "single_label"), help="sigmoid or softmax scores")
    g.add_argument("--temperature", type=float, help="DyMN dynamic-conv temperature (1.0 for pretrained)")
    g.add_argument("--labels", help="class-name file (CSV index,mid,display_name or one name per line)")


def _model_name(source: str) -> str:
    path = Path(source)
    return path.name if path.is_dir() else path.stem if path.suffix else source


def cmd_convert(args: argparse.Namespace) -> int:
    from eat_keras.loading import load_tagger
    from eat_keras.models.saving import save_tagger

    tagger = load_tagger(args.source, args.weights, _overrides(args), args.labels)
    out = Path(args.out) / (args.name or _model_name(args.source))
    save_tagger(tagger, out, source=str(args.source))
    c = tagger.config
    print(
        f"wrote {out}  ({c.arch}, width {c.width_mult:g}, {c.head_type} head, {c.num_classes} classes, "
        f"strides {''.join(map(str, c.strides))}, hop {c.frontend.hop_length}, {c.frontend.n_mels} mels)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from eat_keras.export.saved_model import export_saved_model
    from eat_keras.loading import load_tagger

    tagger = load_tagger(args.model, args.weights, _overrides(args), args.labels)
    name = args.name or _model_name(args.model)
    if "saved_model" in args.format:
        path = export_saved_model(tagger, args.out, name, args.version)
        print(f"wrote SavedModel {path}")
    return 0


def _format_text(path: str, results: list, windowed: bool) -> str:
    lines = [path]
    for r in results:
        indent = "  "
        if windowed:
            lines.append(f"  [{r.start:8.2f} s - {r.end:8.2f} s]")
            indent = "    "
        width = max(len(t.label) for t in r.top)
        lines += [f"{indent}{t.label:<{width}}  {t.score:.4f}" for t in r.top]
    return "\n".join(lines)


def cmd_tag(args: argparse.Namespace) -> int:
    from eat_keras.audio import load_audio
    from eat_keras.loading import load_tagger
    from eat_keras.tagging import prepare_waveform, tag_waveform

    if args.hop is not None and args.window is None:
        raise EatKerasError("--hop needs --window")
    tagger = load_tagger(args.model, args.weights, None, args.labels)
    sr = tagger.config.frontend.sample_rate
    failures = 0
    documents = []
    for path in args.audio:
        try:
            waveform = prepare_waveform(load_audio(path, sr), sr, path, args.pad_short)
            results = tag_waveform(tagger, waveform, args.top_k, args.window, args.hop)
        except EatKerasError as exc:
            failures += 1
            _error(str(exc))
            documents.append({"file": path, "error": str(exc)})
            continue
        if args.json:
            documents.append(
                {
                    "file": path,
                    "windows": [
                        {
                            "start": r.start,
                            "end": r.end,
                            "labels": [{"index": t.index, "label": t.label, "score": round(t.score, 6)} for t in r.top],
                        }
                        for r in results
                    ],
                }
            )
        else:
            print(_format_text(path, results, args.window is not None), flush=True)
    if args.json:
        json.dump({"model": str(args.model), "results": documents}, sys.stdout, indent=1)
        print()
    return 1 if failures else 0


def cmd_presets(args: argparse.Namespace) -> int:
    from eat_keras.presets import PRESETS

    for p in PRESETS.values():
        c = p.config
        mAP = f"{p.published_map:.3f}" if p.published_map is not None else "  -  "
        params = f"{p.published_params_m:g} M" if p.published_params_m is not None else "-"
        print(f"{p.name:24s} {c.arch:4s} w{c.width_mult:<4g} {c.head_type:19s} mAP {mAP}  {params:9s} {p.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from eat_keras import __version__

    parser = argparse.ArgumentParser(prog="eat-keras", description="EfficientAT audio taggers in TensorFlow/Keras")
    parser.add_argument("--version", action="version", version=f"eat-keras {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a preset, .pt or .onnx into an eat-keras model folder")
    p.add_argument("source", help="preset name (e.g. mn04_as), upstream .pt state dict or exported .onnx")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="parent folder (default: saved_models/)")
    p.add_argument("--name", help="folder name (default: preset name or file stem)")
    _add_model_flags(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="write deployable artifacts (SavedModel for TF apps and TF Serving)")
    p.add_argument("model", help="preset name, .pt/.onnx file, or eat-keras model folder")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="parent folder (default: saved_models/)")
    p.add_argument("--name", help="model name (default: preset name, file stem or folder name)")
    p.add_argument("--format", nargs="+", choices=("saved_model",), default=["saved_model"])
    p.add_argument("--version", type=int, help="SavedModel version folder (default: next free integer)")
    _add_model_flags(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("tag", help="print the top labels of audio files")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg; any sample rate; mixed to mono)")
    p.add_argument("--model", required=True, help="preset name, .pt/.onnx file, or converted model folder")
    p.add_argument("--weights", help="explicit path to the preset's weight file")
    p.add_argument("--labels", help="class-name file overriding the model's")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--window", type=float, help="window length in seconds (default: whole file)")
    p.add_argument("--hop", type=float, help="window hop in seconds (default: the window length)")
    p.add_argument("--pad-short", action="store_true", help="zero-pad files shorter than 1 s instead of refusing them")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("presets", help="list the pretrained models")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter off the terminal
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EatKerasError as exc:
        _error(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
