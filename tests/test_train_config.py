"""FinetuneConfig: what a run records in finetune.json."""

from __future__ import annotations

import json
import os

import pytest

from eat_keras.errors import EatKerasError
from eat_keras.train.config import FinetuneConfig
from eat_keras.train.fit import _RunFolder


def test_paths_are_recorded_absolute_so_any_working_folder_resumes_the_run(tmp_path, monkeypatch):
    teacher = tmp_path / "runs" / "teacher"
    teacher.mkdir(parents=True)
    (tmp_path / "unlabelled").mkdir()
    forms = []
    for cwd, teacher_arg in ((tmp_path, "runs/teacher"), (tmp_path / "runs", "./teacher"), (tmp_path / "runs", "../runs/teacher")):
        monkeypatch.chdir(cwd)
        config = FinetuneConfig(teachers=[teacher_arg], unlabelled=os.path.relpath(tmp_path / "unlabelled"))
        forms.append(json.dumps(config.to_dict()))
        assert config.teachers == [str(teacher)]
        assert config.unlabelled == str(tmp_path / "unlabelled")
    assert forms[0] == forms[1] == forms[2]


def test_preset_names_and_missing_paths_stay_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mn04_as").mkdir()  # a folder named like the preset does not make the preset a path
    config = FinetuneConfig(model="mn04_as", teachers=["mn10_as", "no/such/teacher"])
    assert config.model == "mn04_as"
    assert config.teachers == ["mn10_as", "no/such/teacher"]


def test_a_run_recorded_with_relative_paths_resumes_from_its_start_folder(tmp_path, monkeypatch):
    """finetune.json written before paths were made absolute: its relative paths are read from the
    folder the run is started in, so the same command in the same folder is the same configuration,
    and a folder where the recorded path names nothing is not."""
    (tmp_path / "teacher").mkdir()
    monkeypatch.chdir(tmp_path)
    run = _RunFolder(tmp_path / "run")
    run.make()
    recorded = {**FinetuneConfig(teachers=["teacher"]).to_dict(), "teachers": ["teacher"]}
    run.config.write_text(json.dumps(recorded))
    run.log.write_text("epoch\n1\n")  # the folder holds training
    assert run.claim(FinetuneConfig(teachers=["teacher"])) is None
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(EatKerasError, match="differs in teachers"):
        run.claim(FinetuneConfig(teachers=[str(tmp_path / "teacher")]))
