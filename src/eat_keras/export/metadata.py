"""TFLite model metadata that MediaPipe's ``AudioClassifier`` reads, written with MediaPipe's own writer.

MediaPipe Tasks configure an audio classifier from the metadata inside the ``.tflite`` file:

- the input tensor's ``AudioProperties`` (sample rate, channels): without them ``AudioClassifier``
  refuses the model ("Missing audio format metadata"); it resamples and frames the caller's audio
  into windows of the input tensor's length from these;
- one output tensor metadata entry per output tensor (MediaPipe treats *every* output as a
  classification head and checks that the counts match), the first one carrying the label file
  (``TENSOR_AXIS_LABELS``) packed into the model.

The metadata is written with the maintained writer of the ``mediapipe`` package
(``mediapipe.tasks.python.metadata.metadata_writers``: ``MetadataWriter``, ``metadata_info``, the
``MetadataPopulator`` that packs the label file). That package has no audio-classifier writer, so the
audio input entry is a ``metadata_info.TensorMd`` with ``AudioProperties`` filled in.

One gap is bridged here: since 0.10.30 the mediapipe wheels bind the C library through ctypes and no
longer ship the pybind module ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``, yet
``mediapipe.tasks.python.metadata.metadata`` still imports it for one function,
``GetMinimumMetadataParserVersion``. When (and only when) that module is missing, an equivalent is
registered under its name: :func:`minimum_parser_version`, a line-by-line port of MediaPipe's
``mediapipe/tasks/cc/metadata/metadata_version.cc`` (the highest schema version among the metadata
fields that are present). Nothing else in mediapipe is replaced.

``mediapipe`` is imported lazily, only when metadata is written or read: ``pip install
'eat-keras[mediapipe]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Sequence
from typing import Any

from eat_keras.errors import EatKerasError
from eat_keras.labels import LABEL_LIST_FILE


_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"

_OUTPUT_DESCRIPTIONS = {
    "scores": "Probability of each class: sigmoid of the logits (multi-label) or softmax (single-label).",
    "logits": "Unnormalised class scores (logits) of the classifier head.",
    "embedding": "Clip embedding: global mean of the last feature map.",
}


class MetadataUnavailableError(EatKerasError):
    """The ``mediapipe`` package, which writes the TFLite metadata, is not installed."""


def _schema() -> Any:
    from mediapipe.tasks.metadata import metadata_schema_py_generated

    return metadata_schema_py_generated


def minimum_parser_version(metadata_buffer: bytes | bytearray) -> str:
    """Lowest metadata-parser version that understands every field present in ``metadata_buffer``.

    Port of ``GetMinimumMetadataParserVersion`` (MediaPipe ``metadata_version.cc``): start at 1.0.0
    and raise to the version that introduced each present member (vocabulary files 1.0.1, process
    units and tokenizers 1.1.0, tensor groups 1.2.0, regex tokenizer 1.2.1, ``AudioProperties``
    1.3.0, ScaNN index files 1.4.0, associated-file versions 1.4.1, custom metadata 1.5.0).
    """
    fb = _schema()
    metadata = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(metadata_buffer), 0))
    version = (1, 0, 0)

    def bump(v: tuple[int, int, int]) -> None:
        nonlocal version
        version = max(version, v)

    def files(items: Sequence[Any] | None) -> None:
        for f in items or ():
            if f.type == fb.AssociatedFileType.VOCABULARY:
                bump((1, 0, 1))
            if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                bump((1, 4, 0))
            if getattr(f, "version", None) is not None:
                bump((1, 4, 1))

    def units(items: Sequence[Any] | None) -> None:
        for u in items or ():
            if u.optionsType in (
                fb.ProcessUnitOptions.BertTokenizerOptions,
                fb.ProcessUnitOptions.SentencePieceTokenizerOptions,
            ):
                bump((1, 1, 0))
            if u.optionsType == fb.ProcessUnitOptions.RegexTokenizerOptions:
                bump((1, 2, 1))

    def tensor(t: Any) -> None:
        files(t.associatedFiles)
        units(t.processUnits)
        if t.content is not None and t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
            bump((1, 3, 0))

    for subgraph in metadata.subgraphMetadata or ():
        for t in list(subgraph.inputTensorMetadata or ()) + list(subgraph.outputTensorMetadata or ()):
            tensor(t)
        files(subgraph.associatedFiles)
        if subgraph.inputProcessUnits is not None:
            bump((1, 1, 0))
            units(subgraph.inputProcessUnits)
        if subgraph.outputProcessUnits is not None:
            bump((1, 1, 0))
            units(subgraph.outputProcessUnits)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            bump((1, 2, 0))
        if getattr(subgraph, "customMetadata", None) is not None:
            bump((1, 5, 0))
    files(metadata.associatedFiles)
    return ".".join(str(v) for v in version)


def _register_version_module() -> None:
    """Register :func:`minimum_parser_version` under the pybind module name the writer imports."""
    parts = _VERSION_MODULE.split(".")
    for i in range(3, len(parts)):  # mediapipe.tasks.cc, ...cc.metadata, ...cc.metadata.python
        name = ".".join(parts[:i])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []  # a namespace-like package: importing children goes through sys.modules
            sys.modules[name] = package
    module = types.ModuleType(_VERSION_MODULE)
    module.__doc__ = "eat-keras: Python port of mediapipe/tasks/cc/metadata/metadata_version.cc"
    module.GetMinimumMetadataParserVersion = minimum_parser_version  # type: ignore[attr-defined]
    sys.modules[_VERSION_MODULE] = module
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)


def require_mediapipe() -> tuple[Any, Any, Any]:
    """``(metadata_writer, metadata_info, metadata)`` modules of mediapipe, importing them lazily."""
    if importlib.util.find_spec("mediapipe") is None:
        raise MetadataUnavailableError(
            "writing TFLite metadata needs the mediapipe package: pip install 'eat-keras[mediapipe]' "
            "(or export without metadata: --no-metadata)"
        )
    try:
        importlib.import_module(_VERSION_MODULE)
    except ImportError:
        _register_version_module()
    writer = importlib.import_module("mediapipe.tasks.python.metadata.metadata_writers.metadata_writer")
    info = importlib.import_module("mediapipe.tasks.python.metadata.metadata_writers.metadata_info")
    metadata = importlib.import_module("mediapipe.tasks.python.metadata.metadata")
    return writer, info, metadata


def write_metadata(
    model: bytes,
    *,
    name: str,
    description: str,
    version: str,
    author: str,
    license: str,
    class_names: Sequence[str],
    input_kind: str,
    sample_rate: int,
    outputs: Sequence[str] = ("scores",),
    channels: int = 1,
) -> bytes:
    """Return ``model`` with metadata and the packed label file (``labels.txt``).

    ``input_kind`` is ``"waveform"`` (audio input with sample rate and channel count: what
    ``AudioClassifier`` needs) or ``"log_mel"`` (a feature tensor). ``outputs`` names the output
    tensors in the model's order; ``scores`` must come first, it gets the labels.
    """
    if not outputs or outputs[0] != "scores":
        raise ValueError(f"the first output must be 'scores' (MediaPipe's classification head), got {outputs}")
    writer_mod, info, _ = require_mediapipe()
    fb = _schema()

    class AudioTensorMd(info.TensorMd):  # type: ignore[name-defined, misc]
        """Input tensor metadata with ``AudioProperties`` (sample rate, channels) filled in."""

        def __init__(self, name: str, description: str, sample_rate: int, channels: int) -> None:
            super().__init__(name=name, description=description, content_type=fb.ContentProperties.AudioProperties)
            self.sample_rate = sample_rate
            self.channels = channels

        def create_metadata(self) -> Any:
            tensor_metadata = super().create_metadata()
            tensor_metadata.content.contentProperties.sampleRate = self.sample_rate
            tensor_metadata.content.contentProperties.channels = self.channels
            return tensor_metadata

    class AudioClassifierWriter(writer_mod.MetadataWriter):  # type: ignore[name-defined, misc]
        """MediaPipe's generic writer plus the audio input that it has no method for."""

        def add_general_md(self, general_md: Any) -> "AudioClassifierWriter":
            self._general_md = general_md
            return self

        def add_audio_input(self, name: str, description: str, sample_rate: int, channels: int) -> "AudioClassifierWriter":
            self._input_mds.append(AudioTensorMd(name, description, sample_rate, channels))
            return self

    writer = AudioClassifierWriter.create(bytearray(model))
    writer.add_general_md(
        info.GeneralMd(name=name, version=version, description=description, author=author, licenses=license)
    )
    if input_kind == "waveform":
        writer.add_audio_input(
            "waveform",
            f"Mono float32 waveform at {sample_rate} Hz, samples in [-1, 1].",
            sample_rate,
            channels,
        )
    elif input_kind == "log_mel":
        writer.add_feature_input(
            "log_mel", "Normalised log-mel spectrogram [1, n_mels, frames] of the upstream EfficientAT front-end."
        )
    else:
        raise ValueError(f"unknown input kind {input_kind!r}")
    for output in outputs:
        if output == "scores":
            writer.add_classification_output(
                writer_mod.Labels().add(list(class_names), exported_filename=LABEL_LIST_FILE),
                name="scores",
                description=_OUTPUT_DESCRIPTIONS["scores"],
            )
        else:
            writer.add_feature_output(name=output, description=_OUTPUT_DESCRIPTIONS[output])
    populated, _ = writer.populate()
    return bytes(populated)


def read_metadata(model: bytes) -> dict[str, Any]:
    """The metadata of ``model`` as a dict (MediaPipe's JSON form) plus ``"associated_files"``:
    ``{name: bytes}`` of the files packed into the model."""
    _, _, metadata = require_mediapipe()
    displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    result = json.loads(displayer.get_metadata_json())
    result["associated_files"] = {
        f: bytes(displayer.get_associated_file_buffer(f)) for f in displayer.get_packed_associated_file_list()
    }
    return result
