"""``eat-keras prepare --runner`` (PrepareDataset on Beam) writes the folder the local prepare writes,
byte for byte (shards, sidecars, prepared.json: the same examples, the same records, so training
reads the same), resumes a run by writing only the shards missing, and fails on a bad file with the
local prepare's message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")

from eat_keras.cli import main  # noqa: E402
from eat_keras.train.prepare import MANIFEST_NAME, read_prepared  # noqa: E402

SHARDS = ["--min-shards", "2", "--files-per-shard", "4", "--val-fraction", "0.25"]
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _noise(path: Path, seconds: float, sample_rate: int, subtype: str) -> None:
    rng = np.random.default_rng(int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, rng.uniform(-0.8, 0.8, int(seconds * sample_rate)).astype(np.float32), sample_rate, subtype=subtype)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 classes x 5 files at 16, 44.1 and 32 kHz, 16-bit and float, and one corrupt file."""
    root = tmp_path_factory.mktemp("data")
    for c, label in enumerate(("bird", "car", "door")):
        for i in range(5):
            rate, subtype = (16000, 44100, 32000)[(i + c) % 3], ("PCM_16", "FLOAT")[i % 2]
            _noise(root / label / f"{label}{i}.wav", 0.5 + 0.3 * i, rate, subtype)
    (root / "car" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEnot audio at all")
    return root


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_beam_writes_what_local_prepare_writes_and_resumes_it(tmp_path, data, capsys):
    local, beam = tmp_path / "local", tmp_path / "beam"
    skip = ["--on-error", "skip", *SHARDS]
    assert main(["prepare", str(data), "--out", str(local), "--processes", "1", *skip]) == 0
    assert main(["prepare", str(data), "--out", str(beam), "--runner", "FnApiRunner", *skip]) == 0
    want = folder_bytes(local)
    assert sorted(want) == sorted(folder_bytes(beam))
    assert folder_bytes(beam) == want  # every shard, sidecar and the manifest, byte for byte
    prepared = read_prepared(beam)
    assert len(prepared.manifest["examples"]) == 15
    assert [s["path"] for s in prepared.manifest["skipped"]] == [str(data / "car" / "broken.wav")]
    assert len(prepared.manifest["shards"]) > 2  # several shards, so several tasks

    # an interrupted run: one shard (and its sidecar) and the manifest missing; the two workers write that one only
    shard = prepared.manifest["shards"][1]["name"]
    for name in (shard, shard + ".json", MANIFEST_NAME):
        (beam / name).unlink()
    capsys.readouterr()
    assert main(["prepare", str(data), "--out", str(beam), "--runner", "FnApiRunner", *TWO_WORKERS, *skip]) == 0
    assert f"1 of {len(prepared.manifest['shards'])} shards to write" in capsys.readouterr().err
    assert folder_bytes(beam) == want


def test_a_bad_file_fails_beam_prepare_with_the_local_message(tmp_path, data, capsys):
    errors = []
    for out, runner in ((tmp_path / "local", []), (tmp_path / "beam", ["--runner", "FnApiRunner"])):
        assert main(["prepare", str(data), "--out", str(out), "--processes", "1", *runner, *SHARDS]) == 2
        errors.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("eat-keras: error:")])
        assert not (out / MANIFEST_NAME).exists()
    assert errors[0] == errors[1] and len(errors[0]) == 1 and "broken.wav" in errors[0][0]
