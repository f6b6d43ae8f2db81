"""An injectable clock, so tests and notebooks can be deterministic.

Everything in spacenb that needs the time asks a :class:`Clock`; the default reads the
system clock, :class:`FixedClock` is set and advanced by hand.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock"]


class Clock(Protocol):
    """Anything that can tell the time in microseconds since the Unix epoch."""

    def now_us(self) -> int: ...


class SystemClock:
    """The real wall clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000


class FixedClock:
    """A clock that only moves when told to (or by ``step_us`` on every reading)."""

    def __init__(self, start_us: int = 1_767_225_600_000_000, step_us: int = 0) -> None:
        self._now = start_us
        self._step = step_us

    def now_us(self) -> int:
        now = self._now
        self._now += self._step
        return now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self._now += int(seconds * 1_000_000)
