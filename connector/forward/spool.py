"""The durable spool between reading WSO2 events and sending them to Moesif.

Everything lives in the one state file (SQLite, WAL):

- `spool`: masked, encoded Moesif events waiting for a 201 (orjson bytes, stored once and
  sent as they are);
- `source_offsets`: how far each source has been read, with the identity of the file the
  offset belongs to (device + inode + a hash of its first bytes), so a rotated, truncated
  or replaced file is recognised;
- `dead_letters`: what could not be delivered (malformed lines, invalid events, events
  Moesif refused) with the source position and a reason code;
- `forward_counters`: lifetime counters of the forward path.

The rule that makes the forwarder lossless is `append`: the events read from a source and
the source's new offset are written in ONE transaction, so an offset never moves past an
event that is not on disk, and an event never lands twice for one offset. Events leave
the spool only through `ack` (after Moesif's 201) or `dead_letter`.

One `Spool` object is shared by the reader, HTTP and sender threads of one process: its
lock serialises them on the single connection (a Python lock hands over in microseconds,
where SQLite's own busy handler sleeps whole milliseconds).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector.state.store import Transaction, ensure_schema

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "read",           # lines or event maps taken from a source
    "ignored",        # log lines that are not analytics events
    "parsed",         # analytics events decoded from their source format
    "masked",         # events validated, masked and mapped to a Moesif event
    "spooled",        # events committed to the spool
    "delivered",      # events Moesif answered 201 for
    "retried",        # events whose send had to be repeated (once per retry of their batch)
    "dead_lettered",  # lines/events moved to the dead letters
)

# Dead letters keep enough of the original to diagnose it, not whole megabyte bodies.
DEAD_LETTER_RAW_MAX = 4096
# At most this many dead letters are kept (FORWARD_DEAD_LETTERS_MAX): a flood of bad lines
# must not fill the disk. The oldest go first; the lifetime `dead_lettered` counter still
# counts every one.
DEFAULT_MAX_DEAD_LETTERS = 100_000
DEAD_LETTER_DETAIL_MAX = 2000

DDL = (
    """CREATE TABLE IF NOT EXISTS spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        transaction_id TEXT NOT NULL,
        body BLOB NOT NULL,
        size INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS source_offsets (
        source TEXT PRIMARY KEY,
        device INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        fingerprint_len INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        position TEXT NOT NULL,
        reason_code TEXT NOT NULL,
        detail TEXT NOT NULL,
        raw BLOB,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason_code)",
    """CREATE TABLE IF NOT EXISTS forward_counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    # Per-installation secrets (the key of content-derived transaction ids): generated
    # once, never sent, never logged.
    """CREATE TABLE IF NOT EXISTS forward_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    )""",
)
TRANSACTION_KEY = "transaction_id_key"


class SpoolFull(Exception):
    """`append(..., limit=...)` refused: the events would take the spool past its limit."""

_BUMP_COUNTER = (
    "INSERT INTO forward_counters (name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file an offset belongs to.

    Device and inode follow a file through a rename; the fingerprint (a hash of its first
    `fingerprint_len` bytes, up to 1 KB) tells a truncated or replaced file from the one
    we read, even when the file system reuses the inode.
    """

    device: int
    inode: int
    fingerprint: str
    fingerprint_len: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str      # e.g. "log:/var/apim/apim_metrics.log", "http", "collector"
    position: str    # byte offset, request index, transaction id: where to find it
    reason_code: str
    detail: str
    raw: bytes | str | None = None  # masked event, or a fingerprint: never unmasked text


OffsetUpdate = tuple[str, FileIdentity, int]
SpooledEvent = tuple[int, str, bytes]


def _clip_raw(raw: bytes | str | None) -> bytes | None:
    if raw is None:
        return None
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw)
    return data[:DEAD_LETTER_RAW_MAX]


def _dead_letter_row(letter: DeadLetter, now: float) -> tuple[Any, ...]:
    return (letter.source, letter.position, letter.reason_code,
            letter.detail[:DEAD_LETTER_DETAIL_MAX], _clip_raw(letter.raw), now)


class Spool:
    """The spool tables of one state file (see the module doc)."""

    def __init__(self, conn: sqlite3.Connection, max_events: int,
                 max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS) -> None:
        self.conn = conn
        self.max_events = max_events
        self.max_dead_letters = max(1, max_dead_letters)
        self._pruned_warned = False
        self._lock = threading.RLock()
        ensure_schema(conn, DDL)
        # This SQLite is built with SECURE_DELETE: every acknowledged event would be
        # overwritten with zeros, i.e. written a second time (measured: acks 2x slower, WAL
        # 2x larger). FAST zeroes only what is written anyway; spooled events are masked,
        # and freed pages are reused by the next events within seconds.
        conn.execute("PRAGMA secure_delete=FAST")
        # Kept in memory so the hot paths (is_full on every HTTP request, the sender's
        # "is a batch ready?") never count the table.
        row = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])

    # --- writing -------------------------------------------------------------------
    def append(self, events: Sequence[tuple[str, bytes]],
               offset_update: OffsetUpdate | None = None,
               dead_letters: Sequence[DeadLetter] | None = None,
               counters: Mapping[str, int] | None = None,
               limit: int | None = None) -> list[int]:
        """Spool events, move a source offset, record dead letters and bump counters in ONE
        transaction; returns the new sequence numbers. Nothing is visible until it commits.

        With `limit`, raises SpoolFull (writing nothing) when the spool would then hold
        more than `limit` events: checked under the same lock as the write, so concurrent
        callers (HTTP ingest) can never push the backlog past it together.
        """
        now = time.time()
        rows = [(txid, body, len(body), now) for txid, body in events]
        added_bytes = sum(r[2] for r in rows)
        all_counters = dict(counters or {})
        if rows:
            all_counters["spooled"] = all_counters.get("spooled", 0) + len(rows)
        if dead_letters:
            all_counters["dead_lettered"] = (all_counters.get("dead_lettered", 0)
                                             + len(dead_letters))
        with self._lock:
            if limit is not None and rows and self._depth + len(rows) > limit:
                raise SpoolFull(f"{self._depth} events spooled, limit {limit}")
            with Transaction(self.conn) as conn:
                seqs = self._insert(conn, rows, offset_update, dead_letters, all_counters, now)
            self._depth += len(rows)
            self._bytes += added_bytes
        return seqs

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                offset_update: OffsetUpdate | None,
                dead_letters: Sequence[DeadLetter] | None,
                counters: Mapping[str, int], now: float) -> list[int]:
        seqs: list[int] = []
        if rows:
            first = self._next_seq(conn)
            conn.executemany(
                "INSERT INTO spool (transaction_id, body, size, enqueued_at) "
                "VALUES (?, ?, ?, ?)", rows)
            seqs = list(range(first, first + len(rows)))
        if offset_update is not None:
            self._save_offset(conn, offset_update, now)
        if dead_letters:
            self._add_dead_letters(conn, dead_letters, now)
        self._bump(conn, counters)
        return seqs

    def _add_dead_letters(self, conn: sqlite3.Connection, letters: Sequence[DeadLetter],
                          now: float) -> None:
        conn.executemany(
            "INSERT INTO dead_letters (source, position, reason_code, detail, raw, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [_dead_letter_row(d, now) for d in letters])
        self._prune_dead_letters(conn)

    def _prune_dead_letters(self, conn: sqlite3.Connection) -> None:
        """Keep at most `max_dead_letters`: the oldest go (in the inserting transaction)."""
        (count,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        excess = int(count) - self.max_dead_letters
        if excess <= 0:
            return
        conn.execute("DELETE FROM dead_letters WHERE id IN "
                     "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)", (excess,))
        if not self._pruned_warned:
            self._pruned_warned = True
            log.warning("more than %d dead letters (FORWARD_DEAD_LETTERS_MAX): the oldest are "
                        "deleted as new ones arrive; the dead_lettered counter counts them "
                        "all", self.max_dead_letters)

    @staticmethod
    def _next_seq(conn: sqlite3.Connection) -> int:
        # AUTOINCREMENT keeps sequence numbers monotonic (never reused after the table
        # empties), so executemany's rows are exactly next..next+n-1 inside this transaction.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
        return (int(row[0]) if row else 0) + 1

    @staticmethod
    def _save_offset(conn: sqlite3.Connection, update: OffsetUpdate, now: float) -> None:
        key, ident, offset = update
        conn.execute(
            "INSERT INTO source_offsets (source, device, inode, fingerprint, fingerprint_len, "
            "offset, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(source) DO UPDATE SET device = excluded.device, "
            "inode = excluded.inode, fingerprint = excluded.fingerprint, "
            "fingerprint_len = excluded.fingerprint_len, offset = excluded.offset, "
            "updated_at = excluded.updated_at",
            (key, ident.device, ident.inode, ident.fingerprint, ident.fingerprint_len,
             offset, now))

    @staticmethod
    def _bump(conn: sqlite3.Connection, counters: Mapping[str, int]) -> None:
        values = [(name, int(n)) for name, n in counters.items() if n]
        if values:
            conn.executemany(_BUMP_COUNTER, values)

    def ack(self, seqs: Iterable[int]) -> int:
        """Remove events Moesif accepted (201) and count them delivered."""
        seq_list = list(seqs)
        if not seq_list:
            return 0
        with self._lock:
            with Transaction(self.conn) as conn:
                removed, size = self._delete(conn, seq_list)
                self._bump(conn, {"delivered": removed})
            self._depth -= removed
            self._bytes -= size
        return removed

    def dead_letter(self, seqs: Iterable[int], reason: str, detail: str,
                    source: str = "collector") -> int:
        """Move spooled events to the dead letters (their masked body is kept as `raw`)."""
        seq_list = list(seqs)
        if not seq_list:
            return 0
        now = time.time()
        with self._lock:
            with Transaction(self.conn) as conn:
                where, args = _seq_filter(seq_list)
                rows = conn.execute(
                    f"SELECT seq, transaction_id, body FROM spool WHERE {where}", args
                ).fetchall()
                letters = [DeadLetter(source, f"transaction_id={txid} seq={seq}", reason,
                                      detail, body) for seq, txid, body in rows]
                self._add_dead_letters(conn, letters, now)
                removed, size = self._delete(conn, seq_list)
                self._bump(conn, {"dead_lettered": removed})
            self._depth -= removed
            self._bytes -= size
        return removed

    @staticmethod
    def _delete(conn: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
        where, args = _seq_filter(seqs)
        size = conn.execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM spool WHERE {where}", args).fetchone()
        conn.execute(f"DELETE FROM spool WHERE {where}", args)
        return int(size[0]), int(size[1])

    def mark_attempt(self, seqs: Iterable[int]) -> None:
        """Record one more failed attempt for these events and count them retried."""
        seq_list = list(seqs)
        if not seq_list:
            return
        with self._lock, Transaction(self.conn) as conn:
            where, args = _seq_filter(seq_list)
            conn.execute(f"UPDATE spool SET attempts = attempts + 1 WHERE {where}", args)
            self._bump(conn, {"retried": len(seq_list)})

    def installation_secret(self) -> bytes:
        """This state file's secret key (32 random bytes), created on first use."""
        import secrets

        with self._lock:
            row = self.conn.execute("SELECT value FROM forward_secrets WHERE name = ?",
                                    (TRANSACTION_KEY,)).fetchone()
            if row is None:
                with Transaction(self.conn) as conn:
                    conn.execute("INSERT OR IGNORE INTO forward_secrets (name, value) "
                                 "VALUES (?, ?)", (TRANSACTION_KEY, secrets.token_bytes(32)))
                    row = conn.execute("SELECT value FROM forward_secrets WHERE name = ?",
                                       (TRANSACTION_KEY,)).fetchone()
        return bytes(row[0])

    def bump(self, counters: Mapping[str, int]) -> None:
        """Add to counters outside an append (e.g. lines ignored while nothing is spooled)."""
        if not any(counters.values()):
            return
        with self._lock, Transaction(self.conn) as conn:
            self._bump(conn, counters)

    # --- reading -------------------------------------------------------------------
    def peek_batch(self, max_events: int, max_bytes: int,
                   after_seq: int = 0) -> list[SpooledEvent]:
        """The oldest events (after `after_seq`), at most `max_events` and `max_bytes`
        (but always at least one, so an event larger than `max_bytes` still moves)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT seq, transaction_id, body FROM spool WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after_seq, max_events)).fetchall()
        batch: list[SpooledEvent] = []
        total = 0
        for seq, txid, body in rows:
            total += len(body) + 1  # +1: the comma between array elements
            if batch and total > max_bytes:
                break
            batch.append((seq, txid, body))
        return batch

    def depth(self) -> int:
        return self._depth

    def spooled_bytes(self) -> int:
        return self._bytes

    def is_full(self) -> bool:
        return self._depth >= self.max_events

    def oldest_enqueued_at(self, after_seq: int = 0) -> float | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT enqueued_at FROM spool WHERE seq > ? ORDER BY seq LIMIT 1",
                (after_seq,)).fetchone()
        return float(row[0]) if row else None

    def get_offset(self, key: str) -> tuple[FileIdentity, int] | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT device, inode, fingerprint, fingerprint_len, offset "
                "FROM source_offsets WHERE source = ?", (key,)).fetchone()
        if row is None:
            return None
        return FileIdentity(int(row[0]), int(row[1]), str(row[2]), int(row[3])), int(row[4])

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self.conn.execute("SELECT name, value FROM forward_counters").fetchall()
        values = dict.fromkeys(COUNTER_NAMES, 0)
        values.update({name: int(value) for name, value in rows})
        return values

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent dead letters, newest last (for status output and tests)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, source, position, reason_code, detail, raw, created_at "
                "FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "source", "position", "reason_code", "detail", "raw", "created_at")
        return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]

    def status(self) -> dict[str, Any]:
        """Backlog, oldest age, delivered, dead letters by reason and per-source offsets."""
        with self._lock:
            depth, size, oldest = self.conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(enqueued_at) FROM spool"
            ).fetchone()
            by_reason = dict(self.conn.execute(
                "SELECT reason_code, count(*) FROM dead_letters GROUP BY reason_code "
                "ORDER BY reason_code").fetchall())
            offsets = self.conn.execute(
                "SELECT source, device, inode, offset, updated_at FROM source_offsets "
                "ORDER BY source").fetchall()
        counters = self.counters()
        return {
            "backlog": int(depth),
            "backlog_bytes": int(size),
            "oldest_age_seconds": round(time.time() - oldest, 3) if oldest else None,
            "spool_max_events": self.max_events,
            "delivered": counters["delivered"],
            "dead_letters": {"total": sum(by_reason.values()), "by_reason": by_reason},
            "sources": {
                src: {"device": dev, "inode": ino, "offset": off,
                      "updated_at": _iso(updated)}
                for src, dev, ino, off, updated in offsets
            },
            "counters": counters,
        }


def _json_ints(values: Iterable[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def _seq_filter(seqs: list[int]) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause for exactly these sequence numbers.

    A batch is normally a dense run (rows appended together, peeked in order): then a
    range is exact and several times cheaper than a list; sequence numbers are never
    reused, so no other row can sit inside the range.
    """
    first, last = seqs[0], seqs[-1]
    if last - first + 1 == len(seqs) and seqs == list(range(first, last + 1)):
        return "seq BETWEEN ? AND ?", (first, last)
    return "seq IN (SELECT value FROM json_each(?))", (_json_ints(seqs),)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
