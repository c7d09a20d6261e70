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
    watchdog = _SecondSignalWatchdog()
    try:
        yield handler
    finally:
        watchdog.close()
        for sig, old in previous.items():
            signal.signal(sig, old)


class _SecondSignalWatchdog:
    """Makes "a second signal exits at once" hold whatever the main thread is doing.

    Python runs a signal's handler in the main thread, between bytecodes. A signal that
    arrives just before the main thread blocks in a lock wait (`join()`, `Event.wait`)
    is only handled when that wait ends: minutes, for a long cleanup. The interpreter
    also writes every signal's number to the wakeup fd, from C, at once: this thread
    reads it, and exits on the second stop signal itself (the main thread's handler,
    when it does run first, exits the same way).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        try:
            self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            self._previous = None
            self._close_pipe()
            return
        self._thread = threading.Thread(target=self._watch, name="second-signal",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        seen = 0
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:  # closed: the `with` block is over
                return
            for number in data:
                if number in STOP_SIGNALS:
                    seen += 1
                    if seen >= 2:
                        os._exit(128 + number)

    def close(self) -> None:
        if self._previous is None:
            return
        signal.set_wakeup_fd(self._previous)
        self._previous = None
        # The write end first: the thread's read then ends (EOF). The read end is closed
        # only once the thread is gone, so it never reads a reused descriptor.
        with contextlib.suppress(OSError):
            os.close(self._write)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(self._read)

    def _close_pipe(self) -> None:
        for fd in (self._write, self._read):
            with contextlib.suppress(OSError):
                os.close(fd)
