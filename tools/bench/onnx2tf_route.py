"""onnx2tf's conversion of the upstream ONNX, the community's usual way from these models to TFLite.

onnx2tf (its own virtualenv: it pins tensorflow 2.19 / numpy 1.26) fails on the MN ONNX files as
exported (a Squeeze axis error in the SE block) unless the graph is first simplified at a fixed
input shape, so the conversion is ``onnxsim --overwrite-input-shape input_values:1,1,128,T`` then
``onnx2tf -i sim.onnx -o OUT -n``. The float32 file it writes takes NHWC log-mel ``[1, 128, T, 1]``
and is run with the same LiteRT interpreter as eat-keras' files (``LiteRTRoute``, feed
``log_mel_nhwc``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

SIMPLIFIED = "sim.onnx"
FLOAT32_TFLITE = "sim_float32.tflite"  # onnx2tf names its outputs after the input file
TIMEOUT_S = 1800
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Onnx2TfError(RuntimeError):
    """The simplification or the conversion failed; the message holds the tool's own error lines."""


def _error_text(output: str, limit: int = 1500) -> str:
    """The exception message (first ``...Error: ...`` line and its continuation) and the ONNX node
    onnx2tf names; else the tail of the output."""
    lines = [_ANSI.sub("", line).rstrip() for line in output.splitlines()]
    keep: list[str] = []
    for i, line in enumerate(lines):
        if re.match(r"^[\w.]+(Error|Exception): ", line):
            keep.append(line)
            for following in [x for x in lines[i + 1 : i + 8] if x.strip()][:2]:
                if following.startswith(("Call arguments", "ERROR:", "Traceback", " ")):
                    break
                keep.append(following)
            break
    keep += [line for line in lines if line.startswith("ERROR: onnx_op_name")][:1]
    if not keep:
        keep = [line for line in lines if line.strip()][-15:]
    return "\n".join(keep)[-limit:]


def _run(command: list[str], cwd: Path, log: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise Onnx2TfError(
            f"{Path(command[0]).name} exited {result.returncode} (full output: {log}): "
            + _error_text(result.stdout + result.stderr)
        )


def convert(onnx_path: Path, batch: int, n_mels: int, frames: int, out_dir: Path, venv: Path) -> tuple[Path, float]:
    """Simplify at ``[batch, 1, n_mels, frames]`` and convert; returns (float32 .tflite, wall seconds)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    started = time.perf_counter()
    shape = f"input_values:{batch},1,{n_mels},{frames}"
    log = out_dir / "conversion.log"
    _run([str(venv / "bin" / "onnxsim"), str(onnx_path), SIMPLIFIED, "--overwrite-input-shape", shape], out_dir, log)
    _run([str(venv / "bin" / "onnx2tf"), "-i", SIMPLIFIED, "-o", "tflite", "-n"], out_dir, log)
    seconds = time.perf_counter() - started
    tflite = out_dir / "tflite" / FLOAT32_TFLITE
    if not tflite.is_file():
        raise Onnx2TfError(f"onnx2tf finished but wrote no {FLOAT32_TFLITE}")
    return tflite, seconds


def version(venv: Path) -> str:
    """Installed onnx2tf version (package metadata: importing onnx2tf would load TensorFlow)."""
    code = "import importlib.metadata as m; print(m.version('onnx2tf'))"
    try:
        result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return f"unavailable ({exc})"
    return result.stdout.strip() or f"unavailable ({result.stderr.strip()[-200:]})"
