"""Registry of upstream pretrained models: name → full configuration, release file, checksum,
published AudioSet mAP and parameter count.

Upstream's names do not configure anything by themselves (its CLI needs ``--head_type``,
``--strides``, ``--hop_size``, ``--n_mels``); here a name alone configures the network *and* the
front-end. Published figures are from the upstream README (parameters in millions, as printed
there) and the mAP encoded in the release file names.
"""

from __future__ import annotations

import dataclasses
import difflib

from eat_keras.errors import UnknownPresetError
from eat_keras.frontend_config import FrontendConfig
from eat_keras.models.config import ModelConfig

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    config: ModelConfig
    filename: str
    sha256: str | None  # None where no checksum has been published or verified yet
    published_map: float | None  # AudioSet mAP; None for ImageNet-only weights
    published_params_m: float | None  # README's parameter count in millions
    description: str

    @property
    def exact_params(self) -> int | None:
        """sum(p.numel()) of the upstream model, where it was checked by instantiating that model."""
        c = self.config
        return _EXACT_PARAMS.get((c.arch, c.width_mult, c.use_dy_blocks, c.head_type, c.num_classes))

    @property
    def url(self) -> str:
        return RELEASE_URL + self.filename


_WIDTHS = {"01": 0.1, "02": 0.2, "04": 0.4, "05": 0.5, "06": 0.6, "10": 1.0, "20": 2.0, "30": 3.0, "40": 4.0}
# Parameter counts in millions as published (README; mn01/mn02 are absent there and taken from the
# upstream code's own count). mn04 is printed truncated: 983,599 parameters shows as 0.983.
_MN_PARAMS_M = {"01": 0.124, "02": 0.325, "04": 0.983, "05": 1.43, "10": 4.88, "20": 17.91, "30": 39.09, "40": 68.43}
_MN10_FC_PARAMS_M = 3.479

# (arch, width, dynamic blocks, head, classes) -> exact upstream parameter count
_EXACT_PARAMS: dict[tuple, int] = {("mn", 0.4, "all", "mlp", 527): 983_599}

_KNOWN_SHA256 = {
    "mn04_as_mAP_432.pt": "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
}

PRESETS: dict[str, Preset] = {}


def _add(name: str, filename: str, config: ModelConfig, mAP: float | None, params: float | None, desc: str) -> None:
    PRESETS[name] = Preset(name, config, filename, _KNOWN_SHA256.get(filename), mAP, params, desc)


# Presets are built from ModelConfig's defaults, not ModelConfig.for_arch: that would import the
# family's module and with it TensorFlow, which listing presets does not need. A test checks that
# these configs agree with each family's default_config.
def _mn(width: str, **changes) -> ModelConfig:
    return ModelConfig(arch="mn", width_mult=_WIDTHS[width], **changes)


for _w, _map in {"01": 298, "02": 378, "04": 432, "05": 443, "10": 471, "20": 478, "30": 482, "40": 484}.items():
    _add(f"mn{_w}_as", f"mn{_w}_as_mAP_{_map}.pt", _mn(_w), _map / 1000, _MN_PARAMS_M[_w], f"MN width {_WIDTHS[_w]:g}, AudioSet")

for _name, _file, _map in (
    ("mn40_as(2)", "mn40_as_mAP_483.pt", 483),
    ("mn40_as(3)", "mn40_as_mAP_483(2).pt", 483),
    ("mn40_as_no_im_pre", "mn40_as_no_im_pre_mAP_483.pt", 483),
    ("mn40_as_no_im_pre(2)", "mn40_as_no_im_pre_mAP_483(2).pt", 483),
    ("mn40_as_no_im_pre(3)", "mn40_as_no_im_pre_mAP_482.pt", 482),
    ("mn40_as_ext", "mn40_as_ext_mAP_487.pt", 487),
    ("mn40_as_ext(2)", "mn40_as_ext_mAP_486.pt", 486),
    ("mn40_as_ext(3)", "mn40_as_ext_mAP_485.pt", 485),
):
    _add(_name, _file, _mn("40"), _map / 1000, _MN_PARAMS_M["40"], "MN width 4, AudioSet (seed/training variant)")

for _hop_ms, _map in ((5, 475), (15, 463), (20, 456), (25, 447)):
    _add(
        f"mn10_as_hop_{_hop_ms}",
        f"mn10_as_hop_{_hop_ms}_mAP_{_map}.pt",
        _mn("10", frontend=FrontendConfig(hop_length=_hop_ms * 32)),
        _map / 1000,
        _MN_PARAMS_M["10"],
        f"MN width 1, hop {_hop_ms} ms",
    )

for _mels, _map in ((40, 453), (64, 461), (256, 474)):
    _add(
        f"mn10_as_mels_{_mels}",
        f"mn10_as_mels_{_mels}_mAP_{_map}.pt",
        _mn("10", frontend=FrontendConfig(n_mels=_mels)),
        _map / 1000,
        _MN_PARAMS_M["10"],
        f"MN width 1, {_mels} mel bins",
    )

for _suffix, _strides in (("", (2, 2, 2, 2)), ("_s2221", (2, 2, 2, 1)), ("_s2211", (2, 2, 1, 1))):
    _map = 465 if not _suffix else 466
    _add(
        f"mn10_as_fc{_suffix}",
        f"mn10_as_fc{_suffix}_mAP_{_map}.pt",
        _mn("10", head_type="fully_convolutional", strides=_strides),
        _map / 1000,
        _MN10_FC_PARAMS_M,
        f"MN width 1, fully-convolutional head, strides {''.join(map(str, _strides))}",
    )

# ImageNet-pretrained feature extractors (1 input channel, randomly initialised 527-class head):
# starting points for AudioSet training, not taggers.
_add("mn10_im_pytorch", "mn10_im_pytorch.pt", _mn("10"), None, _MN_PARAMS_M["10"], "torchvision ImageNet MobileNetV3, adapted")
# upstream releases ImageNet weights for these widths only (there is no mn06_im)
for _w in ("01", "02", "04", "05", "10", "20", "30", "40"):
    _add(f"mn{_w}_im", f"mn{_w}_im.pt", _mn(_w), None, _MN_PARAMS_M.get(_w), f"MN width {_WIDTHS[_w]:g}, ImageNet")


def _near_misses(name: str, limit: int = 3) -> list[str]:
    """Preset names closest to ``name`` (a typo such as ``mn4_as``): those about as close as the
    best one, ties in alphabetical order."""
    scores = {p: round(difflib.SequenceMatcher(None, name.lower(), p.lower()).ratio(), 3) for p in PRESETS}
    best = max(scores.values())
    close = [p for p, score in scores.items() if score >= max(0.6, best - 0.05)]
    return sorted(close, key=lambda p: (-scores[p], p))[:limit]


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        close = _near_misses(str(name))
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        shown = str(name) if len(str(name)) <= 80 else f"{str(name)[:77]}..."
        raise UnknownPresetError(f"unknown model {shown!r}{hint} (see `eat-keras presets`)") from None


# --- DyMN (dynamic MobileNets, upstream models/dymn) ----------------------------------------------
# Exact parameter counts, sum(p.numel()) of the upstream model (DyReLU's lambdas/init_v and BN running
# statistics are buffers, not parameters); eat_keras.models.count_parameters gives the same numbers.
# The README prints 1.97 / 10.57 / 40.02 M, 0.3-0.5 % more: it took them from the DeepSpeed profiler.
_EXACT_PARAMS.update(
    {("dymn", w, "all", "mlp", 527): n for w, n in ((0.4, 1_961_239), (1.0, 10_548_479), (2.0, 39_966_143))}
)
_DYMN_README_PARAMS_M = {"04": 1.97, "10": 10.57, "20": 40.02}
# ImageNet checkpoints are starting points: upstream trains AudioSet models from them with
# --pretrain_final_temp=30, i.e. the dynamic convs start at τ = 30 (softer kernel attention) and the
# schedule anneals it to 1. Loading them with τ = 1 would not be what upstream starts from.
_DYMN_IM_TEMPERATURE = 30.0


def _dymn(width: str, **changes) -> ModelConfig:
    """AudioSet checkpoints run at the family's default temperature (``DEFAULT_TEMPERATURE``)."""
    return ModelConfig(arch="dymn", width_mult=_WIDTHS[width], **changes)


# mAP: from the file name where it has one (dymn20_as_mAP_493: 49.3, the README prints 49.1 for
# dymn20_as), else the README (dymn04_as 45.0, dymn10_as 47.7); None where nothing is published.
for _name, _file, _w, _map in (
    ("dymn04_as", "dymn04_as.pt", "04", 0.450),
    ("dymn10_as", "dymn10_as.pt", "10", 0.477),
    ("dymn20_as", "dymn20_as_mAP_493.pt", "20", 0.493),
    ("dymn20_as(1)", "dymn20_as.pt", "20", None),
    ("dymn20_as(2)", "dymn20_as_mAP_489.pt", "20", 0.489),
    ("dymn20_as(3)", "dymn20_as_mAP_490.pt", "20", 0.490),
):
    _add(_name, _file, _dymn(_w), _map, _DYMN_README_PARAMS_M[_w], f"DyMN width {_WIDTHS[_w]:g}, AudioSet")

# Dynamic blocks only where MN has SE, static blocks (no SE) elsewhere. No published mAP or params.
# Upstream's URL for dymn10_replace_se_as.pt has a leading space (" dymn10_replace_se_as.pt"), so its
# download is broken there; the release asset name is used here without it.
for _w in ("04", "10"):
    _add(
        f"dymn{_w}_replace_se_as",
        f"dymn{_w}_replace_se_as.pt",
        _dymn(_w, use_dy_blocks="replace_se"),
        None,
        None,
        f"DyMN width {_WIDTHS[_w]:g}, dynamic blocks replace SE only, AudioSet",
    )

for _w in ("04", "10", "20"):
    _add(
        f"dymn{_w}_im",
        f"dymn{_w}_im.pt",
        _dymn(_w, dyconv_temperature=_DYMN_IM_TEMPERATURE),
        None,
        _DYMN_README_PARAMS_M[_w],
        f"DyMN width {_WIDTHS[_w]:g}, ImageNet (fine-tune starting point, τ = 30)",
    )
