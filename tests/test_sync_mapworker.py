"""The map process (issue 12): a users pass mapped in a second process gives what the
run's own process gives, record for record, and losing the process loses nothing.

Each comparison runs the same data set twice over loopback, once with
SYNC_MAP_PROCESS=off and once with =on, each into a fresh state home, and compares what
Segment received, the stored hashes and the report (counts, issues in order, coverage,
the schema inventory, samples).
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import wait
from typing import Any

import pytest

from connector.sync import mapworker
from connector.sync.job import SyncRun, run_sync
from tests.conftest import make_settings
from tests.helpers import sync_sandbox

USERS, COMPANIES = 1500, 120
PAGE = 200  # several pages, so pages are mapped while others are sent


@pytest.fixture(scope="module")
def sandbox():
    # the data set's special records: no ids, bad ids, oversize, odd timestamps, unicode
    with sync_sandbox(USERS, COMPANIES) as sb:
        yield sb


def poison(sandbox) -> None:
    """Values only the standard library reads (its pages go to the map process as a
    pickle), a broken company, a company Moesif does not have."""
    sandbox.dataset.clear_mutations()
    uid = sandbox.dataset.user_id(5)
    sandbox.dataset.update_user(uid, {"metadata": {"ratio": float("nan"), "big": 2**70,
                                                   "text": "half \ud83d"}})
    sandbox.dataset.update_user(sandbox.dataset.user_id(6), {"company_id": "cmp_nowhere"})
    sandbox.dataset.update_company(sandbox.dataset.company_id(3),
                                   {"metadata": {"employees": float("inf")}})


def run(sandbox, tmp_path, mode: str) -> dict[str, Any]:
    sandbox.segment.reset()
    settings = make_settings(tmp_path / mode, moesif_api_url=sandbox.moesif_url,
                             segment_host=sandbox.segment_url, moesif_page_size=PAGE,
                             sync_map_process=mode)
    outcome = run_sync(settings)
    with sqlite3.connect(settings.state_path) as conn:
        hashes = sorted(conn.execute("SELECT entity, id, hash FROM record_hash").fetchall())
    messages = sorted(sandbox.segment.messages, key=lambda m: m["messageId"])
    return {"outcome": outcome, "hashes": hashes, "messages": messages}


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "entities", "messages", "issues", "issue_counts", "fields",
            "samples", "schema")
    return {k: report.get(k) for k in keep}


@pytest.mark.parametrize("texts_limit", [mapworker.TEXTS_LIMIT, 5])
def test_the_map_process_gives_what_the_run_gives(sandbox, tmp_path, monkeypatch, texts_limit):
    """With the process keeping every company text, and forgetting them every page."""
    monkeypatch.setattr(mapworker, "TEXTS_LIMIT", texts_limit)
    poison(sandbox)
    here = run(sandbox, tmp_path, "off")
    submitted: list[bool] = []  # each page handed over: read exactly by orjson?
    applied: list[int] = []
    submit, apply = mapworker.MapProcess.submit, SyncRun._apply_record

    def counting_submit(self, page, companies):
        submitted.append(page.exact)
        return submit(self, page, companies)

    def counting_apply(self, result, doc, page):
        applied.append(1)
        return apply(self, result, doc, page)

    monkeypatch.setattr(mapworker.MapProcess, "submit", counting_submit)
    monkeypatch.setattr(SyncRun, "_apply_record", counting_apply)
    there = run(sandbox, tmp_path, "on")
    # every users page went over, as JSON or (the page with NaN) as a pickle
    assert len(submitted) == -(-USERS // PAGE) and True in submitted and False in submitted
    assert len(applied) == there["outcome"].report["entities"]["users"]["fetched"]
    assert here["outcome"].exit_code == there["outcome"].exit_code
    assert len(there["messages"]) > USERS  # identify and group calls went out
    assert there["messages"] == here["messages"]
    assert there["hashes"] == here["hashes"]
    assert comparable(there["outcome"].report) == comparable(here["outcome"].report)
    codes = here["outcome"].report["issue_counts"]
    assert {"MISSING_ID", "COMPANY_NOT_FOUND", "BAD_VALUE"} <= set(codes), codes


def test_a_run_whose_map_process_dies_maps_the_rest_itself(sandbox, tmp_path, monkeypatch):
    """The process killed after the first page: the rest is mapped in the run's process,
    and every user is delivered once, as without the process."""
    sandbox.dataset.clear_mutations()
    original = SyncRun.process_users
    killed: list[int] = []

    def kill_after_first(self, page, *args, **kwargs):
        outcome = original(self, page, *args, **kwargs)
        if self._map_process is not None and not killed:
            for proc in list(self._map_process._pool._processes.values()):
                proc.kill()
                killed.append(proc.pid)
        return outcome

    monkeypatch.setattr(SyncRun, "process_users", kill_after_first)
    there = run(sandbox, tmp_path, "on")
    monkeypatch.setattr(SyncRun, "process_users", original)
    here = run(sandbox, tmp_path, "off")
    assert killed
    assert there["outcome"].exit_code == here["outcome"].exit_code == 0
    assert there["messages"] == here["messages"]
    assert there["hashes"] == here["hashes"]


def test_changed_mapping_files_keep_the_mapping_in_the_run(sandbox, tmp_path, monkeypatch):
    """A map process that loaded other mapping files than the run's is not used."""
    sandbox.dataset.clear_mutations()
    original = SyncRun._mapped_result
    seen: list[bool] = []

    def with_other_version(self, page):
        future = page.mapped
        if future is not None:
            wait([future], timeout=30)  # never block on a process that was stopped
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().mappings_version = "not-the-run's"
                seen.append(True)
        return original(self, page)

    monkeypatch.setattr(SyncRun, "_mapped_result", with_other_version)
    there = run(sandbox, tmp_path, "on")
    monkeypatch.setattr(SyncRun, "_mapped_result", original)
    here = run(sandbox, tmp_path, "off")
    assert seen
    assert there["messages"] == here["messages"]


def test_a_map_process_that_hangs_is_stopped_and_the_run_maps_itself(sandbox, tmp_path,
                                                                     monkeypatch):
    """A page not back within the time limit: the process is killed, and this page and
    the rest are mapped in the run's process; nothing is lost or sent twice."""
    sandbox.dataset.clear_mutations()
    here = run(sandbox, tmp_path, "off")
    monkeypatch.setattr(mapworker, "PAGE_TIMEOUT_SECONDS", 1e-9)
    there = run(sandbox, tmp_path, "on")
    assert there["outcome"].exit_code == here["outcome"].exit_code == 0
    assert there["messages"] == here["messages"]
    assert there["hashes"] == here["hashes"]


def test_a_map_process_that_cannot_start_is_logged_and_the_run_maps_itself(
        sandbox, tmp_path, monkeypatch, caplog):
    """No process (a locked-down host): one warning naming the error's type, never its
    text, and the same delivery as without it."""
    sandbox.dataset.clear_mutations()

    def refuse(self, *args, **kwargs):
        raise OSError("cannot fork: secret-looking detail 4242")

    monkeypatch.setattr(mapworker.MapProcess, "__init__", refuse)
    with caplog.at_level("WARNING", logger="connector.sync.job"):
        there = run(sandbox, tmp_path, "on")
    monkeypatch.undo()
    here = run(sandbox, tmp_path, "off")
    warnings = [r.getMessage() for r in caplog.records if "map process" in r.getMessage()]
    assert warnings == ["map process unavailable (OSError): users are mapped in this "
                        "process for the rest of the run"]
    assert there["messages"] == here["messages"] and there["hashes"] == here["hashes"]


@pytest.mark.parametrize(("setting", "total", "expected"), [
    ("off", 10**6, False), ("on", 1, True),
    ("auto", mapworker.AUTO_MIN_USERS - 1, False)])
def test_when_the_map_process_is_used(setting, total, expected):
    assert mapworker.wanted(setting, total) is expected


def test_a_stop_drops_the_page_mapped_ahead_and_the_next_run_sends_it(sandbox, tmp_path):
    """A stop ends the run after the page in hand; the page the map process mapped ahead
    is neither sent nor committed, and the next run sends everything that is left."""
    import threading

    sandbox.dataset.clear_mutations()
    sandbox.segment.reset()
    settings = make_settings(tmp_path / "stop", moesif_api_url=sandbox.moesif_url,
                             segment_host=sandbox.segment_url, moesif_page_size=PAGE,
                             sync_map_process="on")
    stop = threading.Event()

    def progress(event: str, **info: Any) -> None:
        if event == "fetched" and info.get("entity") == "users":
            stop.set()

    first = run_sync(settings, stop_event=stop, progress=progress)
    sent_first = {m["userId"] for m in sandbox.segment.messages if m["type"] == "identify"}
    assert first.report["status"] == "interrupted" and 0 < len(sent_first) <= PAGE
    sandbox.segment.reset()
    second = run_sync(settings)
    sent_second = {m["userId"] for m in sandbox.segment.messages if m["type"] == "identify"}
    assert second.exit_code == 0
    assert not sent_first & sent_second  # the committed page is not sent again
    everyone = {m["userId"] for m in run(sandbox, tmp_path, "off")["messages"]
                if m["type"] == "identify"}
    assert sent_first | sent_second == everyone
