"""Replicas on one PostgreSQL STATE_URL: the sync on PostgreSQL, and schedulers as real
processes, the leader SIGKILLed mid-run, the next one taking over, every user delivered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from connector.sandbox.dataset import HUGE_NAME_INDEX
from connector.sync.job import run_sync
from tests.backends import free_port, pg_url  # noqa: F401  (fixture)
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY, assert_no_keys_in
from tests.helpers import identify_ids, sync_sandbox, wait_until

USERS, COMPANIES = 600, 40


@pytest.fixture
def sandbox():
    with sync_sandbox(USERS, COMPANIES) as sb:
        yield sb


def deliverable(sandbox) -> set[str]:
    ds = sandbox.dataset
    ids = {ds.user_id(i) for i in range(USERS)}
    return {i for i in ids if i} - {ds.user_id(HUGE_NAME_INDEX)}  # 72 KB: never sent


def test_sync_runs_on_postgresql(sandbox, settings_factory, pg_url):  # noqa: F811
    settings = settings_factory(moesif_api_url=sandbox.moesif_url,
                                segment_host=sandbox.segment_url, state_url=pg_url)
    first = run_sync(settings)
    assert first.exit_code == 0 and first.report.status == "success"
    assert identify_ids(sandbox) == deliverable(sandbox)
    again = run_sync(settings, "incremental")
    assert again.exit_code == 0 and again.report.entities["users"].delivered == 0
    with psycopg.connect(pg_url) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM report_runs")]
    assert statuses == ["success", "success"]
    assert not (Path(settings.connector_home) / "state.sqlite3").exists()


def lease_row(url: str) -> tuple[str, int] | None:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT holder, token, expires_at FROM leases "
                               "WHERE name = 'sync'").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    if row is None or not row[0] or row[2] <= time.time():
        return None
    return row[0], row[1]


def pid_of(holder: str) -> int:
    return int(holder.split(":")[1])


def healthz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return {}


def test_three_schedulers_leader_killed_next_takes_over(sandbox, pg_url, tmp_path):  # noqa: F811
    sandbox.segment.inject_delay(0.3, count=8)  # keep the first leader busy long enough
    ports = [free_port() for _ in range(3)]
    procs: dict[int, tuple[subprocess.Popen, int]] = {}
    for n, port in enumerate(ports):
        env = dict(os.environ, MOESIF_API_URL=sandbox.moesif_url,
                   SEGMENT_HOST=sandbox.segment_url, MOESIF_MANAGEMENT_API_KEY=MANAGEMENT_KEY,
                   SEGMENT_WRITE_KEY=WRITE_KEY, CONNECTOR_HOME=str(tmp_path / f"host{n}"),
                   STATE_URL=pg_url, MOESIF_PAGE_SIZE="50", SYNC_INTERVAL="1h",
                   LEASE_SECONDS="10",
                   MAPPINGS_DIR=str(Path(__file__).resolve().parents[1] / "mappings"))
        log = (tmp_path / f"host{n}.log").open("w")  # a file: a full pipe would block it
        proc = subprocess.Popen([sys.executable, "-m", "connector", "schedule", "--no-progress",
                                 "--metrics-port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs[proc.pid] = (proc, port)
    try:
        leader, token = wait_until(lambda: lease_row(pg_url), 30, "a leader")
        assert sandbox.segment.wait_for(1, timeout=30), "the leader sent nothing"
        standbys = [p for p in procs if p != pid_of(leader)]
        wait_until(lambda: all(healthz(procs[p][1]).get("role") == "standby"
                               for p in standbys), 20, "standbys on /healthz")
        os.kill(pid_of(leader), signal.SIGKILL)
        procs.pop(pid_of(leader))[0].wait()
        partial = identify_ids(sandbox)
        assert partial != deliverable(sandbox), "the leader finished before it was killed"

        second, second_token = wait_until(
            lambda: (row := lease_row(pg_url)) and row[0] != leader and row, 15,
            "a standby to take over")
        assert pid_of(second) in standbys and second_token == token + 1

        def finished() -> bool:
            with psycopg.connect(pg_url) as conn:
                return bool(conn.execute("SELECT 1 FROM report_runs WHERE status = 'success'")
                            .fetchone())
        wait_until(finished, 90, "the new leader's run to succeed")
        assert identify_ids(sandbox) == deliverable(sandbox)
        assert healthz(procs[pid_of(second)][1])["role"] == "leader"
        report = subprocess.run(
            [sys.executable, "-m", "connector", "report", "list"], capture_output=True,
            text=True, timeout=60, env=dict(os.environ, STATE_URL=pg_url,
                                            CONNECTOR_HOME=str(tmp_path / "cli")))
        assert f"held by {second} (token {second_token}" in report.stdout
        assert "interrupted" in report.stdout and "success" in report.stdout

        # A clean exit hands the lease over at once to the last standby.
        os.kill(pid_of(second), signal.SIGTERM)
        proc, _ = procs.pop(pid_of(second))
        assert proc.wait(timeout=30) == 0
        third, third_token = wait_until(
            lambda: (row := lease_row(pg_url)) and row[0] != second and row, 5,
            "the last standby to take over after a clean exit")
        assert pid_of(third) in procs and third_token == second_token + 1
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in tmp_path.glob("host*.log"):
            assert_no_keys_in(log.read_text())
