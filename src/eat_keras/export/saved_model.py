"""SavedModel export: one folder that ``tf.saved_model.load`` and TF Serving use as it is.

The exported ``tf.Module`` holds the front-end and the network, so a TF app feeds waveforms and gets
labelled scores with TensorFlow alone (no eat-keras, no PyTorch). Signatures:

- ``serving_default``: ``waveform`` float32 [batch, samples] at ``sample_rate`` → ``scores``
  (sigmoid or softmax by label type), ``logits``, ``embedding``;
- ``log_mel``: ``waveform`` → ``log_mel`` [batch, n_mels, frames] (the upstream features);
- ``from_log_mel``: ``log_mel`` [batch, n_mels, frames] → ``scores``, ``logits``, ``embedding``
  (for users who compute the features elsewhere);
- ``frame_scores``: ``waveform`` → ``frame_scores`` [batch, frames', classes] with ``frame_start``
  and ``frame_end`` [frames'] in seconds.

Every signature refuses input it cannot score: a waveform with NaN or Inf samples, or one whose
log-mel overflows float32 (samples far beyond [-1, 1]), and a non-finite log-mel, fail with an
InvalidArgumentError (TF Serving answers with that error) instead of returning scores.

Class names travel as an asset (``assets/labels.txt``) and as the callable ``class_names()``;
``sample_rate``, ``model_name``, ``label_type``, ``clip_seconds`` (the fine-tuning clip length; 0
where unknown), ``eat_keras_version`` and ``config_json`` are variables readable from the loaded
object. The folder is written as ``<out>/<name>/<version>/`` under a temporary name and renamed into
place, so TF Serving never sees a half-written version; the next export into ``<out>/<name>/``
removes what a killed one left.

The weights are graph constants, not variables (:func:`frozen`): the folder is for inference; to
fine-tune, start from the eat-keras model folder or the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from eat_keras import __version__
from eat_keras.errors import ConfigError, ExistingOutputError
from eat_keras.labels import LABEL_LIST_FILE, write_label_list
from eat_keras.models import AudioTagger
from eat_keras.models.saving import (
    check_output_name,
    output_errors,
    output_folder,
    remove_stale_staging,
    staging_folder,
)
from eat_keras.models.tagger import NON_FINITE_LOG_MEL, checked_log_mel, checked_waveform

#: TF Serving reads version folder names as signed 64-bit integers and serves the highest
MAX_VERSION = 2**63 - 1


def time_downsampling(tagger: AudioTagger) -> int:
    """Input frames per output frame: the stem's 2 times the blocks' depthwise strides (a dilated
    C4 stage keeps its resolution whatever its configured stride); read off the built blocks, so
    any registered family's table counts."""
    return 2 * math.prod(block.spec.depthwise_stride for block in tagger.net.blocks)


def frozen(fn: Callable[..., Any], *input_specs: tf.TensorSpec) -> Callable[..., Any]:
    """``fn`` traced for ``input_specs``, with every variable it reads turned into a graph constant.

    Why: TensorFlow's oneDNN convolutions and matmuls choose their fast blocked kernels (brgconv,
    brgemm) only for constant weights; weights read from variables fall back to im2col + GEMM, and
    the BatchNorm folding is recomputed on every call: constants about halve the time of a call
    (docs/design.md). Grappler folds the BatchNorm arithmetic into the constants once, when a
    signature first runs."""
    concrete = tf.function(fn).get_concrete_function(*input_specs)
    constant = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs
    return lambda *args: tf.nest.pack_sequence_as(structure, tf.nest.flatten(constant(*args)))


class ExportedTagger(tf.Module):
    """The exported object; every public callable is a tf.function over core TF ops only."""

    def __init__(self, tagger: AudioTagger, name: str, labels_file: Path) -> None:
        super().__init__(name="eat_keras_tagger")
        config = tagger.config
        # Not tracked: the weights travel as constants inside the functions below, and saving the
        # Keras object would also serialise a traced call function per layer that no consumer needs.
        self.__dict__["_tagger"] = tagger
        self._class_names_constant = list(tagger.class_names or [])
        self.labels_asset = tf.saved_model.Asset(str(labels_file))
        self.sample_rate = tf.Variable(config.frontend.sample_rate, trainable=False, name="sample_rate")
        self.model_name = tf.Variable(name, trainable=False, name="model_name")
        self.label_type = tf.Variable(config.label_type, trainable=False, name="label_type")
        self.clip_seconds = tf.Variable(tagger.clip_seconds or 0.0, trainable=False, name="clip_seconds")
        self.eat_keras_version = tf.Variable(__version__, trainable=False, name="eat_keras_version")
        self.config_json = tf.Variable(json.dumps(config.to_dict()), trainable=False, name="config_json")
        frames_per_output = time_downsampling(tagger)
        self._seconds_per_output_frame = frames_per_output * config.frontend.hop_length / config.frontend.sample_rate
        n_mels = config.frontend.n_mels

        waveform_spec = tf.TensorSpec([None, None], tf.float32, name="waveform")
        log_mel_spec = tf.TensorSpec([None, n_mels, None], tf.float32, name="log_mel")
        # one frozen front-end and one frozen network, shared by the signatures (stored once)
        self._frontend = frozen(lambda w: tagger.frontend(w, training=False), waveform_spec)
        self._net = frozen(lambda x: tagger.net(x, training=False), tf.TensorSpec([None, n_mels, None, 1], tf.float32))
        self.serve = tf.function(self._serve, input_signature=[waveform_spec])
        self.log_mel = tf.function(self._log_mel, input_signature=[waveform_spec])
        self.from_log_mel = tf.function(self._from_log_mel, input_signature=[log_mel_spec])
        self.frame_scores = tf.function(self._frame_scores, input_signature=[waveform_spec])
        self.class_names = tf.function(self._class_names, input_signature=[])

    def _checked_log_mel(self, waveform: tf.Tensor) -> tf.Tensor:
        """The front-end between the two input checks (see the module docstring)."""
        return checked_log_mel(self._frontend(checked_waveform(waveform)))

    def _serve(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._tagger.clip_outputs(self._net(self._checked_log_mel(waveform)))

    def _log_mel(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"log_mel": self._checked_log_mel(waveform)[..., 0]}

    def _from_log_mel(self, log_mel: tf.Tensor) -> dict[str, tf.Tensor]:
        log_mel = checked_log_mel(log_mel, NON_FINITE_LOG_MEL)
        return self._tagger.clip_outputs(self._net(tf.expand_dims(log_mel, -1)))

    def _frame_scores(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self._net(self._checked_log_mel(waveform))
        frame_logits = out["frame_logits"]
        step = self._seconds_per_output_frame
        starts = tf.cast(tf.range(tf.shape(frame_logits)[1]), tf.float32) * step
        return {
            "frame_scores": self._tagger.scores_from_logits(frame_logits),
            "frame_start": starts,
            "frame_end": starts + step,
        }

    def _class_names(self) -> tf.Tensor:
        return tf.constant(self._class_names_constant, tf.string)


def _next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and re.fullmatch(r"\d+", p.name)]
    return max(versions, default=0) + 1


def check_version(version: int | None) -> int | None:
    """``version`` when TF Serving can serve a folder of that name (None: the next free one)."""
    if version is not None and not 0 <= version <= MAX_VERSION:
        raise ConfigError(f"a SavedModel version must be a whole number from 0 to 2^63 - 1; got {version}")
    return version


def export_saved_model(
    tagger: AudioTagger, out_dir: str | Path, name: str, version: int | None = None
) -> Path:
    """Write ``<out_dir>/<name>/<version>/`` and return its path (version: next free integer).

    A failed write is one :class:`~eat_keras.errors.OutputError` and leaves no folder this
    call created; staging folders that killed exports left in ``<out_dir>/<name>/`` are removed."""
    if not tagger.class_names:
        raise ValueError("the tagger needs class names to be exported")
    check_output_name(name)
    check_version(version)
    with output_folder(Path(out_dir) / name) as model_root:
        remove_stale_staging(model_root)
        version = _next_version(model_root) if version is None else version
        final = model_root / str(version)
        if final.exists():
            raise ExistingOutputError(f"{final} exists; choose another --version")
        # dot-prefixed: TF Serving only loads numeric folder names, so it never sees the staging one
        with staging_folder(model_root, str(version)) as staging, output_errors(final):
            labels_file = staging / LABEL_LIST_FILE
            write_label_list(labels_file, tagger.class_names)
            module = ExportedTagger(tagger, name, labels_file)
            _save(module, staging / "model")
            os.replace(staging / "model", final)
    return final


def _save(module: ExportedTagger, export_dir: Path) -> None:
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={
            "serving_default": module.serve,
            "log_mel": module.log_mel,
            "from_log_mel": module.from_log_mel,
            "frame_scores": module.frame_scores,
        },
    )
