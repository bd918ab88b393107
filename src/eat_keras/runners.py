"""Run any artifact of a model the same way: waveforms in, logits out.

``eat-keras evaluate`` and ``verify`` compare a Keras model with its SavedModel, its TFLite file or an
ONNX export on the same files; each runner hides how its artifact is called:

- Keras: a preset, upstream ``.pt``, or eat-keras model folder (``eat_keras.json``);
- SavedModel: a folder with ``saved_model.pb`` written by ``eat-keras export`` (TensorFlow only);
- TFLite: a ``.tflite`` file with a ``[1, N]`` waveform input, or ``[batch, N]`` for the files of
  ``--tflite-batch`` (LiteRT interpreter, XNNPACK);
- ONNX: an upstream-style export taking log-mel ``[B, 1, n_mels, T]``, run by onnxruntime when it is
  installed; the log-mel comes from the eat-keras front-end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from eat_keras.audio import SAMPLE_RATE, seconds_to_samples
from eat_keras.errors import AudioError, EatKerasError
from eat_keras.labels import LABEL_LIST_FILE, read_class_names

# TensorFlow is imported inside the runners that need it: running a .tflite file needs LiteRT only.

# What every artifact says about input it cannot score: the Keras model and the SavedModel raise
# with these messages (tf.debugging checks), TFLite files give NaN, which the runner words the same.
NON_FINITE_WAVEFORM = "the waveform holds NaN or Inf samples"
NON_FINITE_LOG_MEL = "the log-mel holds NaN, Inf or overflowed values"
OVERFLOWING_LOG_MEL = (
    "the waveform's log-mel overflows float32: its samples reach far beyond [-1, 1] (float audio is "
    "expected in [-1, 1])"
)


def non_finite_scores_error(waveforms: np.ndarray) -> AudioError:
    """Why an artifact that cannot raise gave non-finite scores for ``waveforms``."""
    if not np.isfinite(waveforms).all():
        return AudioError(NON_FINITE_WAVEFORM)
    return AudioError(f"non-finite scores: {OVERFLOWING_LOG_MEL}, or the model's weights are not finite")


class Runner(Protocol):
    name: str
    class_names: list[str]
    # a fixed input length in samples (TFLite), or None when any length is accepted
    window_samples: int | None
    # False where only softmax scores come out: logits are then known up to a per-row constant
    logits_exact: bool
    # "multi_label" (sigmoid scores) or "single_label" (softmax); None where the artifact does not say
    label_type: str | None
    # the clip length a fine-tuned model was trained on, where the artifact records it
    clip_seconds: float | None

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        """``[batch, samples]`` float32 at 32 kHz → ``[batch, classes]`` logits."""


def _scores_to_logits(scores: np.ndarray, label_type: str) -> np.ndarray:
    """Inverse of the score activation, for artifacts that only output scores. For softmax the
    result is the log-probability: logits up to a per-row constant, which leaves averages'
    argmax unchanged."""
    # floor at the smallest normal float32: a softmax score underflows to 0 only ~87 below the top logit
    scores = np.clip(scores.astype(np.float64), np.finfo(np.float32).tiny, 1.0)
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
        self.label_type = self.tagger.config.label_type
        self.clip_seconds = self.tagger.clip_seconds
        self._fn = self.tagger.predict_function_for_waveforms()

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._fn(tf.constant(waveforms, tf.float32))["logits"].numpy()


class SavedModelRunner:
    window_samples = None
    logits_exact = True

    def __init__(self, path: str | Path, labels_file: str | Path | None = None) -> None:
        import tensorflow as tf

        self._module = tf.saved_model.load(str(path))
        self._serve = self._module.signatures["serving_default"]
        self.name = f"saved_model:{path}"
        own = [n.decode() for n in self._module.class_names().numpy()]
        self.class_names = read_class_names(labels_file, len(own)) if labels_file is not None else own
        self.label_type = self._module.label_type.numpy().decode()
        # 0 (or, in older exports, no variable at all) where the clip length is unknown
        clip_seconds = getattr(self._module, "clip_seconds", None)
        self.clip_seconds = float(clip_seconds.numpy()) if clip_seconds is not None else None
        self.clip_seconds = self.clip_seconds or None

    def _run(self, waveforms: np.ndarray, output: str) -> np.ndarray:
        import tensorflow as tf

        from eat_keras.models.tagger import audio_error_from

        try:
            return self._serve(waveform=tf.constant(waveforms, tf.float32))[output].numpy()
        except tf.errors.InvalidArgumentError as exc:  # the signature's non-finite input check
            error = audio_error_from(exc)
            if error is None:
                raise
            raise error from None

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        return self._run(waveforms, "logits")

    def scores(self, waveforms: np.ndarray) -> np.ndarray:
        return self._run(waveforms, "scores")


class TFLiteRunner:
    def __init__(self, path: str | Path, label_type: str | None = None, labels_file: str | Path | None = None) -> None:
        """``label_type``: for files that do not record theirs (exports before the settings entry,
        other tools' files); such a file is read as multi-label when no reference says otherwise."""
        self.name = f"tflite:{path}"
        from eat_keras.litert import make_interpreter, read_settings

        try:
            self._interpreter = make_interpreter(path)
        except ValueError as exc:  # LiteRT's "Could not open" / "not a valid Flatbuffer"
            raise EatKerasError(f"{path}: cannot load as a TFLite model ({exc})") from exc
        (detail,) = self._interpreter.get_input_details()
        if len(detail["shape"]) != 2:
            raise EatKerasError(f"{path}: expects a waveform [1, N] input, found shape {list(detail['shape'])}")
        self._input = detail["index"]
        # files exported with --tflite-batch take any batch: resized to each call's number of windows
        self._any_batch = int(detail["shape_signature"][0]) == -1
        self.window_samples = int(detail["shape"][1])
        details = self._interpreter.get_output_details()
        outputs = {d["name"]: d["index"] for d in details}
        logits = [i for n, i in outputs.items() if "logits" in n]
        self._scores = next(i for n, i in outputs.items() if "scores" in n)
        num_classes = int(next(d["shape"][-1] for d in details if d["index"] == self._scores))
        self._output = logits[0] if logits else self._scores
        self._outputs_logits = bool(logits)
        settings = read_settings(path) or {}
        self.label_type = settings.get("label_type", label_type)
        self.clip_seconds = settings.get("clip_seconds")
        self._scores_label_type = self.label_type or "multi_label"
        self.logits_exact = self._outputs_logits or self._scores_label_type == "multi_label"
        # an explicit file, else the one `eat-keras export` writes beside the .tflite
        beside = Path(path).with_name(LABEL_LIST_FILE)
        labels = labels_file if labels_file is not None else (beside if beside.is_file() else None)
        self.class_names = read_class_names(labels, num_classes) if labels is not None else []

    def _run(self, waveforms: np.ndarray, output: int) -> np.ndarray:
        if not np.isfinite(waveforms).all():  # files without the NaN output (int8, other tools') included
            raise AudioError(NON_FINITE_WAVEFORM)
        if self._any_batch:
            out = self._invoke_batch(np.asarray(waveforms, np.float32), output)
        else:
            rows = []
            for waveform in waveforms:  # the file has a batch-1 input
                self._interpreter.set_tensor(self._input, np.asarray(waveform[np.newaxis], np.float32))
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(output)[0].copy())
            out = np.stack(rows)
        if not np.isfinite(out).all():  # the file's answer to non-finite or overflowing input
            raise non_finite_scores_error(waveforms)
        return out

    def _invoke_batch(self, waveforms: np.ndarray, output: int) -> np.ndarray:
        """All windows in one invoke, the input resized to their number when it changes."""
        if self._interpreter.get_input_details()[0]["shape"][0] != len(waveforms):
            self._interpreter.resize_tensor_input(self._input, list(waveforms.shape), strict=True)
            self._interpreter.allocate_tensors()
        self._interpreter.set_tensor(self._input, waveforms)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(output).copy()

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        out = self._run(waveforms, self._output)
        return out if self._outputs_logits else _scores_to_logits(out, self._scores_label_type)

    def scores(self, waveforms: np.ndarray) -> np.ndarray:
        return self._run(waveforms, self._scores)


class OnnxRunner:
    window_samples = None
    logits_exact = True
    clip_seconds = None

    def __init__(
        self,
        path: str | Path,
        frontend_config=None,
        class_names: list[str] | None = None,
        label_type: str | None = None,
    ) -> None:
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
        self.label_type = label_type

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        from eat_keras.models.tagger import LOG_MEL_CEILING

        mel = self._frontend(tf.constant(waveforms, tf.float32), training=False).numpy()
        if not (mel < LOG_MEL_CEILING).all():  # NaN compares false too
            raise AudioError(NON_FINITE_WAVEFORM if not np.isfinite(waveforms).all() else OVERFLOWING_LOG_MEL)
        nchw = np.transpose(mel, (0, 3, 1, 2))  # upstream exports take [B, 1, n_mels, T]
        rows = [self._session.run(None, {self._input: nchw[i : i + 1]})[0].reshape(1, -1) for i in range(len(nchw))]
        return np.concatenate(rows)


@dataclasses.dataclass(frozen=True)
class EvaluationWindow:
    samples: int
    reason: str

    def describe(self, sample_rate: int = SAMPLE_RATE) -> str:
        return f"{self.samples / sample_rate:g} s windows ({self.reason})"


def evaluation_window(runner: Runner, clip_seconds: float | None = None) -> EvaluationWindow:
    """The window ``runner`` is evaluated at: an artifact's fixed input (a ``clip_seconds`` it
    cannot take is an error, never a silent change), else ``clip_seconds``, else the fine-tuned
    model's training clip length (recorded in model folders, SavedModels and TFLite files), else
    AudioSet's 10 s."""
    fixed = runner.window_samples
    if fixed:
        if clip_seconds is not None and seconds_to_samples(clip_seconds, SAMPLE_RATE) != fixed:
            raise EatKerasError(
                f"{runner.name} takes {fixed / SAMPLE_RATE:g} s windows only; --clip-seconds "
                f"{clip_seconds:g} cannot be used with it (export a file of that window to evaluate it)"
            )
        return EvaluationWindow(fixed, "the artifact's fixed input")
    if clip_seconds is not None:  # not `or`: an explicit 0 must reach the checks, not become 10 s
        return EvaluationWindow(seconds_to_samples(clip_seconds, SAMPLE_RATE), "--clip-seconds")
    if runner.clip_seconds:
        return EvaluationWindow(seconds_to_samples(runner.clip_seconds, SAMPLE_RATE), "the training clip length")
    return EvaluationWindow(seconds_to_samples(10.0, SAMPLE_RATE), "AudioSet's clip length")


@dataclasses.dataclass(frozen=True)
class RunnerKind:
    """One kind of artifact :func:`load_runner` can run: ``matches`` looks at the path (and the
    reference runner, for artifacts that need one), ``open`` makes the runner."""

    name: str
    matches: Callable[[Path, Runner | None], bool]
    open: Callable[[Path, str | Path | None, Runner | None], Runner]


def _open_onnx(path: Path, labels_file: str | Path | None, reference: Runner | None) -> Runner:
    tagger = getattr(reference, "tagger", None)
    label_type = reference.label_type if reference is not None else None
    names = reference.class_names if reference is not None else []
    return OnnxRunner(path, tagger.config.frontend if tagger else None, names, label_type)


#: Tried in order; the first kind that matches runs the artifact. Anything else (a preset name, a
#: weight file, a model folder) is loaded as a Keras tagger.
RUNNER_KINDS: list[RunnerKind] = [
    RunnerKind(
        "saved_model",
        lambda path, _: path.is_dir() and (path / "saved_model.pb").is_file(),
        lambda path, labels, _: SavedModelRunner(path, labels),
    ),
    RunnerKind(
        "tflite",
        lambda path, _: path.suffix == ".tflite",
        lambda path, labels, ref: TFLiteRunner(path, ref.label_type if ref is not None else None, labels),
    ),
    RunnerKind("onnx", lambda path, ref: path.suffix == ".onnx" and ref is not None, _open_onnx),
]


def register_runner_kind(kind: RunnerKind) -> RunnerKind:
    """Add a kind of artifact, tried before the built-in ones."""
    if any(existing.name == kind.name for existing in RUNNER_KINDS):
        raise ValueError(f"a runner kind named {kind.name!r} is already registered")
    RUNNER_KINDS.insert(0, kind)
    return kind


def load_runner(artifact: str | Path, labels_file: str | Path | None = None, reference: Runner | None = None) -> Runner:
    """A runner for whatever ``artifact`` is (the first matching :data:`RUNNER_KINDS` entry, else a
    Keras tagger); ``reference`` lends class names and label type to artifacts that carry none
    (ONNX, a TFLite file without labels.txt)."""
    path = Path(artifact)
    kind = next((k for k in RUNNER_KINDS if k.matches(path, reference)), None)
    runner = kind.open(path, labels_file, reference) if kind else KerasRunner(artifact, labels_file)
    if not runner.class_names and reference is not None:
        runner.class_names = list(reference.class_names)
    if not runner.class_names:
        raise EatKerasError(f"{artifact}: no class names; pass --labels")
    return runner
