"""The sync lease between real processes sharing one state file."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connector.ops.lease import Lease, default_holder_id
from connector.state.store import connect

ROOT = Path(__file__).resolve().parents[1]

# A child process holding, waiting for or racing for the lease; it reports on stdout and
# takes its cues from stdin, so the test synchronises on messages, never on sleeps.
CHILD = r"""
import sys, threading
from connector.ops.lease import Lease
from connector.state.store import connect

path, holder, mode, ttl = sys.argv[1:5]
lease = Lease(connect(path), holder=holder, ttl_seconds=int(ttl))
if mode == "hold":
    print("acquired" if lease.acquire() else "refused", flush=True)
    sys.stdin.readline()
    print("released" if lease.release() else "not-ours", flush=True)
elif mode == "wait":
    said = []
    def on_wait(info):
        if not said:
            said.append(1)
            print("waiting", info["holder"], flush=True)
    ok = lease.wait_acquire(threading.Event(), poll=0.05, on_wait=on_wait)
    print("acquired" if ok else "stopped", flush=True)
    sys.stdin.readline()
    lease.release()
elif mode == "race":
    print("ready", flush=True)
    sys.stdin.readline()
    print("acquired" if lease.acquire() else "refused", flush=True)
"""


class Child:
    def __init__(self, path: Path, holder: str, mode: str, ttl: int = 60) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), holder, mode, str(ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line.strip())

    def expect(self, timeout: float = 15.0) -> str:
        return self.lines.get(timeout=timeout)

    def send(self, line: str = "go") -> None:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state.sqlite3"


@pytest.fixture
def children():
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def test_second_process_waits_and_takes_over_on_release(state, children):
    holder = Child(state, "host-a:1:aaaa", "hold")
    children.append(holder)
    assert holder.expect() == "acquired"

    conn = connect(state)
    here = Lease(conn, holder="host-b:2:bbbb", ttl_seconds=60)
    assert here.acquire() is False
    info = here.holder_info()
    assert info is not None and info["holder"] == "host-a:1:aaaa" and not info["ours"]

    waiter = Child(state, "host-c:3:cccc", "wait")
    children.append(waiter)
    assert waiter.expect() == "waiting host-a:1:aaaa"

    holder.send()
    assert holder.expect() == "released"
    assert waiter.expect() == "acquired"
    assert here.holder_info()["holder"] == "host-c:3:cccc"
    assert here.acquire() is False
    waiter.send()
    waiter.proc.wait(timeout=10)
    assert here.holder_info() is None and here.acquire() is True
    conn.close()


def test_lease_of_a_killed_holder_expires(state, children):
    holder = Child(state, "host-a:1:dead", "hold", ttl=60)
    children.append(holder)
    assert holder.expect() == "acquired"
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=10)

    conn = connect(state)
    assert Lease(conn, holder="now", ttl_seconds=60).acquire() is False
    later = Lease(conn, holder="later", ttl_seconds=60, clock=lambda: time.time() + 61)
    assert later.acquire() is True
    assert later.holder_info()["holder"] == "later"
    conn.close()


def test_exactly_one_of_many_racing_processes_acquires(state, children):
    connect(state).close()
    racers = [Child(state, f"racer-{i}", "race") for i in range(6)]
    children.extend(racers)
    for racer in racers:
        assert racer.expect() == "ready"
    for racer in racers:
        racer.send()
    results = sorted(racer.expect() for racer in racers)
    assert results == ["acquired"] + ["refused"] * 5


def test_acquire_is_reentrant_and_extends_release_only_when_ours(state):
    now = [1_000_000.0]
    conn = connect(state)
    mine = Lease(conn, holder="me", ttl_seconds=30, clock=lambda: now[0])
    other = Lease(conn, holder="other", ttl_seconds=30, clock=lambda: now[0])
    assert mine.acquire()
    now[0] += 20
    assert mine.acquire()  # ours: extended to now + 30
    info = mine.holder_info()
    assert info["ours"] and info["expires_in_s"] == 30.0
    assert other.release() is False and other.renew() is False
    now[0] += 29
    assert other.acquire() is False
    now[0] += 2
    assert other.acquire() is True  # expired: taken over
    assert mine.renew() is False and mine.release() is False
    assert other.release() is True and mine.holder_info() is None
    conn.close()


def test_keep_alive_renews_while_the_block_runs(state):
    now = [1_000_000.0]
    conn = connect(state)
    lease = Lease(conn, holder="me", ttl_seconds=10, clock=lambda: now[0])
    assert lease.acquire()
    with lease.keep_alive(every=0.02):
        now[0] += 100  # far past the first expiry
        deadline = time.monotonic() + 5
        while lease.holder_info() is None and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert lease.holder_info() is not None
    assert lease.release()
    conn.close()


def test_wait_acquire_logs_the_holder_and_honours_stop(state, caplog):
    conn = connect(state)
    Lease(conn, holder="host-x:9:xxxx", ttl_seconds=60).acquire()
    stop = threading.Event()
    calls = []

    def on_wait(info):
        calls.append(info["holder"])
        stop.set()

    lease = Lease(conn, holder="me", ttl_seconds=60)
    with caplog.at_level(logging.INFO, logger="connector.lease"):
        assert lease.wait_acquire(stop, poll=5.0, on_wait=on_wait) is False
    assert calls == ["host-x:9:xxxx"]
    assert "another scheduler (holder host-x:9:xxxx, expires " in caplog.text
    assert "holds the lease; waiting" in caplog.text
    conn.close()


def test_default_holder_id_names_host_and_pid():
    host, pid, short = default_holder_id().rsplit(":", 2)
    assert host == socket.gethostname() and pid == str(os.getpid()) and len(short) == 8
    assert default_holder_id() != default_holder_id()
