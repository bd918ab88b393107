"""The ``eat-keras`` command: tag (quick start, windows, JSON, bad inputs) and convert."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared_data import REPO_ROOT

TOP4 = ["Train", "Rail transport", "Railroad car, train wagon", "Subway, metro, underground"]


def _run(args: list[str], env_extra: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    # only the EAT_* variables a test names, so a developer's own settings cannot leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAT_")}
    env.update(env_extra)
    exe = Path(sys.executable).parent / "eat-keras"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def label_cache(tmp_path_factory, golden_dir) -> Path:
    """A user cache that already holds the AudioSet label file (as after a first online run)."""
    cache = tmp_path_factory.mktemp("cache")
    shutil.copy(golden_dir / "class_labels_indices.csv", cache / "class_labels_indices.csv")
    return cache


def _parse_text(stdout: str) -> list[tuple[str, float]]:
    rows = []
    for line in stdout.splitlines()[1:]:
        label, score = line.strip().rsplit(None, 1)
        rows.append((label.strip(), float(score)))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("labels_from", ["user cache", "EAT_LABELS (README quick start)"])
def test_quick_start_command(golden_dir, label_cache, labels_from):
    """EAT_WEIGHTS_DIR=../shared/weights eat-keras tag ../shared/audio/metro_station-paris.wav --model mn04_as"""
    env = {"EAT_WEIGHTS_DIR": "../shared/weights"}
    if labels_from == "user cache":
        env["EAT_CACHE_DIR"] = str(label_cache)
    else:
        env["EAT_LABELS"] = "../shared/golden/class_labels_indices.csv"
    result = _run(["tag", "../shared/audio/metro_station-paris.wav", "--model", "mn04_as"], env)
    assert result.returncode == 0, result.stderr
    rows = _parse_text(result.stdout)
    golden = json.loads((golden_dir / "mn04_as" / "top10.json").read_text())["metro_station-paris"]
    assert [label for label, _ in rows[:4]] == TOP4
    for (label, score), (want_label, want_score) in zip(rows, golden):
        assert label == want_label and abs(score - want_score) <= 0.002


def _bad_inputs(tmp: Path, shared: Path) -> dict[str, str]:
    """file → words its error line must contain."""
    sr = 32000
    sf.write(tmp / "short.wav", np.zeros(sr // 2, np.float32), sr)
    sf.write(tmp / "nan.wav", np.full(sr * 2, np.nan, np.float32), sr, subtype="FLOAT")
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 20)
    flac = (shared / "data" / "esc10" / "audio").glob("*.flac")
    data = next(flac).read_bytes()
    (tmp / "truncated.flac").write_bytes(data[: len(data) // 3])
    return {
        str(tmp / "missing.wav"): "not found",
        str(tmp / "short.wav"): "at least 1 s",
        str(tmp / "nan.wav"): "non-finite",
        str(tmp / "empty.wav"): "empty",
        str(tmp / "corrupt.wav"): "corrupt.wav",
        str(tmp / "truncated.flac"): "truncated.flac",
    }


@pytest.mark.slow
def test_bad_inputs_each_get_one_error_line_and_others_are_tagged(tmp_path, shared_dir, golden_dir):
    bad = _bad_inputs(tmp_path, shared_dir)
    good = str(shared_dir / "audio" / "typing.wav")
    files = [*list(bad)[:3], good, *list(bad)[3:]]
    result = _run(
        ["tag", *files, "--model", str(golden_dir / "mn04_as" / "mn04_as_opset13.onnx"),
         "--labels", str(golden_dir / "class_labels_indices.csv"), "--top-k", "2"],
        {},
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("eat-keras: error:")]
    assert len(errors) == len(bad), result.stderr
    for path, words in bad.items():
        line = next(e for e in errors if path in e)
        assert words in line, line
    assert result.stdout.splitlines()[0] == good
    assert [label for label, _ in _parse_text(result.stdout)] == ["Computer keyboard", "Typing"]


@pytest.mark.slow
def test_windows_json_and_convert_round_trip(tmp_path, golden_dir, shared_dir):
    labels = str(golden_dir / "class_labels_indices.csv")
    src = golden_dir / "mn04_fc_s2211_synth" / "mn04_fc_s2211_synth_opset13.onnx"
    converted = _run(["convert", str(src), "--out", str(tmp_path), "--labels", labels], {})
    assert converted.returncode == 0, converted.stderr
    model_dir = tmp_path / src.stem
    assert "fully_convolutional" in converted.stdout and "strides 2211" in converted.stdout
    audio = str(shared_dir / "audio" / "speech.wav")
    result = _run(["tag", audio, "--model", str(model_dir), "--window", "4", "--hop", "3", "--json", "--top-k", "3"], {})
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    windows = doc["results"][0]["windows"]
    # 10 s clip, 4 s windows every 3 s: starts 0, 3, 6 (last one zero-padded to 4 s)
    assert [(w["start"], w["end"]) for w in windows] == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    assert all(len(w["labels"]) == 3 for w in windows)
    whole = _run(["tag", audio, "--model", str(model_dir), "--json", "--top-k", "3"], {})
    top = json.loads(whole.stdout)["results"][0]["windows"][0]["labels"]
    golden = json.loads((golden_dir / "mn04_fc_s2211_synth" / "top10.json").read_text())["speech"]
    assert [t["label"] for t in top] == [g[0] for g in golden[:3]]
    for t, g in zip(top, golden):
        assert abs(t["score"] - g[1]) < 1e-3


def test_cli_argument_errors():
    from eat_keras.cli import main

    assert main(["tag", "x.wav", "--model", "no_such_model"]) == 2
    with pytest.raises(SystemExit):
        main(["convert", "mn04_as", "--strides", "2233"])


def _code_running_checkpoint(path: Path, marker: Path) -> Path:
    """A torch-layout zip whose data.pkl calls os.system(touch marker) when unpickled."""
    import pickle
    import zipfile

    class RunsCommand:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": RunsCommand()}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return path


def test_convert_refuses_code_in_pickle(tmp_path, capsys):
    from eat_keras.cli import main

    marker = tmp_path / "pwned"
    evil = _code_running_checkpoint(tmp_path / "evil.pt", marker)
    assert main(["convert", str(evil), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would run code" in err[0] and "os.system" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_tag_refuses_weights_of_another_architecture(tmp_path, capsys, golden_dir, shared_dir):
    from eat_keras.cli import main

    fc = golden_dir / "mn04_fc_s2211_synth" / "state_dict.pt"
    audio = str(shared_dir / "audio" / "typing.wav")
    assert main(["tag", audio, "--model", "mn04_as", "--weights", str(fc)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head_type='fully_convolutional', the preset needs 'mlp'" in err[0]


@pytest.mark.slow
def test_dymn_convert_from_fixed_shape_onnx_then_tag(tmp_path, golden_dir, shared_dir, capsys):
    """The batch-1, 2 s DyMN ONNX converts without flags; the result tags a 10 s file."""
    from eat_keras.cli import main

    labels = str(golden_dir / "class_labels_indices.csv")
    src = golden_dir / "dymn04_synth" / "dymn04_synth_opset13.onnx"
    assert main(["convert", str(src), "--out", str(tmp_path), "--name", "dymn04", "--labels", labels]) == 0
    assert "dymn, width 0.4" in capsys.readouterr().out
    assert main(["tag", str(shared_dir / "audio" / "music.wav"), "--model", str(tmp_path / "dymn04"), "--json", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]["windows"][0]["labels"]
    golden = json.loads((golden_dir / "dymn04_synth" / "top10.json").read_text())["music"]
    assert [t["label"] for t in top] == [g[0] for g in golden[:3]]
    assert all(abs(t["score"] - g[1]) < 1e-3 for t, g in zip(top, golden))
