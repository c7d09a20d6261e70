"""ReportStore on a real state file: save, get (id, prefix, latest), list, prune."""

from __future__ import annotations

import re

import pytest

from connector.reports.model import EntityCounts, RunReport
from connector.reports.store import AmbiguousRunId, ReportStore, new_run_id
from connector.state.store import connect


def report(run_id: str, started_at: str, *, status: str = "success", issues: int = 0,
           mode: str = "incremental") -> dict:
    return {
        "run_id": run_id, "started_at": started_at, "finished_at": started_at[:-5] + "9.000Z",
        "mode": mode, "status": status, "error": None, "duration_s": 9.0,
        "entities": {"users": {"fetched": 100, "changed": 10, "unchanged": 90, "invalid": 0,
                               "sent": 10, "delivered": 9, "failed": 1},
                     "companies": {"fetched": 5, "delivered": 5, "failed": 0}},
        "fields": {"identify.traits.email": {"present": 9, "missing": 1, "converted": 0,
                                             "trimmed": 0}},
        "issues": [{"entity": "users", "id": f"usr_{i}", "code": "BAD_VALUE",
                    "detail": f"traits.plan: not a string ({i})", "attempts": 1}
                   for i in range(issues)],
        "issue_counts": {"BAD_VALUE": issues} if issues else {},
        "phases": {"fetch": 1.0},
    }


@pytest.fixture
def conn(tmp_path):
    connection = connect(tmp_path / "state.sqlite3")
    yield connection
    connection.close()


@pytest.fixture
def store(conn):
    return ReportStore(conn)


def test_save_and_get_round_trip_exactly(store):
    saved = report("20261122T053000Z-aaaaaa", "2026-11-22T05:30:00.000Z", issues=3)
    saved["unknown_extra"] = {"nested": ["kept", 1, None]}
    store.save(saved)
    loaded = store.get("20261122T053000Z-aaaaaa")
    assert loaded == RunReport.from_dict(saved)
    assert loaded.to_dict()["unknown_extra"] == {"nested": ["kept", 1, None]}
    assert store.get("nope") is None


def test_a_started_run_is_listed_as_running_then_replaced(store):
    store.start("20261122T060000Z-bbbbbb", "2026-11-22T06:00:00.000Z", "full")
    listed = store.list()
    assert [(r["run_id"], r["status"], r["mode"]) for r in listed] == [
        ("20261122T060000Z-bbbbbb", "running", "full")]
    # `latest` means the newest *finished* run.
    assert store.get("latest") is None
    assert store.get("20261122T060000Z-bbbbbb")["status"] == "running"
    store.save(report("20261122T060000Z-bbbbbb", "2026-11-22T06:00:00.000Z", mode="full"))
    assert store.list()[0]["status"] == "success"
    assert store.count() == 1


def test_list_is_newest_first_with_entity_counts(store):
    store.save(report("20261122T050000Z-000001", "2026-11-22T05:00:00.000Z"))
    store.save(report("20261122T070000Z-000003", "2026-11-22T07:00:00.000Z", status="failed"))
    store.save(report("20261122T060000Z-000002", "2026-11-22T06:00:00.000Z"))
    runs = store.list()
    assert [r["run_id"][-1] for r in runs] == ["3", "2", "1"]
    assert runs[0].entities["users"] == EntityCounts(fetched=100, changed=10, unchanged=90,
                                                     invalid=0, delivered=9, failed=1)
    assert runs[0]["duration_s"] == 9.0 and runs[0]["status"] == "failed"
    assert len(store.list(limit=2)) == 2
    assert store.get("latest")["run_id"] == "20261122T070000Z-000003"
    assert store.latest_run_id() == "20261122T070000Z-000003"


def test_get_by_unique_prefix_and_ambiguous_prefix(store):
    store.save(report("20261122T050000Z-abc111", "2026-11-22T05:00:00.000Z"))
    store.save(report("20261122T050000Z-abd222", "2026-11-22T05:00:00.000Z"))
    assert store.get("20261122T050000Z-abc")["run_id"] == "20261122T050000Z-abc111"
    with pytest.raises(AmbiguousRunId) as info:
        store.get("20261122T050000Z-ab")
    assert len(info.value.candidates) == 2
    # LIKE wildcards in the prefix are literal.
    assert store.get("20261122T050000Z-ab_") is None
    assert store.get("%") is None


def test_prune_keeps_the_last_n_runs_with_full_issue_lists(store):
    for hour in range(6):
        store.save(report(f"20261122T0{hour}0000Z-00000{hour}", f"2026-11-22T0{hour}:00:00.000Z",
                          issues=50), keep=3)
    assert [r["run_id"][-1] for r in store.list()] == ["5", "4", "3"]
    assert len(store.get("20261122T030000Z-000003")["issues"]) == 50
    assert store.get("20261122T000000Z-000000") is None
    assert store.prune(1) == 2 and store.count() == 1


def test_tens_of_thousands_of_issues_are_stored_compactly(store, conn):
    big = report("20261122T080000Z-big000", "2026-11-22T08:00:00.000Z", issues=30_000)
    store.save(big)
    size = conn.execute("SELECT length(report) FROM report_runs").fetchone()[0]
    raw = len(str(big["issues"]))
    assert size < raw / 5, (size, raw)
    assert store.get("latest")["issues"][29_999]["id"] == "usr_29999"


def test_tables_are_created_once_and_survive_reopening(tmp_path):
    path = tmp_path / "state.sqlite3"
    first = connect(path)
    ReportStore(first).save(report("r1", "2026-11-22T05:00:00.000Z"))
    first.close()
    second = connect(path)
    assert ReportStore(second).get("r1")["run_id"] == "r1"
    second.close()


def test_save_requires_a_run_id(store):
    with pytest.raises(ValueError):
        store.save({"status": "success"})


def test_summary_tolerates_odd_reports(store):
    store.save({"run_id": "odd", "entities": {"users": "n/a", "companies": {"fetched": "x"}}})
    assert store.list()[0].entities == {"companies": EntityCounts()}


def test_new_run_id_is_sortable_and_unique():
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", i) for i in ids)


def test_two_connections_see_each_others_runs(tmp_path):
    path = tmp_path / "state.sqlite3"
    writer, reader = connect(path), connect(path)
    try:
        ReportStore(writer).start("r-live", "2026-11-22T05:00:00.000Z", "incremental")
        assert ReportStore(reader).list()[0]["status"] == "running"
    finally:
        writer.close()
        reader.close()


def test_save_inside_the_callers_transaction_commits_with_it(store, conn):
    from connector.state.store import Transaction

    with pytest.raises(RuntimeError), Transaction(conn):
        store.save(report("rolled-back", "2026-11-22T05:00:00.000Z"))
        raise RuntimeError("the job failed before committing")
    assert store.get("rolled-back") is None
    with Transaction(conn):
        store.save(report("committed", "2026-11-22T05:00:00.000Z"), keep=5)
    assert store.get("committed")["run_id"] == "committed"


def _dead_holder() -> str:
    import socket
    import subprocess
    import sys

    # The pid of a process that ran here and is gone (reaped).
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def test_a_run_whose_process_died_is_interrupted_not_running_forever(store):
    store.start("20261122T060000Z-dead01", "2026-11-22T06:00:00.000Z", "incremental",
                holder=_dead_holder())
    assert store.list()[0].status == "interrupted"
    shown = store.get("20261122T060000Z-dead01")
    assert shown.status == "interrupted" and "ended before the run did" in shown.error
    # The next run's start stores the verdict for good.
    store.start("20261122T061500Z-live01", "2026-11-22T06:15:00.000Z", "incremental")
    statuses = {r.run_id: r.status for r in store.list()}
    assert statuses == {"20261122T061500Z-live01": "running",
                        "20261122T060000Z-dead01": "interrupted"}
    row = store.conn.execute("SELECT status FROM report_runs WHERE run_id = ?",
                             ("20261122T060000Z-dead01",)).fetchone()
    assert row == ("interrupted",)


def test_a_run_on_another_host_is_running_while_its_lease_lives(store, conn):
    import time

    from connector.ops.lease import Lease

    store.start("20261122T060000Z-other1", "2026-11-22T06:00:00.000Z", "full",
                holder="elsewhere:4242")
    assert store.list()[0].status == "interrupted"  # no lease at all
    now = [time.time()]
    lease = Lease(conn, "sync", holder="elsewhere:4242:abcd1234", ttl_seconds=60,
                  clock=lambda: now[0])
    assert lease.acquire()
    assert store.list()[0].status == "running"
    assert store.get("20261122T060000Z-other1").status == "running"
    now[0] -= 120  # the same lease, taken two minutes ago: expired
    assert lease.acquire()
    assert store.list()[0].status == "interrupted"


def test_a_new_run_closes_the_unsaved_runs_of_its_own_process(store):
    store.start("20261122T060000Z-mine01", "2026-11-22T06:00:00.000Z", "incremental")
    assert store.list()[0].status == "running"  # this process is alive
    store.start("20261122T061500Z-mine02", "2026-11-22T06:15:00.000Z", "incremental")
    statuses = {r.run_id: r.status for r in store.list()}
    assert statuses == {"20261122T061500Z-mine02": "running",
                        "20261122T060000Z-mine01": "interrupted"}
