"""Fine-tuning losses on batches: cross-entropy, class-balanced (focal), supervised contrastive.

The defaults reproduce the seed recipe (spec §7.2): ``0.8 · ClassBalanced + 0.2 · SupCon`` with
β = 0.9999, softmax form, no focal term, τ = 0.07. Every loss takes targets as ``[B, C]``
probability rows (one-hot, or soft after mixup) so that mixup needs no special case: all of them are
linear in the targets, so ``loss(λy + (1−λ)y')`` equals upstream's ``λ·loss(y) + (1−λ)·loss(y')``.
Computation is in float32 whatever the logits' dtype (mixed precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import tensorflow as tf

from eat_keras.errors import ConfigError

__all__ = [
    "CombinedLoss",
    "LossSettingError",
    "check_cb_beta",
    "check_loss_terms",
    "class_balanced_loss",
    "class_balanced_weights",
    "cross_entropy",
    "supervised_contrastive_loss",
]

Form = Literal["softmax", "sigmoid"]

# Floor for 1 - p in the focal factor: pow(0, γ) has an infinite or NaN gradient for γ < 1.
_FOCAL_FLOOR = 1e-12
# The seed's SupConLoss adds these to its denominators; kept so that the values match.
_SUPCON_EPS = 1e-12
_EXCLUDED = -1e9

#: The loss terms :class:`CombinedLoss` knows.
TERM_NAMES = ("cb", "ce", "supcon")


class LossSettingError(ConfigError):
    """A loss setting a user chose (``--loss``, ``--cb-beta``) is invalid: one CLI error line, and
    a ``ValueError`` for callers of the library functions, as these checks raised before."""


def check_loss_terms(terms: Mapping[str, float]) -> None:
    """Refuse unknown or no term names, weights that are negative or not finite, and weights that
    are all zero (a zero loss has zero gradients: the run would train nothing)."""
    unknown = sorted(set(terms) - set(TERM_NAMES))
    if unknown or not terms:
        raise LossSettingError(f"loss terms must be among {TERM_NAMES}, got {sorted(terms)}")
    bad = {name: w for name, w in terms.items() if not (np.isfinite(w) and w >= 0)}
    if bad:
        raise LossSettingError(f"loss term weights must be finite and >= 0, got {bad}")
    if not any(w > 0 for w in terms.values()):
        raise LossSettingError(f"at least one loss term weight must be > 0, got {dict(terms)}")


def check_cb_beta(beta: float) -> None:
    """β = 1 makes every class-balanced weight 0/0; β < 0 has no meaning."""
    if not 0.0 <= beta < 1.0:
        raise LossSettingError(f"class-balanced beta must be in [0, 1), got {beta}")


def class_balanced_weights(counts: np.ndarray | list[int], beta: float = 0.9999) -> np.ndarray:
    """Class weights of Cui et al. (2019): ``w_c = (1 − β) / (1 − β^{n_c})``, scaled to sum to C.

    ``1 − β^n`` is computed as ``−expm1(n·ln β)`` (float64), which stays exact for β near 1. β = 0
    gives equal weights; β → 1 approaches inverse class frequency. Every class needs a count > 0.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {n.shape}")
    if np.any(n <= 0):
        raise ValueError(
            f"every class needs at least one training example; counts {n.astype(int).tolist()}"
        )
    check_cb_beta(beta)
    if beta == 0.0:
        return np.ones(n.size, dtype=np.float32)
    weights = (1.0 - beta) / -np.expm1(n * np.log(beta))
    return (weights * n.size / weights.sum()).astype(np.float32)


def cross_entropy(targets: tf.Tensor, logits: tf.Tensor, form: Form = "softmax") -> tf.Tensor:
    """Mean over the batch of the cross-entropy summed over classes (scalar).

    ``softmax``: ``−Σ_c y_c log softmax(z)_c`` (single-label, soft targets allowed). ``sigmoid``:
    ``Σ_c BCE(y_c, σ(z_c))`` (multi-label); note this is C times Keras' / torch's default
    element-mean BCE, the same normalisation as :func:`class_balanced_loss`.
    """
    targets, logits = _as_float32(targets, logits)
    if form == "softmax":
        return tf.reduce_mean(-tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1))
    if form == "sigmoid":
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        return tf.reduce_mean(tf.reduce_sum(bce, axis=-1))
    raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")


def class_balanced_loss(
    targets: tf.Tensor,
    logits: tf.Tensor,
    weights: tf.Tensor | np.ndarray,
    gamma: float = 0.0,
    form: Form = "softmax",
) -> tf.Tensor:
    """Class-balanced (focal) loss, mean over the batch (scalar).

    ``targets`` ``[B, C]`` one-hot or soft, ``logits`` ``[B, C]``, ``weights`` ``[C]`` (from
    :func:`class_balanced_weights`).

    * ``softmax``: ``mean_i Σ_c y_ic · w_c · (1 − p_ic)^γ · (−log p_ic)`` with ``p = softmax(z)``.
      With one-hot targets and γ = 0 this is the seed's ``mean_i w_{y_i} CE_i``.
    * ``sigmoid`` (Cui et al. 2019, as their reference code): per element focal BCE
      ``FL_ic = exp(−γ(y_ic z_ic + log(1 + e^{−z_ic}))) · BCE(y_ic, z_ic)``, i.e.
      ``(1 − p_t)^γ · BCE`` for hard labels (a geometric blend of the two focal factors for soft
      ones), weighted by the sample's class weight ``Σ_c y_ic w_c`` and summed over classes. For
      rows that sum to 1 (one-hot, mixup) that weight is the weight of the (mixed) class; a
      multi-label row gets the sum over its positives and an all-negative row gets weight 0, so
      this form suits single-label data trained with sigmoid outputs rather than multi-label data.

    γ = 0 reduces to weighted CE / weighted BCE; with all weights 1 to :func:`cross_entropy`.
    """
    targets, logits = _as_float32(targets, logits)
    w = tf.convert_to_tensor(weights, tf.float32)
    if form == "softmax":
        log_p = tf.nn.log_softmax(logits, axis=-1)
        per_class = -targets * w * log_p
        if gamma:
            one_minus_p = -tf.math.expm1(log_p)  # exact also where p is close to 1
            per_class *= tf.pow(tf.maximum(one_minus_p, _FOCAL_FLOOR), gamma)
        return tf.reduce_mean(tf.reduce_sum(per_class, axis=-1))
    if form == "sigmoid":
        per_class = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        if gamma:
            # log-domain modulator of Cui et al.: no pow(0, γ) and no overflow for large |z|.
            per_class *= tf.exp(-gamma * (targets * logits + tf.nn.softplus(-logits)))
        sample_weight = tf.linalg.matvec(targets, w)
        return tf.reduce_mean(sample_weight * tf.reduce_sum(per_class, axis=-1))
    raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")


def supervised_contrastive_loss(
    embeddings: tf.Tensor, labels: tf.Tensor, temperature: float = 0.07
) -> tf.Tensor:
    """The seed's SupConLoss (spec §7.2) on embeddings ``[B, D]`` and integer labels ``[B]``.

    ``f`` = L2-normalised embeddings, ``S = f fᵀ / τ``; positives of anchor ``i`` are the other
    samples with its label; ``log p_ij = S_ij − log(Σ_{k≠i} exp S_ik + 1e-12)``; the anchor's term
    is ``Σ_j pos_ij log p_ij / (Σ_j pos_ij + 1e-12)``; the loss is minus the mean over **all**
    anchors (one without positives adds 0 but counts). The log-sum is evaluated as
    ``logaddexp(logsumexp_{k≠i} S_ik, log 1e-12)``: the same value, but no ``exp`` overflow for
    small τ (the seed's form overflows float32 once ``1/τ > 88``).
    """
    f = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
    labels = tf.reshape(labels, [-1])
    similarity = tf.linalg.matmul(f, f, transpose_b=True) / temperature
    self_mask = tf.eye(tf.shape(f)[0], dtype=tf.bool)
    # Self excluded by a finite stand-in for -inf: exp() of it is 0, and its gradient stays finite
    # when a row has no other entry (batch of one).
    others = tf.where(self_mask, tf.constant(_EXCLUDED, tf.float32), similarity)
    log_eps = tf.fill(tf.shape(others)[:1], float(np.log(_SUPCON_EPS)))
    log_sum_others = tf.reduce_logsumexp(others, axis=1)
    log_denominator = tf.reduce_logsumexp(tf.stack([log_sum_others, log_eps]), axis=0)
    log_prob = similarity - log_denominator[:, tf.newaxis]
    same = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    positives = tf.cast(tf.logical_and(same, tf.logical_not(self_mask)), tf.float32)
    num_positives = tf.reduce_sum(positives, axis=1)
    per_anchor = tf.reduce_sum(positives * log_prob, axis=1) / (num_positives + _SUPCON_EPS)
    return -tf.reduce_mean(per_anchor)


class CombinedLoss:
    """Weighted sum of named loss terms; ``terms`` maps a name to its weight.

    Names: ``"cb"`` (:func:`class_balanced_loss`, needs ``class_weights``), ``"ce"``
    (:func:`cross_entropy`), ``"supcon"`` (:func:`supervised_contrastive_loss` on the embeddings,
    with the argmax of the targets as labels: after mixup that is the dominant, λ ≥ 0.5, label).
    The default ``{"cb": 0.8, "supcon": 0.2}`` is the seed recipe's.

    Calling it returns ``(total, {name: unweighted term})``; the dict is for logging.
    """

    NAMES = TERM_NAMES

    def __init__(
        self,
        class_weights: np.ndarray | None = None,
        terms: Mapping[str, float] | None = None,
        *,
        gamma: float = 0.0,
        form: Form = "softmax",
        temperature: float = 0.07,
    ) -> None:
        self.terms = dict(terms if terms is not None else {"cb": 0.8, "supcon": 0.2})
        check_loss_terms(self.terms)
        if "cb" in self.terms and class_weights is None:
            raise ValueError("the 'cb' term needs class_weights (see class_balanced_weights)")
        if form not in ("softmax", "sigmoid"):
            raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")
        self.class_weights = (
            None if class_weights is None else np.asarray(class_weights, np.float32)
        )
        self.gamma = gamma
        self.form = form
        self.temperature = temperature

    def __call__(
        self, targets: tf.Tensor, logits: tf.Tensor, embeddings: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        values: dict[str, tf.Tensor] = {}
        for name in self.terms:
            if name == "cb":
                values[name] = class_balanced_loss(
                    targets, logits, self.class_weights, self.gamma, self.form
                )
            elif name == "ce":
                values[name] = cross_entropy(targets, logits, self.form)
            else:
                if embeddings is None:
                    raise ValueError("the 'supcon' term needs the embeddings")
                labels = tf.argmax(targets, axis=-1, output_type=tf.int32)
                values[name] = supervised_contrastive_loss(embeddings, labels, self.temperature)
        total = tf.add_n([self.terms[name] * value for name, value in values.items()])
        return total, values


def _as_float32(targets: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(targets, tf.float32), tf.cast(logits, tf.float32)
