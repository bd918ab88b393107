"""eat_keras.quiet: TensorFlow's native start-up lines are dropped from the CLI's stderr, nothing else."""

from __future__ import annotations

import subprocess
import sys

from cli_process import run_cli
from eat_keras.quiet import is_native_log_line

# as TensorFlow 2.21 prints them at start-up on a CPU-only machine
STARTUP_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796593519.758092    8476 port.cc:153] oneDNN custom operations are on.\n",
    b"I0000 00:00:1796593519.758605    8476 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
    b"E0000 00:00:1796593064.732402    2416 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
    b"W1206 21:35:37.123456   12 tflite/delegate.cc:7] a warning after absl's set-up\n",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, "
    b"rebuild TensorFlow with the appropriate compiler flags.\n",
]
KEPT_LINES = [
    b"eat-keras: error: x.wav: audio file not found\n",
    b"Traceback (most recent call last):\n",
    b"E0000 is not a log line without its prefix\n",
    b"I0000 00:00:1.5 1 port.cc] no line number\n",
]


def test_native_log_lines_are_recognised_and_nothing_else():
    assert all(is_native_log_line(line) for line in STARTUP_LINES)
    assert not any(is_native_log_line(line) for line in KEPT_LINES)


_CHILD = """
import os, sys
from eat_keras.quiet import native_log_lines_dropped
lines = [bytes.fromhex(h) for h in sys.argv[1:]]
with native_log_lines_dropped():
    for line in lines:
        os.write(2, line)  # as native code writes: straight to the file descriptor
    print("python stderr line", file=sys.stderr)
os.write(2, b"after the block\\n")
"""


def test_filter_passes_other_bytes_through_in_order():
    lines = [STARTUP_LINES[0], KEPT_LINES[0], *STARTUP_LINES[1:], KEPT_LINES[1]]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *(line.hex() for line in lines)], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == KEPT_LINES[0] + KEPT_LINES[1] + b"python stderr line\nafter the block\n"


def test_cli_start_up_prints_nothing_to_stderr():
    result = run_cli(["presets"], timeout=120)
    assert result.returncode == 0
    assert "mn04_as" in result.stdout
    assert result.stderr == ""
