"""Fine-tuning losses against independent NumPy (float64) implementations of their formulas, and a
new term added through the loss table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from eat_keras.errors import ConfigError
from eat_keras.train.config import FinetuneConfig
from eat_keras.train.loss_table import LOSS_TERMS, LossContext, LossSetting, LossTerm, register_loss_term
from eat_keras.train.losses import (
    CombinedLoss,
    class_balanced_loss,
    class_balanced_weights,
    cross_entropy,
    distillation_loss,
    supervised_contrastive_loss,
    teacher_probabilities,
)

# The seed recipe's hard-coded class counts (spec §7.2).
SEED_COUNTS = [13062, 8153, 7422, 13569, 5702, 10557, 4572, 3450, 8384, 6772,
               5310, 6418, 3875, 2881, 4093, 4570, 2666, 3152, 2715, 8343]  # fmt: skip


# --- NumPy references ------------------------------------------------------------------------


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _np_cb_softmax(y: np.ndarray, z: np.ndarray, w: np.ndarray, gamma: float) -> float:
    log_p = _np_log_softmax(z)
    p = np.exp(log_p)
    return float(np.mean(np.sum(y * w * (1.0 - p) ** gamma * -log_p, axis=1)))


def _np_cb_sigmoid_hard(y: np.ndarray, z: np.ndarray, w: np.ndarray, gamma: float) -> float:
    """Textbook focal BCE for 0/1 labels: (1 - p_t)^γ · (−log p_t), weighted by w of the label."""
    p = _np_sigmoid(z)
    p_t = np.where(y == 1, p, 1.0 - p)
    focal = (1.0 - p_t) ** gamma * -np.log(p_t)
    return float(np.mean((y @ w) * focal.sum(axis=1)))


def _np_cb_sigmoid_soft(y: np.ndarray, z: np.ndarray, w: np.ndarray, gamma: float) -> float:
    """Cui et al.'s reference code: modulator exp(−γ y z − γ log(1 + e^{−z})) on BCE."""
    bce = -(y * np.log(_np_sigmoid(z)) + (1 - y) * np.log(1 - _np_sigmoid(z)))
    modulator = np.exp(-gamma * y * z - gamma * np.log1p(np.exp(-z)))
    return float(np.mean((y @ w) * (modulator * bce).sum(axis=1)))


def _np_supcon(f: np.ndarray, labels: np.ndarray, tau: float) -> float:
    """The seed's SupConLoss, literally (no stabilisation), in float64."""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = f @ f.T / tau
    b = len(labels)
    not_self = 1.0 - np.eye(b)
    pos = (labels[:, None] == labels[None, :]).astype(np.float64) * not_self
    log_prob = s - np.log((np.exp(s) * not_self).sum(axis=1, keepdims=True) + 1e-12)
    per_anchor = (pos * log_prob).sum(axis=1) / (pos.sum(axis=1) + 1e-12)
    return float(-per_anchor.mean())


@pytest.fixture
def case() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    b, c = 6, 4
    labels = np.array([0, 1, 2, 3, 1, 0])
    soft = rng.dirichlet(np.ones(c), size=b)
    return {
        "logits": (rng.normal(size=(b, c)) * 3).astype(np.float32),
        "onehot": np.eye(c)[labels],
        "labels": labels,
        "soft": soft,
        "weights": rng.uniform(0.3, 2.0, size=c),
    }


def _close(a: tf.Tensor | float, b: float, tol: float = 2e-5) -> None:
    assert float(a) == pytest.approx(b, rel=tol, abs=tol)


# --- class-balanced weights ------------------------------------------------------------------


def test_class_balanced_weights_of_the_seed_counts() -> None:
    w = class_balanced_weights(SEED_COUNTS, beta=0.9999)
    assert w.shape == (20,) and w.dtype == np.float32
    assert float(w.sum()) == pytest.approx(20.0, rel=1e-6)
    assert float(w.min()) == pytest.approx(0.523, abs=5e-4) and int(np.argmin(w)) == 3  # n = 13569
    assert float(w.max()) == pytest.approx(1.660, abs=5e-4) and int(np.argmax(w)) == 16  # n = 2666
    n = np.asarray(SEED_COUNTS, np.float64)
    reference = (1 - 0.9999) / (1 - 0.9999**n)
    np.testing.assert_allclose(w, reference / reference.sum() * 20, rtol=1e-6)


def test_class_balanced_weights_limits_and_errors() -> None:
    np.testing.assert_array_equal(class_balanced_weights([5, 50, 500], beta=0.0), np.ones(3))
    np.testing.assert_allclose(class_balanced_weights([7, 7, 7]), np.ones(3), rtol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        class_balanced_weights([3, 0, 2])
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([3, 2], beta=1.0)


# --- cross-entropy and class-balanced loss ---------------------------------------------------


@pytest.mark.parametrize("targets", ["onehot", "soft"])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_cb_softmax_matches_numpy(case: dict, targets: str, gamma: float) -> None:
    y, z, w = case[targets], case["logits"], case["weights"]
    expected = _np_cb_softmax(y, z.astype(np.float64), w, gamma)
    _close(class_balanced_loss(y, z, w, gamma=gamma), expected)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_cb_sigmoid_matches_textbook_focal_bce_on_hard_labels(case: dict, gamma: float) -> None:
    y, z, w = case["onehot"], case["logits"].astype(np.float64), case["weights"]
    loss = class_balanced_loss(y, case["logits"], w, gamma=gamma, form="sigmoid")
    _close(loss, _np_cb_sigmoid_hard(y, z, w, gamma))


def test_cb_sigmoid_soft_targets_match_cui_reference(case: dict) -> None:
    y, z, w = case["soft"], case["logits"], case["weights"]
    loss = class_balanced_loss(y, z, w, gamma=2.0, form="sigmoid")
    _close(loss, _np_cb_sigmoid_soft(y, z.astype(np.float64), w, 2.0))


def test_cb_softmax_is_the_seeds_weighted_ce_on_one_hot(case: dict) -> None:
    z, w, labels = case["logits"].astype(np.float64), case["weights"], case["labels"]
    seed = np.mean(w[labels] * -_np_log_softmax(z)[np.arange(len(labels)), labels])
    _close(class_balanced_loss(case["onehot"], case["logits"], w), seed)


@pytest.mark.parametrize("form", ["softmax", "sigmoid"])
@pytest.mark.parametrize("targets", ["onehot", "soft"])
def test_cb_with_equal_weights_and_no_focus_is_plain_ce(
    case: dict, form: str, targets: str
) -> None:
    y, z = case[targets], case["logits"]
    ones = np.ones(z.shape[1])
    loss = class_balanced_loss(y, z, ones, gamma=0.0, form=form)
    _close(loss, float(cross_entropy(y, z, form)), 1e-6)


def test_cross_entropy_matches_numpy(case: dict) -> None:
    y, z = case["soft"], case["logits"].astype(np.float64)
    _close(cross_entropy(y, case["logits"]), float(np.mean(-(y * _np_log_softmax(z)).sum(axis=1))))
    bce = -(y * np.log(_np_sigmoid(z)) + (1 - y) * np.log(1 - _np_sigmoid(z)))
    _close(cross_entropy(y, case["logits"], "sigmoid"), float(bce.sum(axis=1).mean()))


def test_cb_of_mixed_targets_is_the_mix_of_losses(case: dict) -> None:
    """Upstream mixup computes λ·L(y) + (1−λ)·L(y[perm]); mixed soft targets give the same loss."""
    y, z, w = case["onehot"], case["logits"], case["weights"]
    lam = np.array([0.5, 0.9, 0.7, 1.0, 0.6, 0.8])[:, None]
    perm = np.array([3, 2, 1, 0, 5, 4])
    mixed = class_balanced_loss(lam * y + (1 - lam) * y[perm], z, w, gamma=2.0)

    def one(target_row: int, logit_row: int) -> float:
        rows = slice(logit_row, logit_row + 1)
        return float(class_balanced_loss(y[target_row : target_row + 1], z[rows], w, gamma=2.0))

    per_sample = [lam[i, 0] * one(i, i) + (1 - lam[i, 0]) * one(perm[i], i) for i in range(len(y))]
    _close(mixed, float(np.mean(per_sample)))


def test_focal_gradient_is_finite_for_saturated_logits() -> None:
    logits = tf.constant([[40.0, -40.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = class_balanced_loss(tf.constant([[1.0, 0.0, 0.0]]), logits, np.ones(3), gamma=0.5)
    assert np.isfinite(tape.gradient(loss, logits).numpy()).all()


def test_float16_logits_are_accepted(case: dict) -> None:
    y, z, w = case["onehot"], case["logits"], case["weights"]
    loss = class_balanced_loss(y, tf.constant(z, tf.float16), w)
    assert loss.dtype == tf.float32
    _close(loss, _np_cb_softmax(y, z.astype(np.float16).astype(np.float64), w, 0.0), 1e-4)


# --- supervised contrastive ------------------------------------------------------------------


def test_supcon_matches_the_seed_formula_with_an_anchor_without_positives() -> None:
    rng = np.random.default_rng(3)
    f = rng.normal(size=(7, 16)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 3])  # anchors 5 and 6 have no positives
    expected = _np_supcon(f.astype(np.float64), labels, 0.07)
    _close(supervised_contrastive_loss(f, labels), expected, 1e-5)


def test_supcon_anchors_without_positives_count_as_zero() -> None:
    rng = np.random.default_rng(4)
    f = rng.normal(size=(4, 8)).astype(np.float32)
    paired = supervised_contrastive_loss(f[:2], np.array([0, 0]))
    alone = supervised_contrastive_loss(f, np.array([0, 0, 1, 2]))
    assert float(supervised_contrastive_loss(f, np.array([0, 1, 2, 3]))) == 0.0
    # Anchors 2 and 3 add nothing but halve the mean; denominators also see the two extra samples.
    _close(alone, _np_supcon(f.astype(np.float64), np.array([0, 0, 1, 2]), 0.07), 1e-5)
    assert float(alone) != pytest.approx(float(paired))


def test_supcon_is_stable_for_a_small_temperature() -> None:
    """1/τ = 200: the seed's exp(S) overflows float32, the stable form matches float64 NumPy."""
    rng = np.random.default_rng(5)
    f = rng.normal(size=(6, 8)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    value = supervised_contrastive_loss(f, labels, temperature=0.005)
    assert np.isfinite(float(value))
    _close(value, _np_supcon(f.astype(np.float64), labels, 0.005), 1e-4)


@pytest.mark.parametrize("labels", [[0], [0, 1, 2]])
def test_supcon_gradient_is_finite_without_positives(labels: list[int]) -> None:
    f = tf.constant(np.random.default_rng(6).normal(size=(len(labels), 5)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(f)
        loss = supervised_contrastive_loss(f, tf.constant(labels))
    assert float(loss) == 0.0 and np.isfinite(tape.gradient(loss, f).numpy()).all()


# --- combined --------------------------------------------------------------------------------


# Two replicas on two logical CPUs need a fresh process: devices are fixed when TensorFlow starts.
_TWO_REPLICAS = r"""
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from eat_keras.train.losses import supervised_contrastive_loss

rng = np.random.default_rng(0)
x = tf.constant(rng.standard_normal((8, 5)), tf.float32)
labels = tf.constant([0, 1, 0, 1, 2, 2, 0, 1])
anchors = tf.constant([True, True, False, True, True, True, True, False])
start = rng.standard_normal((5, 4)).astype(np.float32)
use_anchors = sys.argv[1] == "anchors"

def loss(rows, w):
    return supervised_contrastive_loss(tf.gather(x, rows) @ w, tf.gather(labels, rows), 0.1,
                                       tf.gather(anchors, rows) if use_anchors else None)

w = tf.Variable(start)
with tf.GradientTape() as tape:
    one = loss(tf.range(8), w)
one_grad = tape.gradient(one, w)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = tf.Variable(start)

@tf.function
def step():
    def replica():
        i = tf.distribute.get_replica_context().replica_id_in_sync_group
        with tf.GradientTape() as tape:
            value = loss(tf.range(4) + 4 * i, mirrored)
            scaled = value / 2  # the training step's scaling
        return value, tape.gradient(scaled, mirrored)
    value, grad = strategy.run(replica)
    return strategy.reduce("MEAN", value, axis=None), strategy.reduce("SUM", grad, axis=None)

two, two_grad = step()
print(json.dumps({"one": float(one), "two": float(two), "one_grad": one_grad.numpy().tolist(),
                  "two_grad": two_grad.numpy().tolist()}))
"""


@pytest.mark.parametrize("anchors", ["all", "anchors"])
def test_supcon_over_two_replicas_equals_one_device_on_the_global_batch(anchors: str) -> None:
    """Each replica contrasts its rows with the whole global batch: the replicas' mean loss and
    summed gradients (the training step's) are one device's on all eight rows. Each replica's four
    rows alone would miss positives (replica 1 holds one row of class 0) and give another loss."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", _TWO_REPLICAS, anchors], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert math.isclose(got["two"], got["one"], rel_tol=1e-5), got
    one_grad, two_grad = np.array(got["one_grad"]), np.array(got["two_grad"])
    np.testing.assert_allclose(two_grad, one_grad, rtol=0, atol=1e-5 * np.abs(one_grad).max())


def test_combined_loss_default_is_the_seed_recipe(case: dict) -> None:
    emb = np.random.default_rng(8).normal(size=(6, 12)).astype(np.float32)
    loss = CombinedLoss(case["weights"])
    total, terms = tf.function(loss)(case["onehot"], case["logits"], emb)
    assert set(terms) == {"cb", "supcon"}
    z64 = case["logits"].astype(np.float64)
    _close(terms["cb"], _np_cb_softmax(case["onehot"], z64, case["weights"], 0.0))
    _close(terms["supcon"], _np_supcon(emb.astype(np.float64), case["labels"], 0.07), 1e-5)
    _close(total, 0.8 * float(terms["cb"]) + 0.2 * float(terms["supcon"]), 1e-6)


def test_combined_loss_validates_its_terms(case: dict) -> None:
    with pytest.raises(ValueError, match="among"):
        CombinedLoss(case["weights"], {"cb": 1.0, "focal": 1.0})
    with pytest.raises(ValueError, match="class_weights"):
        CombinedLoss(None)
    with pytest.raises(ValueError, match="embeddings"):
        CombinedLoss(case["weights"])(case["onehot"], case["logits"])
    total, terms = CombinedLoss(terms={"ce": 1.0})(case["onehot"], case["logits"])
    _close(total, float(cross_entropy(case["onehot"], case["logits"])), 1e-6)
    assert list(terms) == ["ce"]


# --- a new term through the loss table -------------------------------------------------------


@pytest.fixture
def toy_term():
    """A term registered for the test only: ``toy_scale`` · mean squared embedding. It records the
    settings its builder got and counts, in a variable, the steps that evaluate it."""
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    built: list[dict[str, float]] = []

    def build(context: LossContext):
        built.append(dict(context.settings))
        scale = context.settings["toy_scale"]

        def term(inputs):
            calls.assign_add(1)
            return scale * tf.reduce_mean(tf.square(tf.cast(inputs["embeddings"], tf.float32)))

        return term

    setting = LossSetting("toy_scale", 1.0, "factor of the toy term", minimum_open=True)
    register_loss_term(LossTerm("toy", "mean squared embedding", build, settings=(setting,), needs=("embeddings",)))
    try:
        yield SimpleNamespace(calls=calls, built=built)
    finally:
        del LOSS_TERMS["toy"]


def test_a_registered_term_is_combined_with_its_setting(toy_term, case: dict) -> None:
    emb = np.random.default_rng(9).normal(size=(6, 12)).astype(np.float32)
    loss = CombinedLoss(terms={"ce": 1.0, "toy": 2.0}, settings={"toy_scale": 0.5})
    total, terms = loss(case["onehot"], case["logits"], emb)
    assert toy_term.built[-1]["toy_scale"] == 0.5 and toy_term.built[-1]["cb_beta"] == 0.9999
    _close(terms["toy"], 0.5 * float(np.mean(emb.astype(np.float64) ** 2)))
    _close(total, float(terms["ce"]) + 2.0 * float(terms["toy"]), 1e-6)
    with pytest.raises(ValueError, match="the 'toy' term needs the embeddings"):
        loss(case["onehot"], case["logits"])
    with pytest.raises(ConfigError, match=r"toy_scale must be finite and > 0, got 0"):
        FinetuneConfig(loss_terms={"toy": 1.0}, loss_settings={"toy_scale": 0})
    with pytest.raises(ValueError, match="already registered"):
        register_loss_term(LOSS_TERMS["toy"])


def test_a_registered_term_trains_two_steps_through_finetune(toy_term, tmp_path) -> None:
    from tiny_training import save_tiny_model, write_class_folders

    from eat_keras.train.data import read_folder_dataset
    from eat_keras.train.fit import finetune

    examples = read_folder_dataset(write_class_folders(tmp_path / "data"))  # 3 files per class
    config = FinetuneConfig(
        model=str(save_tiny_model(tmp_path / "tiny")), clip_seconds=1.0, epochs=1, warmup_fraction=0.0,
        batch_size=2, val_fraction=0.34, mixup_alpha=0.0, freeze_backbone_epochs=1,  # 4 training files
        loss_terms={"ce": 1.0, "toy": 0.5}, loss_settings={"toy_scale": 0.25},
    )  # fmt: skip
    result = finetune(examples, tmp_path / "run", config, verbose=False)
    assert int(toy_term.calls) == 2  # two training steps, each evaluating the term once
    assert toy_term.built[-1]["toy_scale"] == 0.25
    (row,) = result.history
    assert math.isfinite(row["train_toy"]) and row["train_toy"] > 0
    _close(row["train_loss"], row["train_ce"] + 0.5 * row["train_toy"], 1e-5)
    saved = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert saved["loss_terms"] == {"ce": 1.0, "toy": 0.5} and saved["loss_settings"]["toy_scale"] == 0.25


def test_an_unregistered_term_is_refused() -> None:
    assert "toy" not in LOSS_TERMS
    with pytest.raises(ConfigError, match="must be among"):
        FinetuneConfig(loss_terms={"toy": 1.0})


# --- distillation and unlabelled rows --------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_softmax_distillation_is_t_squared_kl_of_softened_scores(case: dict, temperature: float) -> None:
    teacher = case["logits"][::-1].copy()
    p = np.exp(_np_log_softmax(teacher.astype(np.float64) / temperature))
    log_q = _np_log_softmax(case["logits"].astype(np.float64) / temperature)
    want = temperature**2 * float(np.mean(np.sum(p * (np.log(p) - log_q), axis=1)))
    probs = teacher_probabilities(teacher, "softmax", temperature)
    np.testing.assert_allclose(probs.numpy(), p, rtol=1e-5)
    _close(distillation_loss(probs, case["logits"], temperature, "softmax"), want)
    _close(distillation_loss(probs, teacher, temperature, "softmax"), 0.0)  # the teacher itself: KL 0


def test_sigmoid_distillation_is_upstreams_bce_against_softened_teacher_probabilities(case: dict) -> None:
    teacher, temperature = case["logits"][::-1].copy(), 2.0
    p = _np_sigmoid(teacher.astype(np.float64) / temperature)
    z = case["logits"].astype(np.float64)
    want = float(np.mean(np.sum(-(p * np.log(_np_sigmoid(z)) + (1 - p) * np.log(1 - _np_sigmoid(z))), axis=1)))
    _close(distillation_loss(teacher_probabilities(teacher, "sigmoid", temperature), z, temperature, "sigmoid"), want)


def test_rows_without_labels_add_only_the_distillation_term(case: dict) -> None:
    """Rows of label weight 0 may carry any target: the loss and its gradient do not change; a
    row mixed with an unlabelled partner counts for its labelled share."""
    loss = CombinedLoss(terms={"cb": 0.4, "supcon": 0.1, "kd": 0.5}, class_counts=np.array([5, 3, 2, 4]))
    logits = tf.constant(case["logits"])
    embeddings = tf.constant(np.random.default_rng(1).normal(size=(6, 5)), tf.float32)
    weight = tf.constant([1.0, 0.0, 0.7, 0.0, 1.0, 1.0])
    probs = teacher_probabilities(case["logits"][::-1].copy(), "softmax", 2.0)

    def value_and_gradient(targets: np.ndarray) -> tuple[dict, np.ndarray]:
        with tf.GradientTape() as tape:
            tape.watch(logits)
            total, terms = loss(tf.constant(targets, tf.float32), logits, embeddings, label_weight=weight, teacher_probs=probs)
        return {"total": float(total), **{k: float(v) for k, v in terms.items()}}, tape.gradient(total, logits).numpy()

    right, grad_right = value_and_gradient(case["onehot"])
    wrong_targets = case["onehot"].copy()
    wrong_targets[[1, 3]] = np.eye(4)[[3, 2]]  # other labels on the unlabelled rows
    wrong, grad_wrong = value_and_gradient(wrong_targets)
    assert right == wrong
    np.testing.assert_array_equal(grad_right, grad_wrong)
    w = weight.numpy()
    cb_weights = class_balanced_weights([5, 3, 2, 4])
    per_row = -(case["onehot"] * cb_weights * _np_log_softmax(case["logits"].astype(np.float64))).sum(axis=1)
    _close(right["cb"], float((w * per_row).sum() / w.sum()))
    assert np.abs(grad_right[[1, 3]]).sum() > 0  # the unlabelled rows still learn from the teacher
