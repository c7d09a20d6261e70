"""Prometheus metrics for the scheduled sync, and a small `/healthz` + `/metrics` server.

Each `Metrics` has its own CollectorRegistry (not prometheus-client's global one), so a
test or a process can hold several without "duplicated timeseries" errors.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from connector.common.timeutil import parse_timestamp
from connector.errors import ConfigError
from connector.http.server import BackgroundServer, JsonHandler
from connector.reports.model import ENTITIES, FINISHED, Outcome, RunReport, Status

# `*_created` series double the output and no dashboard or alert of ours reads them.
disable_created_metrics()

RUN_STATUSES = tuple(s.value for s in Status if s in FINISHED)
RECORD_OUTCOMES = tuple(o.value for o in Outcome)
# Runs last from seconds (nothing changed) to hours (a first full sync of millions).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class Metrics:
    def __init__(self, *, stale_after_seconds: float = 3 * 900.0,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self.stale_after_seconds = stale_after_seconds
        self.clock = clock
        self.runs = Counter("moesif_segment_runs_total", "Sync runs by final status.",
                            ["status"], registry=self.registry)
        self.records = Counter("moesif_segment_records_total",
                               "Records by entity and outcome.", ["entity", "outcome"],
                               registry=self.registry)
        self.duration = Histogram("moesif_segment_run_duration_seconds",
                                  "Wall-clock duration of sync runs.",
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.last_success = Gauge("moesif_segment_last_success_timestamp_seconds",
                                  "When the last successful run finished (Unix time).",
                                  registry=self.registry)
        self.last_run = Gauge("moesif_segment_last_run_timestamp_seconds",
                              "When the last run finished, whatever its status (Unix time).",
                              registry=self.registry)
        self.alerts_open = Gauge("moesif_segment_alerts_open",
                                 "Open connector alerts by rule and severity (1 = open), as "
                                 "of the last run's report.", ["rule", "severity"],
                                 registry=self.registry)
        self.messages = Counter("moesif_segment_messages_total",
                                "Segment messages by type (identify, group) and outcome "
                                "(sent, delivered, failed).", ["type", "outcome"],
                                registry=self.registry)
        self.issues = Counter("moesif_segment_issues_total", "Report issues by code.",
                              ["code"], registry=self.registry)
        self.in_progress = Gauge("moesif_segment_run_in_progress",
                                 "1 while a sync run is running in this process.",
                                 registry=self.registry)
        build_info(self.registry)
        self.registry.register(RetryCollector())
        # Export zeros from the start so rate() and alerts see every series.
        for status in RUN_STATUSES:
            self.runs.labels(status=status)
        for entity in ENTITIES:
            for outcome in RECORD_OUTCOMES:
                self.records.labels(entity=entity, outcome=outcome)
        self._lock = threading.Lock()
        self.started_at = clock()
        self.last_status: str | None = None
        self.last_run_id: str | None = None
        self.last_error: str | None = None
        self.last_run_at: float | None = None
        self.last_success_at: float | None = None
        # `leader` (holds the sync lease) or `standby` (waits for it); None: not scheduling.
        self.role: str | None = None

    def observe_report(self, report: RunReport | dict[str, Any]) -> None:
        """Count one finished run from its report (a part it lacks counts as nothing)."""
        if not isinstance(report, RunReport):
            report = RunReport.from_dict(report)
        status = str(report.status) if report.status in FINISHED else Status.FAILED.value
        finished = _epoch(report.finished_at) or self.clock()
        self.runs.labels(status=status).inc()
        for entity, counts in report.entities.items():
            for outcome in Outcome:
                value = counts.outcome(outcome)
                if value > 0:
                    self.records.labels(entity=entity, outcome=outcome.value).inc(value)
        for kind, message_counts in report.messages.items():
            for outcome, value in message_counts.model_dump().items():
                if isinstance(value, int) and value > 0:
                    self.messages.labels(type=kind, outcome=outcome).inc(value)
        for code, value in report.issue_counts.items():
            if value > 0:
                self.issues.labels(code=str(code)).inc(value)
        if report.duration_s is not None and report.duration_s >= 0:
            self.duration.observe(report.duration_s)
        self._record_end(status, finished, report.run_id, report.error)
        self.observe_alerts(report)

    def observe_alerts(self, report: RunReport) -> None:
        """Issue 9: the run report's open alerts as `moesif_segment_alerts_open`."""
        if report.alerts is None:
            return
        self.alerts_open.clear()
        for alert in report.alerts.get("open") or []:
            self.alerts_open.labels(rule=str(alert.get("rule")),
                                    severity=str(alert.get("severity"))).set(1)

    def restore(self, runs: list[Any]) -> None:
        """Last run and last success from the stored runs (newest first), so a restart
        does not look stale to an alert on last_success_timestamp_seconds."""
        finished = [r for r in runs if r.status in FINISHED and _epoch(r.finished_at)]
        if not finished:
            return
        last = finished[0]
        self._record_end(str(last.status), _epoch(last.finished_at) or 0.0, last.run_id, None)
        success = next((r for r in finished if r.status == Status.SUCCESS), None)
        if success is not None:
            with self._lock:
                self.last_success_at = _epoch(success.finished_at)
                self.last_success.set(self.last_success_at or 0.0)

    def run_started(self) -> None:
        self.in_progress.set(1)

    def run_ended(self) -> None:
        self.in_progress.set(0)

    def observe_crash(self, reason: str, duration_s: float | None = None) -> None:
        """A run that ended without a report (an exception escaped it)."""
        self.runs.labels(status="failed").inc()
        if duration_s is not None:
            self.duration.observe(duration_s)
        self._record_end("failed", self.clock(), None, reason)

    def _record_end(self, status: str, finished: float, run_id: Any, error: Any) -> None:
        with self._lock:
            self.last_status = status
            self.last_run_id = str(run_id) if run_id else None
            self.last_error = str(error) if error else None
            self.last_run_at = finished
            self.last_run.set(finished)
            if status == Status.SUCCESS:
                self.last_success_at = finished
                self.last_success.set(finished)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for `/healthz`.

        200 when the last run succeeded (or was partial: failures are retried next run) and
        the last success is recent, or when no run finished yet within the grace period;
        503 when the last run failed or the last success is older than `stale_after_seconds`.
        """
        now = self.clock()
        with self._lock:
            status, run_at, success_at = self.last_status, self.last_run_at, self.last_success_at
            body: dict[str, Any] = {
                "last_run_status": status,
                "last_run_id": self.last_run_id,
                "last_run_age_s": _age(now, run_at),
                "last_success_age_s": _age(now, success_at),
                "stale_after_s": self.stale_after_seconds,
            }
            if self.last_error:
                body["last_error"] = self.last_error
        # With no success yet, the clock starts when the process did.
        since_success = now - (success_at if success_at is not None else self.started_at)
        if status == Status.FAILED:
            healthy, reason = False, "the last run failed"
        elif since_success > self.stale_after_seconds:
            healthy, reason = False, "no successful run for longer than stale_after_s"
        elif status is None:
            healthy, reason = True, "no run finished yet (within the grace period)"
        else:
            healthy, reason = True, f"the last run was {status}"
        if self.role is not None:
            body["role"] = self.role
            if self.role == "standby" and status != Status.FAILED:
                # A standby runs nothing while the leader works: not stale, just waiting.
                healthy, reason = True, "standby: another scheduler holds the sync lease"
        body["status"] = "ok" if healthy else "unhealthy"
        body["reason"] = reason
        return (200 if healthy else 503), body

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RetryCollector(Collector):
    """`moesif_segment_http_retries_total{api, status}`: the retries of this process's
    HTTP clients (moesif, segment, moesif_collector), 429s by their status."""

    def collect(self) -> Iterator[Any]:
        from connector.http.retry import retry_counts

        family = CounterMetricFamily("moesif_segment_http_retries",
                                     "HTTP retries by API and status (none: a timeout or "
                                     "connection error).", labels=["api", "status"])
        for (api, status), value in sorted(retry_counts().items()):
            family.add_metric([api, status], value)
        yield family


def build_info(registry: CollectorRegistry) -> None:
    """`moesif_segment_build_info{version=...} 1`: which build a scrape came from."""
    import platform

    from connector import __version__

    Gauge("moesif_segment_build_info", "The connector's version (value is always 1).",
          ["version", "python"], registry=registry).labels(
        version=__version__, python=platform.python_version()).set(1)


def _epoch(value: Any) -> float | None:
    try:
        return parse_timestamp(value).timestamp() if value else None
    except ValueError:
        return None


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 1)


class _MetricsHandler(JsonHandler):
    def do_GET(self) -> None:
        metrics: Metrics = self.app
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.send_text(200, metrics.exposition().decode(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            status, body = metrics.health()
            self.send_json(status, body)
        else:
            self.send_json(404, {"error": "not found", "paths": ["/healthz", "/metrics"]})


def serve_metrics(metrics: Any, port: int, host: str = "127.0.0.1") -> BackgroundServer:
    """Serve `/metrics` and `/healthz` in a background thread; `.stop()` to end, `.url`.

    `metrics` is anything with `exposition()` and `health()` (the sync's or the
    forwarder's). A port that cannot be bound is a usage mistake (ConfigError, exit 2).
    """
    try:
        return BackgroundServer(_MetricsHandler, metrics, host=host, port=port).start()
    except OSError as exc:
        reason = "already in use" if exc.errno == errno.EADDRINUSE else \
            (exc.strerror or type(exc).__name__)
        raise ConfigError(f"--metrics-port {port} on --metrics-host {host}: {reason}; "
                          "choose another port") from None
