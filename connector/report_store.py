"""Runs and their mapping reports, kept in the state file.

One row per run: a few columns for `report list` (so listing never decompresses a report)
and the whole report as one zlib-compressed JSON blob, because a report can carry tens of
thousands of issues and is only ever read whole. A run gets a `running` row when it starts
(`start`), replaced by the full report when it ends (`save`); `prune` keeps the last N.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import zlib
from datetime import datetime
from typing import Any

from connector.jsonutil import dumps, loads
from connector.store import Transaction, ensure_schema
from connector.timeutil import utcnow

RUNNING = "running"
ENTITY_COLUMNS = ("fetched", "changed", "unchanged", "invalid", "delivered", "failed", "gave_up")

_DDL = (
    """CREATE TABLE IF NOT EXISTS report_runs (
        run_id      TEXT PRIMARY KEY,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        mode        TEXT,
        status      TEXT NOT NULL,
        duration_s  REAL,
        summary     BLOB,
        report      BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS report_runs_started ON report_runs(started_at, run_id)",
)


class AmbiguousRunId(LookupError):
    """A run id prefix matched more than one run."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        super().__init__(f"run id prefix {prefix!r} matches {len(candidates)} runs: "
                         + ", ".join(candidates[:5]) + (" ..." if len(candidates) > 5 else ""))
        self.candidates = candidates


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: `20261122T053000Z-1a2b3c` (UTC start time + random suffix)."""
    now = now or utcnow()
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class ReportStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(conn, _DDL)

    def _write(self) -> contextlib.AbstractContextManager:
        """Its own transaction, or the caller's when the job saves inside one of its own."""
        return contextlib.nullcontext() if self.conn.in_transaction else Transaction(self.conn)

    def start(self, run_id: str, started_at: str, mode: str) -> None:
        """Record a run in progress, so `report list` shows it before it ends."""
        self.conn.execute(
            "INSERT INTO report_runs (run_id, started_at, mode, status) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(run_id) DO NOTHING",
            (run_id, started_at, mode, RUNNING),
        )

    def save(self, report: dict[str, Any], *, keep: int | None = None) -> None:
        """Store (or replace) a finished run's report; prune to `keep` runs when given."""
        run_id = report.get("run_id")
        if not run_id:
            raise ValueError("report has no run_id")
        blob = zlib.compress(dumps(report), 6)
        row = (
            run_id,
            report.get("started_at") or "",
            report.get("finished_at"),
            report.get("mode"),
            report.get("status") or "unknown",
            report.get("duration_s"),
            dumps(summarize_entities(report)),
            blob,
        )
        with self._write():
            self.conn.execute(
                "INSERT INTO report_runs (run_id, started_at, finished_at, mode, status, "
                "duration_s, summary, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET started_at=excluded.started_at, "
                "finished_at=excluded.finished_at, mode=excluded.mode, status=excluded.status, "
                "duration_s=excluded.duration_s, summary=excluded.summary, "
                "report=excluded.report",
                row,
            )
        if keep is not None:
            self.prune(keep)

    def get(self, run_id: str) -> dict[str, Any] | None:
        """A run's report by id, unique id prefix, or `latest` (newest finished run).

        A run still in progress has no report yet: its summary row is returned instead.
        Raises AmbiguousRunId when a prefix matches several runs.
        """
        if run_id == "latest":
            row = self.conn.execute(
                "SELECT run_id, started_at, mode, status, report FROM report_runs "
                "WHERE status != ? ORDER BY started_at DESC, run_id DESC LIMIT 1",
                (RUNNING,),
            ).fetchone()
        else:
            row = self._by_id_or_prefix(run_id)
        if row is None:
            return None
        rid, started_at, mode, status, blob = row
        if blob is None:
            return {"run_id": rid, "started_at": started_at, "mode": mode, "status": status}
        return loads(zlib.decompress(blob))

    def latest_run_id(self) -> str | None:
        """The newest finished run's id, without reading its report."""
        row = self.conn.execute(
            "SELECT run_id FROM report_runs WHERE status != ? "
            "ORDER BY started_at DESC, run_id DESC LIMIT 1", (RUNNING,)
        ).fetchone()
        return row[0] if row else None

    def _by_id_or_prefix(self, run_id: str) -> tuple | None:
        cols = "run_id, started_at, mode, status, report"
        row = self.conn.execute(
            f"SELECT {cols} FROM report_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is not None or not run_id:
            return row
        # Prefix match with LIKE's wildcards escaped, so `_` in an id is literal.
        pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        ids = [r[0] for r in self.conn.execute(
            "SELECT run_id FROM report_runs WHERE run_id LIKE ? ESCAPE '\\' "
            "ORDER BY run_id DESC LIMIT 20", (pattern,))]
        if len(ids) > 1:
            raise AmbiguousRunId(run_id, ids)
        if not ids:
            return None
        return self.conn.execute(
            f"SELECT {cols} FROM report_runs WHERE run_id = ?", (ids[0],)
        ).fetchone()

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first: run id, start, end, duration, mode, status, per-entity counts."""
        rows = self.conn.execute(
            "SELECT run_id, started_at, finished_at, duration_s, mode, status, summary "
            "FROM report_runs ORDER BY started_at DESC, run_id DESC LIMIT ?",
            (max(0, int(limit)),),
        ).fetchall()
        return [
            {
                "run_id": run_id,
                "started_at": started_at,
                "finished_at": finished_at,
                "duration_s": duration_s,
                "mode": mode,
                "status": status,
                "entities": loads(summary) if summary else {},
            }
            for run_id, started_at, finished_at, duration_s, mode, status, summary in rows
        ]

    def prune(self, keep: int) -> int:
        """Keep the newest `keep` runs (full reports and issue lists); delete older ones.

        Returns how many runs were deleted.
        """
        keep = max(1, int(keep))
        with self._write():
            cur = self.conn.execute(
                "DELETE FROM report_runs WHERE run_id NOT IN ("
                "SELECT run_id FROM report_runs ORDER BY started_at DESC, run_id DESC LIMIT ?)",
                (keep,),
            )
        return cur.rowcount

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM report_runs").fetchone()[0]


def summarize_entities(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The per-entity counts `report list` shows, tolerant of missing parts."""
    entities = report.get("entities") or {}
    summary: dict[str, dict[str, int]] = {}
    if not isinstance(entities, dict):
        return summary
    for name, counts in entities.items():
        if isinstance(counts, dict):
            summary[str(name)] = {
                key: counts[key] for key in ENTITY_COLUMNS if isinstance(counts.get(key), int)
            }
    return summary
