"""``eat-keras tag-corpus`` and ``eat-keras prepare --runner``: the corpus jobs on Apache Beam.

Building the parser imports neither Beam nor TensorFlow (``eat-keras --help`` stays fast); the
commands import them when they run. Flags the command does not define are Beam pipeline options,
passed through as ``--name=value`` (``--project=...``, ``--temp_location=...``,
``--direct_num_workers=2``): ``args.pipeline_args``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_runner_flag", "add_tag_corpus_parser", "cmd_tag_corpus", "prepare_on_beam"]

RUNNER_HELP = (
    "Apache Beam runner: FnApiRunner (in this process; the default), DataflowRunner, FlinkRunner, SparkRunner, "
    "...; further Beam pipeline options pass through as --name=value (see docs/beam.md)"
)


def add_runner_flag(p: argparse.ArgumentParser, help: str = RUNNER_HELP) -> None:
    p.add_argument("--runner", help=help)
    p.set_defaults(takes_pipeline_options=True)


def add_tag_corpus_parser(sub: Any) -> None:
    from eat_keras.tagging import MAX_INPUT_SECONDS

    p = sub.add_parser(
        "tag-corpus", help="tag every file that patterns match, on Apache Beam (this machine, Dataflow, Flink, Spark)",
        description="Tag a whole archive on Apache Beam: the top labels of every file or window, as eat-keras tag "
        "--json gives them, written as jsonl, csv or parquet into OUT (tags-RUN-*), and the files that could not be "
        "tagged into OUT/errors-RUN-*.jsonl. Further flags are Beam pipeline options (--name=value).",
    )  # fmt: skip
    p.add_argument(
        "patterns", nargs="+", metavar="PATTERN",
        help="files or patterns (* within a folder, ** across folders; gs://... and other Beam file systems)",
    )  # fmt: skip
    p.add_argument(
        "--model", required=True,
        help="preset name, .pt/.onnx file or model folder (exported once), or an exported SavedModel folder",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (a local path or a Beam file system URL)")
    p.add_argument("--weights", help="explicit path to the preset's weight file")
    p.add_argument("--labels", help="class-name file overriding the model's")
    p.add_argument("--top-k", type=int, default=10, help="labels per window (default: %(default)s)")
    longest = f"{MAX_INPUT_SECONDS:g}"
    p.add_argument(
        "--window", type=float,
        help=f"window length in seconds, 1 to {longest} (default: the whole file, up to {longest} s)",
    )  # fmt: skip
    p.add_argument("--hop", type=float, help="window hop in seconds, at least 0.1 (default: the window length)")
    p.add_argument("--pad-short", action="store_true", help="zero-pad files shorter than 1 s instead of refusing them")
    p.add_argument("--all-scores", action="store_true", help="also write the score of every class")
    p.add_argument("--embeddings", action="store_true", help="also write each window's embedding")
    formats = ("jsonl", "csv", "parquet")
    p.add_argument("--format", nargs="+", choices=formats, default=["jsonl"], help="output formats (default: jsonl)")
    p.add_argument("--skip-done", action="store_true", help="tag only the files earlier outputs in OUT do not hold")
    p.add_argument("--batch-size", type=int, default=8, help="windows per model call at most (default: %(default)s)")
    add_runner_flag(p)
    p.set_defaults(func=cmd_tag_corpus)


@contextlib.contextmanager
def beam_logs_quieted(args: argparse.Namespace) -> Iterator[None]:
    """Beam logs warnings on the root logger (missing cloud clients, its own notices); without
    ``--verbose`` only errors reach the terminal during the command, as with TensorFlow's lines."""
    root = logging.getLogger()
    level = root.level
    if not getattr(args, "verbose", False):
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def cmd_tag_corpus(args: argparse.Namespace) -> int:
    with beam_logs_quieted(args):
        return _tag_corpus(args)


def _tag_corpus(args: argparse.Namespace) -> int:
    from eat_keras.beam.tag_audio import TagSettings

    settings = TagSettings(
        window_s=args.window, hop_s=args.hop, top_k=args.top_k, pad_short=args.pad_short, all_scores=args.all_scores,
        embeddings=args.embeddings, max_batch_size=args.batch_size,
    )  # fmt: skip  # bad flags fail before the model is exported
    from eat_keras.beam.jobs import TagCorpusJob, run_tag_corpus

    job = TagCorpusJob(
        patterns=list(args.patterns), model=args.model, out=args.out, settings=settings,
        formats=tuple(dict.fromkeys(args.format)), skip_done=args.skip_done, weights=args.weights, labels=args.labels,
    )  # fmt: skip
    summary = run_tag_corpus(job, args.runner, getattr(args, "pipeline_args", []))
    print(summary.describe(), flush=True)
    return 1 if summary.errors else 0


def prepare_on_beam(args: argparse.Namespace, examples: Any, settings: Any) -> Any:
    """``eat-keras prepare --runner``: the same shards and manifest as the local prepare; returns
    the prepared data as read back."""
    with beam_logs_quieted(args):
        from eat_keras.beam.jobs import run_prepare

        return run_prepare(
            examples, args.out, settings, args.on_error, str(Path(args.data).resolve()), args.runner,
            getattr(args, "pipeline_args", []), say=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip

