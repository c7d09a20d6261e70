"""Issue 12 item 2: the sink's template shaping is byte-identical to the library's own
shaping (`Client(send=False)`), for every record of the sandbox data set and the traps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.mapping import load_mappings
from connector.sandbox.dataset import Dataset
from connector.segment.sink import SegmentSink
from connector.state.store import connect_state
from connector.sync.job import SyncRun
from connector.sync.records import Joined
from tests.conftest import WRITE_KEY

# The sink is never asked to send here: shaping needs no server.
SINK = SegmentSink(SecretStr(WRITE_KEY), "http://127.0.0.1:9")


def both(kind: str, body: dict, ts: datetime | None, mid: str) -> tuple[bytes, bytes]:
    fast = SINK.shape(kind, body, ts, mid)
    slow = SINK.shape_with_library(kind, body, ts, mid)
    return orjson.dumps(fast), orjson.dumps(slow)


def test_every_dataset_record_shapes_like_the_library(settings_factory):
    cfg = settings_factory()
    conn = connect_state(cfg)
    run = SyncRun(cfg, "dry-run", conn, load_mappings(cfg.mappings_dir))
    data = Dataset(users=3000, companies=300)
    cache: dict = {}
    compared = 0
    for i in range(data.user_count):
        doc = data.user(i)
        cid, uid = doc.get("company_id"), doc.get("user_id")
        company = data.get_company(cid) if isinstance(cid, str) else None
        metrics = data.metrics_for(uid) if isinstance(uid, str) else None
        page = Joined([doc], {cid: company} if company else {},
                      {uid: metrics} if metrics else {}, None, 1)
        c = run._map_user(doc, page, cache)
        if c is None:
            continue
        parts = [("identify", c.identify.message)]
        if c.group is not None:
            parts.append(("group", c.group.message))
        for kind, body in parts:
            mid = run._message_id(kind, c)
            fast, slow = both(kind, body, c.timestamp, mid)
            assert fast == slow, (i, kind)
            compared += 1
    conn.close()
    assert compared > 3000  # identify for (nearly) every user, group for those in a company


TRAPS = [
    # unicode everywhere, emoji and CJK ids
    ("identify", {"userId": "用户-🚀", "traits": {"name": "株式会社 \u00e9\u0301"}}),
    # an integer id (the library makes it text), and a big one
    ("identify", {"userId": 12345, "traits": {}}),
    ("identify", {"userId": 2**63 - 1, "traits": {"big": -(2**63), "f": 1e300}}),
    ("group", {"userId": "u1", "groupId": 2**63 - 1, "traits": {"plan": "x"}}),
    ("group", {"userId": 7, "groupId": "cmp_1", "traits": {},
               "context": {"ip": "10.0.0.1", "library": {"name": "fake"}}}),
    ("group", {"userId": "u", "groupId": "", "traits": {}}),  # empty groupId: allowed
    # a float id and a bool id take the library's path, and still match
    ("identify", {"userId": 1.5, "traits": {}}),
    ("group", {"userId": "u", "groupId": True, "traits": {}}),
    # no traits key at all, empty context
    ("identify", {"userId": "u2", "context": {}}),
]
STAMPS = [
    datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2020, 2, 29, 0, 0, 0, 999, tzinfo=timezone(timedelta(hours=-11))),
    datetime(2001, 1, 1, 0, 0),  # naive: the library guesses the zone (library path)
]


@pytest.mark.parametrize("stamp", STAMPS, ids=str)
@pytest.mark.parametrize(("kind", "body"), TRAPS, ids=lambda v: str(v)[:40])
def test_traps_shape_like_the_library(kind, body, stamp):
    fast, slow = both(kind, body, stamp, "ms-x-1")
    assert fast == slow


@pytest.mark.parametrize(("kind", "body"), TRAPS, ids=lambda v: str(v)[:40])
def test_missing_timestamp_differs_only_in_the_libraries_now(kind, body):
    """Without a timestamp the library stamps "now": the only difference allowed."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    fast = SINK.shape(kind, body, None, "ms-x-2")
    slow = SINK.shape_with_library(kind, body, None, "ms-x-2")
    for msg in (fast, slow):
        assert datetime.fromisoformat(msg["timestamp"]) >= before
    pinned = "2024-01-01T00:00:00.000+00:00"
    assert orjson.dumps({**fast, "timestamp": pinned}) == \
        orjson.dumps({**slow, "timestamp": pinned})


def test_a_refused_user_id_is_still_the_librarys_refusal():
    with pytest.raises(AssertionError):
        SINK.shape("identify", {"userId": "", "traits": {}}, STAMPS[0], "m")


ids = st.one_of(st.text(min_size=1, max_size=30),
                st.integers(min_value=-(2**63), max_value=2**63 - 1))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["identify", "group"]), user_id=ids, group_id=ids,
       stamp=st.datetimes(timezones=st.timezones() | st.just(UTC)),
       traits=st.dictionaries(st.text(max_size=5),
                              st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1),
                              max_size=3),
       ip=st.none() | st.text(max_size=10))
def test_any_envelope_shapes_like_the_library(kind, user_id, group_id, stamp, traits, ip):
    body = {"userId": user_id, "groupId": group_id, "traits": traits}
    if ip is not None:
        body["context"] = {"ip": ip}
    try:
        slow = orjson.dumps(SINK.shape_with_library(kind, body, stamp, "m-1"))
    except AssertionError:  # the library refuses it (e.g. a falsy userId): so must we
        with pytest.raises(AssertionError):
            SINK.shape(kind, body, stamp, "m-1")
        return
    assert orjson.dumps(SINK.shape(kind, body, stamp, "m-1")) == slow
