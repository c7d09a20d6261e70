"""A lease in the state file, so two schedulers on one CONNECTOR_HOME never sync at once.

The lease has an expiry: a holder that crashed (or was SIGKILLed) blocks the others only
until its lease runs out. A live holder renews it while it works (`keep_alive`).
Acquisition runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
before reading, so two processes can never both see the lease as free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from connector.store import Transaction, ensure_schema

log = logging.getLogger(__name__)

_DDL = (
    """CREATE TABLE IF NOT EXISTS leases (
        name        TEXT PRIMARY KEY,
        holder      TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at  REAL NOT NULL
    )""",
)


def process_holder_id() -> str:
    """`hostname:pid`: this process, as the prefix of its lease holder ids."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_holder_id() -> str:
    """`hostname:pid:short-uuid`: says who holds the lease when another one waits."""
    return f"{process_holder_id()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """True when the holder ran on this host and its process is gone (crash, SIGKILL).

    A holder on another host (shared volume) is only freed by expiry.
    """
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child its parent has not reaped yet still answers kill(0): it is dead."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Lease:
    def __init__(self, conn: sqlite3.Connection, name: str = "sync",
                 holder: str | None = None, ttl_seconds: int = 900, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.name = name
        self.holder = holder or default_holder_id()
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        # One connection may be shared by the scheduler thread and the renewal thread.
        self._lock = threading.Lock()
        ensure_schema(conn, _DDL)

    def acquire(self) -> bool:
        """Take the lease if it is free, expired, or already ours (then it is extended)."""
        with self._lock, Transaction(self.conn):
            now = self.clock()
            row = self.conn.execute(
                "SELECT holder, expires_at FROM leases WHERE name = ?", (self.name,)
            ).fetchone()
            if row is not None and row[0] != self.holder and row[1] > now:
                if not holder_is_dead(row[0]):
                    return False
                log.warning("lease %r: holder %s is no longer running on this host; "
                            "taking the lease over", self.name, row[0])
            acquired_at = now if row is None or row[0] != self.holder else None
            self.conn.execute(
                "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder=excluded.holder, "
                "acquired_at=COALESCE(?, leases.acquired_at), expires_at=excluded.expires_at",
                (self.name, self.holder, now, now + self.ttl_seconds, acquired_at),
            )
            return True

    def renew(self) -> bool:
        """Push the expiry out by the TTL. False when the lease is no longer ours."""
        with self._lock:
            cur = self.conn.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                (self.clock() + self.ttl_seconds, self.name, self.holder),
            )
            return cur.rowcount == 1

    def release(self) -> bool:
        """Give the lease up (only if ours). True when it was ours."""
        with self._lock:
            cur = self.conn.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (self.name, self.holder)
            )
            return cur.rowcount == 1

    def holder_info(self) -> dict[str, Any] | None:
        """Who holds the lease and until when; None when nobody does (or it expired)."""
        with self._lock:
            row = self.conn.execute(
                "SELECT holder, acquired_at, expires_at FROM leases WHERE name = ?", (self.name,)
            ).fetchone()
        if row is None:
            return None
        holder, acquired_at, expires_at = row
        now = self.clock()
        if expires_at <= now:
            return None
        return {
            "name": self.name,
            "holder": holder,
            "ours": holder == self.holder,
            "acquired_at": _iso(acquired_at),
            "expires_at": _iso(expires_at),
            "expires_in_s": round(expires_at - now, 1),
        }

    def wait_acquire(self, stop_event: threading.Event, poll: float = 1.0,
                     on_wait: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Block until the lease is ours (True) or `stop_event` is set (False)."""
        last_holder: str | None = None
        while not stop_event.is_set():
            if self.acquire():
                return True
            info = self.holder_info()
            if info is not None:
                if info["holder"] != last_holder:
                    # Say it once per holder, not once per poll.
                    log.info("another scheduler (holder %s, expires %s) holds the lease; waiting",
                             info["holder"], info["expires_at"])
                    last_holder = info["holder"]
                if on_wait is not None:
                    on_wait(info)
            if stop_event.wait(poll):
                break
        return False

    @contextlib.contextmanager
    def keep_alive(self, every: float | None = None) -> Iterator[None]:
        """Renew the lease in a background thread while the block runs."""
        interval = every if every is not None else max(1.0, self.ttl_seconds / 3)
        done = threading.Event()

        def renew_loop() -> None:
            while not done.wait(interval):
                try:
                    if not self.renew():
                        log.warning("lease %r was lost (expired and taken over by another "
                                    "scheduler); this run continues", self.name)
                except sqlite3.Error as exc:
                    log.warning("could not renew lease %r: %s", self.name, exc)

        thread = threading.Thread(target=renew_loop, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)
