"""A record's odd `modified_time` never moves the cursor past the run's start.

The stored cursor only moves forward, so one record modified "in year 9999" (or a server
that ignores the search's range) would make every later incremental run search from
there and skip every change before it. Over loopback: the Moesif sandbox rewrites the
last hit of the users search (`rewrite`), the way a hostile server or record would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.common.timeutil import parse_timestamp, utcnow
from connector.state.store import connect
from connector.sync.job import run_sync
from connector.sync.state import SyncState
from tests.conftest import make_settings
from tests.helpers import identify_ids, sync_sandbox


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(12, 3) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _clean(sandbox):
    sandbox.moesif.clear_faults()
    yield
    sandbox.moesif.clear_faults()


def last_hit_modified(value: Any, kind: str = "users"):
    def rewrite(path: str, body: Any, payload: Any) -> Any:
        if path.endswith(f"search/{kind}") and isinstance(payload, dict):
            hits = payload["hits"]["hits"]
            if hits:
                hits[-1]["_source"] = dict(hits[-1]["_source"], modified_time=value)
        return payload
    return rewrite


def run(sandbox, home):
    s = make_settings(home, moesif_api_url=sandbox.moesif_url,
                      segment_host=sandbox.segment_url)
    return s, run_sync(s)


def stored_cursor(s, entity: str = "users") -> str | None:
    return SyncState(connect(s.state_path)).cursor(entity)


def test_a_record_modified_in_year_9999_does_not_end_incremental_sync(sandbox, tmp_path):
    sandbox.moesif.rewrite = last_hit_modified("9999-12-31T23:59:59.999Z")
    s, first = run(sandbox, tmp_path / "home")
    assert first.exit_code == 0, first.report["error"]
    assert parse_timestamp(stored_cursor(s)) <= utcnow()
    sandbox.moesif.clear_faults()
    uid = sandbox.dataset.user_id(1)
    sandbox.dataset.touch_users([uid])
    sandbox.segment.reset()
    _, second = run(sandbox, tmp_path / "home")
    assert second.exit_code == 0, second.report["error"]
    assert uid in identify_ids(sandbox)  # the change after the odd record is found


def test_a_cursor_stored_in_the_future_is_dropped_and_everything_is_looked_at(sandbox,
                                                                            tmp_path):
    s, first = run(sandbox, tmp_path / "home")
    assert first.exit_code == 0
    conn = connect(s.state_path)
    conn.execute("UPDATE sync_cursor SET modified_time = '9999-12-31T23:59:59.999Z'")
    conn.commit()
    uid = sandbox.dataset.user_id(2)
    sandbox.dataset.touch_users([uid], datetime.now(UTC) - timedelta(seconds=1))
    sandbox.segment.reset()
    _, second = run(sandbox, tmp_path / "home")
    assert second.exit_code == 0, second.report["error"]
    assert identify_ids(sandbox) == {uid}  # found, and the unchanged ones not re-sent
    assert parse_timestamp(stored_cursor(s)) <= utcnow()


FUTURE = st.one_of(
    st.datetimes(min_value=datetime(2100, 1, 1), max_value=datetime(9999, 12, 31),
                 timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.integers(min_value=4_102_444_800_000, max_value=253_402_300_799_000),  # epoch ms
    st.sampled_from(["9999-12-31T23:59:59.9999999Z", "9999-12-31", "+9999-01-01T00:00:00",
                     "9999-12-31T23:59:59-14:00"]))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=FUTURE, kind=st.sampled_from(["users", "companies"]))
def test_no_modified_time_moves_the_cursor_past_the_run_start(sandbox, tmp_path_factory,
                                                               value, kind):
    sandbox.moesif.rewrite = last_hit_modified(value, kind)
    s, outcome = run(sandbox, tmp_path_factory.mktemp("h") / "home")
    assert outcome.exit_code == 0, outcome.report["error"]
    for entity in ("users", "companies"):
        cursor = stored_cursor(s, entity)
        assert cursor is not None, entity  # the run's confirmed pages moved it
        assert parse_timestamp(cursor) <= utcnow(), (entity, cursor)
