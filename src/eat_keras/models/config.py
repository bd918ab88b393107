"""ModelConfig: everything needed to build an EfficientAT network and its front-end."""

from __future__ import annotations

import dataclasses
from typing import Any

from eat_keras.errors import ConfigError
from eat_keras.frontend import FrontendConfig

ARCHS = ("mn", "dymn")
HEAD_TYPES = ("mlp", "fully_convolutional", "attention_pooling")
LABEL_TYPES = ("multi_label", "single_label")
DY_BLOCK_MODES = ("all", "replace_se")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture + front-end. A preset name resolves to one of these (see ``eat_keras.presets``).

    ``strides`` are the strides of the four downsampling blocks (C1..C4), square as in upstream.
    ``label_type`` chooses how scores are derived from logits: sigmoid (AudioSet, multi-label) or
    softmax (single-label fine-tuned models).
    """

    arch: str = "mn"
    width_mult: float = 1.0
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    head_type: str = "mlp"
    num_classes: int = 527
    dropout: float = 0.2
    dilated: bool = False
    reduced_tail: bool = False
    label_type: str = "multi_label"
    # DyMN only: softmax temperature of the dynamic-conv attention (1.0 for every pretrained model;
    # it is not stored in checkpoints) and which blocks are dynamic.
    dyconv_temperature: float = 1.0
    use_dy_blocks: str = "all"
    frontend: FrontendConfig = dataclasses.field(default_factory=FrontendConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.head_type not in HEAD_TYPES:
            raise ConfigError(f"head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        if self.label_type not in LABEL_TYPES:
            raise ConfigError(f"label_type must be one of {LABEL_TYPES}, got {self.label_type!r}")
        if self.use_dy_blocks not in DY_BLOCK_MODES:
            raise ConfigError(f"use_dy_blocks must be one of {DY_BLOCK_MODES}")
        if len(self.strides) != 4 or any(s not in (1, 2) for s in self.strides):
            raise ConfigError(f"strides must be four values of 1 or 2, got {self.strides!r}")
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if isinstance(self.frontend, dict):
            object.__setattr__(self, "frontend", FrontendConfig(**self.frontend))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        if "frontend" in d and isinstance(d["frontend"], dict):
            d["frontend"] = FrontendConfig(**d["frontend"])
        if "strides" in d:
            d["strides"] = tuple(d["strides"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
