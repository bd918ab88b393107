"""ModelConfig: everything needed to build an EfficientAT network and its front-end.

The module imports no TensorFlow: presets and the command line read configurations without it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from eat_keras.errors import ConfigError
from eat_keras.frontend_config import FrontendConfig
from eat_keras.models.registry import check_arch_name, get_arch

HEAD_TYPES = ("mlp", "fully_convolutional", "attention_pooling")
LABEL_TYPES = ("multi_label", "single_label")
DY_BLOCK_MODES = ("all", "replace_se")
MAX_WIDTH = 4.0  # the widest upstream model (mn40_as); the parameter count grows with its square


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _frontend_config(value: Any) -> FrontendConfig:
    """A FrontendConfig from itself or a dict of its fields (as ``to_dict`` writes them)."""
    if isinstance(value, FrontendConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"frontend must be a FrontendConfig or a dict of its fields, got {value!r}")
    unknown = set(value) - {f.name for f in dataclasses.fields(FrontendConfig)}
    if unknown:
        raise ConfigError(f"unknown front-end config keys: {sorted(map(str, unknown))}")
    return FrontendConfig(**value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture + front-end. A preset name resolves to one of these (see ``eat_keras.presets``).

    ``arch`` names a registered model family (``eat_keras.models.registry``).

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
        check_arch_name(self.arch)  # a registered family (see eat_keras.models.registry)
        for name, allowed in (
            ("head_type", HEAD_TYPES), ("label_type", LABEL_TYPES), ("use_dy_blocks", DY_BLOCK_MODES)
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if (
            not isinstance(self.strides, (tuple, list))
            or len(self.strides) != 4
            or any(isinstance(s, bool) or s not in (1, 2) for s in self.strides)
        ):
            raise ConfigError(f"strides must be four values of 1 or 2, got {self.strides!r}")
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        self._check_numbers()
        object.__setattr__(self, "frontend", _frontend_config(self.frontend))

    def _check_numbers(self) -> None:
        """Finite values in range: a NaN temperature or width would build a model that scores NaN."""
        if not _is_number(self.width_mult) or not 0 < self.width_mult <= MAX_WIDTH:
            raise ConfigError(f"width_mult must be a number in (0, {MAX_WIDTH:g}], got {self.width_mult!r}")
        if not _is_number(self.dyconv_temperature) or self.dyconv_temperature <= 0:
            raise ConfigError(
                f"dyconv_temperature (DyMN temperature) must be a finite number > 0, got {self.dyconv_temperature!r}"
            )
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        classes = self.num_classes
        if isinstance(classes, bool) or not isinstance(classes, numbers.Integral) or classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        for name in ("dilated", "reduced_tail"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))

    @classmethod
    def for_arch(cls, arch: str, **changes: Any) -> "ModelConfig":
        """A config of family ``arch``: its ``default_config``, then ``changes``."""
        return cls.from_dict({**get_arch(arch).default_config, **changes, "arch": arch})

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        if "frontend" in d:
            d["frontend"] = _frontend_config(d["frontend"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
