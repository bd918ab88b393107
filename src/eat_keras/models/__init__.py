"""EfficientAT networks: one family per registered ArchSpec (MN, DyMN built in); every family shares
stem, last conv and heads."""

from eat_keras.models.config import ModelConfig
from eat_keras.models.network import EfficientATNet, count_parameters
from eat_keras.models.registry import (
    ArchSpec,
    StateDictSignature,
    arch_names,
    get_arch,
    register_arch,
    unregister_arch,
)
from eat_keras.models.tagger import AudioTagger


def build_tagger(config: ModelConfig, class_names: list[str] | None = None) -> AudioTagger:
    """Build (with weights created, randomly initialised) the waveform-in tagger for ``config``."""
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
