"""The loss terms fine-tuning can combine, as one table: name → :class:`LossTerm`.

Everything else reads this table: :class:`~eat_keras.train.losses.CombinedLoss` builds the terms a
run names, :class:`~eat_keras.train.config.FinetuneConfig` takes their weights (``loss_terms``) and
settings (``loss_settings``) and checks them, and ``eat-keras finetune`` makes its ``--loss`` help
and one flag per setting from it. Adding a loss is one :func:`register_loss_term` call::

    register_loss_term(LossTerm(
        name="margin",
        help="a margin loss on the logits",
        build="my_package.losses:margin_term",  # or the function itself
        settings=(LossSetting("margin_width", 1.0, "the margin", minimum_open=True),),
        needs=("embeddings",),
    ))

A builder takes the run's :class:`LossContext` and returns the term: a function from the batch's
inputs (``targets``, ``logits``, and what ``needs`` names) to a scalar. Where the data hold
unlabelled files (distillation), the inputs also hold ``label_weight`` ``[B]``, each row's labelled
share after mixup: a term that reads the targets averages over the rows by it, so that an
unlabelled row adds nothing to it. This module imports no
TensorFlow, so that the command line can list the terms without loading it: the built-in builders
are named as ``"module:function"`` text and imported when a loss is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from eat_keras.errors import ConfigError

__all__ = [
    "DEFAULT_DISTILLATION_LOSS_TERMS",
    "DEFAULT_LOSS_TERMS",
    "FORMS",
    "LOSS_TERMS",
    "LossContext",
    "LossSetting",
    "LossSettingError",
    "LossTerm",
    "TermFunction",
    "check_loss_settings",
    "check_loss_terms",
    "default_loss_settings",
    "loss_settings",
    "register_loss_term",
    "resolved_loss_settings",
]

#: Output forms of a model's scores: softmax for single-label data, sigmoid for multi-label data.
FORMS = ("softmax", "sigmoid")

#: The original recipe's combination (docs/design.md, "The fine-tuning recipe").
DEFAULT_LOSS_TERMS: Mapping[str, float] = {"cb": 0.8, "supcon": 0.2}
#: The combination of a run with a teacher, when ``--loss`` is not given (README, "Distillation").
DEFAULT_DISTILLATION_LOSS_TERMS: Mapping[str, float] = {"cb": 0.4, "supcon": 0.1, "kd": 0.5}

#: A built term: the batch's inputs by name (``targets``, ``logits``, ...) → a scalar tensor.
TermFunction = Callable[[Mapping[str, Any]], Any]

# Names that fit ``--loss NAME=WEIGHT`` and ``--NAME-WITH-DASHES`` flags.
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class LossSettingError(ConfigError):
    """A loss setting a user chose (``--loss``, ``--cb-beta``) is invalid: one CLI error line, and
    a ``ValueError`` for callers of the library functions."""


@dataclasses.dataclass(frozen=True)
class LossSetting:
    """One number a loss term reads, with its default, its help text and its allowed range.

    The name is shared by the whole table (a key of ``FinetuneConfig.loss_settings`` and the flag
    ``--name-with-dashes``), so it starts with its term's name (``supcon_temperature``).
    """

    name: str
    default: float
    help: str
    minimum: float = 0.0
    minimum_open: bool = False  # True: the value must exceed the minimum
    maximum: float = math.inf
    maximum_open: bool = True

    def check(self, value: Any) -> None:
        """Raise :class:`LossSettingError` unless ``value`` is a finite number in range."""
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and self._in_range(value)):
            raise LossSettingError(f"{self.name} must be {self.allowed()}, got {value}")

    def allowed(self) -> str:
        """The range in words, e.g. ``finite and > 0`` or ``in [0, 1)``."""
        if self.maximum == math.inf:
            return f"finite and {'>' if self.minimum_open else '>='} {self.minimum:g}"
        low = "(" if self.minimum_open else "["
        high = ")" if self.maximum_open else "]"
        return f"in {low}{self.minimum:g}, {self.maximum:g}{high}"

    def _in_range(self, value: float) -> bool:
        above = value > self.minimum if self.minimum_open else value >= self.minimum
        below = value < self.maximum if self.maximum_open else value <= self.maximum
        return above and below


@dataclasses.dataclass(frozen=True)
class LossContext:
    """What a term's builder gets, once per run."""

    settings: Mapping[str, float]  # every registered setting (defaults filled in)
    form: str = "softmax"  # one of FORMS
    class_counts: np.ndarray | None = None  # training files per class
    class_weights: np.ndarray | None = None  # class weights a caller chose, if any


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One entry of the table."""

    name: str
    help: str
    # LossContext → TermFunction, or its "module:function" (imported when a loss is built)
    build: Callable[[LossContext], TermFunction] | str
    settings: tuple[LossSetting, ...] = ()
    # inputs the term reads besides targets and logits: "embeddings", "teacher_probs"
    needs: tuple[str, ...] = ()

    def builder(self) -> Callable[[LossContext], TermFunction]:
        if callable(self.build):
            return self.build
        module, _, function = self.build.partition(":")
        return getattr(importlib.import_module(module), function)


#: Every term a loss can combine, by name, in registration order.
LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss_term(term: LossTerm) -> LossTerm:
    """Add ``term`` to the table; its name and its settings' names must be new."""
    taken = loss_settings()
    for name in (term.name, *(s.name for s in term.settings)):
        if not _NAME.match(name):
            raise ValueError(f"loss term and setting names are lower-case identifiers, got {name!r}")
    if term.name in LOSS_TERMS:
        raise ValueError(f"a loss term {term.name!r} is already registered")
    clashes = sorted(s.name for s in term.settings if s.name in taken)
    if clashes or len({s.name for s in term.settings}) != len(term.settings):
        raise ValueError(f"loss setting names must be unique in the table, got {clashes or term.settings}")
    for setting in term.settings:
        setting.check(setting.default)
    LOSS_TERMS[term.name] = term
    return term


def loss_settings() -> dict[str, LossSetting]:
    """Every registered term's settings by name."""
    return {s.name: s for term in LOSS_TERMS.values() for s in term.settings}


def default_loss_settings() -> dict[str, float]:
    return {name: setting.default for name, setting in loss_settings().items()}


def check_loss_terms(terms: Mapping[str, float]) -> None:
    """Refuse unknown or no term names, weights that are negative or not finite, and weights that
    are all zero (a zero loss has zero gradients: the run would train nothing)."""
    unknown = sorted(set(terms) - set(LOSS_TERMS))
    if unknown or not terms:
        raise LossSettingError(f"loss terms must be among {tuple(LOSS_TERMS)}, got {sorted(terms)}")
    bad = {name: w for name, w in terms.items() if not (np.isfinite(w) and w >= 0)}
    if bad:
        raise LossSettingError(f"loss term weights must be finite and >= 0, got {bad}")
    if not any(w > 0 for w in terms.values()):
        raise LossSettingError(f"at least one loss term weight must be > 0, got {dict(terms)}")


def check_loss_settings(settings: Mapping[str, float]) -> None:
    """Refuse setting names no registered term has and values out of their range."""
    known = loss_settings()
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise LossSettingError(f"loss settings must be among {tuple(known)}, got {unknown}")
    for name, value in settings.items():
        known[name].check(value)


def resolved_loss_settings(settings: Mapping[str, float] | None = None) -> dict[str, float]:
    """``settings`` checked, with every setting they leave out at its default."""
    given = dict(settings or {})
    check_loss_settings(given)
    return {**default_loss_settings(), **given}


register_loss_term(
    LossTerm(
        name="cb",
        help="class-balanced (focal) cross-entropy, class weights from the training split's counts",
        build="eat_keras.train.losses:class_balanced_term",
        settings=(
            LossSetting(
                "cb_beta", 0.9999, "beta of the class-balanced weights: 0 gives equal weights, "
                "towards 1 inverse class frequency", maximum=1.0,
            ),
            LossSetting("focal_gamma", 0.0, "focal exponent of the class-balanced term; 0 disables"),
        ),
    )
)  # fmt: skip
register_loss_term(
    LossTerm(name="ce", help="cross-entropy", build="eat_keras.train.losses:cross_entropy_term")
)
register_loss_term(
    LossTerm(
        name="supcon",
        help="supervised contrastive loss on the L2-normalised embeddings",
        build="eat_keras.train.losses:supervised_contrastive_term",
        settings=(
            LossSetting("supcon_temperature", 0.07, "temperature of the contrastive term", minimum_open=True),
        ),
        needs=("embeddings",),
    )
)
register_loss_term(
    LossTerm(
        name="kd",
        help="knowledge distillation towards the teacher's softened scores (needs --teacher or --teacher-logits; "
        "unlabelled files train through this term alone)",
        build="eat_keras.train.losses:distillation_term",
        settings=(
            LossSetting(
                "kd_temperature", 2.0, "temperature of the teacher's (and, for softmax, the student's) scores",
                minimum_open=True,
            ),
        ),
        needs=("teacher_probs",),
    )
)  # fmt: skip
