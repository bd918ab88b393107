"""The benchmarked routes by name: what each measures, its runtime class and which artifact it runs.

Artifacts are named by keys of the build manifest (:mod:`tools.bench.build`):
``savedmodel``, ``tflite_<quantization>/<window>``, ``tflite_<quantization>_batch/<window>`` (any
batch), ``tflite_logmel/<window>``,
``tflite_frontend/<window>``, ``onnx/dynamic`` or ``onnx/b<batch>_t<frames>``, ``onnx2tf/<window>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from tools.bench.inputs import InputSpec
from tools.bench.models import BenchModel
from tools.bench.seed_pipeline import seed_frames

END_TO_END = "end to end (waveform → scores)"
FRONT_END = "front-end only (waveform → log-mel)"
MODEL_ONLY = "model only (log-mel → scores/logits)"
TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")


def onnx_key(model: BenchModel, batch: int, frames: int) -> str:
    """MN's ONNX is dynamic; DyMN needs one file per input shape."""
    return "onnx/dynamic" if model.dynamic_onnx else f"onnx/b{batch}_t{frames}"


@dataclasses.dataclass(frozen=True)
class RouteDef:
    name: str
    label: str
    scope: str  # END_TO_END, FRONT_END or MODEL_ONLY
    route_class: str  # a class of tools.bench.routes
    artifact: Callable[[BenchModel, InputSpec], str]  # manifest key of the file this input runs
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the inputs the route runs (the any-batch file: the batched ones; batch 1 is the default file's)
    applies: Callable[[InputSpec], bool] = lambda spec: True


def _tflite(quantization: str) -> RouteDef:
    return RouteDef(
        f"tflite_{quantization}",
        f"eat-keras TFLite {quantization} (LiteRT, XNNPACK)",
        END_TO_END,
        "LiteRTRoute",
        lambda m, s, q=quantization: f"tflite_{q}/{s.window_key}",
        {"feed": "waveform"},
    )


ROUTE_DEFS: dict[str, RouteDef] = {
    d.name: d
    for d in (
        RouteDef(
            "savedmodel",
            "eat-keras SavedModel, serving_default",
            END_TO_END,
            "SavedModelRoute",
            lambda m, s: "savedmodel",
            {"signature": "serving_default", "output": "scores"},
        ),
        RouteDef(
            "savedmodel_frontend",
            "eat-keras SavedModel, log_mel signature",
            FRONT_END,
            "SavedModelRoute",
            lambda m, s: "savedmodel",
            {"signature": "log_mel", "output": "log_mel"},
        ),
        *(_tflite(q) for q in TFLITE_QUANTIZATIONS),
        RouteDef(
            "tflite_float32_batch",
            "eat-keras TFLite float32 for any batch (--tflite-batch), one invoke per batch (LiteRT, XNNPACK)",
            END_TO_END,
            "LiteRTRoute",
            lambda m, s: f"tflite_float32_batch/{s.window_key}",
            {"feed": "waveform"},
            applies=lambda s: s.batch > 1,
        ),
        RouteDef(
            "tflite_frontend",
            "eat-keras TFLite front-end only, float32",
            FRONT_END,
            "LiteRTRoute",
            lambda m, s: f"tflite_frontend/{s.window_key}",
            {"feed": "waveform"},
        ),
        RouteDef(
            "tflite_model_only",
            "eat-keras TFLite log-mel input, float32",
            MODEL_ONLY,
            "LiteRTRoute",
            lambda m, s: f"tflite_logmel/{s.window_key}",
            {"feed": "log_mel"},
        ),
        RouteDef(
            "seed",
            "seed pipeline: TF stft front-end + onnxruntime",
            END_TO_END,
            "SeedRoute",
            lambda m, s: onnx_key(m, s.batch, seed_frames(s.samples)),
        ),
        RouteDef(
            "onnxruntime",
            "onnxruntime on the upstream ONNX",
            MODEL_ONLY,
            "OrtRoute",
            lambda m, s: onnx_key(m, s.batch, s.frames),
        ),
        RouteDef(
            "onnx2tf",
            "onnx2tf float32 TFLite of the upstream ONNX (LiteRT, XNNPACK)",
            MODEL_ONLY,
            "LiteRTRoute",
            lambda m, s: f"onnx2tf/{s.window_key}",
            {"feed": "log_mel_nhwc"},
        ),
    )
}

TAG_HOUR = "tag_hour"  # not a timed route: the CLI on a one-hour recording, see tools.bench.tag_hour
AGREEMENT = "agreement"  # not a timed route: quantized files vs Keras on ESC-10, see tools.bench.agreement
ROUTE_GROUPS = {"tflite": [n for n in ROUTE_DEFS if n.startswith("tflite_")]}
ALL_ROUTES = [*ROUTE_DEFS, TAG_HOUR, AGREEMENT]


def expand_routes(names: Iterable[str]) -> list[str]:
    """Route names and groups (``tflite``, ``all``) → route names, in catalogue order."""
    chosen: set[str] = set()
    for name in names:
        if name == "all":
            chosen.update(ALL_ROUTES)
        elif name in ROUTE_GROUPS:
            chosen.update(ROUTE_GROUPS[name])
        elif name in ALL_ROUTES:
            chosen.add(name)
        else:
            raise SystemExit(f"unknown route {name!r}; choose from {ALL_ROUTES} or groups {['all', *ROUTE_GROUPS]}")
    return [n for n in ALL_ROUTES if n in chosen]


def required_artifacts(model: BenchModel, routes: Iterable[str], specs: Iterable[InputSpec]) -> list[str]:
    """Manifest keys the build must provide for these routes and inputs, in a stable order."""
    keys: dict[str, None] = {}
    specs = list(specs)
    for name in routes:
        if name in ROUTE_DEFS:
            for spec in filter(ROUTE_DEFS[name].applies, specs):
                keys[ROUTE_DEFS[name].artifact(model, spec)] = None
    return list(keys)
