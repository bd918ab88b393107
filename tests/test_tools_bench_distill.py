"""Checks of the distillation benchmark's (``tools/bench_distill.py``) own logic; nothing is trained."""

from __future__ import annotations

import sys

from shared_data import REPO_ROOT
from eat_keras.train.data import Example, read_manifest, split_examples

if str(REPO_ROOT) not in sys.path:  # the tools run from the repo root
    sys.path.append(str(REPO_ROOT))

from tools import bench_distill  # noqa: E402


def test_the_manifest_holds_the_left_out_clips_as_unlabelled_training_rows(tmp_path):
    labelled = [Example(str(tmp_path / f"{c}{i}.wav"), c) for c in "ab" for i in range(5)]
    unlabelled = [Example(str(tmp_path / f"u{i}.wav"), "a") for i in range(3)]  # their labels must not be written
    read = read_manifest(bench_distill.write_distillation_manifest(labelled, unlabelled, tmp_path / "m.csv"))
    assert [(e.path, e.label) for e in read] == [(e.path, e.label) for e in labelled] + [(e.path, None) for e in unlabelled]
    sides = split_examples(read, val_fraction=0.2)
    assert {e.path for e in unlabelled} <= {e.path for e in sides["train"]}


def test_epoch_times_skip_the_first_epoch_that_traces(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "4/4 [====] - 22s 1s/batch - loss: 2.4\n"
        "epoch 1/3: loss 1.0 val_acc 0.5 val_f1 0.4 val_loss 1.2 (best val_macro_f1 0.4000 @ 1; 30.5 s)\n"
        "4/4 [====] - 6s 831ms/batch - loss: 1.1\n"
        "epoch 2/3: loss 0.9 val_acc 0.6 val_f1 0.5 val_loss 1.1 (best val_macro_f1 0.5000 @ 2; 12.0 s)\n"
        "epoch 3/3: loss 0.8 val_acc 0.6 val_f1 0.5 val_loss 1.0 (best val_macro_f1 0.5000 @ 2; 11.5 s)\n"
    )
    assert bench_distill.epoch_seconds(log) == [12.0, 11.5]
    assert bench_distill.step_seconds(log) == [0.831]
    assert bench_distill.spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0}
