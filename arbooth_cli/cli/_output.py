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
            self.err.print(message, highlight=False)

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with --quiet."""
        self.err.print(f"[yellow]warning:[/] {message}", highlight=False)

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
            from rich.progress import Progress

            self._bar = Progress(*self.columns(), console=self.out.err, transient=self.transient)
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
