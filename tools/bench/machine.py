"""What the numbers were measured on: CPU, cores, RAM, library versions, date, commit, command."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from tools.bench import onnx2tf_route
from tools.bench.paths import REPO_ROOT


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: the vector extensions that decide which kernels XNNPACK, oneDNN and onnxruntime run (and whether
#: TensorFlow turns oneDNN on by default: AVX512-VNNI, AVX512-BF16 or AMX): two machines both named
#: "AMD EPYC" here differed in exactly these
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def _cpu_features() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in flags]
    except OSError:
        pass
    return []


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD's commit read from .git (no git process), with the branch name."""
    git = repo / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        ref_file = git / ref
        if ref_file.is_file():
            return f"{ref_file.read_text().strip()} ({ref.removeprefix('refs/heads/')})"
        packed = git / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else []:
            if line.endswith(" " + ref):
                return f"{line.split()[0]} ({ref.removeprefix('refs/heads/')})"
    except OSError:
        pass
    return "unknown"


def tensorflow_onednn_enabled() -> bool | None:
    """Whether TensorFlow's oneDNN kernels are on in this process (imports TensorFlow)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except ImportError:
        return None


def describe(o2t_venv: Path, argv: list[str]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m tools.bench " + shlex.join(argv),
        "git_commit": git_commit(),
        "cpu": cpu_model(),
        "cpu_features": _cpu_features(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "eat-keras": _version("eat-keras"),
            "tensorflow": _version("tensorflow"),
            "ai-edge-litert": _version("ai-edge-litert"),
            "onnxruntime": _version("onnxruntime"),
            "onnx": _version("onnx"),
            "torch": _version("torch"),
            "numpy": _version("numpy"),
            "onnx2tf (own venv)": onnx2tf_route.version(o2t_venv),
        },
    }
