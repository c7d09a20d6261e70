"""Progress of a sync: a rich progress bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("connector.progress")


class SyncProgress:
    """Callable as `progress(event, **fields)`; a context manager around the run.

    Events: `total` (entity, total: Moesif's hit count), `fetched` (entity, n),
    `delivered` (n messages confirmed by Segment).
    """

    def __init__(self, enabled: bool, log_every: float = 10.0) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self._bar: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self._totals: dict[str, int] = {}
        self._fetched: dict[str, int] = {}
        self._delivered = 0
        self._last_log = time.monotonic()

    def __enter__(self) -> SyncProgress:
        if self.enabled:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar:
            self._bar.stop()

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
