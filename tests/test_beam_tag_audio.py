"""``eat-keras tag-corpus`` (TagAudio on Beam) gives every file and window the top labels and scores
``eat-keras tag --json`` gives, in Beam's in-process runner and with two worker processes; files
that cannot be tagged land in the errors output while the others are tagged; ``--skip-done``.

The model is the real mn04_as (../shared/weights), exported once; the reference is ``eat-keras tag``
with the Keras model of the same weights.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tolerances import NETWORK_RTOL

pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")

import apache_beam as beam  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from eat_keras.beam.outputs import FORMATS, ReadDonePaths, WriteTags  # noqa: E402
from eat_keras.beam.tag_audio import TagSettings  # noqa: E402
from eat_keras.cli import main  # noqa: E402

TOP_K = 5
#: scores are probabilities (magnitude 1); both sides are rounded to 6 decimals as tag --json writes them
SCORE_TOLERANCE = NETWORK_RTOL + 1e-6
#: the multi-process direct runner: FnApiRunner's worker processes on this machine, no Prism download
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def model_flags(shared_dir: Path, golden_dir: Path) -> list[str]:
    weights, labels = shared_dir / "weights" / "mn04_as_mAP_432.pt", golden_dir / "class_labels_indices.csv"
    return ["--weights", str(weights), "--labels", str(labels)]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, model_flags) -> str:
    """mn04_as exported once, as `eat-keras export` writes it (tag-corpus uses it as it is)."""
    out = tmp_path_factory.mktemp("export")
    assert main(["export", "mn04_as", "--out", str(out), "--format", "saved_model", *model_flags]) == 0
    return str(out / "mn04_as" / "1")


@pytest.fixture(scope="module")
def corpus(shared_dir: Path) -> list[str]:
    """../shared/audio (10 s clips at 32 and 44.1 kHz) and the 320 ESC-10 clips (5 s FLAC)."""
    esc10 = shared_dir / "data" / "esc10" / "audio"
    files = sorted(glob.glob(str(shared_dir / "audio" / "*.wav"))) + sorted(glob.glob(str(esc10 / "*.flac")))
    assert len(files) == 324
    return files


def tag_json(files: list[str], model_flags: list[str], *flags: str) -> dict[tuple, list[dict]]:
    """``eat-keras tag --json`` (the Keras model): {(file, start, end): top labels}."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["tag", *files, "--model", "mn04_as", *model_flags, "--json", "--top-k", str(TOP_K), *flags]) == 0
    document = json.loads(out.getvalue())
    return {(d["file"], w["start"], w["end"]): w["labels"] for d in document["results"] for w in d["windows"]}


@pytest.fixture(scope="module")
def reference(corpus, model_flags) -> dict[tuple, list[dict]]:
    return tag_json(corpus, model_flags)


def read_records(out: Path, pattern: str = "tags-*.jsonl") -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob(pattern)) for line in path.read_text().splitlines()]


def tag_corpus(out: Path, patterns: list[str], model: str, *flags: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["tag-corpus", *patterns, "--model", model, "--out", str(out), "--top-k", str(TOP_K), *flags])


def assert_same_top_labels(got: list[dict], want: list[dict], where: tuple) -> None:
    """The same labels in the same order with scores within the tolerance; two labels may trade
    places only where their scores tie within it."""
    assert len(got) == len(want), where
    for rank, (g, w) in enumerate(zip(got, want)):
        assert abs(g["score"] - w["score"]) <= SCORE_TOLERANCE, (where, rank, g, w)
        if g["label"] != w["label"]:
            tied = [x for x in want if x["label"] == g["label"]]
            assert tied and abs(tied[0]["score"] - w["score"]) <= 2 * SCORE_TOLERANCE, (where, rank, g, w)


def assert_matches(records: list[dict], reference: dict[tuple, list[dict]]) -> None:
    got = {(r["path"], r["start"], r["end"]): r["labels"] for r in records}
    assert len(got) == len(records), "a window was written twice"
    assert sorted(got) == sorted(reference)  # every file and window, no other
    for key, labels in reference.items():
        assert_same_top_labels(got[key], labels, key)


@pytest.mark.slow
def test_in_process_runner_gives_tag_json_labels_and_scores(tmp_path, corpus, saved_model, reference, shared_dir):
    patterns = [str(shared_dir / "audio" / "*.wav"), str(shared_dir / "data" / "esc10" / "audio" / "*.flac")]
    assert tag_corpus(tmp_path, patterns, saved_model) == 0
    assert_matches(read_records(tmp_path), reference)
    assert not list(tmp_path.glob("errors-*"))  # none written when every file was tagged


@pytest.mark.slow
def test_two_worker_processes_give_the_same_and_route_bad_files_to_errors(
    tmp_path, monkeypatch, corpus, saved_model, reference
):
    home = tmp_path / "home"  # the worker processes' home
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt junk that is not audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    out = tmp_path / "out"
    # ../shared/audio and every tenth ESC-10 clip: the worker processes' start (TensorFlow, the model)
    # costs more than their files; the in-process test covers all of ESC-10
    files = [f for i, f in enumerate(corpus) if i < 4 or i % 10 == 0]
    assert tag_corpus(out, [*files, str(tmp_path / "*.*")], saved_model, *TWO_WORKERS) == 1  # 1: some files failed
    assert_matches(read_records(out), {key: labels for key, labels in reference.items() if key[0] in files})
    errors = sorted(read_records(out, "errors-*.jsonl"), key=lambda e: e["path"])
    assert [e["path"] for e in errors] == [str(tmp_path / "corrupt.wav"), str(tmp_path / "empty.flac")]
    assert "cannot decode" in errors[0]["error"] and "empty" in errors[1]["error"]
    # Beam's DirectRunner would first fetch Prism into ~/.apache_beam: neither it nor its runner ran
    assert not (home / ".apache_beam").exists()
    assert not [name for name in sys.modules if "prism" in name]


def test_windows_match_tag_json_and_skip_done_tags_only_new_files(tmp_path, shared_dir, model_flags, saved_model):
    """3 s windows every 2 s over 10 s clips (the last one zero-padded), the model exported from the
    preset by tag-corpus itself; a re-run with --skip-done tags the one file added, and a re-run
    without it is refused."""
    clips = sorted(glob.glob(str(shared_dir / "audio" / "*.wav")))
    window = ["--window", "3", "--hop", "2"]
    reference = tag_json(clips, model_flags, *window)
    assert len(reference) == 4 * 5
    out = tmp_path / "out"
    formats = ["--format", "jsonl", "csv", "parquet"]
    assert tag_corpus(out, clips[:3], "mn04_as", *model_flags, *window, *formats) == 0
    assert tag_corpus(out, clips[:3], saved_model, *window) == 2  # earlier outputs: refused
    assert tag_corpus(out, [str(shared_dir / "audio" / "*.wav")], saved_model, *window, *formats, "--skip-done") == 0
    runs = sorted({p.name.split("-")[1] for p in out.glob("tags-*.jsonl")})
    assert len(runs) == 2
    second = read_records(out, f"tags-{runs[1]}-*.jsonl")
    assert {r["path"] for r in second} == {clips[3]}
    assert_matches(read_records(out), reference)
    csv_rows = [line for p in out.glob("tags-*.csv") for line in p.read_text().splitlines()[1:]]
    assert len(csv_rows) == len(reference)
    assert_matches([row for p in out.glob("tags-*.parquet") for row in pq.read_table(p).to_pylist()], reference)


def test_done_paths_are_read_back_from_each_format(tmp_path):
    """What --skip-done reads: the paths of earlier jsonl, csv and parquet outputs (names with a
    comma and quotes included)."""
    settings = TagSettings(top_k=2, all_scores=True)
    labels = [{"index": 3, "label": "Dog", "score": 0.5}, {"index": 1, "label": 'A "b", c', "score": 0.25}]
    record = {"start": 0.0, "end": 1.0, "labels": labels, "scores": [0.5, 0.25]}
    records = [{"path": f"/d/x,{i}\"y.wav", **record} for i in range(3)]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        pipeline | beam.Create(records) | WriteTags(str(tmp_path), "1", FORMATS, settings)
    for file_format in FORMATS:
        with beam.Pipeline(runner="FnApiRunner") as pipeline:
            paths = pipeline | ReadDonePaths(str(tmp_path), file_format)
            assert_that(paths, equal_to([r["path"] for r in records]))


def test_a_failed_job_leaves_no_output_under_a_final_name(tmp_path):
    """Beam's file sinks rename shards into place only when the job completes: a job that fails
    while scoring (here a model whose labels name fewer classes than it scores) leaves no tags file."""
    import tensorflow as tf

    class TwoScores(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
        def serve(self, waveform):
            return {"scores": tf.stack([tf.reduce_mean(waveform, 1), tf.reduce_max(waveform, 1)], 1)}

    model = tmp_path / "model"
    module = TwoScores()
    tf.saved_model.save(module, str(model), signatures={"serving_default": module.serve})
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "labels.txt").write_text("only one\n")
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.full(32000, 0.5, np.float32), 32000)
    with pytest.raises(Exception, match="list index out of range"):
        tag_corpus(tmp_path / "out", [str(clip)], str(model), "--top-k", "2")
    assert not list((tmp_path / "out").glob("tags-*"))
