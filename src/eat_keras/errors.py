"""Exception types. Every error a user can cause derives from :class:`EatKerasError`, so the CLI can
print one clear line for it instead of a traceback."""


class EatKerasError(Exception):
    """Base class for errors caused by user input (files, names, arguments)."""


class ConfigError(EatKerasError, ValueError):
    """A model, front-end or training setting is invalid (from flags, a sidecar json or code)."""


class AudioError(EatKerasError):
    """An audio file is missing, unreadable, empty, too short or holds non-finite samples."""


class WeightFileError(EatKerasError):
    """A checkpoint or ONNX file is missing, truncated, unsafe or of an unknown format."""


class ArchitectureMismatchError(WeightFileError):
    """A weight file does not fit the model: names the tensor, the expected and the actual shape."""


class DownloadError(EatKerasError):
    """A download failed or its sha256 did not match."""


class UnknownPresetError(EatKerasError):
    """A model name is not in the presets registry."""


class ExistingOutputError(EatKerasError, FileExistsError):
    """An export would overwrite an existing version folder."""


class OutputError(EatKerasError):
    """An output cannot be written: a read-only folder, a file in the way, a full disk."""
