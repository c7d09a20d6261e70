"""A lease in the state store, so schedulers sharing it never sync at once.

The lease is one row: holder, expiry and a fencing token that increases at every change
of holder. A holder that crashed (or was SIGKILLed) blocks the others only until its
lease runs out (at once when it ran on this host and its process is gone); a live holder
renews it while it works (`keep_alive`); a clean exit hands it over at once (`release`
expires it). Acquisition reads the row under a write lock (SQLite's `BEGIN IMMEDIATE`,
PostgreSQL's `SELECT ... FOR UPDATE`), so two processes can never both see it free.

Fencing: while a holder runs (`fenced()`), every page commit checks, in its own
transaction, that the row still carries this holder's token (`check_fence`); a holder
that paused past its expiry (GC, a frozen VM) and was replaced can never commit again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connector.errors import LeaseLost
from connector.state.store import (
    Transaction,
    db_errors,
    ddl_step,
    dialect_of,
    migrate,
    table_columns,
)

# The logger keeps its name from before the module moved: operators filter on it.
log = logging.getLogger("connector.lease")

_DDL = (
    """CREATE TABLE IF NOT EXISTS leases (
        name        TEXT PRIMARY KEY,
        holder      TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at  REAL NOT NULL
    )""",
)


def _add_token(conn: Any) -> None:
    if "token" not in table_columns(conn, "leases"):
        conn.execute("ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0")


MIGRATIONS = (ddl_step(*_DDL), _add_token)


def ensure_lease_schema(conn: Any) -> None:
    migrate(conn, "lease", MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Fence:
    name: str
    holder: str
    token: int


_FENCE: ContextVar[Fence | None] = ContextVar("lease_fence", default=None)


def check_fence(conn: Any) -> None:
    """Inside a write transaction: raise LeaseLost unless the fenced lease (if any) still
    carries our token. On PostgreSQL the row is share-locked until the commit, so a
    takeover waits for it instead of slipping in between."""
    fence = _FENCE.get()
    if fence is None:
        return
    lock = " FOR SHARE" if dialect_of(conn) == "postgresql" else ""
    row = conn.execute(f"SELECT holder, token FROM leases WHERE name = ?{lock}",
                       (fence.name,)).fetchone()
    if row is None or row[0] != fence.holder or int(row[1]) != fence.token:
        raise LeaseLost(f"the {fence.name!r} lease was taken over by "
                        f"{row[0] if row else 'nobody'} (token {row[1] if row else '-'}, "
                        f"ours {fence.token}); this holder stops without committing")


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
    def __init__(self, conn: Any, name: str = "sync",
                 holder: str | None = None, ttl_seconds: int = 900, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.name = name
        self.holder = holder or default_holder_id()
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.token: int | None = None  # our fencing token while we hold the lease
        # One connection may be shared by the scheduler thread and the renewal thread.
        self._lock = threading.Lock()
        ensure_lease_schema(conn)

    def acquire(self) -> bool:
        """Take the lease if it is free, expired, or already ours (then it is extended).
        A change of holder increments the fencing token."""
        lock = " FOR UPDATE" if dialect_of(self.conn) == "postgresql" else ""
        with self._lock, Transaction(self.conn):
            now = self.clock()
            self.conn.execute(
                "INSERT INTO leases (name, holder, acquired_at, expires_at, token) "
                "VALUES (?, '', 0, 0, 0) ON CONFLICT (name) DO NOTHING", (self.name,))
            holder, expires_at, token = self.conn.execute(
                f"SELECT holder, expires_at, token FROM leases WHERE name = ?{lock}",
                (self.name,)).fetchone()
            if holder != self.holder and expires_at > now:
                if not holder_is_dead(holder):
                    return False
                log.warning("lease %r: holder %s is no longer running on this host; "
                            "taking the lease over", self.name, holder)
            if holder == self.holder:
                self.conn.execute("UPDATE leases SET expires_at = ? WHERE name = ?",
                                  (now + self.ttl_seconds, self.name))
            else:
                token = int(token) + 1
                self.conn.execute(
                    "UPDATE leases SET holder = ?, acquired_at = ?, expires_at = ?, token = ? "
                    "WHERE name = ?", (self.holder, now, now + self.ttl_seconds, token,
                                       self.name))
            self.token = int(token)
            return True

    def renew(self) -> bool:
        """Push the expiry out by the TTL. False when the lease is no longer ours."""
        with self._lock:
            cur = self.conn.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ?",
                (self.clock() + self.ttl_seconds, self.name, self.holder, self.token),
            )
            return cur.rowcount == 1

    def release(self) -> bool:
        """Give the lease up (only if ours): it expires now, so a waiting holder takes it
        at its next poll; the row (and its token) stays. True when it was ours."""
        with self._lock:
            cur = self.conn.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ? "
                "AND expires_at > 0", (self.name, self.holder, self.token))
            return cur.rowcount == 1

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Page commits in this block (this thread) check our fencing token."""
        if self.token is None:
            raise LeaseLost(f"the {self.name!r} lease is not held")
        reset = _FENCE.set(Fence(self.name, self.holder, self.token))
        try:
            yield
        finally:
            _FENCE.reset(reset)

    def holder_info(self) -> dict[str, Any] | None:
        """Who holds the lease and until when; None when nobody does (or it expired)."""
        with self._lock:
            row = self.conn.execute(
                "SELECT holder, acquired_at, expires_at, token FROM leases WHERE name = ?",
                (self.name,)).fetchone()
        if row is None:
            return None
        holder, acquired_at, expires_at, token = row
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
            "token": int(token),
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
        """Renew the lease in a background thread while the block runs; page commits in
        the block (this thread) are fenced with our token."""
        interval = every if every is not None else max(1.0, self.ttl_seconds / 3)
        done = threading.Event()

        errors = db_errors()

        def renew_loop() -> None:
            lost = False
            while not done.wait(interval):
                try:
                    if not self.renew() and not lost:
                        lost = True
                        log.warning("lease %r was lost (expired and taken over by another "
                                    "scheduler); this holder commits nothing more", self.name)
                except errors as exc:
                    log.warning("could not renew lease %r: %s", self.name, exc)

        thread = threading.Thread(target=renew_loop, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            with self.fenced():
                yield
        finally:
            done.set()
            thread.join(timeout=5)


def describe_holder(conn: Any, name: str = "sync") -> str:
    """One line for `report list` and `check`: who holds the lease, or that nobody does."""
    info = Lease(conn, name, holder="observer").holder_info()
    if info is None:
        return f"{name} lease: free (no scheduler is leading)"
    return (f"{name} lease: held by {info['holder']} (token {info['token']}, "
            f"expires in {info['expires_in_s']:.0f} s)")
