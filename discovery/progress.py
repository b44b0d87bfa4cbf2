"""Progress is a callback the library calls; the CLI turns it into a rich bar, the worker into job rows.

The library never prints. A callback takes ``(done, total, message)``; ``total`` may be None when
the amount of work is not known in advance (a greedy search).
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, "int | None", str], None]


def no_progress(done: int, total: int | None, message: str) -> None:
    """The default callback: ignore progress."""
