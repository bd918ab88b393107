"""Keep TensorFlow's native start-up lines off a command's terminal.

TensorFlow and its CUDA probe log through absl before absl's logging is initialised, and such lines
go to file descriptor 2 whatever ``TF_CPP_MIN_LOG_LEVEL`` says: "All log messages before
absl::InitializeLog() ...", the oneDNN notice, "Could not find cuda drivers", "failed call to
cuInit". They are not errors of the command, yet one starts with ``E0000``. While
:func:`native_log_lines_dropped` is active, file descriptor 2 goes through a pipe that drops lines in
absl's native format and passes every other byte through unchanged, Python tracebacks included.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

__all__ = ["is_native_log_line", "native_log_lines_dropped"]

# absl's native prefix: severity letter, MMDD, a time (``00:00:1796593519.758092`` before absl's
# set-up), thread id, file:line]
_NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    # the second line of cpu_feature_guard's notice
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags)"
)


def is_native_log_line(line: bytes) -> bool:
    return _NATIVE_LOG_LINE.match(line) is not None


def _forward(read_fd: int, target_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        for line in iter(pipe.readline, b""):
            if not is_native_log_line(line):
                os.write(target_fd, line)


@contextlib.contextmanager
def native_log_lines_dropped() -> Iterator[None]:
    """File descriptor 2 (native and Python writes alike) filtered for the ``with`` block."""
    sys.stderr.flush()
    terminal = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, terminal), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's write end: the forwarder drains it and stops
        forwarder.join(timeout=10)
        os.close(terminal)
