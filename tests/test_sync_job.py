"""The sync job end to end, over loopback against the Moesif and Segment sandboxes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connector.sandbox.dataset import HUGE_NAME_INDEX
from connector.state.store import connect
from connector.sync.job import run_sync
from connector.sync.state import SyncState
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY, assert_no_keys_in, assert_no_keys_in_tree
from tests.helpers import identify_ids, sync_sandbox

USERS, COMPANIES = 600, 40


@pytest.fixture
def sandbox():
    with sync_sandbox(USERS, COMPANIES) as sb:
        yield sb


def valid_user_ids(sandbox) -> set[str]:
    ds = sandbox.dataset
    ids = {ds.user_id(i) for i in range(USERS)}
    return {i for i in ids if i}


def check_counts_add_up(report, real_run=True):
    for entity, c in report["entities"].items():
        assert c["fetched"] == c["changed"] + c["unchanged"] + c["invalid"], entity
        if real_run:
            assert c["changed"] == c["delivered"] + c["failed"], entity


def test_first_run_delivers_every_valid_user_and_reports_the_rest(sandbox, settings):
    outcome = run_sync(settings)
    report = outcome.report
    assert outcome.exit_code == 0, report
    assert report["status"] == "success"
    check_counts_add_up(report)
    users = report["entities"]["users"]
    codes = report["issue_counts"]
    assert codes.get("MISSING_ID", 0) >= 2
    assert codes.get("OVERSIZE", 0) >= 1 and codes.get("OVERSIZE_TRIMMED", 0) >= 1
    assert codes.get("BAD_TIMESTAMP", 0) >= 1
    delivered = identify_ids(sandbox)
    oversize = {i["id"] for i in report["issues"] if i["code"] == "OVERSIZE"}
    assert delivered == valid_user_ids(sandbox) - oversize
    assert users["delivered"] == len(delivered)
    # one group call per delivered user that has a company
    groups = [m for m in sandbox.segment.messages if m["type"] == "group"]
    with_company = {m["userId"] for m in sandbox.segment.messages
                    if m["type"] == "identify" and "company" in m["traits"]}
    assert {g["userId"] for g in groups} == with_company and groups
    # the seed's traits made it, with the message timestamp = modified_time
    sample = next(m for m in sandbox.segment.messages if m["type"] == "identify"
                  and "company" in m["traits"] and "email" in m["traits"])
    assert sample["traits"]["id"] == sample["userId"]
    assert sample["timestamp"].startswith(sample["traits"]["modifiedTime"][:19])
    assert {"id", "modifiedTime", "companyDomain"} & set(sample["traits"]["company"])
    for m in sandbox.segment.messages:
        assert len(m["messageId"]) <= 100
        assert len(json.dumps(m)) <= 32 * 1024
    # field coverage is counted
    email = report["fields"]["identify.traits.email"]
    assert email["present"] > 0 and email["missing"] > 0


def test_unchanged_rerun_sends_nothing_and_touched_user_is_resent(sandbox, settings):
    assert run_sync(settings).exit_code == 0
    sent_before = len(sandbox.segment.messages)
    again = run_sync(settings)
    assert again.exit_code == 0
    assert len(sandbox.segment.messages) == sent_before
    assert again.report["entities"]["users"]["delivered"] == 0

    uid = sandbox.dataset.user_id(100)
    old_ids = {m["messageId"] for m in sandbox.segment.messages if m["userId"] == uid}
    sandbox.dataset.touch_users([uid])
    third = run_sync(settings)
    new = [m for m in sandbox.segment.messages[sent_before:]]
    assert {m["userId"] for m in new} == {uid}
    assert not {m["messageId"] for m in new} & old_ids
    assert third.report["entities"]["users"]["delivered"] == 1


def test_full_resends_everything_with_the_same_message_ids(sandbox, settings):
    run_sync(settings)
    first = {m["messageId"] for m in sandbox.segment.messages}
    assert sandbox.segment.duplicates == 0  # one run sends each message once
    full = run_sync(settings, mode="full")
    assert full.report["mode"] == "full"
    # everything again, once, with the same ids: Segment drops the repeats
    assert len(sandbox.segment.messages) == 2 * len(first)
    assert sandbox.segment.duplicates == len(first)
    assert {m["messageId"] for m in sandbox.segment.messages} == first


def test_dry_run_sends_nothing_and_moves_nothing(sandbox, settings):
    outcome = run_sync(settings, mode="dry-run")
    report = outcome.report
    assert report["mode"] == "dry-run" and "nothing was sent" in report["dry_run_note"]
    assert sandbox.segment.received_count == 0
    assert report["entities"]["users"]["changed"] > 0
    assert report["entities"]["users"]["sent"] == 0
    check_counts_add_up(report, real_run=False)
    conn = connect(settings.state_path)
    assert SyncState(conn).cursor("users") is None
    # the real run afterwards still sends everything
    assert run_sync(settings).report["entities"]["users"]["delivered"] > 0


def test_records_modified_during_the_run_are_not_lost(sandbox, settings):
    touched: list[str] = []

    def progress(event, **kw):
        if event == "fetched" and kw.get("entity") == "users" and not touched:
            ids = [sandbox.dataset.user_id(i) for i in (30, 31, 590)]
            touched.extend(i for i in ids if i)
            sandbox.dataset.touch_users(touched)

    first = run_sync(settings, progress=progress)
    assert first.exit_code == 0 and touched
    run_sync(settings)
    # every touched user's newest version reached Segment, in the first run or the next
    for uid in touched:
        newest = sandbox.dataset.get_user(uid)["modified_time"][:19]
        sent = [m["traits"]["modifiedTime"][:19] for m in sandbox.segment.messages
                if m["type"] == "identify" and m["userId"] == uid]
        assert newest in sent, uid


def test_429_without_retry_after_and_5xx_are_retried(sandbox, settings):
    sandbox.moesif.inject(429, count=1)
    sandbox.moesif.inject(503, count=2)
    outcome = run_sync(settings.model_copy(update={"moesif_max_retries": 4}))
    assert outcome.exit_code == 0
    assert identify_ids(sandbox)


def test_wrong_management_key_is_exit_2_without_the_key(sandbox, settings):
    from pydantic import SecretStr

    wrong = "wrong-management-key-abcdef"
    outcome = run_sync(settings.model_copy(update={"moesif_management_api_key": SecretStr(wrong)}))
    assert outcome.exit_code == 2
    assert "MOESIF_MANAGEMENT_API_KEY" in outcome.report["error"]
    assert wrong not in json.dumps(outcome.report.to_dict())


def test_missing_settings_are_named(settings):
    outcome = run_sync(settings.model_copy(update={"segment_write_key": None}))
    assert outcome.exit_code == 2 and "SEGMENT_WRITE_KEY" in outcome.report["error"]


def test_mapping_file_error_is_exit_2(settings, tmp_path):
    bad = tmp_path / "maps"
    bad.mkdir()
    (bad / "users.toml").write_text('[[identify]]\ntarget = "userId"\n')
    (bad / "companies.toml").write_text("")
    outcome = run_sync(settings.model_copy(update={"mappings_dir": bad}))
    assert outcome.exit_code == 2 and "users.toml" in outcome.report["error"]


def test_refused_records_are_retried_then_given_up(sandbox, settings):
    s = settings.model_copy(update={"segment_max_retries": 0, "sync_max_attempts": 2})
    # Segment refuses some users' messages (a refusal isolated by splitting: the others
    # of each batch are accepted); every message refused alike would be the mapping's fault.
    refused = set(sorted(valid_user_ids(sandbox))[::40])
    sandbox.segment.refuse_users(refused)
    first = run_sync(s)
    assert first.exit_code == 1 and first.report["status"] == "partial"
    failed = first.report["entities"]["users"]["failed"]
    assert failed > 0 and not identify_ids(sandbox) & refused
    rejected = {i["id"] for i in first.report["issues"]
                if i["code"] == "REJECTED" and i["entity"] == "users"}
    assert len(rejected) == failed and rejected <= refused  # each reported with the reason
    companies = first.report["entities"]["companies"]
    assert companies["failed"] > 0  # their members were refused: they give up with them
    check_counts_add_up(first.report)
    second = run_sync(s)  # still refused: attempts reach the limit
    assert second.report["entities"]["users"]["retried"] >= failed
    assert second.report["issue_counts"].get("GAVE_UP", 0) >= failed
    assert second.report["entities"]["companies"]["gave_up"] == companies["failed"]
    sandbox.segment.reset()  # refuses nobody any more
    third = run_sync(s)
    assert third.report["entities"]["users"]["retried"] == 0  # given up: not retried forever
    assert third.exit_code == 0


def test_transient_failures_are_never_given_up(sandbox, settings):
    """A Segment outage longer than SYNC_MAX_ATTEMPTS runs loses nothing."""
    s = settings.model_copy(update={"segment_max_retries": 0, "sync_max_attempts": 2,
                                    "moesif_lookback_seconds": 0})
    sandbox.segment.inject(503, count=100_000)
    oversize: set[str] = set()
    for _ in range(3):
        outcome = run_sync(s)
        assert outcome.exit_code == 1
        assert "GAVE_UP" not in outcome.report["issue_counts"]
        oversize |= {i["id"] for i in outcome.report["issues"] if i["code"] == "OVERSIZE"}
    sandbox.segment.reset()
    sandbox.segment.inject(503, count=0)
    healed = run_sync(s)
    assert healed.exit_code == 0
    assert oversize and identify_ids(sandbox) == valid_user_ids(sandbox) - oversize


def test_wrong_api_base_is_a_configuration_error(sandbox, settings):
    outcome = run_sync(settings.model_copy(update={"moesif_api_url": sandbox.moesif_url + "/api"}))
    assert outcome.exit_code == 2 and "MOESIF_API_URL" in outcome.report["error"]


def test_metrics_search_failure_does_not_fail_the_run(sandbox, settings):
    sandbox.moesif.inject(400, count=1, path_contains="usermetrics")
    outcome = run_sync(settings)
    assert outcome.exit_code == 0
    assert outcome.report["issue_counts"].get("METRICS_UNAVAILABLE") == 1
    assert identify_ids(sandbox)


def test_invalid_users_are_reported_once(sandbox, settings):
    report = run_sync(settings).report
    missing = [i for i in report["issues"] if i["code"] == "MISSING_ID"]
    assert len(missing) == 2 and all(i["id"] for i in missing)
    users = report["entities"]["users"]
    assert users["fetched"] == USERS  # each user counted once, members included


def test_failed_records_are_retried_whatever_the_cursor(sandbox, settings):
    s = settings.model_copy(update={"segment_max_retries": 0})
    # fewer than SEGMENT_MAX_FAILED_BATCHES fail (503: an outage, not a message that
    # breaks the server, which a 500 could be: that batch is split to find it)
    sandbox.segment.inject(503, count=2)
    first = run_sync(s)
    failed = [i for i in first.report["issues"] if i["code"] == "DELIVERY_FAILED"]
    failed_users = {i["id"] for i in failed if i["entity"] == "users"}
    failed_companies = {i["id"] for i in failed if i["entity"] == "companies"}
    assert failed_users and failed_companies  # a company fails with its members
    assert {i.get("attempts") for i in failed} == {1}
    second = run_sync(s)
    assert second.exit_code == 0
    assert failed_users <= identify_ids(sandbox)
    companies = second.report["entities"]["companies"]
    assert companies["retried"] == len(failed_companies) and companies["failed"] == 0


def test_changed_company_resends_its_members(sandbox, settings):
    run_sync(settings)
    before = len(sandbox.segment.messages)
    company_id = sandbox.dataset.company_id(3)
    sandbox.dataset.update_company(company_id, {"metadata": {"name": "Renamed Ltd", "plan": "pro"}})
    outcome = run_sync(settings)
    new = sandbox.segment.messages[before:]
    assert new and all(m.get("groupId", m["traits"].get("company", {}).get("id")) == company_id
                       for m in new)
    assert any(m["type"] == "group" and m["traits"].get("name") == "Renamed Ltd" for m in new)
    assert outcome.report["entities"]["companies"]["delivered"] == 1


def test_sigkill_mid_run_then_rerun_delivers_everyone(sandbox, settings, tmp_path):
    sandbox.segment.inject_delay(0.3, count=4)  # keep the first run busy long enough to kill
    env = dict(os.environ, MOESIF_API_URL=sandbox.moesif_url, SEGMENT_HOST=sandbox.segment_url,
               MOESIF_MANAGEMENT_API_KEY=MANAGEMENT_KEY, SEGMENT_WRITE_KEY=WRITE_KEY,
               CONNECTOR_HOME=str(settings.connector_home), MOESIF_PAGE_SIZE="50",
               MAPPINGS_DIR=str(settings.mappings_dir))
    cmd = [sys.executable, "-m", "connector", "sync", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sandbox.segment.wait_for(1, timeout=30), "the first batch never arrived"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = identify_ids(sandbox)
    assert partial and partial != valid_user_ids(sandbox)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "connector", "report", "show", "latest", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60).stdout)
    oversize = {i["id"] for i in report["issues"] if i["code"] == "OVERSIZE"}
    assert identify_ids(sandbox) == valid_user_ids(sandbox) - oversize
    assert report["entities"]["users"]["delivered"] > 0 and report["status"] == "success"
    for text in (rerun.stdout, rerun.stderr):
        assert_no_keys_in(text)
    assert_no_keys_in_tree(Path(settings.connector_home))


def test_no_key_in_reports_or_state(sandbox, settings):
    outcome = run_sync(settings)
    assert_no_keys_in(json.dumps(outcome.report.to_dict()))
    assert_no_keys_in_tree(Path(settings.connector_home))


def test_sigterm_mid_run_finishes_the_page_and_exits_1_interrupted(sandbox, settings):
    sandbox.segment.inject_delay(0.3, count=3)
    env = dict(os.environ, MOESIF_API_URL=sandbox.moesif_url, SEGMENT_HOST=sandbox.segment_url,
               MOESIF_MANAGEMENT_API_KEY=MANAGEMENT_KEY, SEGMENT_WRITE_KEY=WRITE_KEY,
               CONNECTOR_HOME=str(settings.connector_home), MOESIF_PAGE_SIZE="50",
               MAPPINGS_DIR=str(settings.mappings_dir))
    cmd = [sys.executable, "-m", "connector", "sync", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert sandbox.segment.wait_for(1, timeout=30), "the first batch never arrived"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # cut short: like an interrupted `forward --once`
    assert "INTERRUPTED" in out  # the report says it stopped early
    stopped_at = len(sandbox.segment.messages)
    assert 0 < stopped_at < len(valid_user_ids(sandbox))
    conn = connect(settings.state_path)
    cursor = SyncState(conn).cursor("users")
    assert cursor is not None  # the confirmed pages were saved
    # the next run continues without re-sending what the stopped run confirmed
    again = run_sync(settings)
    assert again.exit_code == 0
    assert sandbox.segment.duplicates <= 50 * 2  # at most the page in flight, twice
    oversize = {sandbox.dataset.user_id(HUGE_NAME_INDEX)}  # cannot fit 32 KB: never sent
    assert identify_ids(sandbox) == valid_user_ids(sandbox) - oversize


# --- issue 7, item 8: company traits consistent within a run -----------------------------------
def members_of(sandbox, company_id):
    keys = sandbox.dataset.user_keys_in_companies([company_id])
    return sorted(k for k in keys if sandbox.dataset.get_user(k).get("user_id"))


def latest_company_names(sandbox, user_ids):
    latest = {}
    for m in sandbox.segment.messages:
        if m["type"] == "identify" and m["userId"] in user_ids:
            latest[m["userId"]] = m["traits"].get("company", {}).get("name")
    return latest


def rename_in_the_past(sandbox, company_id, name, when):
    doc = sandbox.dataset.get_company(company_id)
    sandbox.dataset.update_company(company_id, {"metadata": {**doc["metadata"], "name": name},
                                                "modified_time": when})


@pytest.mark.parametrize("when", ["just after", "same"])
def test_company_written_mid_run_in_the_past_reaches_every_member(sandbox, settings, when):
    """Members on pages mapped before the write are re-sent with the version stored,
    also when the writer kept the old modified_time (same version key, new content)."""
    company_id = sandbox.dataset.user(0).get("company_id") or sandbox.dataset.user(1)[
        "company_id"]
    members = members_of(sandbox, company_id)
    old_time = sandbox.dataset.get_company(company_id)["modified_time"]
    # a moment after its old time (long before the run), or the very same time
    past = old_time[:19] + ".5000000Z" if when == "just after" else old_time
    done: list[bool] = []

    def progress(event, **kw):
        if event == "fetched" and kw.get("entity") == "users" and not done:
            done.append(True)  # page 1 is mapped with the old version; later pages the new
            rename_in_the_past(sandbox, company_id, "Renamed Mid-Run", past)

    first = run_sync(settings, progress=progress)
    assert first.exit_code == 0 and done
    names = latest_company_names(sandbox, set(members))
    assert set(names) == set(members) and len(members) >= 4
    assert set(names.values()) == {"Renamed Mid-Run"}, names
    before = len(sandbox.segment.messages)
    second = run_sync(settings)
    assert second.exit_code == 0
    assert not [m for m in sandbox.segment.messages[before:] if m["userId"] in members]


def test_company_written_mid_run_before_the_companies_window_is_rechecked(sandbox, settings):
    """An incremental run whose users pass saw a company in two versions checks the
    company even though its modified_time lies before the companies pass's window."""
    assert run_sync(settings).exit_code == 0
    all_users = [sandbox.dataset.user_key(i) for i in range(USERS)]
    sandbox.dataset.touch_users(all_users)  # the next users pass has every page again
    company_id = sandbox.dataset.user(0).get("company_id") or sandbox.dataset.user(1)[
        "company_id"]
    members = members_of(sandbox, company_id)
    done: list[bool] = []

    def progress(event, **kw):
        if event == "fetched" and kw.get("entity") == "users" and not done:
            done.append(True)
            rename_in_the_past(sandbox, company_id, "Renamed Long Ago", "2020-01-01T00:00:00Z")

    second = run_sync(settings, progress=progress)
    assert second.exit_code == 0 and done
    names = latest_company_names(sandbox, set(members))
    assert set(names.values()) == {"Renamed Long Ago"}, names
    groups = [m for m in sandbox.segment.messages
              if m["type"] == "group" and m["groupId"] == company_id]
    assert groups[-1]["traits"]["name"] == "Renamed Long Ago"


# --- issue 7, item 9: invalid UTF-8 from Moesif ------------------------------------------------
def test_invalid_utf8_from_moesif_is_replaced_reported_and_not_retried(sandbox, settings):
    uid = sandbox.dataset.user_id(40)
    sandbox.dataset.update_user(uid, {"name": "Ann XBADBYTESX Lee"})
    sandbox.moesif.corrupt_utf8("XBADBYTESX")
    outcome = run_sync(settings)
    report = outcome.report
    assert outcome.exit_code == 0 and report["status"] == "success"
    sent = [m for m in sandbox.segment.messages if m["type"] == "identify" and m["userId"] == uid]
    assert sent and sent[-1]["traits"]["name"] == "Ann \ufffd\ufffd Lee"
    bad = [i for i in report["issues"] if i["code"] == "BAD_ENCODING"]
    assert [i["id"] for i in bad] == [uid] and "invalid UTF-8" in bad[0]["detail"]
    assert sandbox.moesif.counters.get("status_500", 0) == 0
    assert identify_ids(sandbox) == valid_user_ids(sandbox) - {
        i["id"] for i in report["issues"] if i["code"] == "OVERSIZE"}
