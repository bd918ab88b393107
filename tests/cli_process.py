"""Run the ``eat-keras`` command in a child process under a hard memory limit and a timeout, and
measure what it used: the harness of the fault-corpus tests.

The limit is ``RLIMIT_DATA`` (private writable memory: heap and anonymous mappings, which is where
a decoded or resampled waveform or an unpickled tensor lands), so a memory bomb fails inside the
child instead of swapping the machine. Peak RSS comes from ``wait4``'s rusage of that one child.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import REPO_ROOT

MIB = 1 << 20
#: the default ceiling for one command: far above a normal tag (about 0.5-0.9 GB with TensorFlow)
#: and far below what the memory bombs of the corpus would ask for
DEFAULT_LIMIT_BYTES = 2048 * MIB


@dataclasses.dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int

    @property
    def error_lines(self) -> list[str]:
        """The ``eat-keras: error: ...`` lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.startswith("eat-keras: error:")]

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / MIB


def run_cli(
    args: list[str],
    env_extra: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    limit_bytes: int = DEFAULT_LIMIT_BYTES,
    timeout: float = 300.0,
) -> CliResult:
    """``eat-keras ARGS`` with only the EAT_* variables the test names; killed with SIGKILL
    (returncode -9, which the caller's asserts then fail on) past ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAT_")}
    env.update(env_extra or {})
    exe = Path(sys.executable).parent / "eat-keras"

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [str(exe), *args], cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            text=True, preexec_fn=limit_memory,
        )
        status, peak = _wait(proc.pid, timeout)
        proc.returncode = status  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return CliResult(status, out.read(), err.read(), peak)


def _wait(pid: int, timeout: float) -> tuple[int, int]:
    """(exit status as Popen gives it, the child's own peak RSS in bytes); SIGKILL past timeout."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            return code, usage.ru_maxrss * 1024  # kilobytes on Linux
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
