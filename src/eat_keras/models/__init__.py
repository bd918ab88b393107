"""EfficientAT networks: MN (static) and DyMN (dynamic) share stem, last conv and heads."""

from eat_keras.models import dymn as _dymn
from eat_keras.models import mn as _mn
from eat_keras.models.config import ModelConfig
from eat_keras.models.network import EfficientATNet, count_parameters, register_block_builder
from eat_keras.models.tagger import AudioTagger

register_block_builder("mn", _mn.build_mn_blocks)
register_block_builder("dymn", _dymn.build_dymn_blocks)


def build_tagger(config: ModelConfig, class_names: list[str] | None = None) -> AudioTagger:
    """Build (with weights created, randomly initialised) the waveform-in tagger for ``config``."""
    return AudioTagger(config, class_names=class_names).build_for_inference()


__all__ = ["AudioTagger", "EfficientATNet", "ModelConfig", "build_tagger", "count_parameters"]
