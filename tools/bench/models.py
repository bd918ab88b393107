"""The four benchmarked models: where their weights and their upstream-exported ONNX come from.

mn04 and dymn04 use ``../shared`` (the real mn04 release checkpoint; the golden synthetic dymn04);
mn10 and dymn10 have no file there, so synthetic upstream state dicts and their ONNX exports are
made once with the PyTorch reference (``tests/upstream_reference``) into the work dir. Latency does
not depend on weight values, and both sides of every comparison load the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tools.bench import paths

# upstream DyMN only exports at a fixed shape; these are the golden / torch_reference defaults
DYMN_ONNX_SHAPE = (1, 200)  # (batch, frames)


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str  # short name used on the command line and in the report
    preset: str  # eat-keras preset (architecture, front-end)
    arch: str  # "mn" or "dymn"
    weights_kind: str  # "release", "golden synthetic" or "synthetic"

    @property
    def dynamic_onnx(self) -> bool:
        """Upstream MN exports with dynamic batch and time; DyMN cannot (see torch_reference)."""
        return self.arch == "mn"

    def synth_dir(self, work_dir: Path) -> Path:
        return work_dir / "synth"

    def weight_file(self, work_dir: Path) -> Path:
        golden = paths.golden_dir()
        if self.name == "mn04":
            return paths.shared_dir() / "weights" / "mn04_as_mAP_432.pt"
        if self.name == "dymn04":
            return golden / "dymn04_synth" / "state_dict.pt"  # config.json beside it gives τ, strides
        return self.synth_dir(work_dir) / f"{self.preset}_synth_state_dict.pt"

    def upstream_onnx(self, work_dir: Path) -> Path:
        """The ONNX as users export it: dynamic [B, 1, 128, T] (MN) or fixed [1, 1, 128, 200] (DyMN)."""
        golden = paths.golden_dir()
        if self.name == "mn04":
            return golden / "mn04_as" / "mn04_as_opset13.onnx"
        if self.name == "dymn04":
            return golden / "dymn04_synth" / "dymn04_synth_opset13.onnx"
        return self.synth_dir(work_dir) / f"{self.preset}_synth_opset13.onnx"

    @property
    def synthetic_files(self) -> bool:
        """Whether :func:`upstream_reference.torch_reference.make_files` must make the files."""
        return self.weights_kind == "synthetic"

    def eat_keras_source(self, work_dir: Path) -> tuple[str, str | None]:
        """``(model, weights)`` arguments of ``eat_keras.loading.load_tagger`` (and of the CLI).

        A bare ``.pt`` does not record strides, hop or temperature: a preset supplies them, except
        for golden dymn04, whose config.json beside the file does (the loader reads it).
        """
        if self.name == "dymn04":
            return str(self.weight_file(work_dir)), None
        return self.preset, str(self.weight_file(work_dir))

    def describe(self, work_dir: Path) -> dict[str, str]:
        return {
            "preset": self.preset,
            "arch": self.arch,
            "weights": f"{self.weights_kind}: {self.weight_file(work_dir)}",
            "upstream_onnx": str(self.upstream_onnx(work_dir)),
            "onnx_shape": "dynamic batch and time" if self.dynamic_onnx else "fixed per input (see build)",
        }


MODELS: dict[str, BenchModel] = {
    m.name: m
    for m in (
        BenchModel("mn04", "mn04_as", "mn", "release"),
        BenchModel("dymn04", "dymn04_as", "dymn", "golden synthetic"),
        BenchModel("mn10", "mn10_as", "mn", "synthetic"),
        BenchModel("dymn10", "dymn10_as", "dymn", "synthetic"),
    )
}
