"""Alerts (issue 9): rules raise and resolve once, signed webhook delivery to a real
receiver on loopback, bounded retries against a dead receiver, state across restarts."""

from __future__ import annotations

import json
import socket
import time

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.alerts import check_stale, deliver_pending, forward_tick, send_test
from connector.alerts.rules import Verdict, evaluate_sync
from connector.alerts.state import AlertStore
from connector.alerts.webhook import SIGNATURE_HEADER, sign, verify
from connector.reports.model import RunReport, RunSummary
from connector.sandbox.alert_receiver import AlertReceiver
from connector.state.store import connect
from connector.sync.job import run_sync
from tests.conftest import ALL_KEYS
from tests.helpers import sync_sandbox

SECRET = "whsec-test-3f9a1c"


@pytest.fixture
def receiver():
    app = AlertReceiver(secret=SECRET)
    with app.server() as server:
        app.url = server.url
        yield app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events(app: AlertReceiver, rule: str) -> list[str]:
    return [e["event"] for e in app.events() if e.get("rule") == rule]


def test_sync_rules_raise_and_resolve_once_across_restarts(receiver, settings_factory):
    with sync_sandbox(60, 5) as sb:
        base = {"moesif_api_url": sb.moesif_url, "segment_host": sb.segment_url,
                "alert_webhook_url": receiver.url,
                "alert_webhook_secret": SecretStr(SECRET), "alert_webhook_max_seconds": 3.0}
        # 1: a refused write key fails the run (run_failed), and the run is "slow".
        bad = settings_factory(**base, segment_write_key=SecretStr("wrong-key-1234"),
                               alert_runtime_seconds=0.000001)
        first = run_sync(bad)
        assert first.report.status == "failed"
        assert {a["rule"] for a in first.report.alerts["raised"]} == {"run_failed"}
        # 2: a restart (a new process would open the state the same way) fails again:
        # nothing is repeated.
        assert run_sync(bad).report.alerts["raised"] == []
        # 3: a good, slow run resolves run_failed and raises runtime.
        slow = settings_factory(**base, alert_runtime_seconds=0.000001)
        third = run_sync(slow)
        assert third.report.status == "success"
        assert [a["rule"] for a in third.report.alerts["resolved"]] == ["run_failed"]
        assert {a["rule"] for a in third.report.alerts["raised"]} == {"runtime"}
        assert {a["rule"] for a in third.report.alerts["open"]} == {"runtime"}
        # 4: again slow: still open, not repeated; 5: fast enough: resolved once.
        assert run_sync(slow).report.alerts["raised"] == []
        fifth = run_sync(settings_factory(**base))
        assert [a["rule"] for a in fifth.report.alerts["resolved"]] == ["runtime"]
        assert fifth.report.alerts["open"] == []
        assert fifth.report.to_dict()["alerts"]["open"] == []
    assert receiver.wait_for(4)
    assert _events(receiver, "run_failed") == ["alert.raised", "alert.resolved"]
    assert _events(receiver, "runtime") == ["alert.raised", "alert.resolved"]
    assert all(r.verified for r in receiver.received)
    payload = receiver.events("alert.raised")[0]
    assert set(payload) >= {"event", "alert_id", "rule", "severity", "source", "run_id",
                            "message", "details", "occurred_at", "report", "text"}
    assert payload["severity"] == "critical" and payload["source"] == "sync"
    raw = json.dumps(receiver.events())
    assert SECRET not in raw and not any(k in raw for k in ALL_KEYS) and "wrong-key" not in raw


def test_dead_receiver_is_bounded_and_the_alert_is_not_forgotten(settings_factory):
    dead = AlertReceiver(status=503)
    with dead.server() as server:
        settings = settings_factory(alert_webhook_url=server.url, alert_webhook_max_seconds=1.0,
                                    alert_stale_seconds=1)
        conn = connect(settings.state_path)
        started = time.monotonic()
        events = check_stale(settings, conn, now=time.time() + 10)
        took = time.monotonic() - started
        assert [e["event"] for e in events] == ["alert.raised"]
        assert took < 1.0 + 0.8, took  # the bound, plus one request's slack
        assert len(dead.received) >= 2  # it was retried
        assert [u["rule"] for u in AlertStore(conn).undelivered()] == ["stale"]
        # The receiver recovers: the next pass delivers the same alert once.
        dead.status = 200
        assert deliver_pending(settings, conn) == 1
        assert AlertStore(conn).undelivered() == []
        assert deliver_pending(settings, conn) == 0
        conn.close()
    ids = {e["alert_id"] for e in dead.events()}
    assert len(ids) == 1


def test_unreachable_receiver_does_not_slow_a_run_beyond_the_bound(settings_factory):
    url = f"http://127.0.0.1:{_free_port()}/hook"
    settings = settings_factory(alert_webhook_url=url, alert_webhook_max_seconds=0.5,
                                alert_stale_seconds=1)
    conn = connect(settings.state_path)
    started = time.monotonic()
    check_stale(settings, conn, now=time.time() + 10)
    assert time.monotonic() - started < 1.5
    assert AlertStore(conn).undelivered()[0]["error"]
    conn.close()


def test_alerts_test_event_and_signature(receiver, settings_factory):
    settings = settings_factory(alert_webhook_url=f"{receiver.url},{receiver.url}",
                                alert_webhook_secret=SecretStr(SECRET))
    results = send_test(settings)
    assert [r.ok for r in results] == [True, True]
    assert receiver.events()[0]["event"] == "alert.test"
    assert receiver.received[0].signature.startswith("t=")
    assert all(r.verified for r in receiver.received)
    receiver.status = 500
    assert not any(r.ok for r in send_test(settings_factory(
        alert_webhook_url=receiver.url, alert_webhook_max_seconds=0.3)))


@hsettings(max_examples=30, deadline=None)
@given(body=st.binary(max_size=200), t=st.integers(0, 2**31), other=st.binary(max_size=5))
def test_signature_verifies_only_the_signed_body(body, t, other):
    header = sign(SECRET, body, t)
    assert verify(SECRET, body, header, now=t)
    assert not verify("other-secret", body, header, now=t)
    assert not verify(SECRET, body + other, header, now=t) or other == b""
    assert not verify(SECRET, body, header, now=t + 301)
    assert SIGNATURE_HEADER == "X-Connector-Signature"


def _report(status="success", **kw) -> RunReport:
    base = {"run_id": "r1", "mode": "incremental", "status": status, "duration_s": 1.0,
            "entities": {"users": {"fetched": 100, "changed": 50, "sent": 50},
                         "companies": {}}}
    base.update(kw)
    return RunReport.from_dict(base)


def _apply(store: AlertStore, verdicts: list[Verdict]) -> list[tuple[str, str]]:
    return [(e["rule"], e["event"]) for e in store.apply(verdicts, run_id="r")]


def test_each_report_rule_raises_and_resolves_once(settings_factory, tmp_path):
    settings = settings_factory(schema_drift_policy="alert", alert_count_deviation_runs=3)
    store = AlertStore(connect(tmp_path / "s.sqlite3"))
    history = [RunSummary.from_dict({"run_id": f"h{i}", "status": "success",
                                     "mode": "incremental",
                                     "entities": {"users": {"fetched": 100, "changed": 50}}})
               for i in range(3)]
    bad = _report("partial", issue_counts={"REJECTED": 10},
                  entities={"users": {"fetched": 1000, "changed": 50, "sent": 50,
                                      "failed": 10}},
                  schema={"added": [{"entity": "users", "path": "x"}], "type_changed": [],
                          "vanished": [{"entity": "users", "path": "email"}]})
    raised = _apply(store, evaluate_sync(bad, history, settings))
    assert sorted(raised) == sorted((r, "alert.raised") for r in (
        "records_failed", "rejected_pct", "schema_breaking", "schema_added"))
    assert _apply(store, evaluate_sync(bad, history, settings)) == []
    deviating = _report(entities={"users": {"fetched": 1000, "changed": 50, "sent": 50}})
    moved = _apply(store, evaluate_sync(deviating, history, settings))
    assert ("count_deviation", "alert.raised") in moved
    good = _report(schema={"added": [], "type_changed": [], "vanished": []})
    resolved = [m for m in moved if m[1] == "alert.resolved"]
    resolved += _apply(store, evaluate_sync(good, history, settings))
    assert sorted(resolved) == sorted((r, "alert.resolved") for r in (
        "records_failed", "rejected_pct", "schema_breaking", "schema_added",
        "count_deviation"))
    assert store.open_alerts() == []
    # Not enough history: no verdict; a dry run judges nothing.
    assert not [v for v in evaluate_sync(deviating, history[:2], settings)
                if v.rule == "count_deviation"]
    assert evaluate_sync(_report("failed", mode="dry-run"), history, settings) == []


def test_rules_can_be_switched_off(settings_factory):
    settings = settings_factory(alert_rules_disabled="run_failed", alert_runtime_seconds=0)
    rules = {v.rule for v in evaluate_sync(_report("failed", duration_s=99999.0), [], settings)}
    assert "run_failed" not in rules and "runtime" not in rules


def test_forward_rules_raise_and_resolve_once(receiver, settings_factory):
    settings = settings_factory(alert_webhook_url=receiver.url,
                                alert_webhook_secret=SecretStr(SECRET),
                                alert_backlog_age_seconds=60, alert_delivery_stalled_seconds=60)
    conn = connect(settings.state_path)
    bad = {"backlog": 500, "oldest_age_s": 120.0, "since_delivery_s": 120.0}
    events = forward_tick(settings, conn, dead_letters_total=3, **bad)
    assert sorted(e["rule"] for e in events) == ["backlog_age", "dead_letters",
                                                 "delivery_stalled"]
    # Same condition: nothing new; no new dead letters resolves that one.
    assert [e["rule"] for e in forward_tick(settings, conn, dead_letters_total=3, **bad)] \
        == ["dead_letters"]
    cleared = forward_tick(settings, conn, backlog=0, oldest_age_s=None, since_delivery_s=1.0,
                           dead_letters_total=3)
    assert sorted((e["rule"], e["event"]) for e in cleared) == [
        ("backlog_age", "alert.resolved"), ("delivery_stalled", "alert.resolved")]
    conn.close()
    assert receiver.wait_for(6)
    assert all(r.verified and r.payload["source"] == "forward" for r in receiver.received)


def test_alerts_cli_list_test_check_and_metric(receiver, settings_factory, monkeypatch,
                                               tmp_path):
    from typer.testing import CliRunner

    from connector.cli import app
    from connector.ops.checks import check_alerts
    from connector.ops.metrics import Metrics

    home = tmp_path / "cli-home"
    monkeypatch.setenv("CONNECTOR_HOME", str(home))
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ALERT_WEBHOOK_SECRET", SECRET)
    runner = CliRunner()
    assert runner.invoke(app, ["alerts", "list"]).output.startswith("no open alerts")
    result = runner.invoke(app, ["alerts", "test"])
    assert result.exit_code == 0, result.output
    assert receiver.received[-1].verified and SECRET not in result.output
    receiver.status = 404
    assert runner.invoke(app, ["alerts", "test"]).exit_code == 1
    receiver.status = 200
    # A stale sync: raised by the check, listed, failing `check`.
    settings = settings_factory(connector_home=home, alert_webhook_url=receiver.url,
                                alert_stale_seconds=5)
    conn = connect(settings.state_path)
    AlertStore(conn).set_mark("stale.since", str(time.time() - 60))  # never succeeded
    check_stale(settings, conn)
    conn.close()
    listed = runner.invoke(app, ["alerts", "list"])
    assert listed.exit_code == 0 and "stale" in listed.output
    result = check_alerts(settings)
    assert not result.ok and "stale" in result.detail
    metrics = Metrics()
    metrics.observe_report(_report(alerts={"open": [{"rule": "stale",
                                                     "severity": "critical"}]}))
    text = metrics.exposition().decode()
    assert 'moesif_segment_alerts_open{rule="stale",severity="critical"} 1.0' in text


def test_forward_alerts_read_the_real_spool(settings_factory):
    from connector.alerts.forward import ForwardAlerts
    from connector.forward.spool import Spool

    settings = settings_factory(alert_backlog_age_seconds=0.001,
                                alert_delivery_stalled_seconds=0.001)
    conn = connect(settings.state_path)
    spool = Spool(conn, 1000)
    seqs = spool.append([("k1", b"{}"), ("k2", b"{}")])
    watcher = ForwardAlerts(settings)
    # The first tick sees the delivery counter for the first time: not stalled yet.
    raised = [e["rule"] for e in watcher.tick(conn)]
    assert "delivery_stalled" not in raised
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(raised) < 2:
        raised += [e["rule"] for e in watcher.tick(conn)]
    assert sorted(raised) == ["backlog_age", "delivery_stalled"]
    spool.dead_letter(seqs[:1], "REJECTED_BY_COLLECTOR", "400")
    assert [e["rule"] for e in watcher.tick(conn)] == ["dead_letters"]
    spool.ack(seqs[1:])
    spool.bump({"delivered": 1})
    resolved = {(e["rule"], e["event"]) for e in watcher.tick(conn)}
    assert resolved == {("backlog_age", "alert.resolved"), ("delivery_stalled", "alert.resolved"),
                        ("dead_letters", "alert.resolved")}
    conn.close()


def test_a_dead_receiver_delays_a_sync_run_by_at_most_the_bound(settings_factory):
    dead = AlertReceiver(status=500)
    with sync_sandbox(40, 4) as sb, \
            dead.server() as server:
        settings = settings_factory(moesif_api_url=sb.moesif_url, segment_host=sb.segment_url,
                                    alert_webhook_url=server.url, alert_webhook_max_seconds=1.0,
                                    alert_runtime_seconds=0.000001)
        started = time.monotonic()
        outcome = run_sync(settings)
        took = time.monotonic() - started
    assert outcome.report.status == "success" and outcome.exit_code == 0
    assert [a["rule"] for a in outcome.report.alerts["raised"]] == ["runtime"]
    assert len(dead.received) >= 2
    assert took - outcome.report.duration_s < 1.0 + 1.0, took
