"""The state store on both backends: SQLite file and PostgreSQL (STATE_URL), with the
lease's fencing token and the schema's version rows."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from connector.errors import LeaseLost
from connector.ops.lease import Lease, describe_holder
from connector.reports.store import ReportStore
from connector.settings import load_settings
from connector.state.store import connect_state, dialect_of
from connector.sync.state import PageCommit, SyncState
from tests.backends import pg_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        yield load_settings(connector_home=tmp_path / "home", _env_file=None)
        return
    for url in pg_schema():
        yield load_settings(connector_home=tmp_path / "home", state_url=url, _env_file=None)


@pytest.fixture
def conn(settings):
    conn = connect_state(settings)
    yield conn
    conn.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_sync_state_round_trip(conn, settings):
    assert dialect_of(conn) == ("postgresql" if settings.state_url else "sqlite")
    state = SyncState(conn, max_attempts=2)
    ids = [f"u{i}" for i in range(2000)]  # more than one IN (...) chunk
    state.commit_page(PageCommit("users", {i: f"h{i}" for i in ids}, [], [],
                                 cursor="2026-01-02T00:00:00"))
    assert state.hashes("users", ids[:1500] + ["nobody"]) == {i: f"h{i}" for i in ids[:1500]}
    # the cursor never moves back
    state.commit_page(PageCommit("users", {}, [], [], cursor="2026-01-01T00:00:00"))
    assert state.cursor("users") == "2026-01-02T00:00:00"
    first = state.commit_page(PageCommit("users", {}, [], [("bad", "BAD_VALUE", "x" * 900)]))
    second = state.commit_page(PageCommit("users", {}, [], [("bad", "BAD_VALUE", "again")]))
    assert (first[0].attempts, first[0].gave_up) == (1, False)
    assert (second[0].attempts, second[0].gave_up) == (2, True)
    transient = [state.commit_page(PageCommit("users", {}, [], [("t", "DELIVERY_FAILED", "")]))
                 for _ in range(3)]
    assert transient[-1][0].attempts == 3 and not transient[-1][0].gave_up
    assert [f.id for f in state.pending_failures("users", "9999")] == ["t"]
    assert state.failure_attempts("users", ["t", "bad"]) == {"t": 3}
    state.commit_page(PageCommit("users", {"t": "ht"}, ["t"], []))
    assert state.pending_failures("users", "9999") == []
    state.reset()
    assert state.cursor("users") is None and state.hashes("users", ids) == {}


def test_schema_has_version_rows_and_reopens(conn, settings):
    SyncState(conn)
    ReportStore(conn)
    versions = dict(conn.execute("SELECT component, version FROM schema_version").fetchall())
    assert versions == {"sync_state": 1, "reports": 2, "lease": 2}
    again = connect_state(settings)
    try:
        SyncState(again)
        ReportStore(again)
        assert dict(again.execute("SELECT component, version FROM schema_version")
                    .fetchall()) == versions
    finally:
        again.close()


def test_report_store_on_both_backends(conn):
    store = ReportStore(conn)
    for n in range(4):
        store.save({"run_id": f"2026010{n}T000000Z-ab_{n}", "started_at": f"2026-01-0{n}",
                    "mode": "incremental", "status": "success",
                    "entities": {"users": {"fetched": n, "delivered": n}}})
    assert store.count() == 4
    assert store.latest_run_id() == "20260103T000000Z-ab_3"
    assert store.get("20260102")["entities"]["users"]["delivered"] == 2  # prefix
    assert [r.run_id for r in store.list(2)] == ["20260103T000000Z-ab_3",
                                                 "20260102T000000Z-ab_2"]
    assert store.prune(2) == 2 and store.count() == 2


def test_lease_token_grows_at_every_change_of_holder(conn):
    clock = Clock()
    a = Lease(conn, holder="host-a:1:aa", ttl_seconds=30, clock=clock)
    b = Lease(conn, holder="host-b:2:bb", ttl_seconds=30, clock=clock)
    assert a.acquire() and a.token == 1
    assert a.acquire() and a.token == 1  # re-entrant: same holder, same token
    assert not b.acquire()
    assert "held by host-a:1:aa (token 1" in describe_holder(conn)
    assert a.release() and not a.release()
    assert b.acquire() and b.token == 2  # a clean exit hands over at once
    clock.now += 31  # b paused past its expiry
    assert a.acquire() and a.token == 3
    assert not b.renew() and not b.release()
    assert b.holder_info()["holder"] == "host-a:1:aa"


def test_a_fenced_out_holder_cannot_commit_a_page(conn):
    clock = Clock()
    a = Lease(conn, holder="host-a:1:aa", ttl_seconds=30, clock=clock)
    b = Lease(conn, holder="host-b:2:bb", ttl_seconds=30, clock=clock)
    state = SyncState(conn)
    assert a.acquire()
    with a.fenced():
        state.commit_page(PageCommit("users", {"u1": "h1"}, [], [], cursor="2026-01-01"))
        clock.now += 31  # a freezes; b takes over and commits
        assert b.acquire()
        with pytest.raises(LeaseLost, match="taken over by host-b"):
            state.commit_page(PageCommit("users", {"u2": "h2"}, [], [], cursor="2026-02-01"))
    with b.fenced():
        state.commit_page(PageCommit("users", {"u3": "h3"}, [], []))
    assert state.hashes("users", ["u1", "u2", "u3"]) == {"u1": "h1", "u3": "h3"}
    assert state.cursor("users") == "2026-01-01"  # a's late page left nothing behind


def test_check_names_the_store_and_the_lease_holder(conn, settings):
    from connector.ops.checks import check_state_store

    Lease(conn, holder="host-a:1:aa", ttl_seconds=60).acquire()
    [result] = check_state_store(settings)
    assert result.ok and "held by host-a:1:aa (token 1" in result.detail


def test_an_unreachable_state_url_is_a_config_error_without_the_password(tmp_path):
    from connector.errors import ConfigError

    settings = load_settings(connector_home=tmp_path, _env_file=None,
                             state_url="postgresql://u:s3cret-pw@127.0.0.1:1/db")
    assert "s3cret-pw" in settings.secrets()
    with pytest.raises(ConfigError, match="STATE_URL") as caught:
        connect_state(settings)
    assert "s3cret-pw" not in str(caught.value)


def test_alerts_and_schema_inventory_on_both_backends(conn):
    """Open alerts, their delivery log and the schema inventory live in the same store as
    the rest of the state, so replicas on PostgreSQL share them."""
    from connector import schema_drift
    from connector.alerts.rules import Verdict
    from connector.alerts.state import AlertStore

    store = AlertStore(conn)
    raised = store.apply([Verdict("run_failed", True, "run r1 failed")], run_id="r1")
    assert [e["event"] for e in raised] == ["alert.raised"]
    assert store.apply([Verdict("run_failed", True, "again")], run_id="r2") == []  # once
    [(log_id, payload)] = store.pending()
    assert payload["rule"] == "run_failed" and log_id > 0
    store.record_delivery(log_id, True, None)
    assert store.pending() == []
    resolved = store.apply([Verdict("run_failed", False)], run_id="r3")
    assert [e["event"] for e in resolved] == ["alert.resolved"]
    assert store.open_alerts() == []
    store.set_mark("k", "1")
    store.set_mark("k", "2")
    assert store.mark("k") == "2"

    inventory = schema_drift.Inventory()
    for n in range(3):
        inventory.add("users", {"user_id": str(n), "metadata": {"plan": "pro"}})
    schema_drift.save(conn, inventory, "r1")
    schema_drift.save(conn, inventory, "r2")  # the upsert path
    earlier = schema_drift._earlier(conn)
    assert "users" in earlier and earlier["users"]


def test_company_cache_round_trip_keeps_every_value(conn):
    """Issue 12 item 3: companies kept between runs, exactly as fetched (NaN, big
    integers, lone surrogates and non-ASCII text survive), replaced by a newer fetch."""
    from connector.sync.state import CompanyCache

    cache = CompanyCache(conn)
    CompanyCache(conn)  # a second start migrates nothing twice
    docs = {f"c{i}": {"company_id": f"c{i}", "modified_time": f"2026-01-01T00:00:{i % 60:02d}Z",
                      "metadata": {"name": f"株式会社 {i}"}} for i in range(1200)}
    docs["odd"] = {"company_id": "odd", "modified_time": 5, "n": float("nan"),
                   "big": 10**40, "s": "\ud800x", "deep": [{"a": [1.5, None, True]}]}
    cache.put(docs)
    got = cache.get_many(list(docs) + ["nobody"])
    assert set(got) == set(docs)
    assert got["c7"] == docs["c7"]
    odd = got["odd"]
    assert odd["n"] != odd["n"] and odd["big"] == 10**40 and odd["s"] == "\ud800x"
    assert odd["deep"] == docs["odd"]["deep"]
    cache.put({"c7": {"company_id": "c7", "modified_time": "2026-02-01T00:00:00Z"}})
    assert cache.get_many(["c7"])["c7"]["modified_time"] == "2026-02-01T00:00:00Z"
    assert cache.count() == len(docs)
    # Another run (no memory yet) reads the same from the table.
    fresh = CompanyCache(conn).get_many(list(docs))
    kept = cache.get_many(list(docs))
    assert fresh.keys() == kept.keys()
    assert all(repr(fresh[k]) == repr(kept[k]) for k in docs)


def test_company_cache_memory_is_bounded_and_hands_out_copies(conn):
    """The in-memory layer keeps at most `memory_limit` companies, the oldest leaving
    first; what it does not hold still comes from the table; every read is a fresh copy,
    so a caller changing a document changes nobody else's."""
    from connector.sync.state import CompanyCache

    cache = CompanyCache(conn, memory_limit=3)
    docs = {f"m{i}": {"company_id": f"m{i}", "tags": [i]} for i in range(5)}
    cache.put(docs)
    assert list(cache._memory) == ["m2", "m3", "m4"]
    first = cache.get_many(["m0", "m4"])
    assert first == {"m0": docs["m0"], "m4": docs["m4"]}  # m0 from the table
    assert list(cache._memory) == ["m3", "m4", "m0"]  # ... and remembered
    first["m4"]["tags"].append("changed")
    assert cache.get_many(["m4"])["m4"] == {"company_id": "m4", "tags": [4]}
    assert CompanyCache(conn, memory_limit=0).get_many(["m1"]) == {"m1": docs["m1"]}


@settings_(max_examples=150, deadline=None)
@given(doc=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids,
                                                              max_size=3), max_leaves=12))
def test_company_cache_decodes_exactly_what_it_encoded(doc):
    """The fast path (orjson) is taken only where it reads what the standard library
    wrote: same types, same values (NaN compared as NaN)."""
    from connector.sync.state import _decode_doc, _encode_doc

    back = _decode_doc(_encode_doc({"d": doc}))["d"]
    assert repr(back) == repr(doc)
    text = _encode_doc({"d": doc})  # the memory layer's path: the check made beforehand
    from connector.sync.state import _NEEDS_STDLIB
    assert repr(_decode_doc(text, not _NEEDS_STDLIB.search(text))["d"]) == repr(doc)
