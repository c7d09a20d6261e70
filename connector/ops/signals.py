"""The one way `sync`, `schedule` and `forward` handle SIGTERM and SIGINT.

The first signal sets a stop event: the work in hand reaches its next safe point (a sync
finishes and commits the page in hand, a forwarder commits what it read), stores what
it must and returns. A second signal exits at once with status 128 + the signal number,
without cleanup: every state write is a committed SQLite transaction, so that loses
nothing that was confirmed, and the next run resumes from the saved state.

Handlers can only be installed from the main thread; elsewhere (a test driving the code
from a worker thread) the helper does nothing and the caller's stop event still works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

# The logger keeps its name from before the module moved: operators filter on it.
log = logging.getLogger("connector.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Which signal asked for the stop (None while none did)."""

    def __init__(self, stop: threading.Event, doing: str) -> None:
        self.stop = stop
        self.doing = doing
        self.signum: int | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("second %s: exiting now; the next run resumes from the saved state",
                        name)
            os._exit(128 + signum)
        self.signum = signum
        log.info("%s received: %s, then stopping (send it again to exit at once)",
                 name, self.doing)
        self.stop.set()


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event,
                    doing: str = "finishing the work in hand") -> Iterator[StopSignals]:
    """`with stop_on_signals(stop):` SIGTERM/SIGINT set `stop`; a second one exits."""
    handler = StopSignals(stop, doing)
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = {sig: signal.signal(sig, handler.handle) for sig in STOP_SIGNALS}
    try:
        yield handler
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
