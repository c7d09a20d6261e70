"""The one signal helper: the first SIGTERM/SIGINT sets the stop event, a second exits at
once with 128 + the signal number; handlers are restored afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import connector
from connector.ops.signals import stop_on_signals
from tests.helpers import wait_for

PROJECT = str(Path(connector.__file__).resolve().parents[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_sets_the_stop_event_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    stop = threading.Event()
    with stop_on_signals(stop) as handler:
        os.kill(os.getpid(), sig)
        assert stop.wait(10)
        assert handler.signum == sig
    assert signal.getsignal(sig) == before


def test_off_the_main_thread_it_only_passes_the_event_through():
    seen: list[object] = []
    stop = threading.Event()

    def worker() -> None:
        with stop_on_signals(stop) as handler:
            seen.append(handler)
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen[1] == before and seen[0].stop is stop


SCRIPT = textwrap.dedent("""
    import sys, threading
    from connector.ops.signals import stop_on_signals
    stop = threading.Event()
    with stop_on_signals(stop):
        print("ready", flush=True)
        stop.wait(60)
        print("stopping", flush=True)
        threading.Event().wait(60)  # cleanup that a second signal must cut short
    sys.exit(0)
""")


def test_a_second_signal_exits_at_once_with_128_plus_the_signal():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=PROJECT))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "stopping"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def _pending(pid: int) -> int:
    """The signals pending for the process or any of its threads (Linux /proc)."""
    mask = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("SigPnd:", "ShdPnd:")):
                mask |= int(line.split()[1], 16)
    return mask


BUSY_SCRIPT = textwrap.dedent("""
    import hashlib, threading
    from connector.ops.signals import stop_on_signals
    stop = threading.Event()
    with stop_on_signals(stop):
        print("ready", flush=True)
        # Minutes in one C call that releases the GIL but never returns to Python: the
        # main thread cannot run a signal handler until it ends.
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 2_000_000_000)
""")


def test_a_second_signal_exits_even_while_the_main_thread_cannot_run_handlers():
    proc = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=PROJECT))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        # Two SIGTERMs sent back to back merge into one while the first is pending (POSIX
        # does not queue standard signals): the second goes once the first was delivered.
        wait_for(lambda: not _pending(proc.pid) & _bit(signal.SIGTERM), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
