"""Batch augmentations: shapes, ranges, exact per-row behaviour and seeded determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from eat_keras.train.augment import mixup, random_gain, time_roll
from tolerances import OP_RTOL, assert_close


def _gen(seed: int = 0) -> tf.random.Generator:
    return tf.random.Generator.from_seed(seed)


@pytest.mark.parametrize("shape", [(16, 3200), (16, 128, 50, 1)])
def test_mixup_mixes_inputs_and_targets_with_one_lambda(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 5, size=shape[0])
    targets = np.eye(5, dtype=np.float32)[labels]
    out = mixup(x, targets, alpha=0.3, rng=_gen(1))
    lam, perm = out.lam.numpy(), out.perm.numpy()
    assert out.x.shape == shape and out.targets.shape == targets.shape
    assert lam.shape == (shape[0],) and np.all(lam >= 0.5) and np.all(lam <= 1.0)
    assert sorted(perm.tolist()) == list(range(shape[0]))
    lam_x = lam.reshape((-1,) + (1,) * (len(shape) - 1))
    # TF may fuse the multiply-adds that NumPy rounds one by one
    assert_close(out.x.numpy(), lam_x * x + (1 - lam_x) * x[perm], OP_RTOL)
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[perm]
    assert_close(out.targets.numpy(), mixed_targets, OP_RTOL)
    assert_close(out.targets.numpy().sum(axis=1), 1.0, OP_RTOL)


def test_mixup_is_seeded_and_varies_per_sample() -> None:
    x = tf.random.normal([64, 100], seed=1)
    targets = tf.one_hot(tf.range(64) % 4, 4)
    a, b = mixup(x, targets, rng=_gen(3)), mixup(x, targets, rng=_gen(3))
    np.testing.assert_array_equal(a.x.numpy(), b.x.numpy())
    np.testing.assert_array_equal(a.perm.numpy(), b.perm.numpy())
    c = mixup(x, targets, rng=_gen(4))
    assert not np.array_equal(a.lam.numpy(), c.lam.numpy())
    assert len(np.unique(a.lam.numpy())) > 32  # one λ per sample, not one per batch


def _mean_of_dominant_beta(alpha: float) -> float:
    """``E[max(λ, 1 − λ)]`` for ``λ ~ Beta(α, α)``: ``1/2 + E|λ − 1/2|``, and
    ``E|λ − 1/2| = 4^(−α) / (α · B(α, α))`` (integrate ``d/dλ [λ(1 − λ)]^α`` over ``[1/2, 1]``)."""
    log_beta = 2 * math.lgamma(alpha) - math.lgamma(2 * alpha)
    return 0.5 + math.exp(-alpha * math.log(4.0) - log_beta) / alpha


@pytest.mark.parametrize("alpha", [0.3, 2.0])  # upstream's spectrogram mixup and its wavmix Beta
def test_mixup_draws_lambda_from_the_configured_beta(alpha: float) -> None:
    """The mean of 4096 draws of λ = max(λ', 1 − λ') matches Beta(α, α) within ~4 standard
    errors; α = 1 (uniform λ', mean 0.75) is over 0.06 away from both cases."""
    x = tf.zeros([4096, 1])
    targets = tf.one_hot(tf.range(4096) % 2, 2)
    lam = mixup(x, targets, alpha=alpha, rng=_gen(12)).lam.numpy()
    assert abs(lam.mean() - _mean_of_dominant_beta(alpha)) < 0.01
    assert abs(_mean_of_dominant_beta(1.0) - 0.75) < 1e-12  # the formula, on the uniform case


def test_mixup_runs_in_a_graph_with_an_unknown_batch() -> None:
    gen = _gen(5)
    fn = tf.function(
        lambda x, y: mixup(x, y, rng=gen),
        input_signature=[tf.TensorSpec([None, 128, None, 1]), tf.TensorSpec([None, 3])],
    )
    out = fn(tf.ones([4, 128, 10, 1]), tf.one_hot([0, 1, 2, 0], 3))
    assert out.x.shape == (4, 128, 10, 1) and out.lam.shape == (4,)


def test_random_gain_is_integer_db_in_half_open_range() -> None:
    x = np.full((4000, 8), 0.25, dtype=np.float32)
    y = random_gain(x, max_db=12, rng=_gen(0)).numpy()
    gain_db = 20 * np.log10(y[:, 0] / x[:, 0])
    np.testing.assert_allclose(gain_db, np.round(gain_db), atol=1e-4)
    assert set(np.round(gain_db).astype(int)) == set(range(-12, 12))  # -12 ... 11 as upstream
    np.testing.assert_allclose(y / y[:, :1], 1.0, rtol=1e-6)  # one gain per example
    np.testing.assert_array_equal(y, random_gain(x, 12, rng=_gen(0)).numpy())
    assert random_gain(x, max_db=0) is x


def test_time_roll_is_a_per_row_circular_shift() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 1000)).astype(np.float32)
    y = time_roll(x, max_shift=300, rng=_gen(9)).numpy()
    shifts = []
    for row_in, row_out in zip(x, y):
        np.testing.assert_array_equal(np.sort(row_in), np.sort(row_out))  # a permutation of samples
        matches = [s for s in range(-300, 301) if np.array_equal(np.roll(row_in, s), row_out)]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert min(shifts) < 0 < max(shifts) and len(set(shifts)) > 16
    np.testing.assert_array_equal(y, time_roll(x, 300, rng=_gen(9)).numpy())
    assert not np.array_equal(y, time_roll(x, 300, rng=_gen(10)).numpy())


def test_time_roll_and_gain_in_a_graph_with_dynamic_length() -> None:
    gen = _gen(11)
    fn = tf.function(
        lambda w: time_roll(random_gain(w, 6, rng=gen), 4000, rng=gen),
        input_signature=[tf.TensorSpec([None, None])],
    )
    assert fn(tf.ones([3, 16000])).shape == (3, 16000)
    assert fn(tf.ones([2, 500])).shape == (2, 500)  # shift larger than the clip wraps around
