"""EfficientATNet: stem → blocks → last conv → head, shared by every model family.

The family (``config.arch``, see ``eat_keras.models.registry``) builds the blocks; stem, last conv
and head are common.

Input is the normalised log-mel in NHWC, ``[batch, n_mels, frames, 1]``; any batch size and any
number of frames. Outputs a dict: ``logits`` [B, classes], ``embedding`` [B, 6·C] (global mean of the
last feature map, what upstream returns next to the logits) and ``frame_logits`` [B, T', classes].
Method names follow timm: ``forward_features``, ``forward_head``, ``reset_classifier``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.layers import ConvBNAct
from eat_keras.models.blocks import block_specs, last_channels, make_divisible
from eat_keras.models.config import ModelConfig
from eat_keras.models.heads import build_head
from eat_keras.models.registry import get_arch


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class EfficientATNet(tf_keras.Model):
    def __init__(self, config: ModelConfig | dict[str, Any], **kwargs: Any) -> None:
        kwargs.setdefault("name", config["arch"] if isinstance(config, dict) else config.arch)
        super().__init__(**kwargs)
        self.config = ModelConfig.from_dict(config) if isinstance(config, dict) else config
        c = self.config
        specs = block_specs(c.width_mult, c.strides, c.dilated, c.reduced_tail)
        self.stem = ConvBNAct(
            specs[0].in_channels, 3, strides=2, activation="hardswish", name="stem"
        )
        self.blocks = get_arch(c.arch).build_blocks(c)
        self.num_features = 6 * specs[-1].out_channels
        self.last_conv = ConvBNAct(self.num_features, 1, activation="hardswish", name="last_conv")
        self.head = build_head(
            c.head_type, c.num_classes, last_channels(c.width_mult, c.reduced_tail), c.dropout
        )

    def forward_features(self, mel: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Log-mel ``[B, F, T, 1]`` → final feature map ``[B, F/32, T/32, 6·C]``."""
        x = self.stem(mel, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return self.last_conv(x, training=training)

    def forward_head(self, fmap: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        logits, frame_logits = self.head(fmap, training=training)
        return {
            "logits": logits,
            "embedding": tf.reduce_mean(fmap, axis=[1, 2]),
            "frame_logits": frame_logits,
        }

    def call(self, mel: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        return self.forward_head(self.forward_features(mel, training=training), training=training)

    def reset_classifier(self, num_classes: int, head_type: str | None = None) -> None:
        """Replace the head by a freshly initialised one (fine-tuning on new classes)."""
        c = self.config.replace(num_classes=num_classes, head_type=head_type or self.config.head_type)
        self.config = c
        self.head = build_head(
            c.head_type, c.num_classes, last_channels(c.width_mult, c.reduced_tail), c.dropout
        )

    def build_for_inference(self) -> "EfficientATNet":
        """Create all weights by running one small dummy batch (1 s of log-mel frames)."""
        n_mels = self.config.frontend.n_mels
        self(tf.zeros([1, n_mels, 100, 1]), training=False)
        return self

    def get_config(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "EfficientATNet":
        return cls(**config)


def count_parameters(model: tf_keras.Model) -> int:
    """Parameters as upstream counts them: every weight except BatchNorm running statistics."""
    return int(
        sum(
            int(tf.size(w))
            for w in model.weights
            if not any(s in w.name for s in ("moving_mean", "moving_variance"))
        )
    )


__all__ = ["EfficientATNet", "count_parameters", "make_divisible"]
