"""AudioTagger: the whole pipeline as one Keras model, waveform in, logits/scores out."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from eat_keras.frontend import LogMelSpectrogram
from eat_keras.models.config import ModelConfig
from eat_keras.models.network import EfficientATNet


@tf_keras.utils.register_keras_serializable(package="eat_keras")
class AudioTagger(tf_keras.Model):
    """waveform ``[B, N]`` at ``config.frontend.sample_rate`` → dict of ``scores``, ``logits``,
    ``embedding``, ``frame_logits``. ``scores`` are sigmoid (multi-label) or softmax (single-label).

    ``clip_seconds``: the clip length a fine-tuned model was trained on (None where unknown, e.g. the
    AudioSet release models); evaluation and exported artifacts reuse it as the default window.
    """

    def __init__(
        self,
        config: ModelConfig | dict[str, Any],
        class_names: list[str] | None = None,
        clip_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        config = ModelConfig.from_dict(config) if isinstance(config, dict) else config
        kwargs.setdefault("name", "audio_tagger")
        super().__init__(**kwargs)
        self.config = config
        self.class_names = list(class_names) if class_names is not None else None
        self.clip_seconds = float(clip_seconds) if clip_seconds is not None else None
        self.frontend = LogMelSpectrogram(config.frontend, name="frontend")
        self.net = EfficientATNet(config, name="net")

    def reset_classifier(
        self,
        num_classes: int,
        head_type: str | None = None,
        class_names: list[str] | None = None,
        label_type: str | None = None,
    ) -> None:
        """A fresh head for ``num_classes`` (:meth:`EfficientATNet.reset_classifier`); the tagger's
        configuration, label type and class names follow, so that it saves and reloads as it is."""
        self.net.reset_classifier(num_classes, head_type)
        self.config = self.net.config.replace(label_type=label_type or self.config.label_type)
        self.net.config = self.config
        self.class_names = list(class_names) if class_names is not None else None
        self._waveform_fn = None  # traced for the old head

    def scores_from_logits(self, logits: tf.Tensor) -> tf.Tensor:
        if self.config.label_type == "single_label":
            return tf.nn.softmax(logits, axis=-1)
        return tf.math.sigmoid(logits)

    def clip_outputs(self, net_outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The clip-level outputs that exported artifacts serve, from the network's outputs."""
        logits = net_outputs["logits"]
        return {"scores": self.scores_from_logits(logits), "logits": logits, "embedding": net_outputs["embedding"]}

    def call(self, waveform: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        outputs = self.net(self.frontend(waveform, training=training), training=training)
        return {**outputs, **self.clip_outputs(outputs)}

    def predict_function_for_waveforms(self) -> tf.types.experimental.PolymorphicFunction:
        """A graph function for inference on ``[batch, samples]``; traced once for every batch size
        and length (a Keras ``__call__`` in eager mode would run op by op)."""
        if getattr(self, "_waveform_fn", None) is None:
            self._waveform_fn = tf.function(
                lambda waveform: self(waveform, training=False),
                input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")],
            )
        return self._waveform_fn

    def build_for_inference(self) -> "AudioTagger":
        self(tf.zeros([1, self.config.frontend.sample_rate]), training=False)
        return self

    def get_config(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "clip_seconds": self.clip_seconds,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AudioTagger":
        return cls(**config)
