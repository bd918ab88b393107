"""``eat-keras finetune``'s flags are made from FinetuneConfig's fields and the loss table: every
field and loss setting has one flag, ``--help`` shows each default, the default it shows is the one
a run gets, and building the parser imports no TensorFlow."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys


from eat_keras.cli import _finetune_config, build_parser
from eat_keras.train.config import FinetuneConfig
from eat_keras.train.loss_table import LOSS_TERMS, LossSetting, LossTerm, loss_settings, register_loss_term

REQUIRED = ["finetune", "data", "--out", "run"]


def _finetune_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["finetune"]


def _config(*flags: str) -> FinetuneConfig:
    return _finetune_config(build_parser().parse_args([*REQUIRED, *flags]))


def _config_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flag of each FinetuneConfig field and loss setting, by field or setting name."""
    names = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name != "loss_settings"]
    names += list(loss_settings())
    actions = {name: [a for a in parser._actions if a.dest == name] for name in names}
    assert all(len(found) == 1 for found in actions.values()), actions
    return {name: found[0] for name, found in actions.items()}


def _default_of(name: str) -> object:
    defaults = FinetuneConfig()
    return defaults.loss_settings[name] if name in loss_settings() else getattr(defaults, name)


def _shown_default(action: argparse.Action) -> str:
    match = re.search(r"\(default: ([^()]*)\)$", action.help or "")
    assert match, f"{action.option_strings[0]} shows no default: {action.help!r}"
    return match.group(1)


def test_flags_not_given_leave_the_config_defaults():
    assert _config() == FinetuneConfig()


def test_help_shows_every_default_and_it_is_the_default_a_run_gets(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: the help text is not wrapped
    parser = _finetune_parser()
    rendered = " ".join(parser.format_help().split())
    for name, action in _config_actions(parser).items():
        assert " ".join(action.help.split()) in rendered
        shown, default, flag = _shown_default(action), _default_of(name), action.option_strings[0]
        if action.nargs == 0:  # a switch
            assert (shown, default) == ("off", False), flag
        elif default is None:  # none, or a value the run takes from its data, as the help says
            assert shown == "none" or shown.startswith("the "), flag
        else:  # the shown text, given to the flag, is the default
            assert _config(flag, *shown.split()) == FinetuneConfig(), flag


def _other_value(action: argparse.Action, default: object) -> list[str]:
    """Flag arguments for a valid value that differs from ``default``."""
    if action.choices:
        return [next(c for c in action.choices if c != default)]
    if action.nargs == 0:
        return []
    if default is None:
        return ["1"]
    if isinstance(default, dict):
        return ["ce=1"]
    if isinstance(default, str):
        return ["another_model"]
    if isinstance(default, int):
        return [str(default + 1)]
    return [repr(default / 2 if default else 0.5)]


def test_each_flag_sets_its_own_field():
    def flat(config: FinetuneConfig) -> dict[str, object]:
        fields = dataclasses.asdict(config)
        return {**fields.pop("loss_settings"), **fields}

    defaults = flat(FinetuneConfig())
    for name, action in _config_actions(_finetune_parser()).items():
        given = flat(_config(action.option_strings[0], *_other_value(action, _default_of(name))))
        changed = sorted(k for k in given if given[k] != defaults[k])
        # a teacher without --loss also takes the default loss with its kd term (the help says so)
        also = ["loss_terms"] if name in ("teachers", "teacher_logits") else []
        assert changed == sorted([name, *also]), (action.option_strings[0], changed)


def test_a_registered_loss_term_gets_its_flags():
    setting = LossSetting("toy_scale", 1.5, "factor of the toy term", minimum_open=True)
    register_loss_term(LossTerm("toy", "a term for this test", "unused.module:build", settings=(setting,)))
    try:
        action = _config_actions(_finetune_parser())["toy_scale"]
        assert action.option_strings == ["--toy-scale"] and _shown_default(action) == "1.5"
        assert "toy: a term for this test" in " ".join(_finetune_parser().format_help().split())
        config = _config("--loss", "toy=2", "ce", "--toy-scale", "3")
        assert config.loss_terms == {"toy": 2.0, "ce": 1.0} and config.loss_settings["toy_scale"] == 3.0
    finally:
        del LOSS_TERMS["toy"]
    assert "toy_scale" not in _config_actions(_finetune_parser())


def test_the_parser_and_help_import_no_tensorflow():
    code = (
        "import sys\n"
        "from eat_keras.cli import main\n"
        "for argv in (['--help'], ['finetune', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('tensorflow' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "False", result.stderr
    assert "(default: cb=0.8 supcon=0.2)" in " ".join(result.stdout.split())
