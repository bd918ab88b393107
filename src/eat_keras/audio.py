"""Decode an audio file into the mono 32 kHz float32 waveform the models expect.

The upstream EfficientAT inference script loads audio with ``librosa.load(path, sr=32000,
mono=True)``; librosa 0.11 decodes with soundfile, averages the channels and resamples with soxr
"HQ", then fixes the length to ``ceil(n * sr_out / sr_in)``. This module does exactly those steps
without depending on librosa, so the waveforms (and therefore the golden logits) match bit for bit.

Every failure a user can cause (missing, empty, corrupt or non-finite file) becomes one
:class:`~eat_keras.errors.AudioError` whose message names the file, so the CLI can print one line.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from eat_keras.errors import AudioError, ConfigError

__all__ = [
    "SAMPLE_RATE",
    "AudioFileSignal",
    "check_min_length",
    "load_audio",
    "open_audio",
    "resample",
    "seconds_to_samples",
]

#: The sample rate every EfficientAT model was trained on.
SAMPLE_RATE = 32000
#: files at least this long (in seconds) are decoded window by window when a caller asks to stream
STREAM_MIN_SECONDS = 60.0
#: what libsndfile and soundfile raise on a file they cannot decode
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError)


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """A duration in whole samples, rounded: ``int()`` would make 2.01 s at 32 kHz 64319 samples."""
    if not math.isfinite(seconds):
        raise ConfigError(f"a duration must be a finite number of seconds, got {seconds}")
    return int(round(seconds * sample_rate))


def _one_line(text: str) -> str:
    """Collapse whitespace so that an error message stays on one line."""
    return " ".join(str(text).split())


def resample(waveform: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along axis 0 with soxr "HQ", exactly as ``librosa.resample(res_type="soxr_hq")``.

    soxr returns a length that can be one sample off librosa's, so the result is trimmed or
    zero-padded to librosa's ``int(ceil(n * (sr_out / sr_in)))`` (same float expression, so the
    same rounding). ``waveform`` is 1-D ``[time]`` or 2-D ``[time, channels]``; the result is float32.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.ascontiguousarray(waveform, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected a [time] or [time, channels] array, got shape {x.shape}")
    if sr_in == sr_out:
        return x
    n_out = int(np.ceil(x.shape[0] * (float(sr_out) / sr_in)))
    if x.shape[0] == 0:
        return np.zeros((n_out,) + x.shape[1:], dtype=np.float32)
    y = soxr.resample(x, sr_in, sr_out, quality="HQ")
    return _fix_length(np.asarray(y, dtype=np.float32), n_out)


def _fix_length(x: np.ndarray, size: int) -> np.ndarray:
    """Trim or zero-pad axis 0 to ``size`` (librosa.util.fix_length)."""
    n = x.shape[0]
    if n > size:
        return np.ascontiguousarray(x[:size])
    if n < size:
        pad = [(0, size - n)] + [(0, 0)] * (x.ndim - 1)
        return np.pad(x, pad)
    return x


def load_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load any file libsndfile reads (wav, flac, ogg/vorbis, aiff, mp3, ...) as 1-D float32 mono.

    Channels are averaged, then the signal is resampled to ``sample_rate`` (see :func:`resample`).
    A WAV whose data was cut short (header claims more frames than the file holds) is read as far as
    the data goes: libsndfile trusts the file size, which is what librosa does too, so the partial
    audio is returned. A file whose header itself is cut, or that holds no frames, raises.

    Raises:
        AudioError: missing, a directory, empty, unreadable or undecodable file, zero frames,
            or NaN/Inf samples.
    """
    p = _checked_path(path)
    try:
        with sf.SoundFile(str(p)) as sound_file:
            data = _read_float32(sound_file, -1)
            sr_in = sound_file.samplerate
    except _DECODE_ERRORS as exc:
        raise _decode_error(p, exc) from exc
    if data.shape[0] == 0:
        raise AudioError(f"{p}: audio file holds no samples (0 frames)")
    # Checked before resampling: soxr would smear one NaN over the whole neighbourhood.
    mono = _finite_mono(data, p)
    if int(sr_in) != sample_rate:
        mono = resample(mono, int(sr_in), sample_rate)
    return mono


def _checked_path(path: str | os.PathLike[str]) -> Path:
    """The path, once it names a non-empty readable file: libsndfile reports all of these failures
    as "Error opening ...", so they are told apart here."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: audio file not found")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise AudioError(f"{p}: cannot read audio file ({_one_line(exc.strerror or exc)})") from exc
    if size == 0:
        raise AudioError(f"{p}: audio file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{p}: audio file is not readable (permission denied)")
    return p


def _decode_error(p: Path, exc: Exception) -> AudioError:
    """A decoding failure (one of ``_DECODE_ERRORS``) as one AudioError line."""
    if isinstance(exc, sf.LibsndfileError):
        reason = _one_line(exc.error_string) or "unknown libsndfile error"
        return AudioError(
            f"{p}: cannot decode audio ({reason}); the file is corrupt, truncated or not in a "
            "format libsndfile reads"
        )
    return AudioError(f"{p}: cannot decode audio ({_one_line(exc)})")


#: libsndfile's float scale for 16-bit PCM (1 / 0x8000)
PCM16_SCALE = np.float32(1.0 / 32768.0)


def _read_float32(sound_file: sf.SoundFile, frames: int) -> np.ndarray:
    """``frames`` frames (-1: to the end) from the current position as ``[frames, channels]``
    float32, the values libsndfile's float read gives (as librosa.load decodes). 16-bit PCM, the
    common case, is read as int16 and scaled here: every product is exact, so the values are the same
    bits, in about a quarter of the time (~0.3 instead of ~1.2 ms per 10 s at 32 kHz)."""
    if sound_file.subtype == "PCM_16":
        return _scale_pcm16(sound_file.read(frames, dtype="int16", always_2d=True))
    return sound_file.read(frames, dtype="float32", always_2d=True)


def _scale_pcm16(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 samples → libsndfile's float32 values (into ``out`` when given)."""
    return np.multiply(raw, PCM16_SCALE, out=out, dtype=np.float32)


def _finite_mono(data: np.ndarray, p: Path) -> np.ndarray:
    """``[frames, channels]`` → contiguous float32 mono (librosa.to_mono: the mean over channels, a
    single channel taken as is, bit-exact); NaN or Inf samples raise."""
    if not np.isfinite(data).all():
        raise AudioError(f"{p}: audio holds non-finite samples (NaN or Inf)")
    # reshape, not data[:, 0]: a view of the [frames, 1] array, so a long file is not copied again
    mono = data.reshape(-1) if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


class AudioFileSignal:
    """A file at the model's sample rate as a lazily decoded 1-D float32 mono signal.

    ``len()`` and slicing (``signal[start:stop]``) behave as on :func:`load_audio`'s array, with the
    same values (the channel mean is per frame), but only the sliced frames are decoded: tagging an
    hour in 10 s windows holds one window in memory instead of the whole file, and skips the page
    faults of a fresh 460 MB array (about a second per hour of audio). A NaN or Inf sample raises
    :class:`AudioError` when the window holding it is read.
    """

    ndim = 1
    dtype = np.dtype(np.float32)

    def __init__(self, sound_file: sf.SoundFile, path: Path) -> None:
        self._file = sound_file
        self._path = path
        self._frames = int(sound_file.frames)
        self._pcm16 = np.empty(0, np.int16)  # read_into's decode buffer, reused window after window

    def __len__(self) -> int:
        return self._frames

    @property
    def shape(self) -> tuple[int]:
        return (self._frames,)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("an AudioFileSignal is read by contiguous slices only")
        start, stop, _ = index.indices(self._frames)
        count = max(stop - start, 0)
        try:
            self._file.seek(start)
            data = _read_float32(self._file, count)
        except _DECODE_ERRORS as exc:
            raise _decode_error(self._path, exc) from exc
        return _finite_mono(data, self._path)

    def read_into(self, start: int, out: np.ndarray) -> int:
        """Decode the frames from ``start`` into the 1-D float32 ``out``, as many as it holds or as
        the file has left; returns how many were written. The values of ``self[start:start + n]``
        without a fresh array per call: mono 16-bit PCM, the common long recording, decodes into a
        reused int16 buffer and is scaled straight into ``out`` (fresh arrays cost page faults).
        Integers need no NaN check; other files go through slicing, checks included."""
        count = max(min(len(out), self._frames - start), 0)
        if self._file.subtype != "PCM_16" or self._file.channels != 1:
            out[:count] = self[start : start + count]
            return count
        if len(self._pcm16) < count:
            self._pcm16 = np.empty(count, np.int16)
        try:
            self._file.seek(start)
            raw = self._file.read(out=self._pcm16[:count])
        except _DECODE_ERRORS as exc:
            raise _decode_error(self._path, exc) from exc
        _scale_pcm16(raw, out[: len(raw)])
        return len(raw)


@contextlib.contextmanager
def open_audio(
    path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE, stream: bool = False
) -> Iterator[np.ndarray | AudioFileSignal]:
    """The waveform of ``path`` for the ``with`` block: :func:`load_audio`'s array, or, with
    ``stream`` and a file already at ``sample_rate`` and at least :data:`STREAM_MIN_SECONDS` long,
    an :class:`AudioFileSignal` read slice by slice (resampled or short files are loaded whole:
    soxr's one-shot result is what upstream computes)."""
    p = _checked_path(path)
    sound_file = None
    if stream:
        try:
            sound_file = sf.SoundFile(str(p))
        except _DECODE_ERRORS as exc:
            raise _decode_error(p, exc) from exc
        if sound_file.samplerate != sample_rate or sound_file.frames < STREAM_MIN_SECONDS * sample_rate:
            sound_file.close()
            sound_file = None
    if sound_file is None:
        yield load_audio(p, sample_rate)
        return
    with sound_file:
        yield AudioFileSignal(sound_file, p)


def check_min_length(
    waveform: np.ndarray,
    min_samples: int,
    path: str | os.PathLike[str] | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> None:
    """Raise :class:`AudioError` when ``waveform`` has fewer than ``min_samples`` samples (axis -1).

    The caller chooses the minimum (it depends on the model's receptive field and pooling), so this
    only words the error: "audio is X s long; the model needs at least Y s".
    """
    n = int(np.shape(waveform)[-1]) if np.ndim(waveform) else 0
    if n >= min_samples:
        return
    have = n / sample_rate
    need = min_samples / sample_rate
    prefix = f"{Path(path)}: " if path is not None else ""
    raise AudioError(
        f"{prefix}audio is {have:.3g} s long; the model needs at least {need:.3g} s "
        f"({min_samples} samples at {sample_rate} Hz)"
    )
