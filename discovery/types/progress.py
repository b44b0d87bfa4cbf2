"""Progress is a callback the library calls; the CLI turns it into a bar or log lines, the worker into job rows.

The library never prints. A callback takes ``(done, total, message)``; ``total`` may be None when
the amount of work is not known in advance (a greedy search). :class:`ProgressClock` is the one
place an ETA is worked out, for every adapter (the CLI's bar, its log lines, the worker's rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable

ProgressCallback = Callable[[int, "int | None", str], None]


def no_progress(done: int, total: int | None, message: str) -> None:
    """The default callback: ignore progress."""


def format_seconds(seconds: float | None) -> str:
    """``4s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class ProgressClock:
    """Elapsed time and the remaining time estimated from the rate so far (None until it can be)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def eta(self, done: int, total: int | None) -> float | None:
        """Seconds left at the average rate so far; None without a total or before the first unit is done."""
        if total is None or done <= 0 or total <= 0:
            return None
        if done >= total:
            return 0.0
        return self.elapsed() / done * (total - done)

    def describe(self, done: int, total: int | None) -> str:
        """``34/100 (34%), 12s elapsed, about 23s left`` (``34 done, 12s elapsed`` without a total)."""
        elapsed = format_seconds(self.elapsed())
        if total is None:
            return f"{done} done, {elapsed} elapsed"
        pct = f" ({100 * done / total:.0f}%)" if total > 0 else ""
        return f"{done}/{total}{pct}, {elapsed} elapsed, about {format_seconds(self.eta(done, total))} left"
