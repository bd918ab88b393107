"""Beam's RunInference API (``apache_beam.ml.inference.base``), imported without torch.

Beam 2.78's ``base`` module imports its ``ModelManager`` (``RunInference(use_model_manager=True)``)
inside ``try: ... except ImportError``, and that module imports torch wherever torch is installed:
seconds of start-up and hundreds of MB in every worker process of a job that never runs torch.
These jobs do not use the model manager, so ``torch`` is marked missing for the length of that one
import (only where torch is not imported yet): Beam then takes its own "no torch" path. torch
imports as usual afterwards; only the model manager of this process stays off.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["KeyedModelHandler", "ModelHandler", "PredictionResult", "RunInference"]

_BASE = "apache_beam.ml.inference.base"
_SKIPPED = "torch"


def import_without_torch(module: str) -> ModuleType:
    """``module``, imported with ``torch`` reading as not installed where it is not imported yet (a
    thread importing torch at that moment would find it missing too: this runs at import time)."""
    if module in sys.modules or _SKIPPED in sys.modules:
        return importlib.import_module(module)
    sys.modules[_SKIPPED] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
    try:
        return importlib.import_module(module)
    finally:
        if sys.modules.get(_SKIPPED, ...) is None:
            del sys.modules[_SKIPPED]


_base = import_without_torch(_BASE)
KeyedModelHandler = _base.KeyedModelHandler
ModelHandler = _base.ModelHandler
PredictionResult = _base.PredictionResult
RunInference = _base.RunInference
