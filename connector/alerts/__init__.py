"""Alerts: rules (`rules`), open alerts and their log in the state file (`state`), signed
webhook delivery (`webhook`). This module wires them to the sync, the scheduler, the
forwarder and `check`; every entry point here never raises on a delivery failure and
never waits longer than ALERT_WEBHOOK_MAX_SECONDS."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from typing import Any

from connector.alerts.rules import Verdict, evaluate_forward, evaluate_stale, evaluate_sync
from connector.alerts.state import AlertStore, build_payload
from connector.alerts.webhook import Delivery, deliver, webhook_urls
from connector.common.timeutil import parse_timestamp, to_iso, utcnow
from connector.reports.model import RunReport, Status
from connector.settings import Settings

log = logging.getLogger(__name__)

SINCE_MARK = "stale.since"
DEAD_LETTER_MARK = "forward.dead_letters"


def _counts(report: RunReport) -> dict[str, Any]:
    return {"status": str(report.status), "mode": str(report.mode),
            "duration_s": report.duration_s,
            "entities": {k: v.model_dump() for k, v in report.entities.items()}}


def _brief(events: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [{"alert_id": e["alert_id"], "rule": e["rule"], "severity": e["severity"],
             "message": e["message"]} for e in events if e["event"] == event]


def on_sync_report(settings: Settings, conn: sqlite3.Connection,
                   report: RunReport) -> list[dict[str, Any]]:
    """Evaluate the sync rules on a finished run (before its report is saved, so history is
    the earlier runs); put the alert section in the report; return the events."""
    from connector.reports.store import ReportStore

    store = AlertStore(conn)
    if store.mark(SINCE_MARK) is None:
        store.set_mark(SINCE_MARK, str(time.time()))
    history = ReportStore(conn).list(limit=max(settings.alert_count_deviation_runs * 3, 10))
    verdicts = evaluate_sync(report, history, settings)
    if report.status == Status.SUCCESS and report.mode != "dry-run":
        verdicts += [Verdict("stale", False, f"sync run {report.run_id} succeeded")]
    events = store.apply(verdicts, run_id=report.run_id, counts=_counts(report))
    report.alerts = {
        "raised": _brief(events, "alert.raised"),
        "resolved": _brief(events, "alert.resolved"),
        "open": [{"alert_id": a.alert_id, "rule": a.rule, "severity": a.severity,
                  "source": a.source, "raised_at": a.raised_at, "message": a.message}
                 for a in store.open_alerts()],
    }
    return events


def deliver_pending(settings: Settings, conn: sqlite3.Connection,
                    deadline: float | None = None) -> int:
    """Deliver every undelivered event (this run's and any a crash or a dead receiver left)
    within ALERT_WEBHOOK_MAX_SECONDS; return how many were delivered. Never raises."""
    try:
        if not webhook_urls(settings):
            return 0
        store = AlertStore(conn)
        deadline = deadline or time.monotonic() + settings.alert_webhook_max_seconds
        delivered = 0
        for log_id, payload in store.pending():
            if time.monotonic() >= deadline:
                break  # left for the next pass; not counted as a failed pass
            results = deliver(settings, payload, deadline)
            ok = bool(results) and all(r.ok for r in results)
            error = "; ".join(r.error for r in results if r.error) or None
            store.record_delivery(log_id, ok, error)
            delivered += ok
        return delivered
    except Exception as exc:  # noqa: BLE001 - an alert never fails the work it reports on
        log.warning("alert delivery skipped: %s", exc)
        return 0


def after_sync(settings: Settings, conn: sqlite3.Connection, report: RunReport) -> None:
    """The run's hook: evaluate (before the report is saved). Never raises."""
    try:
        on_sync_report(settings, conn, report)
    except Exception as exc:  # noqa: BLE001
        log.warning("alert rules not evaluated: %s", exc)


def last_success_epoch(conn: sqlite3.Connection) -> float | None:
    from connector.reports.store import ReportStore

    for summary in ReportStore(conn).list(limit=200):
        if summary.status == Status.SUCCESS and summary.mode != "dry-run" \
                and summary.finished_at:
            return parse_timestamp(summary.finished_at).timestamp()
    return None


def check_stale(settings: Settings, conn: sqlite3.Connection,
                now: float | None = None, deliver_now: bool = True) -> list[dict[str, Any]]:
    """The `stale` rule (between scheduled runs, and in `check`). Never raises."""
    try:
        store = AlertStore(conn)
        since = store.mark(SINCE_MARK)
        if since is None:
            since = str(time.time())
            store.set_mark(SINCE_MARK, since)
        now = time.time() if now is None else now
        verdicts = evaluate_stale(last_success_epoch(conn), float(since), now, settings)
        events = store.apply(verdicts, run_id=None)
        if deliver_now:
            deliver_pending(settings, conn)
        return events
    except Exception as exc:  # noqa: BLE001
        log.warning("stale rule not evaluated: %s", exc)
        return []


def forward_tick(settings: Settings, conn: sqlite3.Connection, *, backlog: int,
                 oldest_age_s: float | None, dead_letters_total: int,
                 since_delivery_s: float | None) -> list[dict[str, Any]]:
    """The forwarder's rules, from its periodic loop. Never raises."""
    try:
        store = AlertStore(conn)
        seen = int(store.mark(DEAD_LETTER_MARK, "0") or 0)
        new = max(0, dead_letters_total - seen)
        store.set_mark(DEAD_LETTER_MARK, str(dead_letters_total))
        verdicts = evaluate_forward(backlog=backlog, oldest_age_s=oldest_age_s,
                                    new_dead_letters=new, since_delivery_s=since_delivery_s,
                                    settings=settings)
        counts = {"backlog": backlog, "dead_letters": dead_letters_total}
        events = store.apply(verdicts, run_id=None, counts=counts)
        deliver_pending(settings, conn)
        return events
    except Exception as exc:  # noqa: BLE001
        log.warning("forward alert rules not evaluated: %s", exc)
        return []


def send_test(settings: Settings, conn: sqlite3.Connection | None = None) -> list[Delivery]:
    """`alerts test`: one signed `alert.test` event to every receiver."""
    payload = build_payload("alert.test", f"al-test-{uuid.uuid4().hex[:12]}", "test",
                            "warning", "sync", None, "test alert from moesif-segment",
                            {}, to_iso(utcnow()), {})
    if conn is not None:
        AlertStore(conn).log(payload)
    return deliver(settings, payload)


__all__ = ["after_sync", "check_stale", "deliver_pending", "forward_tick", "on_sync_report",
           "send_test"]


def check_result(settings: Settings) -> tuple[bool, str]:
    """For `moesif-segment check`: the `stale` rule, open alerts and undelivered events.
    Fails on a stale sync, an undeliverable alert or a bad ALERT_WEBHOOK_URL."""
    from connector.errors import ConfigError
    from connector.state.store import connect_state

    try:
        urls = webhook_urls(settings)
    except ConfigError as exc:
        return False, str(exc)
    receivers = f"{len(urls)} webhook receiver(s)" if urls else "no ALERT_WEBHOOK_URL"
    if not settings.state_url and not settings.state_path.exists():
        return True, f"{receivers}; no state yet"
    conn = connect_state(settings)
    try:
        check_stale(settings, conn)
        store = AlertStore(conn)
        opened, undelivered = store.open_alerts(), store.undelivered()
    finally:
        conn.close()
    parts = [receivers, f"{len(opened)} open alert(s)"
             + (f": {', '.join(a.rule for a in opened)}" if opened else "")]
    if undelivered:
        parts.append(f"{len(undelivered)} alert event(s) not delivered (last error: "
                     f"{undelivered[0]['error'] or 'not tried yet'}); see `alerts list`")
    ok = not undelivered and not any(a.rule == "stale" for a in opened)
    return ok, "; ".join(parts)
