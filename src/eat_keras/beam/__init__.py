"""Apache Beam corpus jobs (the optional ``beam`` extra): tag a whole archive and prepare a training
set on any Beam runner, a laptop, Dataflow, Flink or Spark (docs/beam.md).

- :class:`~eat_keras.beam.handler.EatKerasModelHandler`: RunInference over an exported SavedModel;
- :class:`~eat_keras.beam.tag_audio.TagAudio`: file patterns to the top labels of every window;
- :class:`~eat_keras.beam.prepare_dataset.PrepareDataset`: ``eat-keras prepare``'s shards, by Beam.

Importing this package imports neither Beam nor TensorFlow (the command line builds its parser from
:mod:`eat_keras.beam.cli`); the names above are imported from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EatKerasModelHandler": "eat_keras.beam.handler",
    "TagAudio": "eat_keras.beam.tag_audio",
    "TagSettings": "eat_keras.beam.tag_audio",
    "PrepareDataset": "eat_keras.beam.prepare_dataset",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'eat_keras.beam' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
