"""The one SQLite file that holds all state (WAL mode).

Each concern (sync state, reports, forward spool) owns its tables in its own module and
registers its DDL through `open_store`; this module only knows how to open the file
safely and run the schema once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


def connect(path: Path | str, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open the state file in WAL mode with settings that survive a SIGKILL.

    `synchronous=NORMAL` under WAL keeps every committed transaction across a process
    crash (only an OS crash can lose the last ones), which is the guarantee we need.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys=ON")
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
