"""Fine-tuning losses on batches: cross-entropy, class-balanced (focal), supervised contrastive,
distillation towards a teacher.

The defaults reproduce the original recipe (docs/design.md): ``0.8 · ClassBalanced + 0.2 · SupCon`` with
β = 0.9999, softmax form, no focal term, τ = 0.07. Every loss takes targets as ``[B, C]``
probability rows (one-hot, or soft after mixup) so that mixup needs no special case: all of them are
linear in the targets, so ``loss(λy + (1−λ)y')`` equals upstream's ``λ·loss(y) + (1−λ)·loss(y')``.
Computation is in float32 whatever the logits' dtype (mixed precision). Each loss is a term of the
table in :mod:`eat_keras.train.loss_table` through its ``*_term`` builder here.

A batch may hold unlabelled files (distillation): the terms that read labels then get a
``label_weight`` per row, each row's labelled share after mixup (0 for an unlabelled file, 1 for a
labelled one, λ when a labelled file was mixed with an unlabelled one), and targets scaled to sum
to 1 over the labelled part; they average over the rows by that weight, so an unlabelled row adds
nothing and its label is never read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
import tensorflow as tf

from eat_keras.train.loss_table import (
    DEFAULT_LOSS_TERMS,
    FORMS,
    LOSS_TERMS,
    LossContext,
    LossSettingError,
    TermFunction,
    check_loss_terms,
    loss_settings,
    resolved_loss_settings,
)

__all__ = [
    "CombinedLoss",
    "LossSettingError",
    "check_cb_beta",
    "check_loss_terms",
    "class_balanced_loss",
    "class_balanced_term",
    "class_balanced_weights",
    "cross_entropy",
    "cross_entropy_term",
    "distillation_loss",
    "distillation_term",
    "supervised_contrastive_loss",
    "supervised_contrastive_term",
    "teacher_probabilities",
]

Form = Literal["softmax", "sigmoid"]

# Floor for 1 - p in the focal factor: pow(0, γ) has an infinite or NaN gradient for γ < 1.
_FOCAL_FLOOR = 1e-12
# The original recipe's SupConLoss adds these to its denominators; kept so that the values match.
_SUPCON_EPS = 1e-12
_EXCLUDED = -1e9


def check_cb_beta(beta: float) -> None:
    """β = 1 makes every class-balanced weight 0/0; β < 0 has no meaning."""
    loss_settings()["cb_beta"].check(beta)


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


def cross_entropy(
    targets: tf.Tensor, logits: tf.Tensor, form: Form = "softmax", sample_weight: tf.Tensor | None = None
) -> tf.Tensor:
    """Mean over the batch (weighted by ``sample_weight`` ``[B]`` when given) of the cross-entropy
    summed over classes (scalar).

    ``softmax``: ``−Σ_c y_c log softmax(z)_c`` (single-label, soft targets allowed). ``sigmoid``:
    ``Σ_c BCE(y_c, σ(z_c))`` (multi-label); note this is C times Keras' / torch's default
    element-mean BCE, the same normalisation as :func:`class_balanced_loss`.
    """
    targets, logits = _as_float32(targets, logits)
    if form == "softmax":
        per_sample = -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    elif form == "sigmoid":
        per_sample = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)
    else:
        raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")
    return batch_mean(per_sample, sample_weight)


def batch_mean(per_sample: tf.Tensor, sample_weight: tf.Tensor | None = None) -> tf.Tensor:
    """The mean of ``per_sample`` ``[B]``, or its ``sample_weight``-weighted mean (0 when every
    weight is 0: a batch of unlabelled files has no label loss)."""
    if sample_weight is None:
        return tf.reduce_mean(per_sample)
    w = tf.cast(sample_weight, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(w * per_sample), tf.reduce_sum(w))


def class_balanced_loss(
    targets: tf.Tensor,
    logits: tf.Tensor,
    weights: tf.Tensor | np.ndarray,
    gamma: float = 0.0,
    form: Form = "softmax",
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Class-balanced (focal) loss, mean over the batch (weighted by ``sample_weight`` when given).

    ``targets`` ``[B, C]`` one-hot or soft, ``logits`` ``[B, C]``, ``weights`` ``[C]`` (from
    :func:`class_balanced_weights`).

    * ``softmax``: ``mean_i Σ_c y_ic · w_c · (1 − p_ic)^γ · (−log p_ic)`` with ``p = softmax(z)``.
      With one-hot targets and γ = 0 this is the original recipe's ``mean_i w_{y_i} CE_i``.
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
        return batch_mean(tf.reduce_sum(per_class, axis=-1), sample_weight)
    if form == "sigmoid":
        per_class = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        if gamma:
            # log-domain modulator of Cui et al.: no pow(0, γ) and no overflow for large |z|.
            per_class *= tf.exp(-gamma * (targets * logits + tf.nn.softplus(-logits)))
        class_weight = tf.linalg.matvec(targets, w)
        return batch_mean(class_weight * tf.reduce_sum(per_class, axis=-1), sample_weight)
    raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")


def supervised_contrastive_loss(
    embeddings: tf.Tensor, labels: tf.Tensor, temperature: float = 0.07, anchors: tf.Tensor | None = None
) -> tf.Tensor:
    """The original recipe's SupConLoss on embeddings ``[B, D]`` and integer labels ``[B]``.

    ``f`` = L2-normalised embeddings, ``S = f fᵀ / τ``; positives of anchor ``i`` are the other
    samples with its label; ``log p_ij = S_ij − log(Σ_{k≠i} exp S_ik + 1e-12)``; the anchor's term
    is ``Σ_j pos_ij log p_ij / (Σ_j pos_ij + 1e-12)``; the loss is minus the mean over **all**
    anchors (one without positives adds 0 but counts). ``anchors`` ``[B]`` bool, when given, limits
    anchors and positives to those rows (labelled files): the others, whose labels are not read,
    stay in the denominators as negatives. The log-sum is evaluated as
    ``logaddexp(logsumexp_{k≠i} S_ik, log 1e-12)``: the same value, but no ``exp`` overflow for
    small τ (the original form overflows float32 once ``1/τ > 88``).

    Under a ``tf.distribute`` strategy with several replicas, each replica's rows are contrasted
    with the whole global batch, gathered from every replica (the gather's gradient reaches each
    replica's own rows): the replicas' mean is the global batch's loss, as on one device, and a
    replica's share of a few clips still finds its positives and negatives.
    """
    f = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
    labels = tf.reshape(labels, [-1])
    weights = tf.ones_like(labels, tf.float32) if anchors is None else tf.cast(anchors, tf.float32)
    everything = _global_batch(f, labels, weights)
    rows = everything.first + tf.range(tf.shape(f)[0])  # these rows' places in the global batch
    similarity = tf.linalg.matmul(f, everything.f, transpose_b=True) / temperature
    self_mask = tf.equal(rows[:, tf.newaxis], tf.range(tf.shape(everything.f)[0])[tf.newaxis, :])
    # Self excluded by a finite stand-in for -inf: exp() of it is 0, and its gradient stays finite
    # when a row has no other entry (batch of one).
    others = tf.where(self_mask, tf.constant(_EXCLUDED, tf.float32), similarity)
    log_eps = tf.fill(tf.shape(others)[:1], float(np.log(_SUPCON_EPS)))
    log_sum_others = tf.reduce_logsumexp(others, axis=1)
    log_denominator = tf.reduce_logsumexp(tf.stack([log_sum_others, log_eps]), axis=0)
    log_prob = similarity - log_denominator[:, tf.newaxis]
    same = tf.equal(labels[:, tf.newaxis], everything.labels[tf.newaxis, :])
    if anchors is not None:
        same = tf.logical_and(same, tf.logical_and(anchors[:, tf.newaxis], everything.weights[tf.newaxis, :] > 0))
    positives = tf.cast(tf.logical_and(same, tf.logical_not(self_mask)), tf.float32)
    num_positives = tf.reduce_sum(positives, axis=1)
    per_anchor = tf.reduce_sum(positives * log_prob, axis=1) / (num_positives + _SUPCON_EPS)
    # the (weighted) mean over the global batch's anchors once the replicas' values are averaged
    local_sum = tf.reduce_sum(weights * per_anchor)
    return -everything.replicas * tf.math.divide_no_nan(local_sum, tf.reduce_sum(everything.weights))


class _GlobalBatch(NamedTuple):
    """The rows of every replica in replica order, and where this replica's rows start."""

    f: tf.Tensor
    labels: tf.Tensor
    weights: tf.Tensor
    replicas: int
    first: tf.Tensor


def _global_batch(f: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> _GlobalBatch:
    """The global batch: this replica's own rows outside a strategy or with one replica."""
    context = tf.distribute.get_replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    if replicas == 1:
        return _GlobalBatch(f, labels, weights, 1, tf.constant(0))
    sizes = context.all_gather(tf.shape(f)[:1], axis=0)
    first = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    return _GlobalBatch(*(context.all_gather(t, axis=0) for t in (f, labels, weights)), replicas, first)


def class_balanced_term(context: LossContext) -> TermFunction:
    """The ``cb`` entry: :func:`class_balanced_loss` with the caller's class weights, else the
    weights of the training counts for ``cb_beta``."""
    weights = context.class_weights
    if weights is None:
        if context.class_counts is None:
            raise ValueError("the 'cb' term needs class_weights (see class_balanced_weights) or class counts")
        weights = class_balanced_weights(context.class_counts, context.settings["cb_beta"])
    weights = np.asarray(weights, np.float32)
    gamma, form = context.settings["focal_gamma"], context.form
    return lambda inputs: class_balanced_loss(
        inputs["targets"], inputs["logits"], weights, gamma, form, inputs.get("label_weight")
    )


def cross_entropy_term(context: LossContext) -> TermFunction:
    """The ``ce`` entry: :func:`cross_entropy`."""
    return lambda inputs: cross_entropy(inputs["targets"], inputs["logits"], context.form, inputs.get("label_weight"))


def supervised_contrastive_term(context: LossContext) -> TermFunction:
    """The ``supcon`` entry: :func:`supervised_contrastive_loss` on the embeddings, with the argmax
    of the targets as labels (after mixup that is the dominant, λ ≥ 0.5, label)."""
    temperature = context.settings["supcon_temperature"]

    def term(inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        labels = tf.argmax(inputs["targets"], axis=-1, output_type=tf.int32)
        weight = inputs.get("label_weight")
        anchors = None if weight is None else weight >= 0.5  # its dominant part is labelled
        return supervised_contrastive_loss(inputs["embeddings"], labels, temperature, anchors)

    return term


def teacher_probabilities(teacher_logits: tf.Tensor, form: Form, temperature: float) -> tf.Tensor:
    """The teacher's scores softened by ``temperature``: ``softmax(z / T)`` or ``sigmoid(z / T)``,
    the targets of :func:`distillation_loss` (mixed as labels are, under mixup)."""
    z = tf.cast(teacher_logits, tf.float32) / temperature
    if form == "softmax":
        return tf.nn.softmax(z, axis=-1)
    if form == "sigmoid":
        return tf.sigmoid(z)
    raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")


def distillation_loss(
    teacher_probs: tf.Tensor, student_logits: tf.Tensor, temperature: float, form: Form = "softmax"
) -> tf.Tensor:
    """Knowledge distillation towards ``teacher_probs`` (from :func:`teacher_probabilities`), mean
    over the batch (scalar).

    * ``softmax`` (single-label, Hinton et al.): ``T² · KL(p ‖ softmax(z / T))``, summed over
      classes; ``T²`` keeps its gradients' scale independent of ``T``; 0 when the student's
      softened scores equal the teacher's.
    * ``sigmoid`` (multi-label, upstream EfficientAT's AudioSet recipe): ``Σ_c BCE(p_c, σ(z_c))``
      against the teacher's probabilities, the student's logits not divided by ``T``.
    """
    p, z = _as_float32(teacher_probs, student_logits)
    if form == "softmax":
        log_q = tf.nn.log_softmax(z / temperature, axis=-1)
        log_p = tf.math.log(tf.maximum(p, np.finfo(np.float32).tiny))
        kl = tf.reduce_sum(tf.where(p > 0, p * (log_p - log_q), tf.zeros_like(p)), axis=-1)
        return temperature**2 * tf.reduce_mean(kl)
    if form == "sigmoid":
        return tf.reduce_mean(tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=p, logits=z), axis=-1))
    raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")


def distillation_term(context: LossContext) -> TermFunction:
    """The ``kd`` entry: :func:`distillation_loss` on every row of the batch, unlabelled ones included."""
    temperature, form = context.settings["kd_temperature"], context.form
    return lambda inputs: distillation_loss(inputs["teacher_probs"], inputs["logits"], temperature, form)


class CombinedLoss:
    """Weighted sum of terms of the loss table (:mod:`eat_keras.train.loss_table`); ``terms`` maps
    a name to its weight, ``settings`` overrides the terms' settings (``cb_beta``, ...).

    Built in: ``"cb"`` (:func:`class_balanced_loss`, with ``class_weights`` or weights from
    ``class_counts``), ``"ce"`` (:func:`cross_entropy`), ``"supcon"``
    (:func:`supervised_contrastive_loss`, needs the embeddings). The default
    ``{"cb": 0.8, "supcon": 0.2}`` is the original recipe's.

    Calling it returns ``(total, {name: unweighted term})``; the dict is for logging. Inputs a term
    needs besides the targets, logits and embeddings are passed by name (``teacher_probs=...``, ``label_weight=...``).
    """

    def __init__(
        self,
        class_weights: np.ndarray | None = None,
        terms: Mapping[str, float] | None = None,
        *,
        form: Form = "softmax",
        settings: Mapping[str, float] | None = None,
        class_counts: np.ndarray | None = None,
    ) -> None:
        self.terms = dict(terms if terms is not None else DEFAULT_LOSS_TERMS)
        check_loss_terms(self.terms)
        if form not in FORMS:
            raise ValueError(f"form must be 'softmax' or 'sigmoid', got {form!r}")
        self.form = form
        self.settings = resolved_loss_settings(settings)
        context = LossContext(self.settings, form, class_counts, class_weights)
        self.functions = {name: LOSS_TERMS[name].builder()(context) for name in self.terms}
        self.needs = {name: LOSS_TERMS[name].needs for name in self.terms}

    def __call__(
        self,
        targets: tf.Tensor,
        logits: tf.Tensor,
        embeddings: tf.Tensor | None = None,
        **inputs: tf.Tensor,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        inputs = {"targets": targets, "logits": logits, **inputs}
        if embeddings is not None:
            inputs["embeddings"] = embeddings
        values: dict[str, tf.Tensor] = {}
        for name, function in self.functions.items():
            missing = [need for need in self.needs[name] if need not in inputs]
            if missing:
                raise ValueError(f"the {name!r} term needs the {', '.join(missing)}")
            values[name] = function(inputs)
        total = tf.add_n([self.terms[name] * value for name, value in values.items()])
        return total, values


def _as_float32(targets: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(targets, tf.float32), tf.cast(logits, tf.float32)
