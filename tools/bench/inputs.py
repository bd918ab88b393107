"""The benchmark inputs: real audio from ``golden/clips`` as waveforms and as upstream log-mel.

Every route of one input sees the same audio: waveform routes get ``waveform`` ``[B, N]``, model-only
routes get ``log_mel`` ``[B, 128, T]`` (upstream's own features of the same clips, so the ONNX and
onnx2tf routes see exactly what upstream inference would feed them). NumPy only: the peak-RSS probe
builds its input without importing any runtime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tools.bench import paths

SAMPLE_RATE = 32000
HOP_LENGTH = 320
CLIPS = ("speech", "music", "metro_station-paris", "typing")  # golden/clips, 10 s each


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    batch: int
    seconds: int

    @property
    def samples(self) -> int:
        return self.seconds * SAMPLE_RATE

    @property
    def frames(self) -> int:
        """Log-mel frames of upstream's (centred) front-end, which eat-keras reproduces."""
        return 1 + (self.samples - 1) // HOP_LENGTH

    @property
    def window_key(self) -> str:
        """Inputs with the same per-example shape share fixed-shape [1, N] artifacts."""
        return f"{self.seconds}s"


INPUT_SPECS: dict[str, InputSpec] = {
    spec.name: spec for spec in (InputSpec("b1_2s", 1, 2), InputSpec("b1_10s", 1, 10), InputSpec("b8_10s", 8, 10))
}


@dataclasses.dataclass(frozen=True, eq=False)  # identity: arrays have no useful ==
class BenchInput:
    spec: InputSpec
    clips: tuple[str, ...]
    waveform: np.ndarray  # [B, N] float32, 32 kHz
    log_mel: np.ndarray  # [B, n_mels, T] float32, upstream features

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batch(self) -> int:
        return self.spec.batch


def load_input(name: str) -> BenchInput:
    """Batch 1 uses the speech clip; batch 8 the four clips twice (identical rows cost the same)."""
    spec = INPUT_SPECS[name]
    clips = tuple(CLIPS[i % len(CLIPS)] for i in range(spec.batch))
    clip_dir = paths.golden_dir() / "clips"
    suffix = "_2s" if spec.seconds == 2 else ""
    waves, mels = [], []
    for clip in clips:
        wave = np.load(clip_dir / f"{clip}_wav32k.npy")
        waves.append(wave[: spec.samples])
        mels.append(np.load(clip_dir / f"{clip}{suffix}_logmel.npy")[0, 0])  # [1, 1, 128, T] -> [128, T]
    waveform = np.stack(waves).astype(np.float32)
    log_mel = np.stack(mels).astype(np.float32)
    if waveform.shape != (spec.batch, spec.samples) or log_mel.shape[-1] != spec.frames:
        raise ValueError(f"{name}: golden clips give {waveform.shape} / {log_mel.shape}, expected {spec}")
    return BenchInput(spec, clips, np.ascontiguousarray(waveform), np.ascontiguousarray(log_mel))


def load_inputs(names: Sequence[str]) -> dict[str, BenchInput]:
    return {name: load_input(name) for name in names}
