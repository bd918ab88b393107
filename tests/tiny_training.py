"""A data set and a model small enough that a fine-tuning step costs milliseconds and only tracing
takes time: a few 1.5 s WAVs (noise for ``hiss``, a tone for ``hum``) and a randomly initialised
MN width 0.1 with 32 mel bins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

SR = 32000
CLASSES = ("hiss", "hum")
PER_CLASS = 3


def write_clip(path: Path, label: str, i: int, seconds: float = 1.5) -> None:
    """Noise for ``hiss``, a tone for ``hum``: the two classes differ, each file differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * SR)
    if label == "hiss":
        signal = 0.1 * np.random.default_rng(i).standard_normal(n)
    else:
        signal = 0.3 * np.sin(2 * np.pi * (200.0 + 50.0 * i) * np.arange(n) / SR)
    sf.write(path, signal.astype(np.float32), SR)


def write_class_folders(root: Path, per_class: int = PER_CLASS) -> Path:
    """``root/<class>/<i>.wav``, ``per_class`` files per class."""
    for label in CLASSES:
        for i in range(per_class):
            write_clip(root / label / f"{i}.wav", label, i)
    return root


def save_tiny_model(folder: Path) -> Path:
    """A model folder to fine-tune from: the smallest MN, randomly initialised."""
    from eat_keras.frontend import FrontendConfig
    from eat_keras.models import ModelConfig, build_tagger
    from eat_keras.models.saving import save_tagger

    config = ModelConfig(width_mult=0.1, num_classes=2, frontend=FrontendConfig(n_mels=32))
    save_tagger(build_tagger(config, ["a", "b"]), folder)
    return folder


def save_tiny_teacher(folder: Path, class_names: tuple[str, ...] = CLASSES[::-1]) -> Path:
    """A teacher for the tiny data, with the data's classes (by default in another order), another
    width and front-end than the tiny model's (0.2, 64 mel bins), and scores far from uniform that
    differ from file to file (a random tiny network's embeddings are ~1e-5: its classifier is scaled
    up and given a bias)."""
    from eat_keras.frontend import FrontendConfig
    from eat_keras.models import ModelConfig, build_tagger
    from eat_keras.models.saving import save_tagger

    config = ModelConfig(width_mult=0.2, num_classes=len(class_names), frontend=FrontendConfig(n_mels=64))
    teacher = build_tagger(config, list(class_names))
    teacher.build_for_inference()
    kernel, bias = teacher.net.head.classifier.get_weights()
    teacher.net.head.classifier.set_weights([kernel * 1e7, bias + np.linspace(2.0, -2.0, len(class_names), dtype=np.float32)])
    save_tagger(teacher, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny model as a folder, once per test module (import the fixture to use it)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


def tiny_finetune_config(model: Path, **changes: Any) -> Any:
    """A FinetuneConfig that trains the tiny model in seconds: 1 s clips, batches of two, two epochs
    at a fixed learning rate; ``changes`` override any field."""
    from eat_keras.train.config import FinetuneConfig

    base = dict(
        model=str(model), clip_seconds=1.0, batch_size=2, epochs=2, learning_rate=1e-3, warmup_fraction=0.0,
        last_lr_factor=1.0, patience=5,
    )  # fmt: skip
    return FinetuneConfig(**{**base, **changes})


def checkpoint_values(prefix: Path) -> dict[str, Any]:
    """Every tensor of a checkpoint: weights, BatchNorm statistics, optimizer slots, RNG state, counters."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in key}


def best_values(run: Path) -> dict[str, Any]:
    """Every tensor of a run's ``best/`` model folder."""
    import json

    manifest = json.loads((run / "best" / "eat_keras.json").read_text())
    return checkpoint_values(run / "best" / manifest["weights"])


def interrupting_epoch_2(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Ctrl-C after the first step of epoch 2 (one update applied, epoch 1 checkpointed); returns
    whether op determinism was on then."""
    import tf_keras
    from tensorflow.python.framework import config as tf_config

    import eat_keras.train.fit as fit_module

    seen: list[bool] = []
    saved = []
    real_save, real_update = fit_module._Training.save_epoch, tf_keras.utils.Progbar.update

    def save_epoch(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saved.append(True)

    def update(self, current, *args, **kwargs):
        if saved and current == 1:
            seen.append(tf_config.is_op_determinism_enabled())
            raise KeyboardInterrupt
        return real_update(self, current, *args, **kwargs)

    monkeypatch.setattr(fit_module._Training, "save_epoch", save_epoch)
    monkeypatch.setattr(tf_keras.utils.Progbar, "update", update)
    return seen
