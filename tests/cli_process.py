"""Run the ``eat-keras`` command in a child process under a hard memory limit and a timeout, and
measure what it used: the harness of the fault-corpus tests.

The limit is ``RLIMIT_DATA`` (private writable memory: heap and anonymous mappings, which is where
a decoded or resampled waveform or an unpickled tensor lands), so a memory bomb fails inside the
child instead of swapping the machine. Peak RSS comes from ``wait4``'s rusage of that one command,
run from a small launcher (see ``_LAUNCHER``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from shared_data import REPO_ROOT

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

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as report:
        launcher = [sys.executable, "-c", _LAUNCHER, str(limit_bytes), report.name, str(exe), *args]
        proc = subprocess.Popen(
            launcher, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,  # one process group: a timeout kills the command with its launcher
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        status, peak = _read_report(report.read(), proc.returncode)
        out.seek(0)
        err.seek(0)
        return CliResult(status, out.read(), err.read(), peak)


# Runs the command as its own child: Linux carries a process's peak RSS over fork and exec, so a
# command forked straight from pytest would report pytest's peak as its own. Forked from this small
# launcher instead, its peak is its own (plus the launcher's few MB).
_LAUNCHER = """
import os, resource, sys
limit, report, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
pid = os.fork()
if pid == 0:
    os.execv(command[0], command)
_, status, usage = os.wait4(pid, 0)
code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
with open(report, "w") as f:
    f.write(f"{code} {usage.ru_maxrss * 1024}")
"""


def _read_report(text: str, launcher_status: int | None) -> tuple[int, int]:
    """(the command's exit status as Popen gives it, its peak RSS in bytes); a launcher killed
    at the timeout wrote nothing: its -9 stands for the command's."""
    if not text:
        return (launcher_status if launcher_status is not None else -signal.SIGKILL), 0
    code, peak = text.split()
    return int(code), int(peak)
