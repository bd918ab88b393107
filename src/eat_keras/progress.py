"""A progress line for long steps (prepare, evaluate, verify) that works on a terminal and in a log."""

from __future__ import annotations

import sys
import time
from typing import IO

from eat_keras.audio import format_duration

__all__ = ["ProgressLine"]


class ProgressLine:
    """``what: done/total units, rate, time left`` on one stderr line: rewritten in place on a
    terminal, else printed every ``interval`` seconds, so that a log is not flooded."""

    def __init__(
        self, what: str, total: int, stream: IO[str] | None = None, interval: float | None = None, unit: str = "files"
    ) -> None:
        self.what, self.total, self.done, self.reused, self.unit = what, total, 0, 0, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _is_tty(self.stream)
        self.interval = interval if interval is not None else (0.25 if self.tty else 30.0)
        self.start = self.last = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self._text(now), final=False)

    def reuse(self, count: int) -> None:
        """Count units an earlier run did: they are done, but not part of the rate."""
        self.done += count
        self.reused += count

    def finish(self, note: str = "") -> None:
        elapsed = time.monotonic() - self.start
        rate = f", {self._rate(elapsed):.1f} {self.unit}/s" if self.done > self.reused else ""
        text = f"{self.what}: {self.done}/{self.total} {self.unit} in {format_duration(elapsed)}{rate}{note}"
        self._write(text, final=True)

    def abandon(self) -> None:
        """End a line rewritten in place, so that an error message starts a line of its own."""
        if self.tty and self.last > self.start:
            self._write("", final=True)

    def _rate(self, elapsed: float) -> float:
        return (self.done - self.reused) / elapsed if elapsed > 0 else 0.0

    def _text(self, now: float) -> str:
        rate = self._rate(now - self.start)
        left = f", about {format_duration((self.total - self.done) / rate)} left" if rate > 0 else ""
        percent = 100 * self.done // max(self.total, 1)
        return f"{self.what}: {self.done}/{self.total} {self.unit} ({percent} %), {rate:.1f} {self.unit}/s{left}"

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
