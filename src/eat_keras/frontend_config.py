"""FrontendConfig: the settings of the log-mel front-end, checked when made.

The front-end itself (TensorFlow ops and a Keras layer) is :mod:`eat_keras.frontend`; this module
imports no TensorFlow, so that configurations and presets can be read without loading it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from eat_keras.errors import ConfigError

# Accepted front-end settings. The FFT size is capped at four times upstream's 1024 because the mel
# image, and with it every activation of the network, grows with the n_fft / 2 bins it can hold;
# sample rates span telephone audio to the fastest audio interfaces.
MAX_N_FFT = 4096
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 768_000


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the log-mel front-end; defaults are those of every upstream AudioSet model."""

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    n_mels: int = 128
    fmin: float = 0.0
    # None means upstream's default: sr // 2 - fmax_aug_range // 2 (15 kHz at 32 kHz).
    fmax: float | None = None
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    # SpecAugment widths; 0 (off) is what every upstream training script uses.
    freqm: int = 0
    timem: int = 0

    def __post_init__(self) -> None:
        self._check_types()
        positive = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")
        if bad := [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) <= 0]:
            raise ConfigError(f"front-end sizes must be positive: {', '.join(bad)}")
        self._check_sizes()
        if not 0 <= self.fmin < self.effective_fmax <= self.sample_rate / 2:
            raise ConfigError(
                f"mel range must satisfy 0 <= fmin < fmax <= sample_rate / 2; got {self.fmin:g}-{self.effective_fmax:g} Hz"
            )
        if min(self.freqm, self.timem, self.fmin_aug_range, self.fmax_aug_range) < 0:
            raise ConfigError(
                f"mask widths and jitter ranges must be >= 0; got freqm={self.freqm}, timem={self.timem}, "
                f"fmin_aug_range={self.fmin_aug_range}, fmax_aug_range={self.fmax_aug_range}"
            )

    def _check_types(self) -> None:
        """Sizes are integers (stored as int), frequencies finite numbers: a string or NaN from a
        json file would otherwise fail deep inside TensorFlow."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int":
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ConfigError(f"front-end {field.name} must be an integer, got {value!r}")
                object.__setattr__(self, field.name, int(value))
            elif value is not None or field.name != "fmax":
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ConfigError(f"front-end {field.name} must be a finite number of Hz, got {value!r}")

    def _check_sizes(self) -> None:
        """Ranges that keep the front-end meaningful and its output (the network's input) bounded."""
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ConfigError(
                f"sample_rate must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {self.sample_rate}"
            )
        if self.n_fft > MAX_N_FFT:
            raise ConfigError(f"n_fft must be at most {MAX_N_FFT}, got {self.n_fft}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        # Below 1 ms the frames (and every activation) multiply for no new information; frames
        # further apart than one window would skip samples.
        min_hop = max(1, self.sample_rate // 1000)
        if not min_hop <= self.hop_length <= self.win_length:
            raise ConfigError(
                f"hop_length must be {min_hop}..{self.win_length} samples (1 ms to one window), got {self.hop_length}"
            )
        # More mel bands than FFT bins below Nyquist cannot all get a bin of their own.
        max_mels = self.n_fft // 2
        if self.n_mels > max_mels:
            raise ConfigError(
                f"n_mels must be 1..{max_mels} (the FFT bins below Nyquist at n_fft {self.n_fft}), got {self.n_mels}"
            )

    @property
    def effective_fmax(self) -> float:
        if self.fmax is not None:
            return float(self.fmax)
        return float(self.sample_rate // 2 - self.fmax_aug_range // 2)

    @property
    def min_samples(self) -> int:
        """Shortest waveform the reflect padding accepts (pre-emphasised length must exceed n_fft/2)."""
        return self.n_fft // 2 + 2

    def num_frames(self, num_samples: int) -> int:
        return 1 + (num_samples - 1) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
