"""The one SQLite file that holds all state (WAL mode).

Each concern (sync state, reports, forward spool) owns its tables in its own module and
registers its DDL through `open_store`; this module only knows how to open the file
safely and run the schema once.

A state home that cannot hold the state (CONNECTOR_HOME a file or not writable, a state
file that is truncated, damaged or not SQLite, a full disk) is a configuration problem:
`ConfigError`, naming CONNECTOR_HOME and what to do. A damaged state file is never
written to, overwritten or deleted: its owner may need it for recovery.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from connector.errors import ConfigError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_DAMAGED = ("file is not a database", "malformed", "file is encrypted", "corrupt")
_FULL = ("database or disk is full", "disk is full")
_READ_ONLY = ("readonly database", "unable to open database file", "disk i/o error",
              "read-only file system")


def _damaged(path: Path, detail: str) -> ConfigError:
    return ConfigError(
        f"the state file {path} in CONNECTOR_HOME is damaged ({detail}); it was left "
        "untouched: move it aside (keep it for recovery) so a fresh one is created, or "
        "set CONNECTOR_HOME to another directory")


def state_error(exc: BaseException, path: Path | None) -> ConfigError | None:
    """The ConfigError a state-home failure stands for, or None when it is not one."""
    where = f"CONNECTOR_HOME ({path.parent})" if path is not None else "CONNECTOR_HOME"
    text = str(exc).lower()
    if isinstance(exc, sqlite3.Error):
        if any(s in text for s in _FULL):
            return ConfigError(f"the disk holding {where} is full (SQLite: {exc}); free "
                               "some space or set CONNECTOR_HOME to a directory on another "
                               "disk")
        if any(s in text for s in _DAMAGED):
            return _damaged(path if path is not None else Path("state.sqlite3"), str(exc))
        if any(s in text for s in _READ_ONLY):
            return ConfigError(f"the state file cannot be opened for writing in {where} "
                               f"(SQLite: {exc}); make the directory writable for this "
                               "user or set CONNECTOR_HOME to a writable directory")
        return None
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return ConfigError(f"the disk holding {where} is full; free some space or set "
                               "CONNECTOR_HOME to a directory on another disk")
        if isinstance(exc, NotADirectoryError | FileExistsError):
            return ConfigError(f"{where} is not a directory (a file is in the way); set "
                               "CONNECTOR_HOME to a directory")
        if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES):
            return ConfigError(f"{where} is not writable ({exc.strerror}); make it writable "
                               "for this user or set CONNECTOR_HOME to a writable directory")
    return None


@contextlib.contextmanager
def state_errors(path: Path | None) -> Iterator[None]:
    """Re-raise state-home failures (see `state_error`) as one clear ConfigError."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        mapped = state_error(exc, path)
        if mapped is None:
            raise
        raise mapped from None


def check_home(home: Path) -> None:
    """CONNECTOR_HOME, if it exists, must be a directory."""
    if home.exists() and not home.is_dir():
        raise ConfigError(f"CONNECTOR_HOME ({home}) is not a directory (a file is in the "
                          "way); set CONNECTOR_HOME to a directory")


def check_state_file(path: Path) -> None:
    """Refuse a state file that is not SQLite or is shorter than its header says, before
    SQLite writes anything to it (it would otherwise grow the damaged file in place)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return  # an empty file is what SQLite itself creates: a new state
    with path.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise _damaged(path, "not an SQLite database")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is only meaningful when these two counters agree.
    counted = pages > 0 and header[24:28] == header[92:96]
    if page_size < 512 or size % page_size or (counted and size < pages * page_size):
        raise _damaged(path, f"truncated: {size:,} bytes")


def connect(path: Path | str, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open the state file in WAL mode with settings that survive a SIGKILL.

    `synchronous=NORMAL` under WAL keeps every committed transaction across a process
    crash (only an OS crash can lose the last ones), which is the guarantee we need.
    Raises ConfigError for a state home that cannot hold the state.
    """
    path = Path(path)
    check_home(path.parent)
    with state_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        check_state_file(path)
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a readable schema
        except BaseException:
            conn.close()
            raise
    return conn


def ensure_schema(conn: sqlite3.Connection, ddl_statements: Iterable[str]) -> None:
    """Create tables and indexes if missing (every statement uses IF NOT EXISTS)."""
    for statement in ddl_statements:
        conn.execute(statement)


class Transaction:
    """`with Transaction(conn):` runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
