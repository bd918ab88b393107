"""The files a ``tag-corpus`` run writes, through Beam's file sinks: each shard is written under a
temporary name and appears under its final name only when the whole output is complete.

``OUT/tags-RUN-SSSSS-of-NNNNN.{jsonl,csv,parquet}`` hold one record per window (the file, the
window's start and end in seconds, the top labels with index and score; the scores of every class
and the embedding where asked), ``OUT/errors-RUN-SSSSS-of-NNNNN.jsonl`` one record per file that
could not be tagged (``path``, ``error``; none when every file was tagged). ``RUN`` is the run's
start time, so a re-run with ``--skip-done`` adds files beside the earlier ones.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import apache_beam as beam

from eat_keras.beam.storage import join, matches_any
from eat_keras.beam.tag_audio import TagSettings

__all__ = ["FORMATS", "ReadDonePaths", "WriteErrors", "WriteTags", "earlier_outputs", "new_run_id"]

FORMATS = ("jsonl", "csv", "parquet")
TAGS_PREFIX, ERRORS_PREFIX = "tags", "errors"


def new_run_id() -> str:
    """The run's start (UTC, to the millisecond): runs into one folder sort by it."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}"


def tags_pattern(out: str, file_format: str) -> str:
    return join(out, f"{TAGS_PREFIX}-*.{file_format}")


def earlier_outputs(out: str, formats: tuple[str, ...]) -> list[str]:
    """The formats of ``formats`` that an earlier run wrote into ``out``."""
    return [f for f in formats if matches_any(tags_pattern(out, f))]


def csv_header(settings: TagSettings) -> list[str]:
    ranks = range(1, settings.top_k + 1)
    columns = ["path", "start", "end"] + [f"{what}_{r}" for r in ranks for what in ("label", "index", "score")]
    return columns + (["scores"] if settings.all_scores else []) + (["embedding"] if settings.embeddings else [])


def _csv_line(fields: list[Any]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(fields)
    return text.getvalue()


def csv_row(record: dict[str, Any], settings: TagSettings) -> str:
    """One line: the top labels in columns; the scores and the embedding, where asked, as JSON lists."""
    fields: list[Any] = [record["path"], record["start"], record["end"]]
    for label in record["labels"]:
        fields += [label["label"], label["index"], label["score"]]
    fields += [""] * 3 * (settings.top_k - len(record["labels"]))  # a model with fewer classes than --top-k
    fields += [json.dumps(record[name]) for name in ("scores", "embedding") if name in record]
    return _csv_line(fields)


def parquet_schema(settings: TagSettings) -> Any:
    import pyarrow as pa

    label = pa.struct([("index", pa.int64()), ("label", pa.string()), ("score", pa.float64())])
    fields = [("path", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("labels", pa.list_(label))]
    fields += [(name, pa.list_(pa.float32())) for name in ("scores", "embedding") if getattr(settings, _FLAG[name])]
    return pa.schema(fields)


_FLAG = {"scores": "all_scores", "embedding": "embeddings"}


class WriteTags(beam.PTransform):
    """The records of :class:`~eat_keras.beam.tag_audio.TagAudio` in each of ``formats``."""

    def __init__(self, out: str, run_id: str, formats: tuple[str, ...], settings: TagSettings) -> None:
        super().__init__()
        self.prefix, self.formats, self.settings = join(out, f"{TAGS_PREFIX}-{run_id}"), formats, settings

    def expand(self, records: beam.PCollection):
        settings = self.settings
        for file_format in self.formats:
            suffix = f".{file_format}"
            if file_format == "jsonl":
                lines = records | "Jsonl" >> beam.Map(json.dumps)
                lines | "WriteJsonl" >> beam.io.WriteToText(self.prefix, suffix)
            elif file_format == "csv":
                lines = records | "Csv" >> beam.Map(csv_row, settings)
                lines | "WriteCsv" >> beam.io.WriteToText(self.prefix, suffix, header=_csv_line(csv_header(settings)))
            else:
                schema = parquet_schema(settings)
                records | "WriteParquet" >> beam.io.WriteToParquet(self.prefix, schema, file_name_suffix=suffix)


class WriteErrors(beam.PTransform):
    def __init__(self, out: str, run_id: str) -> None:
        super().__init__()
        self.prefix = join(out, f"{ERRORS_PREFIX}-{run_id}")

    def expand(self, errors: beam.PCollection):
        lines = errors | "ErrorsJsonl" >> beam.Map(json.dumps)
        lines | "WriteErrors" >> beam.io.WriteToText(self.prefix, ".jsonl", skip_if_empty=True)


def _csv_path(line: str) -> str:
    return next(csv.reader([line]))[0]


class ReadDonePaths(beam.PTransform):
    """The paths that earlier runs' ``file_format`` outputs in ``out`` hold."""

    def __init__(self, out: str, file_format: str) -> None:
        super().__init__()
        self.pattern, self.file_format = tags_pattern(out, file_format), file_format

    def expand(self, root: beam.pvalue.PBegin):
        if self.file_format == "parquet":
            rows = root | "ReadParquet" >> beam.io.ReadFromParquet(self.pattern, columns=["path"])
            return rows | "ParquetPaths" >> beam.Map(lambda row: row["path"])
        if self.file_format == "csv":
            lines = root | "ReadCsv" >> beam.io.ReadFromText(self.pattern, skip_header_lines=1)
            return lines | "CsvPaths" >> beam.Map(_csv_path)
        lines = root | "ReadJsonl" >> beam.io.ReadFromText(self.pattern)
        return lines | "JsonlPaths" >> beam.Map(lambda line: json.loads(line)["path"])
