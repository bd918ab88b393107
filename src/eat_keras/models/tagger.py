"""AudioTagger: the whole pipeline as one Keras model, waveform in, logits/scores out.

Waveforms are float ``[batch, samples]`` in [-1, 1]. Integer PCM and 1-D arrays are refused with a
hint (:func:`waveform_batch`); in inference, a waveform with NaN or Inf samples, or one so loud that
its log-mel overflows float32, raises instead of giving scores (:func:`checked_waveform`,
:func:`checked_log_mel`). Without the checks such input comes out as plausible scores in graph
mode: grappler fuses convolution, bias and ReLU into one oneDNN kernel, whose ReLU maps NaN to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from eat_keras.errors import AudioError, ConfigError
from eat_keras.frontend import NORM_SCALE, NORM_SHIFT, LogMelSpectrogram
from eat_keras.models.config import ModelConfig
from eat_keras.models.network import EfficientATNet
from eat_keras.runners import NON_FINITE_LOG_MEL, NON_FINITE_WAVEFORM, OVERFLOWING_LOG_MEL

#: normalised log-mel of a quarter of the largest float32: nothing real gets near it (audio in
#: [-1, 1] stays below 5), while kernels that saturate an overflowing power at the largest float
#: (TFLite's builtin ones) land above it; used as the overflow test by every runtime
LOG_MEL_CEILING = float((np.log(np.finfo(np.float32).max / 4) + NORM_SHIFT) / NORM_SCALE)

# full scale of the common PCM sample types: how to turn them into float audio
_PCM_SCALING = {
    "int8": "waveform.astype(np.float32) / 128",
    "uint8": "(waveform.astype(np.float32) - 128) / 128",
    "int16": "waveform.astype(np.float32) / 32768",
    "int32": "waveform.astype(np.float32) / 2147483648",
}


def _refuse_non_float(dtype_name: str, is_floating: bool, is_integer: bool) -> None:
    if is_floating:
        return
    message = f"got {dtype_name} samples; pass float32 in [-1, 1]"
    if is_integer:
        hint = _PCM_SCALING.get(dtype_name, "divide by the PCM format's full scale, e.g. 32768 for 16-bit")
        message += f": {hint}"
    raise ConfigError(message)


def check_sample_dtype(dtype: Any) -> None:
    """A :class:`ConfigError` unless ``dtype`` (NumPy's) holds float samples; integer PCM gets the
    scaling that turns it into the [-1, 1] amplitudes the models expect."""
    dtype = np.dtype(dtype)
    _refuse_non_float(dtype.name, dtype.kind == "f", dtype.kind in "iu")


def _refuse_bad_shape(shape: tuple[int | None, ...], min_samples: int) -> None:
    if len(shape) == 1:
        raise ConfigError(f"expected [batch, samples]; got shape {shape}: add a batch axis with waveform[None]")
    if len(shape) != 2:
        raise ConfigError(f"expected mono [batch, samples]; got shape {shape}")
    if shape[1] is not None and shape[1] < min_samples:
        raise ConfigError(
            f"expected [batch, samples] with at least {min_samples} samples; got shape {shape}"
            " (for [samples, channels] audio: waveform.mean(axis=1)[None])"
        )


def waveform_batch(waveform: Any, min_samples: int = 1) -> tf.Tensor:
    """``waveform`` (array, tensor or nested list) as a float32 ``[batch, samples]`` tensor, or a
    :class:`ConfigError` that says how to get there. Integer input is refused, not cast: PCM
    samples taken as float amplitudes give confident wrong scores."""
    if isinstance(waveform, (tf.Tensor, tf.Variable)):
        dtype = waveform.dtype
        _refuse_non_float(dtype.name, dtype.is_floating, dtype.is_integer)
        shape = tuple(waveform.shape.as_list()) if waveform.shape.rank is not None else None
    else:
        waveform = np.asarray(waveform)
        check_sample_dtype(waveform.dtype)
        shape = waveform.shape
    if shape is not None:
        _refuse_bad_shape(shape, min_samples)
    return tf.cast(waveform, tf.float32)


def log_mel_in_range(log_mel: tf.Tensor) -> tf.Tensor:
    """``[batch]`` bool: every value of the example's log-mel is finite and below
    :data:`LOG_MEL_CEILING`. Two reductions, not an elementwise test, which costs ~100 times more
    in TFLite (SELECT_V2 over the whole log-mel); the sum is there for NaN, which a max may skip."""
    axes = list(range(1, log_mel.shape.rank))
    below = tf.reduce_max(log_mel, axis=axes) < LOG_MEL_CEILING
    finite = tf.abs(tf.reduce_sum(log_mel, axis=axes)) < np.inf  # NaN compares false
    return tf.logical_and(below, finite)


def _checked(values: tf.Tensor, in_range: tf.Tensor, message: str) -> tf.Tensor:
    """``values`` once ``in_range`` (``[batch]`` bool) holds for every example, else an
    InvalidArgumentError with ``message`` when it runs. The test runs on the [batch] flags:
    TF's CheckNumerics over a whole waveform costs milliseconds."""
    check = tf.debugging.check_numerics(tf.where(in_range, 0.0, np.nan), message)
    with tf.control_dependencies([check]):
        return tf.identity(values)


def checked_waveform(waveform: tf.Tensor) -> tf.Tensor:
    """``waveform``, or an InvalidArgumentError when it runs if a sample is NaN or Inf (or samples
    beyond ~1e33 overflow the sum, audio whose log-mel overflows anyway)."""
    return _checked(waveform, tf.abs(tf.reduce_sum(waveform, axis=1)) < np.inf, NON_FINITE_WAVEFORM)


def checked_log_mel(log_mel: tf.Tensor, message: str = OVERFLOWING_LOG_MEL) -> tf.Tensor:
    """``log_mel``, or an InvalidArgumentError when it runs if an example fails
    :func:`log_mel_in_range`, the test the TFLite files answer with NaN."""
    return _checked(log_mel, log_mel_in_range(log_mel), message)


def audio_error_from(exc: tf.errors.InvalidArgumentError) -> AudioError | None:
    """The one-line error for a failed :func:`checked_waveform` or :func:`checked_log_mel`, or None
    for any other InvalidArgumentError."""
    for message in (NON_FINITE_WAVEFORM, NON_FINITE_LOG_MEL, OVERFLOWING_LOG_MEL):
        if message in str(exc.message):
            return AudioError(message)
    return None


class WaveformPredictFunction:
    """:meth:`AudioTagger.predict_function_for_waveforms`: the traced graph function behind a check
    of its input (dtype, shape, length) and with non-finite input as an :class:`AudioError`."""

    def __init__(self, function: tf.types.experimental.PolymorphicFunction, min_samples: int) -> None:
        self.function = function
        self.min_samples = min_samples

    def __call__(self, waveform: Any) -> dict[str, tf.Tensor]:
        batch = waveform_batch(waveform, self.min_samples)
        try:
            return self.function(batch)
        except tf.errors.InvalidArgumentError as exc:
            error = audio_error_from(exc)
            if error is None:
                raise
            raise error from None

    def get_concrete_function(self, *args: Any, **kwargs: Any) -> Any:
        return self.function.get_concrete_function(*args, **kwargs)


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
        """In inference, non-finite or overflowing input raises (see :func:`checked_log_mel`);
        training leaves the check to the data pipeline, which refuses non-finite audio."""
        waveform = waveform_batch(waveform)
        if training:
            log_mel = self.frontend(waveform, training=training)
        else:
            log_mel = checked_log_mel(self.frontend(checked_waveform(waveform), training=training))
        outputs = self.net(log_mel, training=training)
        return {**outputs, **self.clip_outputs(outputs)}

    def predict_function_for_waveforms(self) -> WaveformPredictFunction:
        """A graph function for inference on float ``[batch, samples]`` in [-1, 1]; traced once for
        every batch size and length (a Keras ``__call__`` in eager mode would run op by op).

        Integer PCM or a 1-D array raises :class:`ConfigError` with a hint; NaN or Inf samples, or
        samples so far beyond [-1, 1] that the log-mel overflows, raise :class:`AudioError`."""
        if getattr(self, "_waveform_fn", None) is None:
            function = tf.function(
                lambda waveform: self(waveform, training=False),
                input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")],
            )
            self._waveform_fn = WaveformPredictFunction(function, self.config.frontend.min_samples)
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
