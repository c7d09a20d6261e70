"""Open alerts and the alert log, in the state file.

`alerts_open` holds one row per active rule: an alert is raised once when its condition
starts and resolved once when it clears, across restarts. `alert_log` holds every event
(raised, resolved, test) with its delivery outcome: an event whose delivery failed stays
undelivered, is retried by later delivery passes (at most `MAX_DELIVERY_PASSES`), and is
shown by `check` and `alerts list`. Plain SQL, so another store backend can port it.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from connector.alerts.rules import RULES, Verdict
from connector.common.timeutil import to_iso, utcnow
from connector.state.store import Transaction, ensure_schema

MAX_DELIVERY_PASSES = 5

DDL = (
    """CREATE TABLE IF NOT EXISTS alerts_open (
        rule TEXT PRIMARY KEY, alert_id TEXT NOT NULL, severity TEXT NOT NULL,
        source TEXT NOT NULL, raised_at TEXT NOT NULL, run_id TEXT,
        message TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE IF NOT EXISTS alert_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL, event TEXT NOT NULL,
        rule TEXT NOT NULL, at TEXT NOT NULL, payload TEXT NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0, passes INTEGER NOT NULL DEFAULT 0,
        last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS alert_log_undelivered ON alert_log (delivered, id)",
    """CREATE TABLE IF NOT EXISTS alert_marks (key TEXT PRIMARY KEY, value TEXT)""",
)


@dataclass
class OpenAlert:
    rule: str
    alert_id: str
    severity: str
    source: str
    raised_at: str
    run_id: str | None
    message: str


class AlertStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(conn, DDL)

    def open_alerts(self) -> list[OpenAlert]:
        rows = self.conn.execute(
            "SELECT rule, alert_id, severity, source, raised_at, run_id, message "
            "FROM alerts_open ORDER BY raised_at, rule").fetchall()
        return [OpenAlert(*row) for row in rows]

    def apply(self, verdicts: list[Verdict], *, run_id: str | None,
              counts: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Raise what started, resolve what cleared (one transaction); return the events
        (the webhook payloads, also written to the log for delivery)."""
        events = []
        now = to_iso(utcnow())
        with Transaction(self.conn):
            open_now = {r[0]: r for r in self.conn.execute(
                "SELECT rule, alert_id, raised_at FROM alerts_open")}
            for v in verdicts:
                if v.active and v.rule not in open_now:
                    alert_id = f"al-{uuid.uuid4().hex[:16]}"
                    self.conn.execute(
                        "INSERT INTO alerts_open VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (v.rule, alert_id, v.severity, v.source, now, run_id, v.message,
                         json.dumps(v.details, default=str)))
                    events.append(self._log("alert.raised", alert_id, v, run_id, now, counts))
                elif not v.active and v.rule in open_now:
                    alert_id = open_now[v.rule][1]
                    self.conn.execute("DELETE FROM alerts_open WHERE rule = ?", (v.rule,))
                    events.append(self._log("alert.resolved", alert_id, v, run_id, now,
                                            counts, raised_at=open_now[v.rule][2]))
        return events

    def _log(self, event: str, alert_id: str, v: Verdict, run_id: str | None, now: str,
             counts: dict[str, Any] | None, raised_at: str | None = None) -> dict[str, Any]:
        payload = build_payload(event, alert_id, v.rule, v.severity, v.source, run_id,
                                v.message, v.details, now, counts)
        if raised_at:
            payload["details"] = {**payload["details"], "raised_at": raised_at}
        self.log(payload)
        return payload

    def log(self, payload: dict[str, Any]) -> int:
        cur = self.conn.execute(
            # RETURNING, not lastrowid: the same SQL answers on SQLite and PostgreSQL.
            "INSERT INTO alert_log (alert_id, event, rule, at, payload) VALUES (?, ?, ?, ?, ?) "
            "RETURNING id",
            (payload["alert_id"], payload["event"], payload["rule"], payload["occurred_at"],
             json.dumps(payload, default=str)))
        return int(cur.fetchone()[0])

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self.conn.execute(
            "SELECT id, payload FROM alert_log WHERE delivered = 0 AND passes < ? "
            "AND event != 'alert.test' ORDER BY id", (MAX_DELIVERY_PASSES,)).fetchall()
        return [(int(i), json.loads(p)) for i, p in rows]

    def undelivered(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT id, event, rule, at, passes, last_error FROM alert_log "
            "WHERE delivered = 0 AND event != 'alert.test' ORDER BY id DESC LIMIT ?",
            (limit,)).fetchall()
        return [dict(zip(("id", "event", "rule", "at", "passes", "error"), r, strict=True))
                for r in rows]

    def record_delivery(self, log_id: int, ok: bool, error: str | None) -> None:
        self.conn.execute(
            "UPDATE alert_log SET delivered = ?, passes = passes + 1, last_error = ? "
            "WHERE id = ?", (1 if ok else 0, None if ok else error, log_id))

    def mark(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM alert_marks WHERE key = ?",
                                (key,)).fetchone()
        return row[0] if row else default

    def set_mark(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO alert_marks VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                          "SET value = excluded.value", (key, value))


def build_payload(event: str, alert_id: str, rule: str, severity: str, source: str,
                  run_id: str | None, message: str, details: dict[str, Any], occurred_at: str,
                  counts: dict[str, Any] | None) -> dict[str, Any]:
    """The webhook body. `text` is one human line, so a Slack incoming-webhook URL works
    as it is. Ids, counts and the rule's message only: never a key or a record's values."""
    state = {"alert.raised": "RAISED", "alert.resolved": "RESOLVED",
             "alert.test": "TEST"}.get(event, event)
    icon = {"critical": ":red_circle:", "warning": ":warning:"}.get(severity, "")
    if event == "alert.resolved":
        icon = ":white_check_mark:"
    where = f" (run {run_id})" if run_id else ""
    return {
        "event": event, "alert_id": alert_id, "rule": rule, "severity": severity,
        "source": source, "run_id": run_id, "message": message, "details": details,
        "occurred_at": occurred_at, "report": counts or {},
        "text": f"{icon} [{severity.upper()}] moesif-segment {source} {rule} {state}: "
                f"{message}{where}".strip(),
    }


__all__ = ["RULES", "AlertStore", "OpenAlert", "build_payload"]
