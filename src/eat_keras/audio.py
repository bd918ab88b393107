"""Decode an audio file into the mono 32 kHz float32 waveform the models expect.

The upstream EfficientAT inference script loads audio with ``librosa.load(path, sr=32000,
mono=True)``; librosa 0.11 decodes with soundfile, averages the channels and resamples with soxr
"HQ", then fixes the length to ``ceil(n * sr_out / sr_in)``. This module does exactly those steps
without depending on librosa, so the waveforms (and therefore the golden logits) match bit for bit.

A file's header is checked before anything is allocated from it: an implausible sample rate,
channel count or frame count, or a file shorter than its header claims, is refused. Long files can
be read window by window (:func:`open_audio` with ``stream``): decoded in blocks and, at another
sample rate, resampled by soxr's streaming resampler, which gives the same samples as the one-shot
resampler, so memory does not grow with the file's length.

Every failure a user can cause (missing, empty, corrupt, truncated or non-finite file) becomes one
:class:`~eat_keras.errors.AudioError` whose message names the file, so the CLI can print one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from eat_keras.errors import AudioError, ConfigError

__all__ = [
    "SAMPLE_RATE",
    "AudioFileSignal",
    "AudioInfo",
    "audio_info",
    "check_min_length",
    "format_duration",
    "load_audio",
    "open_audio",
    "resample",
    "seconds_to_samples",
]

#: The sample rate every EfficientAT model was trained on.
SAMPLE_RATE = 32000
#: files at least this long (in seconds, or as many samples over all channels) are decoded window
#: by window when a caller asks to stream
STREAM_MIN_SECONDS = 60.0
#: samples (frames x channels) decoded per block when streaming: 512 KiB as float32
STREAM_BLOCK_SAMPLES = 1 << 17
#: samples (frames x channels) per block when a file is decoded whole: one block for most clips, so
#: they are not copied again, while a header that lies about its length cannot size an allocation
LOAD_BLOCK_SAMPLES = 1 << 22
#: Sample rates a header may state. Below 1 kHz a file holds nothing above 500 Hz (no recording
#: format uses such rates) and resampling to 32 kHz would multiply its length more than 32-fold,
#: which is how a 200 KB file claiming 1 Hz becomes 3.2 G samples; 768 kHz is the highest rate
#: audio interfaces record at.
MIN_FILE_SAMPLE_RATE = 1000
MAX_FILE_SAMPLE_RATE = 768_000
#: more channels than any recording format carries (object-based cinema masters have 128)
MAX_CHANNELS = 256
#: Frames one byte of compressed audio can hold at most: FLAC's longest block (65535 frames) of
#: digital silence takes about ten bytes, and Vorbis or Opus pages hold fewer; real encoders give
#: a few hundred frames per byte of silence. A header claiming more is corrupt or forged.
MAX_FRAMES_PER_BYTE = 8192
#: bytes per sample of the uncompressed subtypes: their frame count is bounded by the file size
_PCM_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
    "FLOAT": 4, "DOUBLE": 8,
}
#: formats whose subtype names the decoded sample size, not the stored one (FLAC's "PCM_16")
_COMPRESSED_FORMATS = ("FLAC", "OGG", "MPEG")
#: data-chunk sizes that writers streaming to a pipe put in a WAV header: the length is unknown
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
#: the longest Ogg page: header, 255 lacing values, 255 segments of 255 bytes
_OGG_MAX_PAGE = 27 + 255 + 255 * 255
#: libsndfile's frame count for a file whose header leaves the length open (SF_COUNT_MAX)
_UNKNOWN_FRAMES = (1 << 63) - 1
#: chunks walked in a WAV or AIFF header before giving up on finding the one looked for
_MAX_CHUNKS = 64
#: what libsndfile and soundfile raise on a file they cannot decode
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError)


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """A duration in whole samples, rounded: ``int()`` would make 2.01 s at 32 kHz 64319 samples."""
    if not math.isfinite(seconds):
        raise ConfigError(f"a duration must be a finite number of seconds, got {seconds}")
    return int(round(seconds * sample_rate))


def format_duration(seconds: float) -> str:
    """``"4.5 s"``, ``"12 min"`` or ``"2 h"``: a length as a person reads it in one message."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _one_line(text: str) -> str:
    """Collapse whitespace so that an error message stays on one line."""
    return " ".join(str(text).split())


def _resampled_length(n: int, sr_in: int, sr_out: int) -> int:
    """librosa's ``int(ceil(n * (sr_out / sr_in)))``: the same float expression, the same rounding."""
    return n if sr_in == sr_out else int(np.ceil(n * (float(sr_out) / sr_in)))


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
    n_out = _resampled_length(x.shape[0], sr_in, sr_out)
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


# --- the path and the header -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file's header states, once checked to be plausible."""

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    size: int  # bytes

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _checked_path(path: str | os.PathLike[str]) -> Path:
    """The path, once it names a non-empty readable regular file: libsndfile reports all of these
    failures as "Error opening ...", and would wait forever on a FIFO, so they are told apart here."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise _stat_error(p, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{p}: is {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size == 0:
        raise AudioError(f"{p}: audio file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{p}: audio file is not readable (permission denied)")
    return p


def _stat_error(p: Path, exc: OSError) -> AudioError:
    """Why ``stat`` failed, in the words a user looks for."""
    if exc.errno == errno.ELOOP:
        return AudioError(f"{p}: symbolic link loop (the link leads back to itself)")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if p.is_symlink():
            return AudioError(f"{p}: audio file not found (broken symbolic link to {os.readlink(p)})")
        return AudioError(f"{p}: audio file not found")
    if exc.errno == errno.EACCES:
        return AudioError(f"{p}: audio file is not readable (permission denied)")
    return AudioError(f"{p}: cannot read audio file ({_one_line(exc.strerror or exc)})")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _decode_error(p: Path, exc: Exception) -> AudioError:
    """A decoding failure (one of ``_DECODE_ERRORS``) as one AudioError line."""
    if isinstance(exc, sf.LibsndfileError):
        reason = _one_line(exc.error_string) or "unknown libsndfile error"
        return AudioError(
            f"{p}: cannot decode audio ({reason}); the file is corrupt, truncated or not in a "
            "format libsndfile reads"
        )
    return AudioError(f"{p}: cannot decode audio ({_one_line(exc)})")


def _truncated(p: Path, info: AudioInfo, claimed: int, held: int, how: str = "the file holds") -> AudioError:
    sr = info.sample_rate
    return AudioError(
        f"{p}: truncated: the header claims {claimed} frames ({format_duration(claimed / sr)}) but "
        f"{how} {held} ({format_duration(held / sr)}); the last {format_duration((claimed - held) / sr)} "
        "are missing"
    )


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """The checked header of ``path``, nothing decoded.

    Raises:
        AudioError: as :func:`load_audio` does for the file and its header.
    """
    p = _checked_path(path)
    sound_file, info = _open_checked(p)
    sound_file.close()
    return info


def _open_checked(p: Path) -> tuple[sf.SoundFile, AudioInfo]:
    """The open file and its header, once plausible and complete (the file is closed on refusal)."""
    try:
        sound_file = sf.SoundFile(str(p))
    except _DECODE_ERRORS as exc:
        raise _decode_error(p, exc) from exc
    try:
        return sound_file, _checked_header(sound_file, p)
    except BaseException:
        sound_file.close()
        raise


def _checked_header(sound_file: sf.SoundFile, p: Path) -> AudioInfo:
    """The header's rate, channels and frame count, refused where no real file could have them."""
    info = AudioInfo(
        int(sound_file.samplerate), int(sound_file.channels), int(sound_file.frames),
        sound_file.format, sound_file.subtype, p.stat().st_size,
    )
    if not MIN_FILE_SAMPLE_RATE <= info.sample_rate <= MAX_FILE_SAMPLE_RATE:
        raise AudioError(
            f"{p}: implausible sample rate {info.sample_rate} Hz in the header (accepted: "
            f"{MIN_FILE_SAMPLE_RATE} Hz to {MAX_FILE_SAMPLE_RATE // 1000} kHz); the file is corrupt"
        )
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{p}: implausible channel count {info.channels} in the header (at most {MAX_CHANNELS})")
    _check_complete(p, info)
    if info.frames == 0:
        raise AudioError(f"{p}: audio file holds no samples (0 frames)")
    per_frame = _stored_bytes_per_sample(info)
    capacity = info.size // (per_frame * info.channels) if per_frame else info.size * MAX_FRAMES_PER_BYTE
    if info.frames >= _UNKNOWN_FRAMES:
        raise AudioError(
            f"{p}: the header does not state how many frames the file holds (a FLAC written as a "
            "stream?); re-encode the file"
        )
    if info.frames > capacity:
        raise AudioError(
            f"{p}: the header claims {info.frames} frames ({format_duration(info.seconds)}), more than "
            f"{info.size} bytes of {info.subtype} audio can hold; the file is corrupt"
        )
    return info


def _check_complete(p: Path, info: AudioInfo) -> None:
    """Refuse a WAV, AIFF or Ogg file cut short. libsndfile sizes a WAV or AIFF by what the file
    holds (not by its header) and an Ogg file by its last page, so without this check a file cut in
    half would decode as a shorter, complete-looking one."""
    try:
        if info.format in ("WAV", "WAVEX", "RF64"):
            claimed = _wav_claimed_frames(p, info)
        elif info.format == "AIFF":
            claimed = _aiff_claimed_frames(p)
        elif info.format == "OGG":
            if not _ogg_ends_with_last_page(p, info.size):
                raise AudioError(
                    f"{p}: truncated: the Ogg stream stops without its last page after "
                    f"{format_duration(info.seconds)} of audio; the rest of the file is missing"
                )
            return
        else:
            return
    except OSError as exc:
        raise AudioError(f"{p}: cannot read audio file ({_one_line(exc.strerror or exc)})") from exc
    if claimed is not None and claimed > info.frames:
        raise _truncated(p, info, claimed, info.frames)


def _stored_bytes_per_sample(info: AudioInfo) -> int | None:
    """Bytes one sample takes in the file, where audio is stored uncompressed."""
    return None if info.format in _COMPRESSED_FORMATS else _PCM_BYTES.get(info.subtype)


def _wav_claimed_frames(p: Path, info: AudioInfo) -> int | None:
    """Frames the data chunk's declared size stands for (uncompressed subtypes; None if unknown)."""
    per_frame = _stored_bytes_per_sample(info)
    size = _riff_data_size(p)
    if per_frame is None or size is None:
        return None
    return size // (per_frame * info.channels)


def _riff_data_size(p: Path) -> int | None:
    """The byte count a RIFF/RIFX/RF64 WAV header declares for its data chunk, or None."""
    with open(p, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
            return None
        endian = ">" if head[:4] == b"RIFX" else "<"
        ds64_data_size = None
        for _ in range(_MAX_CHUNKS):
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            size = struct.unpack(endian + "I", chunk[4:])[0]
            if chunk[:4] == b"data":
                if size == 0xFFFFFFFF and ds64_data_size is not None:
                    return ds64_data_size
                return None if size in _WAV_UNKNOWN_SIZES else size
            body = f.read(min(size, 16)) if chunk[:4] == b"ds64" else b""
            if len(body) == 16:  # RF64: the 64-bit sizes, RIFF's then the data chunk's
                ds64_data_size = struct.unpack("<Q", body[8:16])[0]
            f.seek(size + (size & 1) - len(body), os.SEEK_CUR)
    return None


def _aiff_claimed_frames(p: Path) -> int | None:
    """``numSampleFrames`` of an AIFF/AIFC file's COMM chunk, or None."""
    with open(p, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"FORM" or head[8:12] not in (b"AIFF", b"AIFC"):
            return None
        for _ in range(_MAX_CHUNKS):
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            size = struct.unpack(">I", chunk[4:])[0]
            if chunk[:4] == b"COMM":
                body = f.read(6)
                return struct.unpack(">I", body[2:6])[0] if len(body) == 6 else None
            f.seek(size + (size & 1), os.SEEK_CUR)
    return None


def _ogg_ends_with_last_page(p: Path, size: int) -> bool:
    """Whether the file ends exactly where an Ogg page flagged end-of-stream ends. A file cut short
    ends inside a page, or after a page that is not the stream's last."""
    with open(p, "rb") as f:
        f.seek(max(0, size - _OGG_MAX_PAGE))
        tail = f.read()
    pos = tail.rfind(b"OggS")
    while pos >= 0:
        segments = tail[pos + 26] if pos + 27 <= len(tail) else 0
        lacing = tail[pos + 27 : pos + 27 + segments]
        if tail[pos + 4 : pos + 5] == b"\x00" and len(lacing) == segments:
            if pos + 27 + segments + sum(lacing) == len(tail):
                return bool(tail[pos + 5] & 0x04)
        pos = tail.rfind(b"OggS", 0, pos)
    return False


# --- decoding --------------------------------------------------------------------------------


#: libsndfile's float scale for 16-bit PCM (1 / 0x8000)
PCM16_SCALE = np.float32(1.0 / 32768.0)


def _read_float32(sound_file: sf.SoundFile, frames: int) -> np.ndarray:
    """``frames`` frames (-1: to the end) from the current position as ``[frames, channels]``
    float32, the values libsndfile's float read gives (as librosa.load decodes). 16-bit PCM, the
    common case, is read as int16 and scaled here: every product is exact, so the values are the same
    bits, in about a quarter of the time."""
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


def _mono_blocks(sound_file: sf.SoundFile, p: Path, info: AudioInfo, block_samples: int) -> Iterator[np.ndarray]:
    """The file from its start as checked float32 mono blocks of at most ``block_samples`` samples
    over all channels. Decoding that stops before the header's frame count raises (truncated)."""
    block_frames = max(1, block_samples // info.channels)
    done = 0
    while done < info.frames:
        try:
            data = _read_float32(sound_file, min(block_frames, info.frames - done))
        except _DECODE_ERRORS as exc:
            raise _decode_error(p, exc) from exc
        if len(data) == 0:
            raise _truncated(p, info, info.frames, done, "decoding stops after")
        done += len(data)
        yield _finite_mono(data, p)


def _decode_whole(sound_file: sf.SoundFile, p: Path, info: AudioInfo, sample_rate: int) -> np.ndarray:
    """The whole file as mono at ``sample_rate``, resampled in one shot. Read block by block, so
    memory follows what the file holds, not what its header claims."""
    blocks = list(_mono_blocks(sound_file, p, info, LOAD_BLOCK_SAMPLES))
    mono = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    del blocks
    # NaN/Inf are refused per block before this: soxr would smear one NaN over its neighbourhood
    if info.sample_rate != sample_rate:
        mono = resample(mono, info.sample_rate, sample_rate)
    return mono


def load_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load any file libsndfile reads (wav, flac, ogg/vorbis, aiff, mp3, ...) as 1-D float32 mono.

    Channels are averaged, then the signal is resampled to ``sample_rate`` (see :func:`resample`).

    Raises:
        AudioError: missing, a directory or other non-regular file, empty, unreadable or
            undecodable file; a header with an implausible sample rate (below
            :data:`MIN_FILE_SAMPLE_RATE` or above :data:`MAX_FILE_SAMPLE_RATE`), channel count or
            frame count; a file shorter than its header claims; zero frames; NaN/Inf samples.
    """
    p = _checked_path(path)
    sound_file, info = _open_checked(p)
    with sound_file:
        return _decode_whole(sound_file, p, info, sample_rate)


# --- streaming -------------------------------------------------------------------------------


class _ResampledStream:
    """A file's mono signal through soxr's streaming resampler, read forward. It holds the samples
    from the latest read's start on plus the output of the block decoded last, so tagging windows
    in order holds about one window and one block; a read before that start rewinds the file."""

    def __init__(self, sound_file: sf.SoundFile, p: Path, info: AudioInfo, sample_rate: int, block_samples: int) -> None:
        self._file, self._path, self._info = sound_file, p, info
        self._sample_rate, self._block_samples = sample_rate, block_samples
        self.length = _resampled_length(info.frames, info.sample_rate, sample_rate)
        self._buffer = np.empty(0, np.float32)
        self._rewind()

    def _rewind(self) -> None:
        try:
            self._file.seek(0)
        except _DECODE_ERRORS as exc:
            raise _decode_error(self._path, exc) from exc
        self._blocks = _mono_blocks(self._file, self._path, self._info, self._block_samples)
        self._resampler = soxr.ResampleStream(
            self._info.sample_rate, self._sample_rate, 1, dtype="float32", quality="HQ"
        )
        self._decoded = 0  # input frames fed to the resampler
        self._start = self._end = 0  # output samples [start, end) are in the buffer

    def read(self, start: int, stop: int) -> np.ndarray:
        """Output samples ``[start, stop)`` (``stop`` at most :attr:`length`): a view that the next
        read overwrites."""
        if start < self._start:
            self._rewind()
        self._drop_before(min(start, self._end))
        while self._end < stop:
            self._pull()
            self._drop_before(min(start, self._end))  # a hop past the window skips audio
        return self._buffer[start - self._start : stop - self._start]

    def _drop_before(self, start: int) -> None:
        drop = start - self._start
        if drop > 0:
            held = self._end - self._start
            self._buffer[: held - drop] = self._buffer[drop:held]
            self._start = start

    def _append(self, samples: np.ndarray) -> None:
        held = self._end - self._start
        need = held + len(samples)
        if need > len(self._buffer):
            grown = np.empty(max(need, 2 * len(self._buffer)), np.float32)
            grown[:held] = self._buffer[:held]
            self._buffer = grown
        self._buffer[held:need] = samples
        self._end += len(samples)

    def _pull(self) -> None:
        """Resample the next block (flushing soxr with the last one), cut at librosa's length; once
        the input is spent, zeros up to that length (soxr may give a sample less)."""
        block = next(self._blocks, None)
        if block is None:
            self._append(np.zeros(self.length - self._end, np.float32))
            return
        self._decoded += len(block)
        out = self._resampler.resample_chunk(block, last=self._decoded >= self._info.frames)
        self._append(out[: self.length - self._end])


class AudioFileSignal:
    """A file as a lazily decoded 1-D float32 mono signal at the model's sample rate.

    ``len()`` and slicing (``signal[start:stop]``) behave as on :func:`load_audio`'s array, with the
    same values (the channel mean is per frame; soxr's streaming resampler gives the one-shot
    resampler's samples), but only what is read is decoded: tagging an hour in 10 s windows holds
    one window and one decoded block instead of the whole file. A file at the model's rate is read
    at any position; another rate is resampled forward, so reading windows in order is what stays
    cheap. A NaN or Inf sample raises :class:`AudioError` when the block holding it is decoded, a
    file that ends early when its end is reached.
    """

    ndim = 1
    dtype = np.dtype(np.float32)

    def __init__(
        self,
        sound_file: sf.SoundFile,
        path: Path,
        sample_rate: int = SAMPLE_RATE,
        block_samples: int = STREAM_BLOCK_SAMPLES,
        info: AudioInfo | None = None,
    ) -> None:
        self._file = sound_file
        self._path = path
        self._info = info if info is not None else _checked_header(sound_file, path)
        self._stream = None
        if self._info.sample_rate != sample_rate:
            self._stream = _ResampledStream(sound_file, path, self._info, sample_rate, block_samples)
        self._frames = _resampled_length(self._info.frames, self._info.sample_rate, sample_rate)
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
        if self._stream is not None:
            return self._stream.read(start, start + count).copy()
        try:
            self._file.seek(start)
            data = _read_float32(self._file, count)
        except _DECODE_ERRORS as exc:
            raise _decode_error(self._path, exc) from exc
        self._check_count(start, count, len(data))
        return _finite_mono(data, self._path)

    def read_into(self, start: int, out: np.ndarray) -> int:
        """Decode the samples from ``start`` into the 1-D float32 ``out``, as many as it holds or as
        the file has left; returns how many were written. The values of ``self[start:start + n]``
        without a fresh array per call: mono 16-bit PCM, the common long recording, decodes into a
        reused int16 buffer and is scaled straight into ``out`` (fresh arrays cost page faults).
        Integers need no NaN check; other files go through slicing, checks included."""
        count = max(min(len(out), self._frames - start), 0)
        if self._stream is not None:
            out[:count] = self._stream.read(start, start + count)
            return count
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
        self._check_count(start, count, len(raw))
        _scale_pcm16(raw, out[: len(raw)])
        return len(raw)

    def _check_count(self, start: int, asked: int, got: int) -> None:
        """A read that stops short of the header's frame count means the file ends early."""
        if got < asked:
            raise _truncated(self._path, self._info, self._info.frames, start + got, "decoding stops after")


def _worth_streaming(info: AudioInfo, sample_rate: int) -> bool:
    """Long enough at ``sample_rate``, or holding as many samples over all its channels."""
    threshold = STREAM_MIN_SECONDS * sample_rate
    resampled = _resampled_length(info.frames, info.sample_rate, sample_rate)
    return resampled >= threshold or info.frames * info.channels >= threshold


@contextlib.contextmanager
def open_audio(
    path: str | os.PathLike[str],
    sample_rate: int = SAMPLE_RATE,
    stream: bool = False,
    block_samples: int = STREAM_BLOCK_SAMPLES,
) -> Iterator[np.ndarray | AudioFileSignal]:
    """The waveform of ``path`` for the ``with`` block: :func:`load_audio`'s array, or, with
    ``stream`` and a file of at least :data:`STREAM_MIN_SECONDS` (or as many samples over all its
    channels), an :class:`AudioFileSignal` decoded ``block_samples`` samples at a time."""
    p = _checked_path(path)
    sound_file, info = _open_checked(p)
    with sound_file:
        if stream and _worth_streaming(info, sample_rate):
            yield AudioFileSignal(sound_file, p, sample_rate, block_samples, info)
        else:
            yield _decode_whole(sound_file, p, info, sample_rate)


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
