"""Progress of a sync: a rich progress bar on stderr when it is a terminal, periodic log
lines otherwise.

The bar is drawn on stderr (the stream whose TTY the CLI tested), never on stdout, so a
piped summary stays clean. While it is live, the connector's log handler writes through
the bar's console, so log lines print above the bar instead of tearing it. The bar is
transient: it disappears when the run ends, and the end-of-run summary is the final
frame (no repeated bar).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# The logger keeps its name from before the module moved: operators filter on it.
log = logging.getLogger("connector.progress")


class SyncProgress:
    """Callable as `progress(event, **fields)`; a context manager around the run.

    Events: `total` (entity, total: Moesif's hit count), `fetched` (entity, n),
    `delivered` (n messages confirmed by Segment).
    """

    def __init__(self, enabled: bool, log_every: float = 10.0,
                 console: Console | None = None) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self._console = console
        self._bar: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self._totals: dict[str, int] = {}
        self._fetched: dict[str, int] = {}
        self._delivered = 0
        self._last_log = time.monotonic()
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> SyncProgress:
        if self.enabled:
            console = self._console or Console(stderr=True)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._route_logs(console)
        return self

    def __exit__(self, *exc: object) -> None:
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._swapped.clear()
        if self._bar:
            self._bar.stop()

    def _route_logs(self, console: Console) -> None:
        """Log lines that would go to the bar's stream go through its console instead."""
        target = console.file
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is target:
                self._swapped.append((handler, handler.setStream(_ConsoleStream(console))))

    def _task(self, key: str, description: str) -> Any:
        if key not in self._tasks and self._bar:
            self._tasks[key] = self._bar.add_task(description, total=None)
        return self._tasks.get(key)

    def __call__(self, event: str, **fields: Any) -> None:
        if event == "total":
            entity = fields["entity"]
            if entity not in self._totals:
                self._totals[entity] = int(fields.get("total") or 0)
                task = self._task(entity, f"{entity} fetched")
                if self._bar and task is not None:
                    self._bar.update(task, total=self._totals[entity] or None)
        elif event == "fetched":
            entity = fields["entity"]
            self._fetched[entity] = self._fetched.get(entity, 0) + fields["n"]
            task = self._task(entity, f"{entity} fetched")
            if self._bar and task is not None:
                self._bar.advance(task, fields["n"])
        elif event == "delivered":
            self._delivered += fields["n"]
            task = self._task("delivered", "messages delivered")
            if self._bar and task is not None:
                self._bar.advance(task, fields["n"])
        if not self._bar and time.monotonic() - self._last_log >= self.log_every:
            self._last_log = time.monotonic()
            parts = [f"{e} {self._fetched.get(e, 0)}/{self._totals.get(e, '?')} fetched"
                     for e in self._totals]
            log.info("progress: %s; %d messages delivered", ", ".join(parts), self._delivered)


class _ConsoleStream:
    """A write-only stream that prints through a live console (above its progress bar)."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def write(self, text: str) -> int:
        if text:
            self._console.out(text, end="", highlight=False)
        return len(text)

    def flush(self) -> None:
        self._console.file.flush()
