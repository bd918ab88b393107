"""Listing presets and every ``--help`` of the command line run without TensorFlow.

Importing TensorFlow takes seconds and about 660 MB; only commands that build or run a model need it.
The commands run in a fresh interpreter (this one may have imported TensorFlow already), which
reports which heavy modules were imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

from eat_keras.cli import build_parser
from eat_keras.presets import PRESETS

HEAVY = ("tensorflow", "tf_keras", "keras", "torch")

_CHILD = """
import contextlib, io, json, sys
from eat_keras import cli
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # --help exits
            code = exc.code
    results.append({"argv": argv, "code": code, "lines": len(out.getvalue().splitlines())})
heavy = sorted(name for name in json.loads(sys.argv[2]) if name in sys.modules)
print(json.dumps({"results": results, "heavy": heavy}))
"""


def _run_in_fresh_interpreter(commands: list[list[str]]) -> dict:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(commands), json.dumps(HEAVY)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(child.stdout.splitlines()[-1])


def _subcommands() -> list[str]:
    (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(subparsers.choices)


def test_presets_and_every_help_run_without_tensorflow():
    commands = [["presets"], ["--help"], *([name, "--help"] for name in _subcommands())]
    report = _run_in_fresh_interpreter(commands)
    assert report["heavy"] == []
    assert [r["code"] for r in report["results"]] == [0] * len(commands)
    presets, *helps = report["results"]
    assert presets["lines"] == len(PRESETS)  # one line per preset: the listing really ran
    assert all(r["lines"] > 3 for r in helps)
