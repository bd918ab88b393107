"""Audio files with hand-written headers for the fault tests: what a lying or damaged file holds.

Sparse files stand for long recordings: a header and a hole of zeros take no disk space and read at
memory speed, so a test can hand the CLI two hours of audio.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf


def wav_header(sample_rate: int, channels: int, frames: int, bits: int = 16) -> bytes:
    """A 44-byte PCM WAV header for ``frames`` frames."""
    block = channels * bits // 8
    data = frames * block
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, bits)
    return b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data)


def sparse_wav(path: Path, sample_rate: int, seconds: float, channels: int = 1) -> Path:
    """A complete 16-bit WAV of ``seconds`` of silence, stored as a hole."""
    frames = int(round(sample_rate * seconds))
    header = wav_header(sample_rate, channels, frames)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + frames * channels * 2)
    return path


def wav_with_rate(path: Path, sample_rate: int, size_bytes: int) -> Path:
    """A complete 16-bit mono WAV of about ``size_bytes`` whose header states ``sample_rate``."""
    frames = (size_bytes - 44) // 2
    x = (np.sin(np.arange(frames) * 0.01) * 8000).astype("<i2")
    path.write_bytes(wav_header(sample_rate, 1, frames) + x.tobytes())
    return path


def flac_claiming_frames(path: Path, frames: int, seconds: float = 1.0, sample_rate: int = 32000) -> Path:
    """A real FLAC file of ``seconds`` whose STREAMINFO claims ``frames`` frames (36 bits)."""
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal(int(seconds * sample_rate)) * 0.1).astype(np.float32), sample_rate, format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    field = slice(8 + 10, 8 + 18)  # sample rate, channels, bits, then the 36-bit total
    packed = int.from_bytes(data[field], "big")
    packed = (packed & ~((1 << 36) - 1)) | frames
    data[field] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path
