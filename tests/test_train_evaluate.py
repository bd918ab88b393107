"""``verify``: two artifacts on the same files, compared by accuracy, top-1 agreement, logits and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_training import CLASSES, SR, write_class_folders

from eat_keras.runners import _scores_to_logits
from eat_keras.train.data import read_folder_dataset
from eat_keras.train.evaluate import verify

INT8_SCORE_STEP = 1.0 / 256.0  # TFLite's fixed output scale of an int8 softmax


def _model_logits(waveforms: np.ndarray) -> np.ndarray:
    """Confident logits that differ per window: the second class 30-odd below the first."""
    rms = np.sqrt(np.mean(np.square(waveforms), axis=1))
    return np.stack([np.zeros_like(rms), -30.0 - rms], axis=1).astype(np.float32)


def _int8_file_logits(waveforms: np.ndarray) -> np.ndarray:
    """What the TFLite runner reads back from an int8 softmax file: scores on 1/256 steps (the second
    class's rounds to 0), turned back into logits as the runner does."""
    logits = _model_logits(waveforms).astype(np.float64)
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = np.round(scores / scores.sum(axis=1, keepdims=True) / INT8_SCORE_STEP) * INT8_SCORE_STEP
    return _scores_to_logits(scores, "single_label")


def test_scores_rounded_to_zero_differ_as_logits_but_not_as_scores(tmp_path: Path) -> None:
    examples = read_folder_dataset(write_class_folders(tmp_path / "data"))
    result = verify(
        _model_logits, _int8_file_logits, examples, list(CLASSES), SR, centre_rows=True, label_type="single_label"
    )
    assert result.agreement == 1.0 and result.accuracy_a == result.accuracy_b
    assert result.max_abs_logit_difference > 10.0  # log(0 → tiny) against about -30
    assert result.max_abs_score_difference <= INT8_SCORE_STEP / 2
    assert f"max |score A - score B|: {result.max_abs_score_difference:.3g}" in result.summary("a", "b")
    unknown = verify(_model_logits, _int8_file_logits, examples, list(CLASSES), SR, centre_rows=True)
    assert unknown.max_abs_score_difference is None and "score A" not in unknown.summary("a", "b")
