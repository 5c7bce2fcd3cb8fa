"""The one notion of time every service takes through its constructor (STYLE.md §3).

A ``Clock`` is called and answers seconds as a float: ``time.time`` is the wall clock that token
times (``iat``, ``exp``, key rotation) are read from, ``time.monotonic`` the clock of intervals
(cooldowns, cache lifetimes, breaker states) that must not jump when the system time is set.
Both are ``Clock``s as they are; ``create_app`` builds one wall clock and passes it to every
service that reads the time of day. ``ManualClock`` stands still until a test moves it.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["MONOTONIC", "SYSTEM_CLOCK", "Clock", "ManualClock"]


class Clock(Protocol):
    """Seconds now, as a float (a Unix time for a wall clock)."""

    def __call__(self) -> float: ...


#: The wall clock: Unix time, as token claims state it (RFC 7519 §2 NumericDate).
SYSTEM_CLOCK: Clock = time.time
#: The clock of intervals: never set back, meaningless across processes.
MONOTONIC: Clock = time.monotonic


class ManualClock:
    """A clock that moves only when told to (``advance``, or setting ``now``): for tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
