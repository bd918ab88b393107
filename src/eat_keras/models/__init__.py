"""EfficientAT networks: one family per registered ArchSpec (MN, DyMN built in); every family shares
stem, last conv and heads.

Configurations and the family registry import no TensorFlow; the network and the tagger are
imported on first use, so that ``eat-keras presets`` and ``--help`` run without loading it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eat_keras.models.config import ModelConfig
from eat_keras.models.registry import (
    ArchSpec,
    StateDictSignature,
    arch_names,
    get_arch,
    register_arch,
    unregister_arch,
)

if TYPE_CHECKING:
    from eat_keras.models.network import EfficientATNet, count_parameters
    from eat_keras.models.tagger import AudioTagger

# names that need TensorFlow → the module that defines them
_TENSORFLOW_NAMES = {
    "AudioTagger": "eat_keras.models.tagger",
    "EfficientATNet": "eat_keras.models.network",
    "count_parameters": "eat_keras.models.network",
}


def __getattr__(name: str) -> Any:
    if name not in _TENSORFLOW_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_TENSORFLOW_NAMES[name]), name)


def build_tagger(config: ModelConfig, class_names: list[str] | None = None) -> AudioTagger:
    """Build (with weights created, randomly initialised) the waveform-in tagger for ``config``."""
    from eat_keras.models.tagger import AudioTagger

    return AudioTagger(config, class_names=class_names).build_for_inference()


__all__ = [
    "ArchSpec",
    "AudioTagger",
    "EfficientATNet",
    "ModelConfig",
    "StateDictSignature",
    "arch_names",
    "build_tagger",
    "count_parameters",
    "get_arch",
    "register_arch",
    "unregister_arch",
]
