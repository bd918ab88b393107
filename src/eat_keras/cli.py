"""``eat-keras`` command line: presets, convert, tag, export, prepare, finetune, evaluate, verify.

Each sub-command is a ``cmd_*`` function and an ``_add_*_parser`` function; the finetune flags come
from :class:`~eat_keras.train.config.FinetuneConfig`, the export flags from the export table.

Errors caused by input (a missing or corrupt file, an unknown model, a mismatching checkpoint) are
printed as one line ``eat-keras: error: ...`` and give a non-zero exit; when tagging several files,
the others are still tagged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from eat_keras.errors import EatKerasError

DEFAULT_OUT = Path("saved_models")


def _error(message: str) -> None:
    one_line = " ".join(str(message).split())  # names quoted from a file may hold line breaks
    print(f"eat-keras: error: {one_line}", file=sys.stderr)


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
    if frontend:  # checked against the model's whole front-end before any weight file is fetched
        fields["frontend"] = frontend
    return fields


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from eat_keras.models.config import LABEL_TYPES

    g = p.add_argument_group("architecture overrides (only for what a weight file cannot tell)")
    g.add_argument("--weights", help="explicit path to the preset's weight file")
    g.add_argument("--strides", type=_parse_strides, help="strides of the 4 downsampling stages, e.g. 2211")
    g.add_argument("--hop", type=int, help="front-end hop length in samples (upstream hop_N: N*32)")
    g.add_argument("--n-mels", type=int, help="number of mel bins")
    g.add_argument("--label-type", choices=LABEL_TYPES, help="sigmoid or softmax scores")
    g.add_argument("--temperature", type=float, help="DyMN dynamic-conv temperature (1.0 for pretrained)")
    g.add_argument("--labels", help="class-name file (CSV index,mid,display_name or one name per line)")


def _model_name(source: str) -> str:
    path = Path(source)
    return path.resolve().name if path.is_dir() else path.stem if path.suffix else source


def cmd_convert(args: argparse.Namespace) -> int:
    from eat_keras.loading import load_tagger
    from eat_keras.models.saving import check_output_name, save_tagger

    out = Path(args.out) / check_output_name(args.name or _model_name(args.source))  # before loading
    tagger = load_tagger(args.source, args.weights, _overrides(args), args.labels)
    save_tagger(tagger, out, source=str(args.source))
    c = tagger.config
    print(
        f"wrote {out}  ({c.arch}, width {c.width_mult:g}, {c.head_type} head, {c.num_classes} classes, "
        f"strides {''.join(map(str, c.strides))}, hop {c.frontend.hop_length}, {c.frontend.n_mels} mels)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Each chosen format (``eat_keras.export.formats``) checks its flags, then writes in turn."""
    from eat_keras.export.formats import ExportRequest, chosen_formats
    from eat_keras.loading import load_tagger
    from eat_keras.models.saving import check_output_name

    name = check_output_name(args.name or _model_name(args.model))  # refused before any loading
    formats = chosen_formats(args.format)
    for export_format in formats:
        if export_format.check_flags is not None:
            export_format.check_flags(args)
    tagger = load_tagger(args.model, args.weights, _overrides(args), args.labels)
    request = ExportRequest(tagger, Path(args.out), name, args, lambda line: print(line, file=sys.stderr, flush=True))
    for export_format in formats:
        for artifact in export_format.writer()(request):
            print(export_format.describe(artifact))
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
    from eat_keras.audio import SAMPLE_RATE, seconds_to_samples
    from eat_keras.tagging import open_for_tagging, prepare_waveform, tag_waveform, tag_with, window_samples

    model = Path(args.model)
    is_tflite = model.suffix == ".tflite"
    if args.hop is not None and args.window is None and not is_tflite:  # a .tflite file fixes the window
        raise EatKerasError("--hop needs --window")
    if args.top_k < 1:
        raise EatKerasError(f"--top-k must be at least 1; got {args.top_k}")
    if is_tflite or (model / "saved_model.pb").is_file():
        # an exported artifact: the TFLite interpreter (XNNPACK) is the fastest way through long files
        from eat_keras.runners import load_runner

        runner = load_runner(model, args.labels)
        sr = SAMPLE_RATE
        fixed = runner.window_samples
        if fixed is not None and args.window is not None and seconds_to_samples(args.window, sr) != fixed:
            raise EatKerasError(f"{model.name} takes windows of {fixed / sr:g} s; --window {args.window:g} differs")
        window = fixed / sr if fixed is not None else args.window

        def tag_one(waveform: Any) -> list:
            return tag_with(runner.scores, runner.class_names, sr, waveform, args.top_k, window, args.hop, fixed_window=fixed is not None)
    else:
        from eat_keras.loading import load_tagger

        tagger = load_tagger(args.model, args.weights, None, args.labels)
        sr = tagger.config.frontend.sample_rate
        window, fixed = args.window, None

        def tag_one(waveform: Any) -> list:
            return tag_waveform(tagger, waveform, top_k=args.top_k, window_s=args.window, hop_s=args.hop)

    if window is not None:  # refuse bad lengths once, not once per file
        window_samples(window, args.hop, sr, fixed_window=fixed is not None)
    failures = 0
    documents = []
    for path in args.audio:
        try:
            # windowed tagging decodes a long file window by window; a whole file is length-capped
            with open_for_tagging(path, sr, windowed=window is not None) as waveform:
                results = tag_one(prepare_waveform(waveform, sr, path, args.pad_short))
        except EatKerasError as exc:
            failures += 1
            # audio errors name their file; a refusal while scoring (non-finite input) may not
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            _error(message)
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
            print(_format_text(path, results, window is not None), flush=True)
    if args.json:
        json.dump({"model": str(args.model), "results": documents}, sys.stdout, indent=1)
        print()
    return 1 if failures else 0


def _parse_loss_terms(items: list[str]) -> dict[str, float]:
    """Names and weights are checked by the training configuration (known names, a weight > 0)."""
    from eat_keras.train.loss_table import LOSS_TERMS

    terms = {}
    for item in items:
        name, _, weight = item.partition("=")
        if name in terms:
            raise EatKerasError(f"--loss names {name!r} twice")
        try:
            terms[name] = float(weight) if weight else 1.0
        except ValueError:
            names = ", ".join(LOSS_TERMS)
            raise EatKerasError(f"--loss expects NAME=WEIGHT items ({names}), got {item!r}") from None
    return terms


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    return tf.distribute.get_strategy()


def _finetune_config(args: argparse.Namespace):
    """The FinetuneConfig of the flags given; every other field keeps FinetuneConfig's default."""
    import dataclasses

    from eat_keras.train.config import FinetuneConfig
    from eat_keras.train.loss_table import loss_settings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig) if hasattr(args, f.name)}
    if "loss_terms" in given:
        given["loss_terms"] = _parse_loss_terms(given["loss_terms"])
    settings = {name: getattr(args, name) for name in loss_settings() if hasattr(args, name)}
    if settings:
        given["loss_settings"] = settings
    return FinetuneConfig(**given)


def cmd_finetune(args: argparse.Namespace) -> int:
    from eat_keras.train.prepare import MANIFEST_NAME

    config = _finetune_config(args)  # bad settings and a bad manifest fail before TensorFlow is imported
    _check_processes(args.processes)
    if (Path(args.data) / MANIFEST_NAME).is_file():
        data: Any = Path(args.data)  # prepared already: its split is the run's
    else:
        from eat_keras.train.data import read_dataset

        data = read_dataset(args.data, group_pattern=config.group_pattern)  # a bad pattern fails before TensorFlow
    from eat_keras.train.fit import finetune

    result = finetune(data, args.out, config, _strategy(args.strategy), processes=args.processes, on_error=args.on_error)
    print(f"best {config.monitor} {result.best_metric:.4f} at epoch {result.best_epoch}: {result.best_dir}")
    if result.test_report is not None:
        from eat_keras.train.metrics import write_report_files

        write_report_files(result.test_report, Path(args.out) / "test_eval")
        print(result.test_report.summary())
    return 0


def _check_processes(processes: int) -> None:
    from eat_keras.errors import ConfigError

    if processes < 1:
        raise ConfigError(f"--processes must be at least 1; got {processes}")


def _check_evaluation_flags(args: argparse.Namespace) -> None:
    """Refuse a batch size or window no evaluation can use before any model is loaded."""
    import math

    from eat_keras.errors import ConfigError
    from eat_keras.tagging import MIN_SECONDS

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.clip_seconds is not None and not (math.isfinite(args.clip_seconds) and args.clip_seconds >= MIN_SECONDS):
        raise ConfigError(f"--clip-seconds must be at least {MIN_SECONDS:g} s; got {args.clip_seconds:g}")


def _evaluation_data(args: argparse.Namespace) -> Any:
    """The files to evaluate: audio files (``--folds`` of a manifest), or one side of a prepared
    folder (``--side``; default its test side, else its validation side), read from its shards."""
    from eat_keras.train.prepare import MANIFEST_NAME

    if not (Path(args.data) / MANIFEST_NAME).is_file():
        from eat_keras.train.data import read_dataset

        if args.side:
            raise EatKerasError("--side selects a side of a prepared folder; use --folds for a manifest")
        return read_dataset(args.data, args.folds)
    from eat_keras.train.evaluate import PreparedSide
    from eat_keras.train.prepare import read_prepared

    if args.folds:
        raise EatKerasError("--folds selects folds of a manifest; a prepared folder is evaluated by --side")
    prepared = read_prepared(args.data)
    side = args.side or ("test" if prepared.entries("test") else "val")
    if not prepared.entries(side):
        raise EatKerasError(f"{args.data}: no prepared files on the {side} side")
    print(f"{args.data}: the {side} side, {len(prepared.entries(side))} files", flush=True)
    return PreparedSide(prepared, side)


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_evaluation_flags(args)  # before TensorFlow is imported: a typo fails at once
    from eat_keras.runners import evaluation_window, load_runner
    from eat_keras.train.evaluate import evaluate
    from eat_keras.train.metrics import write_report_files

    runner = load_runner(args.model, args.labels)
    examples = _evaluation_data(args)
    window = evaluation_window(runner, args.clip_seconds)
    print(f"{runner.name}: {window.describe()}, each file's windows averaged", flush=True)
    report, _ = evaluate(
        runner.logits, examples, runner.class_names, window.samples, batch_size=args.batch_size, progress="evaluate"
    )
    print(report.summary())
    out = Path(args.out) if args.out else Path(f"eval-{_model_name(args.model)}")
    for path in write_report_files(report, out):
        print(f"wrote {path}")
    return 0


def _in_class_order(runner: Any, class_names: list[str]) -> Any:
    """``runner``'s logits with their columns in the order of ``class_names`` (a student and its
    teacher may list the same classes in another order); other classes are refused."""
    if runner.class_names == class_names:
        return runner.logits
    if sorted(runner.class_names) != sorted(class_names):
        raise EatKerasError("the two artifacts have different class names")
    order = [runner.class_names.index(name) for name in class_names]
    return lambda waveforms: runner.logits(waveforms)[:, order]


def cmd_verify(args: argparse.Namespace) -> int:
    _check_evaluation_flags(args)  # before TensorFlow is imported: a typo fails at once
    from eat_keras.runners import evaluation_window, load_runner
    from eat_keras.train.evaluate import verify

    runner_a = load_runner(args.a, args.labels)
    runner_b = load_runner(args.b, args.labels, reference=runner_a)
    logits_b = _in_class_order(runner_b, runner_a.class_names)
    examples = _evaluation_data(args)
    windows = [evaluation_window(runner, args.clip_seconds) for runner in (runner_a, runner_b)]
    for side, runner, window in zip("AB", (runner_a, runner_b), windows):
        print(f"{side} {runner.name}: {window.describe()}, each file's windows averaged", flush=True)
    result = verify(
        runner_a.logits, logits_b, examples, runner_a.class_names,
        (windows[0].samples, windows[1].samples), args.batch_size,
        centre_rows=not (runner_a.logits_exact and runner_b.logits_exact), progress=True,
        label_type=runner_a.label_type or runner_b.label_type,
    )
    print(result.summary(runner_a.name, runner_b.name))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from eat_keras.presets import PRESETS

    for p in PRESETS.values():
        c = p.config
        mAP = f"{p.published_map:.3f}" if p.published_map is not None else "  -  "
        params = f"{p.published_params_m:g} M" if p.published_params_m is not None else "-"
        print(f"{p.name:24s} {c.arch:4s} w{c.width_mult:<4g} {c.head_type:19s} mAP {mAP}  {params:9s} {p.description}")
    return 0


def _shown(value: Any) -> str:
    """A default as ``--help`` shows it, in the form the flag takes."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, dict):
        return " ".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _with_default(help: str, default: Any) -> str:
    """The help text with its default, unless the text says the default itself (one chosen from the data)."""
    return help if "(default:" in help else f"{help} (default: {_shown(default)})"


def _flag_options(hint: Any, default: Any) -> dict[str, Any]:
    """argparse options for a field of type ``hint``: a switch, a list (``nargs``) or one value."""
    import types
    import typing

    if hint is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if isinstance(hint, types.UnionType):  # X | None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (list, dict):
        return {"nargs": "+"}
    return {"type": hint}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field, its help and default from the field, and one per loss
    setting from the loss table. A flag that is not given passes nothing on: the run gets
    FinetuneConfig's default, the value the help shows."""
    import dataclasses
    import typing

    from eat_keras.train.config import FinetuneConfig
    from eat_keras.train.loss_table import LOSS_TERMS, loss_settings

    defaults, hints = FinetuneConfig(), typing.get_type_hints(FinetuneConfig)
    terms = "; ".join(f"{name}: {term.help}" for name, term in LOSS_TERMS.items())
    loss_group = p.add_argument_group("loss", f"terms ({terms}) and their settings")
    for field in dataclasses.fields(FinetuneConfig):
        if field.name == "loss_settings":
            for setting in loss_settings().values():
                loss_group.add_argument(
                    "--" + setting.name.replace("_", "-"), dest=setting.name, type=float, default=argparse.SUPPRESS,
                    help=f"{setting.help}; {setting.allowed()} (default: {_shown(setting.default)})",
                )  # fmt: skip
            continue
        default = getattr(defaults, field.name)
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        options = _flag_options(hints[field.name], default)
        if field.metadata.get("repeatable"):
            options["action"] = "extend"  # --teacher A --teacher B
            options["metavar"] = flag.lstrip("-").upper().replace("-", "_")
        elif "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        elif "action" not in options:
            options["metavar"] = "NAME=WEIGHT" if field.name == "loss_terms" else flag.lstrip("-").upper().replace("-", "_")
        (loss_group if field.name == "loss_terms" else p).add_argument(
            flag, dest=field.name, default=argparse.SUPPRESS,
            help=_with_default(field.metadata["help"], default), **options,
        )  # fmt: skip


def _add_finetune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained model on a labelled folder or CSV manifest",
        description="Fine-tune a pretrained model; run the same command again to resume. The audio is first "
        "decoded once into RUN/prepared (TFRecord shards), then streamed.",
    )  # fmt: skip
    p.add_argument(
        "data", help="folder with one sub-folder per class, CSV manifest (path,label[,group,split,fold]), "
        "ESC-50 style meta CSV, or a folder made by eat-keras prepare (its split is the run's)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, best/); re-run to resume")
    _add_config_flags(p)
    _add_decoding_flags(p)
    p.add_argument(
        "--strategy", choices=("default", "mirrored", "multi_worker"), default="default",
        help="tf.distribute strategy: several GPUs (mirrored) or workers from TF_CONFIG (default: default)",
    )  # fmt: skip
    p.set_defaults(func=cmd_finetune)


def _add_evaluation_parsers(sub: Any) -> None:
    """``evaluate`` (one artifact) and ``verify`` (two artifacts compared) share their data flags."""
    for name, helptext in (
        ("evaluate", "accuracy, macro-F1, per-class precision/recall and confusion matrix of a model"),
        ("verify", "run two artifacts of one model on the same files and compare"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "evaluate":
            p.add_argument("model", help="model folder, preset, SavedModel folder, .tflite or .onnx")
            p.add_argument("--out", help="folder for metrics.json, CSVs and confusion_matrix.png")
        else:
            p.add_argument("a", help="reference artifact (e.g. the fine-tuned model folder)")
            p.add_argument("b", help="artifact to check (SavedModel folder, .tflite, .onnx)")
        p.add_argument("data", help="folder of class folders, CSV manifest, or a folder made by eat-keras prepare")
        p.add_argument("--folds", nargs="+", help="only these folds of a manifest")
        p.add_argument("--side", choices=("train", "val", "test"), help="side of a prepared folder (default: test, else val)")
        p.add_argument("--clip-seconds", type=float, help="evaluation window (default: the training clip length)")
        p.add_argument("--batch-size", type=int, default=16, help="windows per batch (default: 16)")
        p.add_argument("--labels", help="class-name file (CSV index,mid,display_name or one name per line); overrides the artifacts' own")
        p.set_defaults(func=cmd_evaluate if name == "evaluate" else cmd_verify)


def cmd_teacher_logits(args: argparse.Namespace) -> int:
    _check_evaluation_flags(args)  # before TensorFlow is imported: a typo fails at once
    from eat_keras.train.teacher import compute_teacher_logits

    count, seconds = compute_teacher_logits(
        args.teachers, args.data, args.out, args.clip_seconds, args.batch_size, args.unlabelled
    )
    print(f"wrote {args.out}: teacher logits of {count} files in windows of {seconds:g} s")
    return 0


def _add_teacher_logits_parser(sub: Any) -> None:
    p = sub.add_parser(
        "teacher-logits", help="score training files with teacher model(s) once, for finetune --teacher-logits",
        description="Run one or more teachers (their logits averaged) over consecutive windows of every training file "
        "and write the logits, keyed by path, for eat-keras finetune --teacher-logits FILE.",
    )  # fmt: skip
    p.add_argument("teachers", nargs="+", help="model folders (a run's best/), presets, weight files or SavedModels")
    p.add_argument("data", help="a folder made by eat-keras prepare (its training side), or a data set (all its files)")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--unlabelled", help="folder of unlabelled audio to score as well (with a data set)")
    p.add_argument("--clip-seconds", type=float, help="window length (default: the clip length finetune chooses for the files)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per batch (default: 16)")
    p.set_defaults(func=cmd_teacher_logits)


def _add_presets_parser(sub: Any) -> None:
    p = sub.add_parser("presets", help="list the pretrained models")
    p.set_defaults(func=cmd_presets)


def cmd_prepare(args: argparse.Namespace) -> int:
    from eat_keras.train.data import read_dataset
    from eat_keras.train.prepare import PrepareSettings, prepare

    _check_processes(args.processes)
    settings = PrepareSettings(
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, val_folds=args.val_folds,
        test_folds=args.test_folds, files_per_shard=args.files_per_shard, min_shards=args.min_shards,
    )  # fmt: skip
    beam_options = getattr(args, "pipeline_args", [])
    if beam_options and args.runner is None:
        raise EatKerasError(f"unrecognized arguments: {' '.join(beam_options)} (Beam pipeline options need --runner)")
    examples = read_dataset(args.data, group_pattern=args.group_pattern)  # finetune's groups, so its split
    if args.runner is not None:  # the same shards and manifest, written by Beam workers
        from eat_keras.beam.cli import prepare_on_beam

        prepared = prepare_on_beam(args, examples, settings)
    else:
        prepared = prepare(
            examples, args.out, settings, processes=args.processes, on_error=args.on_error, source=str(Path(args.data).resolve())
        )
    sides = []
    for side in ("train", "val", "test"):
        if prepared.shard_paths(side):
            sides.append(f"{side} {len(prepared.entries(side))} files in {len(prepared.shard_paths(side))} shards")
    skipped = len(prepared.manifest["skipped"])
    print(f"prepared {args.out}: {', '.join(sides)}{f', {skipped} bad file(s) skipped' if skipped else ''}")
    return 0


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-error", choices=("fail", "skip"), default="fail",
        help="a file that cannot be decoded stops the run, or is named and left out (default: fail)",
    )  # fmt: skip
    p.add_argument("--processes", type=int, default=2, help="decoding processes (default: 2)")


def _add_prepare_parser(sub: Any) -> None:
    from eat_keras.train.config import FinetuneConfig
    from eat_keras.train.prepare import PrepareSettings

    split, shards = FinetuneConfig(), PrepareSettings()  # the split finetune would make
    p = sub.add_parser(
        "prepare", help="decode and resample a data set once into TFRecord shards for training and evaluation",
        description="Decode every file once (32 kHz mono, 16-bit) into sharded TFRecord files with a manifest "
        "(prepared.json); run the same command again to finish an interrupted run.",
    )  # fmt: skip
    p.add_argument("data", help="folder with one sub-folder per class, CSV manifest or ESC-50 style meta CSV")
    p.add_argument("--out", required=True, help="folder for the shards and prepared.json")
    _add_decoding_flags(p)
    p.add_argument("--files-per-shard", type=int, default=shards.files_per_shard, help="files per shard (default: %(default)s)")
    p.add_argument("--min-shards", type=int, default=shards.min_shards, help="shards per side at least, so that each worker reads its own (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=split.val_fraction, help="share of each class held out for validation (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=split.test_fraction, help="share of each class held out for testing (default: %(default)s)")
    p.add_argument("--val-folds", nargs="+", help="folds for validation (manifests with a fold column)")
    p.add_argument("--test-folds", nargs="+", help="folds held out for testing")
    p.add_argument("--seed", type=int, default=split.seed, help="seed of the split (default: %(default)s)")
    group_help = next(f.metadata["help"] for f in dataclasses.fields(FinetuneConfig) if f.name == "group_pattern")
    p.add_argument("--group-pattern", help=group_help)
    from eat_keras.beam.cli import add_runner_flag

    runner_help = "write the shards on this Apache Beam runner (FnApiRunner, DataflowRunner, FlinkRunner, ...) instead of"
    add_runner_flag(p, f"{runner_help} local processes; further Beam options as --name=value (docs/beam.md)")
    p.set_defaults(func=cmd_prepare)


def _add_convert_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a preset, .pt or .onnx into an eat-keras model folder")
    p.add_argument("source", help="preset name (e.g. mn04_as), upstream .pt state dict or exported .onnx")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="parent folder (default: saved_models/)")
    p.add_argument("--name", help="folder name (default: preset name or file stem)")
    _add_model_flags(p)
    p.set_defaults(func=cmd_convert)


def _add_export_parser(sub: Any) -> None:
    """The formats, their help and their flags come from the export table."""
    from eat_keras.export.formats import EXPORT_FORMATS
    from eat_keras.export.options import DEFAULT_FORMATS

    formats = EXPORT_FORMATS.values()
    p = sub.add_parser("export", help=f"write deployable artifacts ({', '.join(f.help for f in formats)})")
    p.add_argument("model", help="preset name, .pt/.onnx file, or eat-keras model folder")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="parent folder (default: saved_models/)")
    p.add_argument("--name", help="model name (default: preset name, file stem or folder name)")
    p.add_argument(
        "--format", nargs="+", choices=tuple(EXPORT_FORMATS), default=list(DEFAULT_FORMATS),
        help=f"formats to write, in the order of the choices (default: {' '.join(DEFAULT_FORMATS)})",
    )  # fmt: skip
    for export_format in formats:
        if export_format.add_flags is not None:
            export_format.add_flags(p.add_argument_group(export_format.title()))
    _add_model_flags(p)
    p.set_defaults(func=cmd_export)


def _add_tag_parser(sub: Any) -> None:
    p = sub.add_parser("tag", help="print the top labels of audio files")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg; any sample rate; mixed to mono)")
    p.add_argument(
        "--model", required=True,
        help="preset name, .pt/.onnx file, converted model folder, or an exported SavedModel folder or .tflite file",
    )
    p.add_argument("--weights", help="explicit path to the preset's weight file")
    p.add_argument("--labels", help="class-name file overriding the model's")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--window", type=float, help="window length in seconds, 1 to 60 (default: the whole file, up to 60 s)")
    p.add_argument("--hop", type=float, help="window hop in seconds, at least 0.1 (default: the window length)")
    p.add_argument("--pad-short", action="store_true", help="zero-pad files shorter than 1 s instead of refusing them")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_tag)


def build_parser() -> argparse.ArgumentParser:
    from eat_keras import __version__

    parser = argparse.ArgumentParser(prog="eat-keras", description="EfficientAT audio taggers in TensorFlow/Keras")
    parser.add_argument("--version", action="version", version=f"eat-keras {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's start-up and log lines (hidden by default)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    _add_convert_parser(sub)
    _add_export_parser(sub)
    _add_tag_parser(sub)
    _add_finetune_parser(sub)
    _add_evaluation_parsers(sub)
    _add_presets_parser(sub)
    _add_prepare_parser(sub)
    _add_teacher_logits_parser(sub)
    _add_tag_corpus_parser(sub)
    return parser


def _add_tag_corpus_parser(sub: Any) -> None:
    from eat_keras.beam.cli import add_tag_corpus_parser  # imports neither Beam nor TensorFlow

    add_tag_corpus_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # the Beam commands pass the flags they do not define on as pipeline options
    args, pipeline_args = parser.parse_known_args(argv)
    args.pipeline_args = pipeline_args
    if args.pipeline_args and not getattr(args, "takes_pipeline_options", False):
        parser.error(f"unrecognized arguments: {' '.join(args.pipeline_args)}")
    if args.verbose:
        return _run(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's own INFO and WARNING lines
    from eat_keras.quiet import native_log_lines_dropped

    with native_log_lines_dropped():  # and those it writes before its logging is set up
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except EatKerasError as exc:
        _error(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
