"""A message Segment's servers fail on (500, every time) does not take its batch down.

Over loopback: the Segment sandbox answers 500 to every batch holding one user's message
(`crash_on_users`). Before, the whole batch was DELIVERY_FAILED, a transient code retried
at every run forever, so its batch-mates (retried together in the next run's retry pass)
failed with it run after run. Now the failing batch is split, each half sent once, down to
the message at fault: the rest is delivered, that one is REJECTED (counted toward
SYNC_MAX_ATTEMPTS, then GAVE_UP). A real outage (every half failing too) still fails the
batch as before, at the cost of four more requests.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.errors import IssueCode
from connector.sandbox.segment_tracking import SegmentSandbox
from connector.segment.sink import OutMessage, SegmentSink
from connector.sync.job import run_sync
from tests.conftest import WRITE_KEY, make_settings
from tests.helpers import sync_sandbox
from tests.test_sync_poison import HEALTHY_USERS, delivered, load


@pytest.fixture(scope="module")
def segment():
    sandbox = SegmentSandbox({WRITE_KEY})
    with sandbox.server() as server:
        yield sandbox, server.url


def make_sink(url: str, **kw) -> SegmentSink:
    return SegmentSink(SecretStr(WRITE_KEY), url, backoff_base=0.001, backoff_cap=0.002,
                       max_retries=2, **kw)


def messages(sink: SegmentSink, n: int) -> list[OutMessage]:
    return [OutMessage.of(sink.shape("identify", {"userId": f"u{i}", "traits": {}}, None,
                                     f"m-{i}"), ("users", f"u{i}")) for i in range(n)]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 60), data=st.data())
def test_the_rest_of_the_batch_is_delivered_and_the_poison_rejected(segment, n, data):
    sandbox, url = segment
    sandbox.reset()
    poison = set(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3,
                                    unique=True)))
    warm = data.draw(st.booleans())  # a batch went through just before
    sink = make_sink(url)
    if warm:
        assert sink.send(messages(sink, 1)).delivered
        sandbox.reset()
    sandbox.crash_on_users({f"u{i}" for i in poison})
    result = sink.send(messages(sink, n))
    good = {f"m-{i}" for i in range(n) if i not in poison}
    codes = {mid: code for mid, (code, _) in result.failed.items()}
    if good and (warm or not ({0, n - 1} <= poison and len(poison) < n)):
        # Segment showed it was up (before, or with a half or an end of this batch)
        assert result.delivered == good
        assert codes == {f"m-{i}": "REJECTED" for i in poison}
    else:  # every probe failed: as far as can be told, an outage
        assert result.delivered <= good
        assert set(codes.values()) <= {"REJECTED", "DELIVERY_FAILED"}
    assert result.delivered | set(codes) == {f"m-{i}" for i in range(n)}
    # bounded: the batch's attempts, the probes, two requests per level of the split per
    # poison, and each poison alone with its retries
    assert result.requests <= 3 + 4 + len(poison) * (2 * n.bit_length() + 3)


def test_an_outage_still_fails_the_batch_with_four_more_requests(segment):
    sandbox, url = segment
    sandbox.reset()
    sandbox.inject(500, count=100)
    sink = make_sink(url)
    result = sink.send(messages(sink, 8))
    assert not result.delivered
    assert {code for code, _ in result.failed.values()} == {"DELIVERY_FAILED"}
    assert result.requests == 3 + 2 + 2  # the halves, then the first and last alone


def sync(sandbox, home):
    """A run without retries of Segment's 5xx (no backoff waits in the test)."""
    return run_sync(make_settings(home, moesif_api_url=sandbox.moesif_url,
                                  segment_host=sandbox.segment_url, segment_max_retries=0))


@pytest.fixture(scope="module")
def sync_box():
    with sync_sandbox(0, 0) as sb:
        yield sb



def test_a_poison_user_gives_up_and_never_holds_back_the_others(sync_box, homes):
    load(sync_box)
    sync_box.segment.crash_on_users({"u_bad"})
    home = homes()
    first = sync(sync_box, home)
    assert delivered(sync_box) == set(HEALTHY_USERS)
    codes = {(i["id"], i["code"]) for i in first.report["issues"]}
    assert ("u_bad", IssueCode.REJECTED) in codes
    runs = 1
    while ("u_bad", IssueCode.GAVE_UP) not in codes:
        sync_box.dataset.touch_users(["u_a"])  # another change in each run's batch
        sync_box.segment.reset()
        sync_box.segment.crash_on_users({"u_bad"})
        again = sync(sync_box, home)
        runs += 1
        codes = {(i["id"], i["code"]) for i in again.report["issues"]}
        assert "u_a" in delivered(sync_box)
        assert runs <= 5, "the poison user is retried forever"
    sync_box.segment.crash_on_users(set())
