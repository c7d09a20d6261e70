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
import functools
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from connector.common.redaction import redact, redact_url, url_secrets
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
    if page_size < 512:
        raise _damaged(path, "not an SQLite database")
    # While another connection checkpoints the WAL, page 1 (with the new page count) is
    # written before the pages after it, so the raw header can briefly run ahead of the
    # file: with a WAL beside the file, the size is not evidence (SQLite recovers the rest).
    wal_beside = path.with_name(path.name + "-wal").exists()
    if (size % page_size or (counted and size < pages * page_size)) and not wal_beside:
        raise _damaged(path, f"truncated: {size:,} bytes")


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """`PRAGMA journal_mode=WAL`, retried while the file is locked: when two processes
    open a new state file at once (a scheduler and a forwarder started together), SQLite
    answers the second one's switch with "database is locked" at once, without waiting
    in its busy handler."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # another connection is switching the same file: a moment
        pause = min(pause * 2, 0.2)


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
            _enable_wal(conn, timeout)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a readable schema
        except BaseException:
            conn.close()
            raise
    return conn


def ensure_schema(conn: Any, ddl_statements: Iterable[str]) -> None:
    """Create tables and indexes if missing (every statement uses IF NOT EXISTS)."""
    for statement in ddl_statements:
        conn.execute(_ddl(conn, statement))


class Transaction:
    """`with Transaction(conn):` runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


# --- one store interface, two backends ---------------------------------------------------
# The state modules (sync state, reports, lease) write their SQL once, in SQLite's dialect
# with `?` placeholders and `INSERT ... ON CONFLICT` upserts (which PostgreSQL shares); a
# PostgreSQL connection translates the few differences below, so no caller knows which
# backend it talks to.

_PG_DDL = ((re.compile(r"\s+WITHOUT ROWID", re.I), ""),
           (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", re.I), "BIGSERIAL PRIMARY KEY"),
           (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
           (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"))


def dialect_of(conn: Any) -> str:
    """`sqlite` or `postgresql`."""
    return getattr(conn, "dialect", "sqlite")


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str, with_params: bool) -> str:
    """`?` -> `%s` outside quoted literals (and a literal `%` doubled when psycopg reads
    placeholders); `BEGIN IMMEDIATE` (SQLite's take-the-write-lock-now) -> `BEGIN`."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    parts = sql.split("'")
    for i in range(0, len(parts), 2):  # even parts are outside '...'
        text = parts[i].replace("%", "%%") if with_params else parts[i]
        parts[i] = text.replace("?", "%s") if with_params else text
    if with_params:
        for i in range(1, len(parts), 2):
            parts[i] = parts[i].replace("%", "%%")
    return "'".join(parts)


class PgConnection:
    """A psycopg 3 connection that answers like the `sqlite3.Connection` the state
    modules use: `execute` / `executemany` returning a cursor (`fetchone`, `fetchall`,
    iteration, `rowcount`), `in_transaction`, `close`. Autocommit, with explicit
    `BEGIN ... COMMIT` from `Transaction`, as on SQLite. A connection that broke (the
    server restarted) is reopened at the next statement outside a transaction."""

    dialect = "postgresql"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._conn = self._open()

    def _open(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.timeout))
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            detail = redact(detail, url_secrets(self.url))  # libpq may quote a parameter
            raise ConfigError(f"STATE_URL: cannot connect to PostgreSQL at "
                              f"{redact_url(self.url)} ({detail}); check the server, the "
                              "address and the credentials") from None

    def _live(self) -> Any:
        if (self._conn.closed or self._conn.broken) and not self.in_transaction:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = self._open()
        return self._conn

    def execute(self, sql: str, params: Iterable[Any] | None = None) -> Any:
        values = tuple(params) if params is not None else None
        return self._live().execute(_pg_sql(sql, values is not None), values)

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> Any:
        cur = self._live().cursor()
        cur.executemany(_pg_sql(sql, True), [tuple(r) for r in rows])
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self._conn.close()


def db_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a state backend raises for a database failure."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def connect_state(settings: Any) -> Any:
    """The state store the settings name: PostgreSQL when STATE_URL is set, else the
    SQLite file in CONNECTOR_HOME."""
    url = (getattr(settings, "state_url", None) or "").strip()
    if url:
        return PgConnection(url)
    return connect(settings.state_path)


def state_location(settings: Any) -> str:
    """Where the state lives, for messages (never with a password)."""
    url = (getattr(settings, "state_url", None) or "").strip()
    return redact_url(url) if url else str(settings.state_path)


def table_columns(conn: Any, table: str) -> set[str]:
    if dialect_of(conn) == "postgresql":
        return {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema()", (table,))}
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


SCHEMA_VERSION_DDL = """CREATE TABLE IF NOT EXISTS schema_version (
    component TEXT PRIMARY KEY,
    version   INTEGER NOT NULL)"""

Migration = Callable[[Any], None]


def migrate(conn: Any, component: str, steps: Sequence[Migration]) -> int:
    """Bring `component`'s tables to version len(steps), once, with a version row.

    Runs in one transaction; on PostgreSQL under an advisory lock, so replicas starting
    together do not race on CREATE TABLE. Steps must tolerate a database whose tables
    predate the version row (IF NOT EXISTS, a column check before ALTER).
    """
    with Transaction(conn):
        if dialect_of(conn) == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(?)", (0x6D736331,))
        conn.execute(_ddl(conn, SCHEMA_VERSION_DDL))
        row = conn.execute("SELECT version FROM schema_version WHERE component = ?",
                           (component,)).fetchone()
        current = row[0] if row else 0
        for step in steps[current:]:
            step(conn)
        if current < len(steps):
            conn.execute("INSERT INTO schema_version (component, version) VALUES (?, ?) "
                         "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                         (component, len(steps)))
    return len(steps)


def _ddl(conn: Any, statement: str) -> str:
    if dialect_of(conn) == "postgresql":
        for pattern, replacement in _PG_DDL:
            statement = pattern.sub(replacement, statement)
    return statement


def ddl_step(*statements: str) -> Migration:
    """A migration step that runs these CREATE ... IF NOT EXISTS statements."""
    def run(conn: Any) -> None:
        for statement in statements:
            conn.execute(_ddl(conn, statement))
    return run
