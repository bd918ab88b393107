"""Run any artifact of a model the same way: waveforms in, logits out.

``eat-keras evaluate`` and ``verify`` compare a Keras model with its SavedModel, its TFLite file or an
ONNX export on the same files; each runner hides how its artifact is called:

- Keras: a preset, upstream ``.pt``, or eat-keras model folder (``eat_keras.json``);
- SavedModel: a folder with ``saved_model.pb`` written by ``eat-keras export`` (TensorFlow only);
- TFLite: a ``.tflite`` file with a fixed ``[1, N]`` waveform input (LiteRT interpreter, XNNPACK);
- ONNX: an upstream-style export taking log-mel ``[B, 1, n_mels, T]``, run by onnxruntime when it is
  installed; the log-mel comes from the eat-keras front-end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from eat_keras.errors import EatKerasError

# TensorFlow is imported inside the runners that need it: running a .tflite file needs LiteRT only.


class Runner(Protocol):
    name: str
    class_names: list[str]
    # a fixed input length in samples (TFLite), or None when any length is accepted
    window_samples: int | None
    # False where only softmax scores come out: logits are then known up to a per-row constant
    logits_exact: bool

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        """``[batch, samples]`` float32 at 32 kHz → ``[batch, classes]`` logits."""


def _scores_to_logits(scores: np.ndarray, label_type: str) -> np.ndarray:
    """Inverse of the score activation, for artifacts that only output scores. For softmax the
    result is the log-probability: logits up to a per-row constant, which leaves averages'
    argmax unchanged."""
    scores = np.clip(scores.astype(np.float64), 1e-12, 1.0)
    if label_type == "single_label":
        return np.log(scores).astype(np.float32)
    scores = np.clip(scores, 1e-12, 1.0 - 1e-7)
    return np.log(scores / (1.0 - scores)).astype(np.float32)


class KerasRunner:
    window_samples = None
    logits_exact = True

    def __init__(self, model: str | Path, labels_file: str | Path | None = None) -> None:
        from eat_keras.loading import load_tagger

        self.tagger = load_tagger(model, labels_file=labels_file)
        self.name = f"keras:{model}"
        self.class_names = list(self.tagger.class_names or [])
        self._fn = self.tagger.predict_function_for_waveforms()

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._fn(tf.constant(waveforms, tf.float32))["logits"].numpy()


class SavedModelRunner:
    window_samples = None
    logits_exact = True

    def __init__(self, path: str | Path) -> None:
        import tensorflow as tf

        self._module = tf.saved_model.load(str(path))
        self._serve = self._module.signatures["serving_default"]
        self.name = f"saved_model:{path}"
        self.class_names = [n.decode() for n in self._module.class_names().numpy()]

    def _run(self, waveforms: np.ndarray, output: str) -> np.ndarray:
        import tensorflow as tf

        return self._serve(waveform=tf.constant(waveforms, tf.float32))[output].numpy()

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        return self._run(waveforms, "logits")

    def scores(self, waveforms: np.ndarray) -> np.ndarray:
        return self._run(waveforms, "scores")


class TFLiteRunner:
    def __init__(self, path: str | Path, label_type: str = "multi_label", labels_file: str | Path | None = None) -> None:
        self.name = f"tflite:{path}"
        from eat_keras.litert import make_interpreter

        self._interpreter = make_interpreter(path)
        (detail,) = self._interpreter.get_input_details()
        if len(detail["shape"]) != 2:
            raise EatKerasError(f"{path}: expects a waveform [1, N] input, found shape {list(detail['shape'])}")
        self._input = detail["index"]
        self.window_samples = int(detail["shape"][1])
        outputs = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        logits = [i for n, i in outputs.items() if "logits" in n]
        self._scores = next(i for n, i in outputs.items() if "scores" in n)
        self._output = logits[0] if logits else self._scores
        self._outputs_logits = bool(logits)
        self._label_type = label_type
        self.logits_exact = self._outputs_logits or label_type == "multi_label"
        labels = Path(labels_file) if labels_file else Path(path).with_name("labels.txt")
        self.class_names = labels.read_text().splitlines() if labels.is_file() else []

    def _run(self, waveforms: np.ndarray, output: int) -> np.ndarray:
        rows = []
        for waveform in waveforms:  # the file has a batch-1 input
            self._interpreter.set_tensor(self._input, np.asarray(waveform[np.newaxis], np.float32))
            self._interpreter.invoke()
            rows.append(self._interpreter.get_tensor(output)[0].copy())
        return np.stack(rows)

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        out = self._run(waveforms, self._output)
        return out if self._outputs_logits else _scores_to_logits(out, self._label_type)

    def scores(self, waveforms: np.ndarray) -> np.ndarray:
        return self._run(waveforms, self._scores)


class OnnxRunner:
    window_samples = None
    logits_exact = True

    def __init__(self, path: str | Path, frontend_config=None, class_names: list[str] | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise EatKerasError("running an ONNX file needs onnxruntime: pip install onnxruntime") from exc
        from eat_keras.frontend import FrontendConfig, LogMelSpectrogram

        self.name = f"onnx:{path}"
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._frontend = LogMelSpectrogram(frontend_config or FrontendConfig())
        self.class_names = list(class_names or [])

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        mel = self._frontend(tf.constant(waveforms, tf.float32), training=False).numpy()
        nchw = np.transpose(mel, (0, 3, 1, 2))  # upstream exports take [B, 1, n_mels, T]
        rows = [self._session.run(None, {self._input: nchw[i : i + 1]})[0].reshape(1, -1) for i in range(len(nchw))]
        return np.concatenate(rows)


def load_runner(artifact: str | Path, labels_file: str | Path | None = None, reference: Runner | None = None) -> Runner:
    """A runner for whatever ``artifact`` is; ``reference`` lends class names and label type to
    artifacts that carry none (ONNX, a TFLite file without labels.txt)."""
    path = Path(artifact)
    label_type = getattr(getattr(reference, "tagger", None), "config", None)
    label_type = label_type.label_type if label_type is not None else "multi_label"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        runner: Runner = SavedModelRunner(path)
    elif path.suffix == ".tflite":
        runner = TFLiteRunner(path, label_type, labels_file)
    elif path.suffix == ".onnx" and reference is not None:
        tagger = getattr(reference, "tagger", None)
        runner = OnnxRunner(path, tagger.config.frontend if tagger else None, reference.class_names)
    else:
        runner = KerasRunner(artifact, labels_file)
    if not runner.class_names and reference is not None:
        runner.class_names = list(reference.class_names)
    if not runner.class_names:
        raise EatKerasError(f"{artifact}: no class names; pass --labels")
    return runner

