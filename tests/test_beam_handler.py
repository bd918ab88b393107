"""The RunInference handler: one call per waveform length (never zero-padded together), results in
the batch's order, rank-1 outputs given to every example, rows the signature refuses reported
instead of failing the batch, and the same under KeyedModelHandler in a pipeline.

A toy SavedModel whose scores are each row's mean and length shows any padding at once.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")

import apache_beam as beam  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from eat_keras.beam.handler import ERROR_OUTPUT, EatKerasModelHandler  # noqa: E402
from eat_keras.errors import EatKerasError  # noqa: E402
from eat_keras.runners import NON_FINITE_WAVEFORM  # noqa: E402


class RowMeanAndLength(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def serve(self, waveform):
        waveform = tf.debugging.assert_all_finite(waveform, NON_FINITE_WAVEFORM)  # as the exported models check
        length = tf.cast(tf.shape(waveform)[1], tf.float32)
        scores = tf.stack([tf.reduce_mean(waveform, 1), tf.fill(tf.shape(waveform)[:1], length)], 1)
        return {"scores": scores, "frame_start": tf.range(3, dtype=tf.float32)}


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("toy") / "model"
    module = RowMeanAndLength()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return str(folder)


def waveforms(lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0.1, 1.0, n).astype(np.float32) for n in lengths]


def test_each_length_is_scored_at_its_own_length_in_batch_order(toy_model):
    handler = EatKerasModelHandler(toy_model)
    batch = waveforms([4, 6, 4, 7, 6])
    results = list(handler.run_inference(batch, handler.load_model()))
    assert [r.example is w for r, w in zip(results, batch)] == [True] * len(batch)
    for result, waveform in zip(results, batch):
        mean, length = result.inference["scores"]
        assert length == len(waveform)  # a zero-padded row would report the longest length
        assert mean == pytest.approx(float(np.mean(waveform)), rel=1e-6)
        np.testing.assert_array_equal(result.inference["frame_start"], [0, 1, 2])  # the batch's shared axis


def test_a_refused_row_gets_an_error_and_the_others_are_scored(toy_model):
    handler = EatKerasModelHandler(toy_model, outputs=["scores"])
    batch = waveforms([5, 5, 5])
    batch[1][2] = np.nan
    results = list(handler.run_inference(batch, handler.load_model()))
    assert results[1].inference == {ERROR_OUTPUT: NON_FINITE_WAVEFORM}
    assert [sorted(results[i].inference) for i in (0, 2)] == [["scores"], ["scores"]]  # only the outputs asked for


def test_unknown_signature_and_batch_limits(toy_model):
    with pytest.raises(EatKerasError, match="no signature 'frame_scores'; it has serving_default"):
        EatKerasModelHandler(toy_model, signature="frame_scores").load_model()
    limits = EatKerasModelHandler(toy_model, max_batch_size=4, max_batch_seconds=2.0).batch_elements_kwargs()
    assert limits["max_batch_size"] == 4 and limits["max_batch_weight"] == 64000  # samples of audio per call
    assert limits["element_size_fn"](np.zeros(300)) == 300


def test_keyed_handler_in_a_pipeline_keeps_each_key_with_its_waveform(toy_model):
    lengths = {"a": 4, "b": 6, "c": 4, "d": 9}
    keyed = [(key, np.full(n, i + 1.0, np.float32)) for i, (key, n) in enumerate(lengths.items())]
    handler = KeyedModelHandler(EatKerasModelHandler(toy_model, max_batch_size=3))
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        scored = (
            pipeline
            | beam.Create(keyed)
            | RunInference(handler)
            | beam.MapTuple(lambda key, result: (key, tuple(float(x) for x in result.inference["scores"])))
        )
        assert_that(scored, equal_to([(key, (i + 1.0, float(n))) for i, (key, n) in enumerate(lengths.items())]))
