"""How commands talk to people and to scripts: results on stdout, everything else on stderr.

``--quiet`` silences progress and notes; ``--json`` prints machine-readable results on stdout;
``NO_COLOR`` (honoured by rich) turns colour off.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console


@dataclass
class Output:
    quiet: bool = False
    out: Console = field(default_factory=lambda: Console(file=sys.stdout, soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(file=sys.stderr, soft_wrap=True))

    def note(self, message: str) -> None:
        """Progress or informational line on stderr (silenced by --quiet)."""
        if not self.quiet:
            self.err.print(message, highlight=False, markup=False)  # prompts and paths are not markup

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with --quiet."""
        from rich.markup import escape

        self.err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def result(self, renderable: Any) -> None:
        self.out.print(renderable, highlight=False)

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()

    @contextmanager
    def progress(self, description: str) -> Iterator[Any]:
        """A byte-progress callback ``(desc, done, total)`` drawn on stderr (no-op when quiet)."""
        if self.quiet:
            yield lambda *_: None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        bar: Any = None  # started at the first update: a refused input prints only its error
        tasks: dict[str, Any] = {}

        def update(desc: str, done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                               TimeRemainingColumn(), console=self.err, transient=True)
                bar.__enter__()
            if desc not in tasks:
                tasks[desc] = bar.add_task(f"{description} {desc}", total=total)
            bar.update(tasks[desc], completed=done, total=total)

        try:
            yield update
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)


class EventProgress:
    """A rich progress display on stderr fed by a library call's ``on_event(kind, data)``; subclasses
    implement :meth:`event` with ``self.bar`` (None under --quiet: draw nothing). The display starts
    at the first event that uses it, so an input refused before any work prints only its error."""

    #: whether the bars vanish when the job ends
    transient = True

    def __init__(self, out: Output) -> None:
        self.out = out
        self._bar: Any = None

    def columns(self) -> list[Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]

    @property
    def bar(self) -> Any:
        if self.out.quiet:
            return None
        if self._bar is None:
            if self.out.err.is_terminal:
                from rich.progress import Progress

                self._bar = Progress(*self.columns(), console=self.out.err, transient=self.transient)
            else:  # a log file or a pipe: plain lines, since a live display shows nothing until the end
                self._bar = PlainProgress(self.out.err)
            self._bar.__enter__()
        return self._bar

    def __enter__(self) -> Any:
        return self

    def close(self) -> None:
        self.__exit__(None, None, None)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        raise NotImplementedError


class PlainProgress:
    """What :class:`rich.progress.Progress` offers the progress displays (add_task, update, advance,
    console), as one plain line per tenth of a task (and at least one a minute) with the elapsed
    time and an estimate of the rest, for stderr that is not a terminal."""

    #: a line at least this often (seconds) while a task moves
    EVERY_S = 60.0

    def __init__(self, console: Console, clock: Any = None) -> None:
        import time

        self.console, self.clock = console, clock or time.monotonic
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        for tid, t in self.tasks.items():
            if t["visible"] and not t.get("inner") and t["completed"] != t["shown"]:
                self._line(tid)

    def add_task(self, description: str, total: float | None = None, visible: bool = True, **fields: Any) -> int:
        tid = len(self.tasks)
        now = self.clock()
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, "visible": visible,
                           "fields": fields, "start": now, "last": now, "shown": None}
        return tid

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, completed=self.tasks[task]["completed"] + advance)

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               visible: bool | None = None, **fields: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if visible is not None:
            t["visible"] = visible
        t["fields"].update(fields)
        if completed is None or completed == t["completed"] and t["shown"] is not None:
            return
        before, t["completed"] = t["completed"], completed
        if "t0" not in t:  # the rate is measured from the first update (not from loading the model)
            t["t0"], t["d0"] = self.clock(), completed
        if completed < before:  # a task that starts over (the scales of each image) is shown once only
            t["inner"] = True
        if not t["visible"] or t.get("inner"):
            return
        total_ = t["total"]
        step = max(1.0, (total_ or 0) / 10)
        crossed = total_ and (int(completed // step) > int(before // step) or completed >= total_)
        if crossed or self.clock() - t["last"] >= self.EVERY_S or t["shown"] is None:
            self._line(task)

    def _line(self, task: int) -> None:
        t = self.tasks[task]
        now = self.clock()
        t["last"], t["shown"] = now, t["completed"]
        done, total = t["completed"], t["total"]
        elapsed = now - t["start"]
        text = f"{t['description']} {done:g}/{total:g}" if total else f"{t['description']} {done:g}"
        text += f" {_clock(elapsed)} elapsed"
        rate_s, rate_n = now - t.get("t0", now), done - t.get("d0", done)
        if total and 0 < done < total and rate_n > 0 and rate_s > 0:
            text += f", about {_clock(rate_s / rate_n * (total - done))} left"
        info = t["fields"].get("info")
        if info:
            text += f"  {info}"
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def get_output(ctx: Any) -> Output:
    """The Output of the current invocation (set up by the root callback)."""
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Output) else Output()


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover
