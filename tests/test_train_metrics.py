"""Classification metrics against hand-computed values, and the report files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from eat_keras.train.metrics import classification_report, write_report_files


def test_metrics_by_hand(tmp_path):
    # classes a, b, c; c never predicted; one a→b and one b→a confusion
    true = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 0, 1]
    r = classification_report(true, pred, ["a", "b", "c"])
    np.testing.assert_array_equal(r.confusion, [[2, 1, 0], [1, 1, 0], [0, 1, 0]])
    assert r.accuracy == pytest.approx(3 / 6)
    np.testing.assert_allclose(r.precision, [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(r.recall, [2 / 3, 1 / 2, 0])
    f1_b = 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    np.testing.assert_allclose(r.f1, [2 / 3, f1_b, 0])
    assert r.macro_f1 == pytest.approx((2 / 3 + f1_b + 0) / 3)
    files = write_report_files(r, tmp_path / "eval")
    assert [f.name for f in files] == ["metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png"]
    rows = list(csv.reader((tmp_path / "eval" / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", "a", "b", "c"] and rows[3] == ["c", "0", "1", "0"]
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_macro_f1_ignores_classes_absent_from_the_evaluation_set():
    r = classification_report([0, 1], [0, 1], ["a", "b", "unseen"])
    assert r.accuracy == 1.0 and r.macro_f1 == 1.0
