"""The two corpus jobs as the command line starts them: checks first, then the pipeline, run to its
end, and a summary."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import StandardOptions

from eat_keras.beam.model import StagedModel, stage_model
from eat_keras.beam.options import pipeline_options, run_pipeline, staging_root
from eat_keras.beam.outputs import FORMATS, ReadDonePaths, WriteErrors, WriteTags, earlier_outputs, new_run_id
from eat_keras.beam.prepare_dataset import PrepareDataset
from eat_keras.beam.storage import is_local, join, matches_any
from eat_keras.beam.tag_audio import ERRORS, METRICS_NAMESPACE, TAGS, TagAudio, TagSettings
from eat_keras.errors import ConfigError, EatKerasError, ExistingOutputError

__all__ = ["TagCorpusJob", "TagSummary", "run_prepare", "run_tag_corpus"]


@dataclasses.dataclass(frozen=True)
class TagCorpusJob:
    patterns: list[str]
    model: str
    out: str
    settings: TagSettings
    formats: tuple[str, ...] = ("jsonl",)
    skip_done: bool = False
    weights: str | None = None
    labels: str | None = None


@dataclasses.dataclass(frozen=True)
class TagSummary:
    out: str
    run_id: str
    files: int
    windows: int
    errors: int

    def describe(self) -> str:
        line = f"tagged {self.files} files ({self.windows} windows) into {join(self.out, f'tags-{self.run_id}-*')}"
        if self.errors:
            line += f"; {self.errors} could not be tagged: {join(self.out, f'errors-{self.run_id}-*.jsonl')}"
        return line


def _counter(result: Any, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))["counters"]
    return int(sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters))


def _check_tag_inputs(job: TagCorpusJob) -> list[str]:
    """Refuse what would fail or mislead the job, before the model is exported; returns the formats
    whose earlier outputs name the files done."""
    earlier = earlier_outputs(job.out, FORMATS)
    earlier.sort(key=lambda f: f not in job.formats)  # read the done paths from a format this run writes, if any
    if earlier and not job.skip_done:
        raise ExistingOutputError(
            f"{job.out} holds the outputs of an earlier run; pass --skip-done to tag only the files they miss, "
            "or choose another --out"
        )
    for pattern in job.patterns:
        if not matches_any(pattern):
            raise EatKerasError(f"{pattern}: matches no file (Beam pipeline options take the form --name=value)")
    return earlier


def build_tag_pipeline(
    job: TagCorpusJob, options: Any, staged: StagedModel, run_id: str, earlier: Sequence[str]
) -> Any:
    pipeline = beam.Pipeline(options=options)
    done = pipeline | "ReadDone" >> ReadDonePaths(job.out, earlier[0]) if earlier else None
    tag_audio = TagAudio(job.patterns, staged.saved_model_dir, staged.class_names, job.settings, done)
    results = pipeline | "TagAudio" >> tag_audio
    results[TAGS] | "WriteTags" >> WriteTags(job.out, run_id, job.formats, job.settings)
    results[ERRORS] | "WriteErrors" >> WriteErrors(job.out, run_id)
    return pipeline


def run_tag_corpus(job: TagCorpusJob, runner: str | None, pipeline_args: Sequence[str]) -> TagSummary:
    options = pipeline_options(runner, pipeline_args)
    earlier = _check_tag_inputs(job)
    root = staging_root(options)
    with tempfile.TemporaryDirectory(prefix="eat-keras-beam-") as work:
        staged = stage_model(job.model, Path(work), root, job.weights, job.labels)
        run_id = new_run_id()
        result = run_pipeline(build_tag_pipeline(job, options, staged, run_id, earlier))
    errors = _counter(result, "errors") + _counter(result, "refused_windows")
    return TagSummary(job.out, run_id, _counter(result, "files"), _counter(result, "windows"), errors)


def run_prepare(
    examples: Sequence[Any],
    out: str,
    settings: Any,
    on_error: str,
    source: str | None,
    runner: str | None,
    pipeline_args: Sequence[str],
    say: Callable[[str], None],
) -> Any:
    """:func:`eat_keras.train.prepare.prepare` with the shards written by Beam workers: the same
    lock, leftovers removal and reuse of finished shards; returns the prepared data as read back."""
    from eat_keras.train.prepare import finished_shards, plan_prepare, prepared_output, read_prepared

    if not is_local(str(out)):
        raise ConfigError(f"{out}: prepare writes into a folder the workers and finetune share (local or mounted)")
    options = pipeline_options(runner, pipeline_args)
    plan = plan_prepare(examples, settings)
    with prepared_output(out, plan.shards) as folder:
        finished = finished_shards(folder, plan.shards, on_error)
        todo = [p for p in plan.shards if p.name not in finished]
        say(f"prepare: {len(todo)} of {len(plan.shards)} shards to write on {options.view_as(StandardOptions).runner}")
        pipeline = beam.Pipeline(options=options)
        pipeline | "PrepareDataset" >> PrepareDataset(plan, str(folder), todo, on_error, source)
        run_pipeline(pipeline)
    return read_prepared(folder)
