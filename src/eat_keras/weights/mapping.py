"""Upstream (PyTorch) tensors → the weights of a built :class:`EfficientATNet`.

:func:`weight_slots` asks the model's family (``ArchSpec.weight_slots``) for every weight-bearing
unit in forward order with its upstream name (see ``eat_keras.weights.slots``). The same list drives
both importers: the ``.pt`` path looks tensors up by name, the ONNX path pairs the list with the
graph's parametric ops in data-flow order (see ``onnx_reader``). :func:`assign_state_dict` then
converts layouts, checks every shape, assigns each Keras weight exactly once, checks constant
buffers (DyReLU's) and fails if any source tensor is left unused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from eat_keras.errors import ArchitectureMismatchError, WeightFileError
from eat_keras.models.network import EfficientATNet
from eat_keras.models.registry import get_arch
from eat_keras.weights.slots import (
    CONSTANT,
    Assignment,
    WeightSlot,
    constant_values,
    expected_source_shapes,
    keras_values,
)

# Buffers upstream stores that carry no information for inference.
IGNORED_SUFFIXES = (".num_batches_tracked",)


def weight_slots(net: EfficientATNet) -> list[WeightSlot]:
    """Every weight-bearing unit of ``net`` in forward (data-flow) order, with upstream names."""
    return get_arch(net.config.arch).weight_slots(net)


def strip_wrapper_prefix(state: Mapping[str, np.ndarray], anchors: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Drop a common wrapper prefix (``module.``, ``m.``, ``model.`` …) found before an anchor key."""
    for key in state:
        for anchor in anchors:
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if all(k.startswith(prefix) for k in state):
                    return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _brief(value: np.ndarray) -> str:
    """A short rendering of a small array's values (a corrupt file's could be millions long)."""
    return np.array2string(np.asarray(value).ravel(), threshold=8, edgeitems=2, max_line_width=10**6)


def _finite_float32(value: np.ndarray, key: str, source: str) -> np.ndarray:
    """``value`` as float32, refused if any entry is NaN or infinite (a model built from it would
    score every input NaN) or overflows float32."""
    if value.dtype.kind not in "fiub":
        raise WeightFileError(f"{source}: tensor {key} holds {value.dtype} values, expected numbers")
    with np.errstate(over="ignore"):
        result = value.astype(np.float32)
    if not np.isfinite(result).all():
        bad = int(np.size(result) - np.count_nonzero(np.isfinite(result)))
        raise WeightFileError(
            f"{source}: tensor {key} holds {bad} non-finite value(s) (NaN, Inf or beyond float32); "
            "the file is corrupt or comes from a diverged training run"
        )
    return result


def _slot_tensors(
    slot: WeightSlot, state: Mapping[str, np.ndarray], source: str, arch: str, num_classes: int
) -> dict[str, np.ndarray]:
    """The upstream tensors of ``slot`` (key → float32 value), each present with its expected shape."""
    tensors = {}
    for key, shape in expected_source_shapes(slot).items():
        if key not in state:
            raise ArchitectureMismatchError(f"{source}: tensor {key} (expected shape {shape} for {arch}) is missing")
        value = np.asarray(state[key])
        if tuple(value.shape) != shape:
            raise ArchitectureMismatchError(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, expected {shape} "
                f"for {arch}, {num_classes} classes"
            )
        tensors[key] = _finite_float32(value, key, source)
    return tensors


def _check_constants(checks: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray], source: str) -> None:
    for key, value in checks.items():
        value = np.asarray(value)
        got = None if key not in state else np.asarray(state[key])
        if got is None or got.shape != value.shape or not np.allclose(got, value):
            raise ArchitectureMismatchError(
                f"{source}: constant {key} must equal {_brief(value)} (shape {value.shape}), "
                f"got {'nothing' if got is None else _brief(got)}"
            )


def _check_each_weight_once(net: EfficientATNet, assignments: list[Assignment]) -> None:
    """Guards the slot tables themselves: a family whose table misses or repeats a weight is a bug."""
    variables = [v for v, _ in assignments]
    if len({id(v) for v in variables}) != len(variables):  # pragma: no cover - mapping bug guard
        raise AssertionError("a Keras weight was assigned twice")
    missing = {id(w) for w in net.weights} - {id(v) for v in variables}
    if missing:  # pragma: no cover - mapping bug guard
        names = [w.name for w in net.weights if id(w) in missing]
        raise AssertionError(f"Keras weights without a source tensor: {names[:5]}")


def assign_state_dict(
    net: EfficientATNet,
    state: Mapping[str, np.ndarray],
    source: str = "checkpoint",
    extra_checks: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Assign upstream-named tensors to ``net`` (which must be built).

    Every Keras weight receives exactly one tensor and every tensor in ``state`` (other than
    ``num_batches_tracked``) must be consumed; otherwise :class:`ArchitectureMismatchError` names
    the offending tensor. Buffers whose value the architecture fixes (CONSTANT slots, e.g. DyReLU's
    ``lambdas`` and ``init_v``) must be present with exactly that value; ``extra_checks`` adds
    further such tensors (key → required value).
    """
    config = net.config
    arch = f"{config.arch} width {config.width_mult:g}, {config.head_type} head"
    slots = weight_slots(net)
    # constants the architecture fixes (DyReLU's lambdas/init_v) come from the slots themselves
    checks = {**constant_values(slots), **dict(extra_checks or {})}
    used: set[str] = set(checks)
    assignments: list[Assignment] = []
    for slot in slots:
        if slot.kind != CONSTANT:
            tensors = _slot_tensors(slot, state, source, arch, config.num_classes)
            used.update(tensors)
            assignments.extend(keras_values(slot, list(tensors.values())))
    _check_constants(checks, state, source)
    unused = [k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES)]
    if unused:
        raise ArchitectureMismatchError(
            f"{source}: {len(unused)} tensor(s) have no place in a {arch} model, first: "
            f"{unused[0]} with shape {tuple(np.shape(state[unused[0]]))}"
        )
    _check_each_weight_once(net, assignments)
    for variable, value in assignments:
        variable.assign(value)
