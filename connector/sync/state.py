"""Sync state in the one SQLite file: cursors, record hashes, failed records.

A cursor, a hash or the removal of a failure is written only after Segment confirmed
the messages of the records concerned, in one transaction per page, so a SIGKILL at any
point leaves state that is behind (records get re-sent, deduplicated by messageId),
never ahead (records skipped).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from connector.common.timeutil import utcnow
from connector.ops.lease import check_fence
from connector.state.store import Transaction, ddl_step, migrate

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sync_cursor (
        entity TEXT PRIMARY KEY,
        modified_time TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS record_hash (
        entity TEXT NOT NULL,
        id TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (entity, id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS failed_record (
        entity TEXT NOT NULL,
        id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_code TEXT NOT NULL,
        last_detail TEXT NOT NULL,
        first_failed_at TEXT NOT NULL,
        last_failed_at TEXT NOT NULL,
        gave_up INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (entity, id)) WITHOUT ROWID""",
)


TRANSIENT_CODES = frozenset({"DELIVERY_FAILED"})


@dataclass(slots=True)
class Failure:
    entity: str
    id: str
    attempts: int
    code: str
    detail: str
    gave_up: bool


@dataclass
class PageCommit:
    """Everything one page's confirmed outcome writes, applied in one transaction."""

    entity: str
    hashes: dict[str, str]                          # delivered/unchanged id -> hash
    resolved: list[str]                              # ids whose earlier failure is now fixed
    failures: list[tuple[str, str, str]]             # (id, code, detail) failed this run
    cursor: str | None = None                        # new cursor for `entity`, if it moves
    cursor_entity: str | None = None


MIGRATIONS = (ddl_step(*SCHEMA),)


class SyncState:
    """Over either state backend (`connector.state.store.connect_state`)."""

    def __init__(self, conn: Any, max_attempts: int = 5) -> None:
        self.conn = conn
        self.max_attempts = max_attempts
        migrate(conn, "sync_state", MIGRATIONS)

    # --- reads ------------------------------------------------------------------------
    def cursor(self, entity: str) -> str | None:
        row = self.conn.execute("SELECT modified_time FROM sync_cursor WHERE entity = ?",
                                (entity,)).fetchone()
        return row[0] if row else None

    def hashes(self, entity: str, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        found: dict[str, str] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT id, hash FROM record_hash WHERE entity = ? AND id IN ({marks})",
                (entity, *chunk))
            found.update(rows)
        return found

    def pending_failures(self, entity: str, failed_before: str) -> list[Failure]:
        """Failures still to retry that were not already attempted since `failed_before`."""
        rows = self.conn.execute(
            "SELECT entity, id, attempts, last_code, last_detail, gave_up FROM failed_record "
            "WHERE entity = ? AND gave_up = 0 AND last_failed_at < ? ORDER BY id",
            (entity, failed_before))
        return [Failure(*row[:5], bool(row[5])) for row in rows]

    def failure_attempts(self, entity: str, ids: Iterable[str]) -> dict[str, int]:
        """Attempts so far of the given records that failed before and are still retried."""
        ids = list(ids)
        found: dict[str, int] = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(
                f"SELECT id, attempts FROM failed_record WHERE entity = ? AND gave_up = 0 "
                f"AND id IN ({marks})",
                (entity, *chunk)))
        return found

    # --- writes (only after confirmed delivery) ----------------------------------------
    def commit_page(self, page: PageCommit) -> list[Failure]:
        """Apply a page's outcome; return the failures, with GAVE_UP marked."""
        now = utcnow().isoformat(timespec="microseconds")
        recorded: list[Failure] = []
        with Transaction(self.conn) as conn:
            # A holder whose lease was taken over must not commit (fencing), checked in
            # this transaction so no takeover can slip in between.
            check_fence(conn)
            if page.hashes:
                conn.executemany(
                    "INSERT INTO record_hash (entity, id, hash) VALUES (?, ?, ?) "
                    "ON CONFLICT (entity, id) DO UPDATE SET hash = excluded.hash",
                    [(page.entity, rid, h) for rid, h in page.hashes.items()])
            if page.resolved:
                conn.executemany("DELETE FROM failed_record WHERE entity = ? AND id = ?",
                                 [(page.entity, rid) for rid in page.resolved])
            for rid, code, detail in page.failures:
                row = conn.execute("SELECT attempts FROM failed_record WHERE entity = ? "
                                   "AND id = ?", (page.entity, rid)).fetchone()
                attempts = (row[0] if row else 0) + 1
                # Only a refusal gives up: a record that failed because Segment was
                # unreachable or erroring is retried at every run until delivered.
                gave_up = attempts >= self.max_attempts and code not in TRANSIENT_CODES
                conn.execute(
                    "INSERT INTO failed_record (entity, id, attempts, last_code, last_detail, "
                    "first_failed_at, last_failed_at, gave_up) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (entity, id) DO UPDATE SET attempts = excluded.attempts, "
                    "last_code = excluded.last_code, last_detail = excluded.last_detail, "
                    "last_failed_at = excluded.last_failed_at, gave_up = excluded.gave_up",
                    (page.entity, rid, attempts, code, detail[:500], now, now, int(gave_up)))
                recorded.append(Failure(page.entity, rid, attempts, code, detail, gave_up))
            if page.cursor is not None:
                conn.execute(
                    "INSERT INTO sync_cursor (entity, modified_time, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (entity) DO UPDATE SET modified_time = CASE WHEN "
                    "excluded.modified_time > sync_cursor.modified_time THEN "
                    "excluded.modified_time ELSE sync_cursor.modified_time END, "
                    "updated_at = excluded.updated_at",
                    (page.cursor_entity or page.entity, page.cursor, now))
        return recorded

    def forget_cursor(self, entity: str) -> None:
        """Drop an entity's cursor (commits only ever move it forward: one that is wrong
        in the future can only be dropped, and the next confirmed page sets it again)."""
        with Transaction(self.conn) as conn:
            check_fence(conn)
            conn.execute("DELETE FROM sync_cursor WHERE entity = ?", (entity,))

    def reset(self) -> None:
        with Transaction(self.conn) as conn:
            for table in ("sync_cursor", "record_hash", "failed_record"):
                conn.execute(f"DELETE FROM {table}")


# --- issue 12 item 3: companies kept between runs ----------------------------------------------
COMPANY_CACHE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS company_cache (
        id TEXT PRIMARY KEY,
        version TEXT,
        doc TEXT NOT NULL,
        fetched_at TEXT NOT NULL) WITHOUT ROWID""",
)
COMPANY_CACHE_MIGRATIONS = (ddl_step(*COMPANY_CACHE_SCHEMA),)


def _encode_doc(doc: dict[str, Any]) -> str:
    """The standard library's JSON, because it gives back exactly what it was given:
    NaN and infinities, integers of any size and lone surrogates all survive the round
    trip (orjson writes NaN as null and refuses the other two)."""
    return json.dumps(doc, ensure_ascii=True, allow_nan=True, separators=(",", ":"))


# What orjson would read differently from the standard library (which wrote the text):
# NaN/Infinity, integers past 64 bits (orjson makes them floats) and escaped surrogates.
# A match only means the slower, exact parser is used (a long digit run in a string too).
_NEEDS_STDLIB = re.compile(r"NaN|Infinity|\d{19,}|\\u[dD][89a-fA-F]")


def _decode_doc(text: str, exact_with_orjson: bool | None = None) -> Any:
    """`exact_with_orjson`: already known (the text was checked once, when it was kept
    in memory); None: check it now (the check costs ten times the decoding)."""
    if exact_with_orjson is None:
        exact_with_orjson = not _NEEDS_STDLIB.search(text)
    if not exact_with_orjson:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class CompanyCache:
    """Moesif company documents as last fetched, by id: a users page joins its companies
    from here instead of searching Moesif for them (issue 12 item 3).

    The documents themselves are kept, not their mapped form: mapping them again costs
    little next to a query and stays right when the mapping files change. A document is
    replaced whenever a newer fetch of it comes in (the companies pass, a by-id fetch).
    Not delivery state: writing it moves no cursor and marks nothing delivered.

    What this instance (one run) wrote or read is also kept in memory, as the encoded
    text (about 700 bytes a company), for at most `memory_limit` companies: the users
    pass asks for the same companies page after page, and reading them back from the
    table cost more than mapping the users. The table stays the truth; the memory only
    spares the query and the slow decoding check.
    """

    def __init__(self, conn: Any, memory_limit: int = 20_000) -> None:
        self.conn = conn
        self.memory_limit = memory_limit
        self._memory: dict[str, tuple[str, bool]] = {}  # id -> (text, exact with orjson)
        migrate(conn, "company_cache", COMPANY_CACHE_MIGRATIONS)

    def _remember(self, cid: str, text: str) -> None:
        self._memory.pop(cid, None)
        if len(self._memory) >= self.memory_limit > 0:
            del self._memory[next(iter(self._memory))]  # the oldest
        if self.memory_limit > 0:
            self._memory[cid] = (text, not _NEEDS_STDLIB.search(text))

    def put(self, docs: dict[str, dict[str, Any]]) -> None:
        if not docs:
            return
        now = utcnow().isoformat(timespec="microseconds")
        rows = []
        for cid, doc in docs.items():
            version = doc.get("modified_time")
            text = _encode_doc(doc)
            kept = self._memory.get(cid)
            if kept is not None and kept[0] == text:
                continue  # this run stored this very text already: nothing to write
            rows.append((cid, version if isinstance(version, str) else None, text, now))
        if not rows:
            return
        with Transaction(self.conn) as conn:
            conn.executemany(
                "INSERT INTO company_cache (id, version, doc, fetched_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                "doc = excluded.doc, fetched_at = excluded.fetched_at", rows)
        for cid, _, text, _ in rows:  # once stored: the memory never runs ahead
            self._remember(cid, text)

    def get_texts(self, ids: Iterable[str]) -> dict[str, tuple[str, bool | None]]:
        """The stored texts (id -> (text, exact with orjson or None: unknown)), unread."""
        found: dict[str, tuple[str, bool | None]] = {}
        unknown: list[str] = []
        for cid in ids:
            kept = self._memory.get(cid)
            if kept is None:
                unknown.append(cid)
            else:
                found[cid] = kept
        for start in range(0, len(unknown), 900):  # SQLite's bound-parameter limit
            chunk = unknown[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for cid, text in self.conn.execute(
                    f"SELECT id, doc FROM company_cache WHERE id IN ({marks})", tuple(chunk)):
                self._remember(cid, text)
                found[cid] = self._memory.get(cid) or (text, None)
        return found

    def get_many(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Fresh documents (decoded anew for each call: callers may keep or change them)."""
        return {cid: _decode_doc(*kept) for cid, kept in self.get_texts(ids).items()}

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM company_cache").fetchone()[0])
