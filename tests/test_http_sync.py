"""Sync runs against misconfigured or failing destinations (issue 7 items 3 and 4).

A wrong address or a mapping Segment refuses stops the run with exit 2 and moves no
record's attempt count; an outage ends the run early with exit 1, keeping the rest for
the next run. In every case a later run with the problem fixed delivers everyone.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from connector.reports.store import ReportStore
from connector.sync.job import run_sync
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY, assert_no_keys_in
from tests.helpers import sync_sandbox

USERS, COMPANIES = 250, 20


@pytest.fixture(scope="module")
def shared():
    with sync_sandbox(USERS, COMPANIES) as sb:
        yield sb


@pytest.fixture()
def sandbox(shared):
    shared.segment.reset()
    shared.moesif.clear_faults()
    return shared


@pytest.fixture()
def settings(sandbox, settings_factory):
    return settings_factory(moesif_api_url=sandbox.moesif_url, segment_host=sandbox.segment_url,
                            segment_max_retries=1, segment_batch_messages=50)


def rows(settings, sql: str) -> list[tuple]:
    with sqlite3.connect(settings.state_path) as conn:
        return conn.execute(sql).fetchall()


def delivered_users(sandbox) -> set[str]:
    return {m["userId"] for m in sandbox.segment.messages if m["type"] == "identify"}


def assert_healed(sandbox, settings, first_report) -> None:
    """The problem fixed, the next run delivers every user the sandbox can take."""
    sandbox.segment.reset()
    healed = run_sync(settings)
    assert healed.exit_code == 0, healed.report["error"]
    oversize = {i["id"] for i in healed.report["issues"] if i["code"] == "OVERSIZE"}
    valid = {sandbox.dataset.user_id(i) for i in range(USERS)} - {None, ""}
    missing = valid - oversize - delivered_users(sandbox)
    # Users whose hash was committed by the first run need no re-send.
    committed = {r[0] for r in rows(settings, "SELECT id FROM record_hash WHERE entity='users'")}
    assert missing <= committed
    assert not rows(settings, "SELECT * FROM failed_record")


def stored(settings, run_id: str) -> dict:
    with sqlite3.connect(settings.state_path) as conn:
        return ReportStore(conn).get(run_id)


def test_wrong_segment_path_stops_at_once_and_moves_no_attempt(sandbox, settings):
    wrong = settings.model_copy(update={"segment_host": sandbox.segment_url + "/wrong"})
    outcome = run_sync(wrong)
    error = outcome.report["error"]
    assert outcome.exit_code == 2 and outcome.report["status"] == "failed"
    assert "SEGMENT_HOST" in error and "404" in error and "/wrong/v1/batch" in error
    assert sandbox.segment.stats()["requests"] <= 2  # no splitting, no retries
    assert not rows(settings, "SELECT * FROM failed_record")
    assert not rows(settings, "SELECT * FROM sync_cursor")
    assert stored(settings, outcome.report["run_id"])["status"] == "failed"
    assert_no_keys_in(error)
    assert_healed(sandbox, settings, outcome.report)


def test_proxy_html_page_stops_the_run_naming_the_host(sandbox, settings):
    sandbox.segment.inject(400, count=10_000, html=True)
    outcome = run_sync(settings)
    assert outcome.exit_code == 2 and "SEGMENT_HOST" in outcome.report["error"]
    assert sandbox.segment.stats()["requests"] == 1
    assert not rows(settings, "SELECT * FROM failed_record")
    assert_healed(sandbox, settings, outcome.report)


def test_every_message_refused_alike_is_the_mappings_problem(sandbox, settings):
    sandbox.segment.inject(400, count=100_000)
    outcome = run_sync(settings)
    assert outcome.exit_code == 2 and "mapping" in outcome.report["error"]
    assert sandbox.segment.stats()["requests"] <= 6  # one batch and five probes
    assert not rows(settings, "SELECT * FROM failed_record")
    assert "REJECTED" not in outcome.report["issue_counts"]
    assert_healed(sandbox, settings, outcome.report)


def test_outage_ends_the_run_early_without_counting_attempts(sandbox, settings):
    sandbox.segment.inject(503, count=100_000)
    outcome = run_sync(settings)
    report = outcome.report
    assert outcome.exit_code == 1 and report["status"] == "failed"
    assert "Segment unavailable" in report["error"]
    # three batches, each tried twice (segment_max_retries=1); then nothing more is sent
    assert sandbox.segment.stats()["requests"] == 3 * 2
    assert not rows(settings, "SELECT * FROM failed_record")
    assert not rows(settings, "SELECT * FROM sync_cursor")
    assert stored(settings, report["run_id"])["error"] == report["error"]
    users = report["entities"]["users"]  # the counts add up in a failed run too
    assert users["failed"] > 0 and users["changed"] == users["delivered"] + users["failed"]
    assert_healed(sandbox, settings, report)


def test_outage_stops_the_pages_queued_behind_the_failing_one(sandbox, settings):
    """Two pages are in flight at once; once one meets the outage, the page queued
    behind it sends nothing (no second round of retries before the run ends)."""
    small = settings.model_copy(update={"moesif_page_size": 20, "segment_batch_messages": 10})
    sandbox.segment.inject(503, count=100_000)
    outcome = run_sync(small)
    assert outcome.exit_code == 1 and "Segment unavailable" in outcome.report["error"]
    assert sandbox.segment.stats()["requests"] == 3 * 2  # the first page's three batches
    users = outcome.report["entities"]["users"]
    assert users["delivered"] == 0 and users["changed"] == users["failed"] > 0
    assert not rows(settings, "SELECT * FROM sync_cursor")
    assert_healed(sandbox, small, outcome.report)


def test_outage_mid_page_commits_what_segment_confirmed(sandbox, settings):
    two = settings.model_copy(update={"segment_max_failed_batches": 2})
    sandbox.segment.inject(503, count=100_000, after=2)  # two batches go through
    outcome = run_sync(two)
    assert outcome.exit_code == 1 and "Segment unavailable" in outcome.report["error"]
    committed = rows(settings, "SELECT id FROM record_hash WHERE entity='users'")
    users = outcome.report["entities"]["users"]
    assert committed and users["delivered"] == len(committed)
    assert users["changed"] == users["delivered"] + users["failed"] and users["failed"] > 0
    assert outcome.report["issue_counts"]["DELIVERY_FAILED"] == users["failed"]
    assert {r[0] for r in committed} <= delivered_users(sandbox)
    assert not rows(settings, "SELECT * FROM failed_record")
    assert not rows(settings, "SELECT * FROM sync_cursor")
    assert_healed(sandbox, settings, outcome.report)


def test_cli_wrong_url_setting_exits_2_naming_it(tmp_path):
    env = {"MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY, "SEGMENT_WRITE_KEY": WRITE_KEY,
           "SEGMENT_HOST": "api.segment.io", "CONNECTOR_HOME": str(tmp_path / "home"),
           "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "connector", "sync"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "SEGMENT_HOST" in done.stderr and "scheme must be http or https" in done.stderr
    assert "Traceback" not in done.stderr
