"""Tracing for TFLite: inside :func:`builtin_ops_only`, graphs use TFLite builtin ops only.

The TensorFlow forms of some layers are the fastest there but are not TFLite builtins: the
front-end's per-example ``map_fn`` and ``bitcast`` of the spectrum (``frontend.inference_log_mel``),
DyMN's depthwise conv with the batch folded into the channels (``layers/dynamic_conv.py``). Code
that converts a traced graph to TFLite wraps the tracing (``get_concrete_function``) in
:func:`builtin_ops_only`; each such layer asks :func:`builtin_ops_requested` which form to trace.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_BUILTIN_OPS_ONLY = contextvars.ContextVar("eat_keras_builtin_ops_only", default=False)


@contextlib.contextmanager
def builtin_ops_only() -> Iterator[None]:
    """Graphs traced inside use TFLite builtin ops only, for any batch: the front-end takes its
    ``RFFT`` form and DyMN's depthwise convs their K-wide conv + batched matmul form. Wrap the tracing
    (``get_concrete_function``) of a graph that is to be converted to TFLite."""
    token = _BUILTIN_OPS_ONLY.set(True)
    try:
        yield
    finally:
        _BUILTIN_OPS_ONLY.reset(token)


def builtin_ops_requested() -> bool:
    """Whether the graph being traced is meant for TFLite (inside :func:`builtin_ops_only`)."""
    return _BUILTIN_OPS_ONLY.get()
