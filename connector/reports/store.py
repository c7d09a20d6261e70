"""Runs and their mapping reports, kept in the state file.

One row per run: a few columns for `report list` (so listing never decompresses a report)
and the whole report as one zlib-compressed JSON blob, because a report can carry tens of
thousands of issues and is only ever read whole. A run gets a `running` row when it starts
(`start`, with the process that runs it), replaced by the full report when it ends
(`save`); `prune` keeps the last N.

A `running` row whose process is gone (SIGKILL, a crash, a power cut) is read as
`interrupted`: its process ran on this host and is dead, or it ran elsewhere and holds no
live `sync` lease any more. The next run's `start` stores it as interrupted for good.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import zlib
from datetime import datetime
from typing import Any

from connector.common.jsonutil import dumps, loads
from connector.common.timeutil import utcnow
from connector.ops.lease import ensure_lease_schema, holder_is_dead, process_holder_id
from connector.reports.model import RunReport, RunSummary, Status
from connector.state.store import Transaction, ddl_step, migrate, state_errors, table_columns

RUNNING = Status.RUNNING.value
INTERRUPTED_ERROR = ("its process ({holder}) ended before the run did (killed or crashed); "
                     "what was confirmed before is kept, the next run continues from there")
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


def _add_holder(conn: Any) -> None:
    if "holder" not in table_columns(conn, "report_runs"):  # written before runs had holders
        conn.execute("ALTER TABLE report_runs ADD COLUMN holder TEXT")


MIGRATIONS = (ddl_step(*_DDL), _add_holder)


class ReportStore:
    """Over either state backend (`connector.state.store.connect_state`)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        with state_errors(None):
            migrate(conn, "reports", MIGRATIONS)
            ensure_lease_schema(conn)  # `_abandoned` reads who holds the lease

    def _write(self) -> contextlib.AbstractContextManager:
        """Its own transaction, or the caller's when the job saves inside one of its own."""
        return contextlib.nullcontext() if self.conn.in_transaction else Transaction(self.conn)

    def start(self, run_id: str, started_at: str, mode: str,
              holder: str | None = None) -> None:
        """Record a run in progress, so `report list` shows it before it ends; runs left
        `running` by a process that is gone are stored as interrupted first, and so are
        this process's own (it runs one sync at a time: an older row of its own is one
        whose end was never saved)."""
        self.close_abandoned(own=True)
        self.conn.execute(
            "INSERT INTO report_runs (run_id, started_at, mode, status, holder) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(run_id) DO NOTHING",
            (run_id, started_at, str(mode), RUNNING, holder or process_holder_id()),
        )

    def close_abandoned(self, own: bool = False) -> int:
        """Store every abandoned `running` row as an interrupted report; how many.
        `own`: this process's running rows count as abandoned too."""
        rows = self.conn.execute(
            "SELECT run_id, started_at, mode, holder FROM report_runs WHERE status = ?",
            (RUNNING,)).fetchall()
        me = process_holder_id()
        closed = 0
        for run_id, started_at, mode, holder in rows:
            if (own and holder == me) or self._abandoned(holder):
                self.save(_interrupted(run_id, started_at, mode, holder))
                closed += 1
        return closed

    def _abandoned(self, holder: str | None) -> bool:
        """Is the process that started a `running` row gone?"""
        if holder and holder_is_dead(holder):
            return True
        if holder and holder.partition(":")[0] == process_holder_id().partition(":")[0]:
            return False  # on this host and alive
        # Elsewhere (or unknown): alive as long as it holds a live lease.
        row = self.conn.execute(
            "SELECT holder FROM leases WHERE name = 'sync' AND expires_at > ?",
            (utcnow().timestamp(),)).fetchone()
        if row is None:
            return True
        return bool(holder) and not str(row[0]).startswith(f"{holder}:")

    def save(self, report: RunReport | dict[str, Any], *, keep: int | None = None) -> None:
        """Store (or replace) a finished run's report; prune to `keep` runs when given."""
        if not isinstance(report, RunReport):
            report = RunReport.from_dict(report)
        if not report.run_id:
            raise ValueError("report has no run_id")
        blob = zlib.compress(_dumps(report.to_dict()), 6)
        row = (
            report.run_id,
            report.started_at or "",
            report.finished_at,
            None if report.mode is None else str(report.mode),
            str(report.status or "unknown"),
            report.duration_s,
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

    def get(self, run_id: str) -> RunReport | None:
        """A run's report by id, unique id prefix, or `latest` (newest finished run).

        A run still in progress has no report yet: a report with its id, start, mode and
        status `running` is returned instead (or `interrupted`, its process being gone).
        Raises AmbiguousRunId when a prefix matches several runs.
        """
        if run_id == "latest":
            row = self.conn.execute(
                f"SELECT {_COLS} FROM report_runs "
                "WHERE status != ? ORDER BY started_at DESC, run_id DESC LIMIT 1",
                (RUNNING,),
            ).fetchone()
        else:
            row = self._by_id_or_prefix(run_id)
        if row is None:
            return None
        rid, started_at, mode, status, blob, holder = row
        if blob is None:
            if status == RUNNING and self._abandoned(holder):
                return _interrupted(rid, started_at, mode, holder)
            return RunReport.from_dict({"run_id": rid, "started_at": started_at,
                                        "mode": mode, "status": status})
        return RunReport.from_dict(loads(zlib.decompress(blob)))

    def latest_run_id(self) -> str | None:
        """The newest finished run's id, without reading its report."""
        row = self.conn.execute(
            "SELECT run_id FROM report_runs WHERE status != ? "
            "ORDER BY started_at DESC, run_id DESC LIMIT 1", (RUNNING,)
        ).fetchone()
        return row[0] if row else None

    def _by_id_or_prefix(self, run_id: str) -> tuple | None:
        cols = _COLS
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

    def list(self, limit: int = 20) -> list[RunSummary]:
        """Newest first: run id, start, end, duration, mode, status, per-entity counts.

        A `running` row whose process is gone is listed as `interrupted`.
        """
        rows = self.conn.execute(
            "SELECT run_id, started_at, finished_at, duration_s, mode, status, summary, holder "
            "FROM report_runs ORDER BY started_at DESC, run_id DESC LIMIT ?",
            (max(0, int(limit)),),
        ).fetchall()
        runs = []
        for run_id, started_at, finished_at, duration_s, mode, status, summary, holder in rows:
            if status == RUNNING and self._abandoned(holder):
                status = Status.INTERRUPTED.value
            runs.append(RunSummary.from_dict({
                "run_id": run_id, "started_at": started_at, "finished_at": finished_at,
                "duration_s": duration_s, "mode": mode, "status": status,
                "entities": loads(summary) if summary else {},
            }))
        return runs

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


_COLS = "run_id, started_at, mode, status, report, holder"


def _dumps(value: Any) -> bytes:
    """JSON bytes; a value orjson cannot write (an integer wider than 64 bits, e.g. in a
    sample's source record) must not cost the run its report."""
    try:
        return dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, default=str).encode()


def _interrupted(run_id: str, started_at: str | None, mode: str | None,
                 holder: str | None) -> RunReport:
    return RunReport.from_dict({
        "run_id": run_id, "started_at": started_at, "mode": mode,
        "status": Status.INTERRUPTED.value,
        "error": INTERRUPTED_ERROR.format(holder=holder or "unknown")})


def summarize_entities(report: RunReport) -> dict[str, dict[str, int]]:
    """The per-entity counts `report list` shows."""
    return {name: counts.model_dump(include=set(ENTITY_COLUMNS))
            for name, counts in report.entities.items()}
