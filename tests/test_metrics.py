"""Metrics from reports, and /healthz + /metrics served over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from connector.common.timeutil import parse_timestamp, to_iso
from connector.ops.metrics import Metrics, serve_metrics

FINISHED = "2026-11-22T05:30:03.900Z"


def report(status: str = "success", finished_at: str = FINISHED, **extra) -> dict:
    return {
        "run_id": f"run-{status}", "status": status, "finished_at": finished_at,
        "duration_s": 42.0, "error": "Moesif answered 401" if status == "failed" else None,
        "entities": {
            "users": {"fetched": 100, "changed": 95, "unchanged": 3, "invalid": 2,
                      "delivered": 90, "failed": 4, "gave_up": 1},
            "companies": {"fetched": 10, "delivered": 10},
        },
        **extra,
    }


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock(parse_timestamp(FINISHED).timestamp())


def test_observe_report_counts_runs_records_duration_and_times(clock):
    metrics = Metrics(clock=clock)
    metrics.observe_report(report("success"))
    metrics.observe_report(report("partial"))
    s = samples(metrics)
    assert s[("moesif_segment_runs_total", (("status", "success"),))] == 1
    assert s[("moesif_segment_runs_total", (("status", "partial"),))] == 1
    assert s[("moesif_segment_runs_total", (("status", "failed"),))] == 0
    users = (("entity", "users"),)
    assert s[("moesif_segment_records_total", users + (("outcome", "delivered"),))] == 180
    assert s[("moesif_segment_records_total", users + (("outcome", "invalid"),))] == 4
    assert s[("moesif_segment_records_total", users + (("outcome", "gave_up"),))] == 2
    assert s[("moesif_segment_records_total", (("entity", "companies"),
                                               ("outcome", "delivered")))] == 20
    assert s[("moesif_segment_run_duration_seconds_count", ())] == 2
    assert s[("moesif_segment_run_duration_seconds_sum", ())] == 84.0
    finished = parse_timestamp(FINISHED).timestamp()
    assert s[("moesif_segment_last_success_timestamp_seconds", ())] == finished
    assert s[("moesif_segment_last_run_timestamp_seconds", ())] == finished


def test_registries_are_independent(clock):
    first, second = Metrics(clock=clock), Metrics(clock=clock)
    first.observe_report(report("failed"))
    assert samples(first)[("moesif_segment_runs_total", (("status", "failed"),))] == 1
    assert samples(second)[("moesif_segment_runs_total", (("status", "failed"),))] == 0


def test_health_rules(clock):
    metrics = Metrics(stale_after_seconds=2700, clock=clock)
    code, body = metrics.health()
    assert code == 200 and body["last_run_status"] is None  # grace after start
    clock.now += 2701
    assert metrics.health()[0] == 503  # nothing finished within the grace period
    metrics.observe_report(report("success", finished_at=_iso(clock.now)))
    code, body = metrics.health()
    assert code == 200 and body["last_run_status"] == "success" and body["last_run_age_s"] == 0
    metrics.observe_report(report("partial", finished_at=_iso(clock.now + 60)))
    clock.now += 120
    assert metrics.health()[0] == 200  # partial: failures retried next run
    clock.now += 2700
    code, body = metrics.health()
    assert code == 503 and "no successful run" in body["reason"]
    metrics.observe_report(report("success", finished_at=_iso(clock.now)))
    metrics.observe_crash("ConnectionError: boom", 3.0)
    code, body = metrics.health()
    assert code == 503 and body["last_error"] == "ConnectionError: boom"


def _iso(epoch: float) -> str:
    return to_iso(datetime.fromtimestamp(epoch, UTC))


def test_observe_tolerates_odd_reports(clock):
    metrics = Metrics(clock=clock)
    metrics.observe_report({"entities": {"users": None, "x": {"delivered": "many"}}})
    s = samples(metrics)
    assert s[("moesif_segment_runs_total", (("status", "failed"),))] == 1
    assert metrics.health()[0] == 503


def test_server_exposes_metrics_and_healthz(clock):
    metrics = Metrics(clock=clock)
    server = serve_metrics(metrics, 0)
    try:
        with requests.Session() as http:
            health = http.get(server.url + "/healthz", timeout=5)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            metrics.observe_report(report("failed"))
            health = http.get(server.url + "/healthz", timeout=5)
            assert health.status_code == 503
            assert health.json()["last_error"] == "Moesif answered 401"
            scraped = http.get(server.url + "/metrics", timeout=5)
            assert scraped.status_code == 200
            assert scraped.headers["Content-Type"].startswith("text/plain")
            assert 'moesif_segment_runs_total{status="failed"} 1.0' in scraped.text
            assert http.get(server.url + "/nope", timeout=5).status_code == 404
    finally:
        server.stop()
    assert server.url.startswith("http://127.0.0.1:")
