"""PrepareDataset: ``eat-keras prepare``'s shards, written by Beam workers.

The plan (the split, each file's key, shard and place in its shard) is made once, by
:func:`eat_keras.train.prepare.plan_prepare`, on the machine that starts the job; each worker then
writes whole shards with :func:`eat_keras.train.prepare.write_shard`, the function the local prepare
writes them with (the same records, bytes, temporary names and sidecars), and one last step writes
``prepared.json`` from the sidecars with :func:`eat_keras.train.prepare.write_manifest`. So the folder
is the one ``eat-keras prepare`` writes, byte for byte, and either one resumes the other's run.

The folder must be one the workers and the launcher share (a local disk for the local runners, a
mounted network file system for a cluster): fine-tuning reads the shards from a local path too.
A shard is the unit of work, so a job has as many parallel tasks as shards (``--files-per-shard``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from eat_keras.beam.tag_audio import METRICS_NAMESPACE
from eat_keras.train.prepare import PreparePlan, ShardPlan, finished_shards, write_manifest, write_shard

__all__ = ["PrepareDataset"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class WriteShard(beam.DoFn):
    """Encode a shard's files and write the shard and its sidecar; emits the shard's name. Bad files
    are recorded in the sidecar (the manifest step decides whether they fail the job)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.files = Metrics.counter(METRICS_NAMESPACE, "prepared_files")

    def process(self, plan: ShardPlan) -> Any:
        write_shard(Path(self.out), plan, "skip", _say)
        self.files.inc(len(plan.tasks))
        yield plan.name


class WriteManifest(beam.DoFn):
    """Once every shard is written: ``prepared.json`` from the sidecars of all shards of the plan
    (those kept from an earlier run too). With ``on_error="fail"`` a bad file fails the job here,
    as it fails the local prepare, with the same message."""

    def __init__(self, out: str, plan: PreparePlan, on_error: str, source: str | None) -> None:
        self.out, self.plan, self.on_error, self.source = out, plan, on_error, source

    def process(self, written: Sequence[str]) -> Any:
        out = Path(self.out)
        finished = finished_shards(out, self.plan.shards, self.on_error)
        missing = [p.name for p in self.plan.shards if p.name not in finished]
        if missing:
            raise RuntimeError(f"{out}: shards {', '.join(missing[:3])} were not written")
        write_manifest(out, self.plan, finished, self.source)
        yield len(written)


class PrepareDataset(beam.PTransform):
    """``pipeline | PrepareDataset(plan, out, shards_todo)``: writes the shards ``todo`` (those of
    ``plan`` not finished already, by default all) into ``out``, then ``prepared.json``."""

    def __init__(
        self, plan: PreparePlan, out: str, todo: Sequence[ShardPlan] | None = None, on_error: str = "fail",
        source: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.plan, self.out, self.on_error, self.source = plan, str(out), on_error, source
        self.todo = list(plan.shards if todo is None else todo)

    def expand(self, root: beam.pvalue.PBegin):
        written = (
            root
            | "Shards" >> beam.Create(self.todo)
            | "Spread" >> beam.Reshuffle()
            | "WriteShards" >> beam.ParDo(WriteShard(self.out))
        )
        return (
            written
            | "AllWritten" >> beam.combiners.ToList()
            | "WriteManifest" >> beam.ParDo(WriteManifest(self.out, self.plan, self.on_error, self.source))
        )
