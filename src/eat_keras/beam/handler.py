"""The RunInference model handler for an eat-keras SavedModel.

Beam's own ``TFModelHandlerTensor`` cannot run these folders: it loads through Keras (which refuses
a SavedModel folder under Keras 3), calls ``model(batch)`` (a loaded SavedModel object is not
callable) and stacks NumPy arrays with ``tf.stack``. This handler loads the folder with
``tf.saved_model.load`` once per worker process (RunInference keeps it in Beam's shared handle),
calls one named signature, and stacks each batch with NumPy after grouping it by length: windows of
different lengths are never zero-padded into one call, since padding changes a clip's scores.

Examples are 1-D float32 waveforms at the model's sample rate; each prediction's ``inference`` is a
dict of the signature's outputs for that example (rank-1 outputs such as ``frame_start`` describe
the batch's shared time axis and go to every example). Wrap it in ``KeyedModelHandler`` to carry
keys (a file and window) through ``RunInference``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from eat_keras.audio import SAMPLE_RATE
from eat_keras.beam.runinference import ModelHandler, PredictionResult
from eat_keras.errors import EatKerasError
from eat_keras.tagging import MAX_BATCH_SECONDS

__all__ = ["ERROR_OUTPUT", "EatKerasModelHandler"]

#: the key of a prediction's ``inference`` dict that holds why its example could not be scored
ERROR_OUTPUT = "error"


class EatKerasModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Runs ``signature`` of the SavedModel at ``saved_model_dir`` (any path TensorFlow reads,
    ``gs://`` included) on batches of waveforms.

    Args:
        saved_model_dir: a folder written by ``eat-keras export`` (``saved_model.pb`` inside).
        signature: ``serving_default`` (scores, logits, embedding) or ``frame_scores``.
        outputs: the outputs to keep (default: all of the signature's).
        max_batch_size: the most examples per model call (``eat-keras tag`` uses 8).
        max_batch_seconds: the most audio per model call: the model's memory grows with it.
    """

    def __init__(
        self,
        saved_model_dir: str,
        signature: str = "serving_default",
        outputs: Sequence[str] | None = None,
        max_batch_size: int = 8,
        max_batch_seconds: float = MAX_BATCH_SECONDS,
        sample_rate: int = SAMPLE_RATE,
        **kwargs: Any,
    ) -> None:
        if max_batch_size < 1:
            raise EatKerasError(f"max_batch_size must be at least 1; got {max_batch_size}")
        # Batches of max_batch_size from the start, as eat-keras tag makes them: Beam's adaptive
        # batching would start at one window per call and grow, and each call has a fixed cost. The
        # end of a bundle, or the audio limit, still ends a batch early.
        super().__init__(
            min_batch_size=max_batch_size, max_batch_size=max_batch_size,
            max_batch_weight=int(max_batch_seconds * sample_rate), element_size_fn=len, **kwargs,
        )  # fmt: skip
        self._saved_model_dir = str(saved_model_dir)
        self._signature = signature
        self._outputs = tuple(outputs) if outputs is not None else None

    def load_model(self) -> Any:
        import tensorflow as tf

        module = tf.saved_model.load(self._saved_model_dir)
        if self._signature not in module.signatures:
            names = ", ".join(sorted(module.signatures))
            raise EatKerasError(f"{self._saved_model_dir}: no signature {self._signature!r}; it has {names}")
        return module

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """One model call per waveform length in ``batch``; the predictions in ``batch``'s order."""
        signature = model.signatures[self._signature]
        by_length: dict[int, list[int]] = collections.defaultdict(list)
        for i, waveform in enumerate(batch):
            by_length[len(waveform)].append(i)
        inferences: list[dict[str, Any]] = [{}] * len(batch)
        for indices in by_length.values():
            stacked = np.stack([np.asarray(batch[i], np.float32) for i in indices])
            for i, inference in zip(indices, self._scored(signature, stacked)):
                inferences[i] = inference
        model_id = self._saved_model_dir
        return [PredictionResult(example, inference, model_id) for example, inference in zip(batch, inferences)]

    def _scored(self, signature: Any, waveforms: np.ndarray) -> list[dict[str, Any]]:
        """Each row's outputs. A batch the signature refuses (non-finite samples, a log-mel that
        overflows) is run again row by row, so that only the rows at fault get an
        :data:`ERROR_OUTPUT` instead of failing the job."""
        import tensorflow as tf

        try:
            outputs = signature(waveform=tf.constant(waveforms))
        except tf.errors.InvalidArgumentError as exc:
            from eat_keras.models.tagger import audio_error_from  # the Keras model's module: only when needed

            error = audio_error_from(exc)
            if error is None:
                raise
            if len(waveforms) == 1:
                return [{ERROR_OUTPUT: str(error)}]
            return [row for i in range(len(waveforms)) for row in self._scored(signature, waveforms[i : i + 1])]
        wanted = self._outputs or tuple(outputs)
        kept = {name: value.numpy() for name, value in outputs.items() if name in wanted}
        rows = range(len(waveforms))
        return [{name: value[row] if value.ndim >= 2 else value for name, value in kept.items()} for row in rows]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(np.asarray(waveform).nbytes) for waveform in batch)

    def get_metrics_namespace(self) -> str:
        return "EatKeras"
