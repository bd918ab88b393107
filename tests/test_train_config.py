"""FinetuneConfig: what a run records in finetune.json."""

from __future__ import annotations

import json
import os

from eat_keras.train.config import FinetuneConfig


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
