"""Pipeline options for the corpus jobs: the runner, and every other Beam option passed through.

The default runner is Beam's in-process ``FnApiRunner``: Beam 2.78's ``DirectRunner`` first tries
to download its Prism runner, which a machine without network waits on. ``FnApiRunner`` with
``--direct_num_workers=N --direct_running_mode=multi_processing`` runs N worker processes on this
machine; ``DataflowRunner``, ``FlinkRunner``, ``SparkRunner`` (and any runner Beam knows) take their
own options (``--project``, ``--region``, ``--temp_location``, ``--flink_master``, ...).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from eat_keras.beam.storage import join
from eat_keras.errors import ConfigError, EatKerasError

__all__ = ["DEFAULT_RUNNER", "failures_as_errors", "pipeline_options", "run_pipeline", "staging_root"]

DEFAULT_RUNNER = "FnApiRunner"
#: what Beam's runners append to an exception raised in a step
_BEAM_STEP = re.compile(r"(\s*\[while running '[^']*'\])+$")


def pipeline_options(runner: str | None, pipeline_args: Sequence[str]) -> PipelineOptions:
    """Options from ``pipeline_args`` (Beam's own flags, ``--name=value``), with ``runner`` (default
    :data:`DEFAULT_RUNNER`). A flag Beam does not know is refused: a typo would otherwise be dropped
    with a log line, and the job run without it."""
    args = list(pipeline_args)
    if runner is not None:
        args.append(f"--runner={runner}")
    options = PipelineOptions(args)
    unknown = _unknown_flags(options, args)
    if unknown:
        raise ConfigError(f"unknown Beam pipeline options: {' '.join(unknown)} (they take the form --name=value)")
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_RUNNER
    return options


def _unknown_flags(options: PipelineOptions, args: list[str]) -> list[str]:
    """The flags of ``args`` that none of Beam's options classes defines (Beam's own parser, aliases
    such as ``--worker_machine_type`` included)."""
    parsers: list[Any] = []
    options.get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(args)
    return [a.split("=", 1)[0] for a in unknown if a.startswith("-")]


def is_local_runner(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or DEFAULT_RUNNER
    return runner.rsplit(".", 1)[-1] in StandardOptions.LOCAL_RUNNERS


def staging_root(options: PipelineOptions) -> str | None:
    """Where the model is staged for the workers: under ``temp_location``; None (the local folder)
    for a local runner without one."""
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if temp_location:
        return join(temp_location, "eat-keras")
    if not is_local_runner(options):
        raise ConfigError(
            "a runner with workers on other machines needs --temp_location=URL (e.g. gs://bucket/tmp): "
            "the model is staged there for them"
        )
    return None


@contextlib.contextmanager
def failures_as_errors() -> Iterator[None]:
    """A job that fails on an eat-keras error (a bad file with ``--on-error fail``, say) raises that
    error's one line, whichever wrapping the runner gave it; other failures pass unchanged."""
    try:
        yield
    except Exception as exc:
        cause = _eat_keras_cause(exc)
        if cause is None:
            raise
        raise type(cause)(_BEAM_STEP.sub("", str(cause))) from exc


def _eat_keras_cause(exc: BaseException | None) -> EatKerasError | None:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, EatKerasError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def run_pipeline(pipeline: Any) -> Any:
    """Run ``pipeline`` to its end; returns the result (its metrics)."""
    with failures_as_errors():
        result = pipeline.run()
        result.wait_until_finish()
    return result

