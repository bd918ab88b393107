"""Peak RSS that belongs to the measured process only.

On Linux a child started from a large process (``subprocess`` uses vfork + exec) inherits the
parent's high-water mark in its ``ru_maxrss``: exec records the old (parent's) address space's peak.
So, in a process, the peak is ``VmHWM`` of ``/proc/self/status`` (the current address space only);
for a command, this module is a small launcher: ``python -m tools.bench.peak_rss OUT.json -- CMD``
runs CMD as its child and writes the child's ``wait4`` usage, which is then the command's own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """High-water RSS of this process's address space (MiB)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_measured(command: list[str], log_file: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` (stdout and stderr to ``log_file``) under the launcher; wall time, peak RSS (MiB),
    CPU times and exit code of the command itself."""
    usage_file = log_file.with_suffix(".usage.json")
    usage_file.unlink(missing_ok=True)
    with open(log_file, "w") as out:
        subprocess.run([sys.executable, "-m", "tools.bench.peak_rss", str(usage_file), "--", *command],
                       stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2])
    return json.loads(usage_file.read_text())


def _launch(usage_file: str, command: list[str]) -> int:
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = code = os.waitstatus_to_exitcode(status)  # reaped by wait4
    Path(usage_file).write_text(json.dumps({
        "exit_code": code,
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kB
        "user_cpu_s": usage.ru_utime,
        "system_cpu_s": usage.ru_stime,
    }))
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m tools.bench.peak_rss USAGE.json -- COMMAND [ARGS...]")
    sys.exit(_launch(args[0], args[2:]))
