"""The alert rules: each turns a run report (or the forwarder's spool, or the clock) into a
verdict for one condition: active, clear, or no verdict (None: this evidence cannot tell,
so an open alert stays open and a closed one stays closed).

Every rule has a default and a setting; a threshold of 0, or the rule's name in
ALERT_RULES_DISABLED, switches it off. A switched-off rule gives no verdict.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from connector.reports.model import Mode, RunReport, RunSummary, Status
from connector.settings import Settings

CRITICAL, WARNING = "critical", "warning"


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    source: str  # sync | forward
    setting: str | None  # the threshold setting (0 = off), if any
    help: str


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("run_failed", CRITICAL, "sync", None, "a sync run failed"),
    Rule("records_failed", WARNING, "sync", None, "a sync run ended partial"),
    Rule("rejected_pct", WARNING, "sync", "alert_rejected_pct",
         "Segment refused more than ALERT_REJECTED_PCT % of the records sent"),
    Rule("count_deviation", WARNING, "sync", "alert_count_deviation_pct",
         "users fetched or changed deviate from the median of the last "
         "ALERT_COUNT_DEVIATION_RUNS successful runs by more than ALERT_COUNT_DEVIATION_PCT %"),
    Rule("runtime", WARNING, "sync", "alert_runtime_seconds",
         "a run took longer than ALERT_RUNTIME_SECONDS"),
    Rule("stale", CRITICAL, "sync", "alert_stale_seconds",
         "no successful run for longer than ALERT_STALE_SECONDS"),
    Rule("schema_breaking", CRITICAL, "sync", None,
         "a source field the mapping reads vanished (SCHEMA_DRIFT_POLICY alert|stop)"),
    Rule("schema_added", WARNING, "sync", None,
         "new source fields or types appeared (SCHEMA_DRIFT_POLICY alert|stop)"),
    Rule("backlog_age", WARNING, "forward", "alert_backlog_age_seconds",
         "the oldest spooled event is older than ALERT_BACKLOG_AGE_SECONDS"),
    Rule("dead_letters", WARNING, "forward", None, "new dead letters since the last check"),
    Rule("delivery_stalled", CRITICAL, "forward", "alert_delivery_stalled_seconds",
         "a backlog and no Collector 201 for longer than ALERT_DELIVERY_STALLED_SECONDS"),
)}

# Deviation needs enough records for a percentage to mean something.
MIN_DEVIATION_RECORDS = 20


@dataclass
class Verdict:
    rule: str
    active: bool
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return RULES[self.rule].severity

    @property
    def source(self) -> str:
        return RULES[self.rule].source


def enabled(settings: Settings, rule: str) -> bool:
    disabled = {n.strip() for n in (settings.alert_rules_disabled or "").split(",")}
    spec = RULES[rule]
    if rule in disabled:
        return False
    return spec.setting is None or float(getattr(settings, spec.setting)) > 0


def evaluate_sync(report: RunReport, history: list[RunSummary],
                  settings: Settings) -> list[Verdict]:
    """Verdicts of the sync rules for one finished run (`history`: earlier runs, newest
    first). A dry run judges nothing: it sent nothing."""
    if report.mode == Mode.DRY_RUN or report.status in (Status.RUNNING, Status.INTERRUPTED):
        return []
    verdicts = [v for v in (
        _run_failed(report), _records_failed(report), _rejected(report, settings),
        _deviation(report, history, settings), _runtime(report, settings),
        *_schema(report, settings)) if v is not None]
    return [v for v in verdicts if enabled(settings, v.rule)]


def _run_failed(report: RunReport) -> Verdict | None:
    if report.status == Status.FAILED:
        return Verdict("run_failed", True, f"sync run {report.run_id} failed: {report.error}",
                       {"error": report.error})
    if report.status == Status.SUCCESS:
        return Verdict("run_failed", False, f"sync run {report.run_id} succeeded")
    return None


def _records_failed(report: RunReport) -> Verdict | None:
    if report.status == Status.PARTIAL:
        failed = report.total("failed")
        return Verdict("records_failed", True,
                       f"sync run {report.run_id} ended partial: {failed} record(s) not "
                       "delivered (retried by the next run)", {"failed": failed})
    if report.status == Status.SUCCESS:
        return Verdict("records_failed", False, f"sync run {report.run_id} delivered every "
                                                "record")
    return None


def _rejected(report: RunReport, settings: Settings) -> Verdict | None:
    sent = report.total("sent")
    if report.status == Status.FAILED or sent <= 0:
        return None
    rejected = sum(report.issue_counts.get(c, 0) for c in ("REJECTED", "GAVE_UP"))
    pct = 100.0 * rejected / sent
    limit = settings.alert_rejected_pct
    details = {"rejected": rejected, "sent": sent, "pct": round(pct, 2), "limit_pct": limit}
    return Verdict("rejected_pct", pct > limit,
                   f"Segment refused {rejected} of {sent} records sent ({pct:.1f}%, limit "
                   f"{limit:g}%)", details)


def _deviation(report: RunReport, history: list[RunSummary],
               settings: Settings) -> Verdict | None:
    runs = settings.alert_count_deviation_runs
    if report.status != Status.SUCCESS or runs <= 0:
        return None
    earlier = [h for h in history if h.status == Status.SUCCESS and h.mode != Mode.DRY_RUN
               and h.run_id != report.run_id][:runs]
    if len(earlier) < runs:
        return None  # needs N successful runs of history
    limit = settings.alert_count_deviation_pct
    out: dict[str, Any] = {}
    for count in ("fetched", "changed"):
        now = report.entities["users"].get(count, 0) if "users" in report.entities else 0
        median = statistics.median(
            int((h.entities.get("users") or {}).get(count, 0) or 0) for h in earlier)
        if max(now, median) < MIN_DEVIATION_RECORDS:
            continue
        pct = 100.0 * abs(now - median) / max(median, 1)
        if pct > limit:
            out[count] = {"value": now, "median": median, "deviation_pct": round(pct, 1)}
    if out:
        text = "; ".join(f"users {k} {v['value']} vs median {v['median']:g} "
                         f"({v['deviation_pct']:+.0f}%)" for k, v in out.items())
        return Verdict("count_deviation", True, f"record counts deviate: {text}",
                       {"counts": out, "limit_pct": limit, "runs": runs})
    return Verdict("count_deviation", False, "record counts are within the usual range")


def _runtime(report: RunReport, settings: Settings) -> Verdict | None:
    if report.duration_s is None or report.status == Status.FAILED:
        return None
    limit = settings.alert_runtime_seconds
    took = float(report.duration_s)
    return Verdict("runtime", took > limit,
                   f"sync run {report.run_id} took {took:.1f} s (limit {limit:g} s)",
                   {"duration_s": round(took, 3), "limit_s": limit})


def _schema(report: RunReport, settings: Settings) -> list[Verdict]:
    schema = report.schema_section
    if settings.schema_drift_policy == "report" or not schema:
        return []
    out = []
    gone = schema.get("vanished") or []
    names = ", ".join(f"{g['entity']}.{g['path']}" for g in gone)
    out.append(Verdict("schema_breaking", bool(gone),
                       f"mapped source field(s) vanished: {names}" if gone else
                       "every mapped source field is present",
                       {"vanished": [f"{g['entity']}.{g['path']}" for g in gone]}))
    new = [f"{x['entity']}.{x['path']}" for part in ("added", "type_changed")
           for x in schema.get(part) or []]
    out.append(Verdict("schema_added", bool(new),
                       f"{len(new)} new source field(s) or type(s): {', '.join(new[:10])}"
                       if new else "no new source fields", {"fields": new[:50]}))
    return out


def evaluate_stale(last_success_epoch: float | None, since_epoch: float, now: float,
                   settings: Settings) -> list[Verdict]:
    """`stale`: no successful run for longer than ALERT_STALE_SECONDS (counted from
    `since_epoch`, e.g. the first run or the process start, when none ever succeeded)."""
    if not enabled(settings, "stale"):
        return []
    limit = settings.alert_stale_seconds
    age = now - (last_success_epoch if last_success_epoch is not None else since_epoch)
    return [Verdict("stale", age > limit,
                    f"no successful sync run for {age:.0f} s (limit {limit:g} s)",
                    {"age_s": round(age, 1), "limit_s": limit})]


def evaluate_forward(*, backlog: int, oldest_age_s: float | None, new_dead_letters: int,
                     since_delivery_s: float | None, settings: Settings) -> list[Verdict]:
    """Verdicts of the forwarder's rules from its spool and delivery counters."""
    out = []
    limit = settings.alert_backlog_age_seconds
    age = oldest_age_s or 0.0
    out.append(Verdict("backlog_age", backlog > 0 and age > limit,
                       f"the oldest spooled event is {age:.0f} s old (limit {limit:g} s; "
                       f"{backlog} events spooled)",
                       {"backlog": backlog, "oldest_age_s": round(age, 1), "limit_s": limit}))
    out.append(Verdict("dead_letters", new_dead_letters > 0,
                       f"{new_dead_letters} new dead letter(s) since the last check",
                       {"new_dead_letters": new_dead_letters}))
    stalled_limit = settings.alert_delivery_stalled_seconds
    quiet = since_delivery_s or 0.0
    out.append(Verdict("delivery_stalled", backlog > 0 and quiet > stalled_limit,
                       f"{backlog} events waiting and no Collector 201 for {quiet:.0f} s "
                       f"(limit {stalled_limit:g} s)",
                       {"backlog": backlog, "since_delivery_s": round(quiet, 1),
                        "limit_s": stalled_limit}))
    return [v for v in out if enabled(settings, v.rule)]
