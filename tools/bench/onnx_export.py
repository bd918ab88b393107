"""Fixed-shape upstream ONNX exports of DyMN for the shapes the benchmark feeds.

Upstream DyMN cannot be exported with dynamic axes, so a user exports one file per input shape. The
benchmark needs ``[1, 1, 128, T]`` and ``[8, 1, 128, T]`` for the eat-keras frame counts (onnxruntime
route) and for the seed front-end's (``1 + (N - 800) // 320``). Batch 1 goes through
:func:`tools.bench.torch_reference.export_onnx`; it traces at batch 1 only, so batch 8 is exported
here with the same settings (legacy TorchScript exporter, opset 13, constant folding, input
``input_values``, output ``logits``). Imports torch: only the build subprocess uses this module.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tools.bench import torch_reference


class _LogitsOnly(nn.Module):
    """The users' export wrapper: parameters prefixed ``m.``, the logits as the only output."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.m(input_values)[0]


def export_fixed_onnx(config: Any, state_dict_path: str | Path, batch: int, frames: int, out: str | Path) -> Path:
    """Upstream model of ``config`` (an eat-keras ModelConfig) with the weights of ``state_dict_path``,
    exported at the fixed input shape ``[batch, 1, n_mels, frames]``."""
    model = torch_reference.build_reference(config)
    model.load_state_dict(torch_reference.load_upstream_state_dict(state_dict_path), strict=True)
    model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if batch == 1:
        return torch_reference.export_onnx(model, out, time_frames=frames, dynamic=False)
    dummy = torch.randn(batch, 1, model.n_mels, frames, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice: it is deliberate
        torch.onnx.export(
            _LogitsOnly(model).eval(),
            (dummy,),
            str(out),
            export_params=True,
            opset_version=13,
            do_constant_folding=True,
            input_names=["input_values"],
            output_names=["logits"],
            dynamo=False,
        )
    return out
