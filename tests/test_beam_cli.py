"""The Beam commands' flags: what they refuse before any model is loaded or job started, the
pass-through of Beam pipeline options, and a parser that imports no Beam."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")

from eat_keras.cli import main  # noqa: E402


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("eat-keras: error:")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hop", "2"], "--hop needs --window"),
        (["--window", "0.5"], "windows must be at least 1 s"),
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--no_such_beam_option=1"], "unknown Beam pipeline options: --no_such_beam_option"),
        (["--runner", "DataflowRunner", "--project=p", "--region=r"], "needs --temp_location"),
    ],
)
def test_tag_corpus_refuses_bad_flags_before_loading_a_model(tmp_path, capsys, flags, message):
    (tmp_path / "a.wav").write_bytes(b"")
    args = ["tag-corpus", str(tmp_path / "a.wav"), "--model", "no_such_model", "--out", str(tmp_path / "out"), *flags]
    assert main(args) == 2
    (line,) = error_lines(capsys)
    assert message in line


def test_a_pattern_that_matches_nothing_and_earlier_outputs_are_refused(tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["tag-corpus", str(tmp_path / "*.flac"), "--model", "no_such_model", "--out", str(out)]) == 2
    assert "*.flac: matches no file" in error_lines(capsys)[0]
    out.mkdir()
    (out / "tags-20260101T000000000-00000-of-00001.jsonl").write_text("")
    assert main(["tag-corpus", str(tmp_path / "a.wav"), "--model", "no_such_model", "--out", str(out)]) == 2
    assert "--skip-done" in error_lines(capsys)[0]


def test_beam_options_need_a_beam_command(tmp_path, capsys):
    assert main(["prepare", str(tmp_path), "--out", str(tmp_path / "p"), "--direct_num_workers=2"]) == 2
    assert "Beam pipeline options need --runner" in error_lines(capsys)[0]
    with pytest.raises(SystemExit) as exited:  # other commands refuse unknown flags as before
        main(["presets", "--direct_num_workers=2"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --direct_num_workers=2" in capsys.readouterr().err


def test_help_imports_neither_beam_nor_tensorflow():
    child = (
        "import contextlib, io, json, sys\n"
        "from eat_keras.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for command in ('tag-corpus', 'prepare'):\n"
        "        try:\n"
        "            main([command, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(json.dumps([m for m in ('apache_beam', 'tensorflow', 'pyarrow') if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == []
