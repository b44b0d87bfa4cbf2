"""The CLI's progress adapter: a rich bar with an ETA on a terminal, plain log lines otherwise.

The library reports progress through a callback ``(done, total, message)``; the CLI passes one of
these. Outside a terminal (a log file, CI, ``nohup``) a bar would print nothing useful, so the
adapter writes a timestamped line when the work starts, at most every ``interval`` seconds while it
runs (and at each new message stage), and when it ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from discovery.types.progress import ProgressCallback, ProgressClock, format_seconds


class LogLineProgress:
    """A progress callback writing ``HH:MM:SS description: 34/100 (34%), 12s elapsed, about 23s left  message``."""

    def __init__(
        self,
        description: str,
        stream: TextIO,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.description = description
        self.stream = stream
        self.interval = interval
        self.timer = ProgressClock(clock)
        self.clock = clock
        self.wall = wall
        self.last_line = float("-inf")
        self.last: tuple[int, int | None, str] = (0, None, "")
        self.lines = 0

    def _write(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.wall()))
        self.stream.write(f"{stamp} {self.description}: {text}\n")
        self.stream.flush()
        self.lines += 1

    def start(self) -> None:
        self._write("started")
        self.last_line = self.clock()

    def __call__(self, done: int, total: int | None, message: str) -> None:
        finished = total is not None and done >= total
        new_stage = bool(message) and message.split(":")[0] != self.last[2].split(":")[0]
        self.last = (done, total, message)
        if finished or new_stage or self.clock() - self.last_line >= self.interval:
            self._write(self.timer.describe(done, total) + (f"  {message}" if message else ""))
            self.last_line = self.clock()

    def finish(self) -> None:
        done, total, _ = self.last
        self._write(f"done in {format_seconds(self.timer.elapsed())} ({done}{'/' + str(total) if total else ''})")


@contextlib.contextmanager
def progress(description: str, console: Any, transient: bool = True) -> Iterator[ProgressCallback]:
    """A progress callback for ``console`` (a rich Console): a bar with ETA on a terminal, log lines otherwise."""
    if not console.is_terminal:
        lines = LogLineProgress(description, console.file)
        lines.start()
        yield lines
        lines.finish()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    clock = ProgressClock()

    class EtaColumn(TextColumn):
        """ETA from the library's own clock (rich's estimate needs a steady stream of updates)."""

        def render(self, task: Any) -> Any:
            from rich.text import Text

            eta = clock.eta(int(task.completed), int(task.total) if task.total is not None else None)
            return Text("" if eta is None else f"eta {format_seconds(eta)}")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        EtaColumn(""),
        TextColumn("{task.fields[message]}"),
        console=console,
        transient=transient,
    ) as bar:
        task_id = bar.add_task(description, total=None, message="")

        def callback(done: int, total: int | None, message: str) -> None:
            bar.update(task_id, completed=done, total=total, message=message)

        yield callback
