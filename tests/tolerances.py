"""Float comparisons that hold on any x86 CPU (AMD or Intel, AVX2, AVX-512 or AMX, oneDNN on or off).

Two float32 evaluations of one network that differ only in the order of their operations (kernel
blocking, fused ops, thread count, a graph optimiser's rewrites) do not give the same bits: each
reordered sum or fused multiply-add rounds differently, by about float32's epsilon (1.2e-7) of the
values summed. Through a few dozen layers those roundings add up to about 1e-6 of the output's
magnitude. Such comparisons are therefore bounded relative to the magnitude of what is compared,
never by an absolute number read off one machine.

Where two paths are meant to be bit-identical (the same ops on the same inputs: a reloaded model, a
pure data movement), tests say so and compare with ``np.testing.assert_array_equal`` instead.
"""

from __future__ import annotations

import numpy as np

#: float32's machine epsilon
EPS32 = float(np.finfo(np.float32).eps)
#: one op reordered: a few roundings of the result (a sigmoid, a product of three factors, a
#: mixup sum): 16 units in the last place
OP_RTOL = 16 * EPS32
#: a whole network (front-end and 10-20 blocks) evaluated in another operation order: about 1e-6 of
#: the output's magnitude, with a factor of 10 to spare
NETWORK_RTOL = 1e-5


def max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)), initial=0.0))


def magnitude(*arrays: np.ndarray) -> float:
    """The largest |value| of the arrays, at least 1 (so values near zero are bounded absolutely at
    the same scale as values near 1, where float32's resolution is what limits them)."""
    return max([1.0] + [float(np.max(np.abs(a), initial=0.0)) for a in arrays])


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = NETWORK_RTOL, what: str = "") -> None:
    """max |got - want| <= rtol * max(|want|, |got|, 1), the bound a reordered float32 evaluation
    keeps (see the module docstring)."""
    diff = max_abs_diff(got, want)
    bound = rtol * magnitude(got, want)
    assert diff <= bound, f"{what} max |Δ| {diff:.3g} > {bound:.3g} ({rtol:.3g} of the magnitude)"
