"""Presets: their configurations are what their family's defaults plus their own changes make."""

from __future__ import annotations

import dataclasses

import pytest

from eat_keras.models import ModelConfig
from eat_keras.presets import PRESETS


def _changes(config: ModelConfig) -> dict:
    """The fields a preset sets away from ModelConfig's defaults, its family aside."""
    defaults = ModelConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name != "arch" and getattr(config, f.name) != getattr(defaults, f.name)
    }


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_agrees_with_its_familys_default_config(name):
    """Presets are made without importing the family modules (no TensorFlow to list them), so
    they must not leave out a default their family's registration sets."""
    config = PRESETS[name].config
    assert ModelConfig.for_arch(config.arch, **_changes(config)) == config
