"""Operations: metric series an operator scrapes, for the sync and the forwarder."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest
import requests

from connector import __version__
from connector.common.timeutil import parse_timestamp
from connector.errors import ConfigError
from connector.ops.forward_metrics import ForwardMetrics
from connector.ops.metrics import Metrics, serve_metrics
from tests.conftest import APP_ID
from tests.helpers import sync_sandbox
from tests.test_metrics import FINISHED, report, samples


def test_no_created_series_and_a_build_info():
    metrics = Metrics()
    metrics.observe_report(report("success"))
    text = metrics.exposition().decode()
    assert "_created" not in text
    s = samples(metrics)
    info = [k for k in s if k[0] == "moesif_segment_build_info"]
    assert info and ("version", __version__) in info[0][1] and s[info[0]] == 1


def test_messages_by_type_and_outcome_issues_by_code_and_run_in_progress():
    metrics = Metrics()
    metrics.observe_report(report("partial", messages={
        "identify": {"sent": 10, "delivered": 8, "failed": 2}}, issue_counts={"REJECTED": 2}))
    s = samples(metrics)
    assert s[("moesif_segment_messages_total", (("outcome", "failed"),
                                                ("type", "identify")))] == 2
    assert s[("moesif_segment_issues_total", (("code", "REJECTED"),))] == 2
    assert s[("moesif_segment_run_in_progress", ())] == 0
    metrics.run_started()
    assert samples(metrics)[("moesif_segment_run_in_progress", ())] == 1
    metrics.run_ended()
    assert samples(metrics)[("moesif_segment_run_in_progress", ())] == 0


def test_last_success_is_restored_from_the_stored_runs():
    metrics = Metrics()
    runs = [SimpleNamespace(run_id="r2", status="failed", finished_at="2026-11-22T06:00:00Z"),
            SimpleNamespace(run_id="r1", status="success", finished_at=FINISHED)]
    metrics.restore(runs)
    s = samples(metrics)
    assert s[("moesif_segment_last_success_timestamp_seconds", ())] == \
        parse_timestamp(FINISHED).timestamp()
    assert s[("moesif_segment_last_run_timestamp_seconds", ())] == \
        parse_timestamp("2026-11-22T06:00:00Z").timestamp()
    assert metrics.health()[1]["last_run_status"] == "failed"


def test_a_metrics_port_in_use_is_a_usage_mistake():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--metrics-port {port}.*already in use"):
            serve_metrics(Metrics(), port)


def test_forwarder_serves_backlog_counters_and_health(tmp_path, settings_factory):
    from connector.forward.pipeline import run_forward
    from connector.sandbox.apim_log import LogGenerator
    from connector.sandbox.moesif_collector import MoesifCollectorSandbox

    log = tmp_path / "apim_metrics.log"
    LogGenerator(seed=5).write(log, 120)
    collector = MoesifCollectorSandbox({APP_ID}, record_events=False)
    with collector.server() as server:
        settings = settings_factory(moesif_collector_url=server.url)
        assert run_forward(settings, from_log=log, from_jsonl=None, listen=None,
                           wso2_config_path=None, once=True,
                           stop_event=threading.Event()) == 0
    metrics_server = serve_metrics(ForwardMetrics(settings), 0)
    try:
        text = requests.get(f"{metrics_server.url}/metrics", timeout=5).text
        health = requests.get(f"{metrics_server.url}/healthz", timeout=5)
    finally:
        metrics_server.stop()
    delivered = next(ln for ln in text.splitlines()
                     if ln.startswith('moesif_forward_events_total{stage="delivered"}'))
    assert float(delivered.split()[-1]) == collector.unique_count > 0
    assert "moesif_forward_backlog_events 0.0" in text
    assert "moesif_forward_dead_letters_total" in text and "_created" not in text
    assert health.status_code == 200 and health.json()["backlog"] == 0


def test_http_retries_and_429s_are_counted_by_api_and_status(settings_factory):
    from connector.sync.job import run_sync

    def retries_429() -> float:
        s = samples(Metrics())
        return s.get(("moesif_segment_http_retries_total",
                      (("api", "segment"), ("status", "429"))), 0.0)

    before = retries_429()
    with sync_sandbox(30, 3) as sb:
        sb.segment.inject(429, count=1)
        settings = settings_factory(moesif_api_url=sb.moesif_url, segment_host=sb.segment_url)
        assert run_sync(settings, "incremental").exit_code == 0
    assert retries_429() == before + 1
