"""Fixed-shape upstream ONNX exports of DyMN for the shapes the benchmark feeds.

Upstream DyMN cannot be exported with dynamic axes, so a user exports one file per input shape. The
benchmark needs ``[1, 1, 128, T]`` and ``[8, 1, 128, T]`` for the eat-keras frame counts (onnxruntime
route) and for the seed front-end's (``1 + (N - 800) // 320``), all through
:func:`upstream_reference.torch_reference.export_onnx` (legacy TorchScript exporter, opset 13, constant
folding, input ``input_values``, output ``logits``). Imports torch: only the build subprocess uses
this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.bench import paths  # noqa: F401 (puts tests/, home of the reference, on sys.path)
from upstream_reference import torch_reference  # noqa: E402


def export_fixed_onnx(config: Any, state_dict_path: str | Path, batch: int, frames: int, out: str | Path) -> Path:
    """Upstream model of ``config`` (an eat-keras ModelConfig) with the weights of ``state_dict_path``,
    exported at the fixed input shape ``[batch, 1, n_mels, frames]``."""
    model = torch_reference.build_reference(config)
    model.load_state_dict(torch_reference.load_upstream_state_dict(state_dict_path), strict=True)
    model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return torch_reference.export_onnx(model, out, time_frames=frames, dynamic=False, batch=batch)
