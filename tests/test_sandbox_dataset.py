"""The sandbox dataset: deterministic, lazy, ordered, mutable on the side."""

from __future__ import annotations

import json
import re
import threading
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest

from connector.common.timeutil import parse_timestamp
from connector.sandbox.dataset import (
    BAD_CREATED_INDEX,
    BIG_METADATA_INDEX,
    HUGE_NAME_CHARS,
    HUGE_NAME_INDEX,
    NO_USER_ID_INDEXES,
    Dataset,
    epoch_ms,
    fmt_7digits,
    fmt_no_zone,
    fmt_seconds,
)

SHAPE_7 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")
SHAPE_NO_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")
SHAPE_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    ds = Dataset(1000, 60)
    return [ds.user(i) for i in range(1000)]


def all_users(ds: Dataset, size: int = 97, **filters) -> list[tuple[dict, list]]:
    out, after = [], None
    while True:
        _, hits = ds.search_users(size=size, search_after=after, **filters)
        if not hits:
            return out
        out.extend(hits)
        after = tuple(hits[-1][1])


def test_documents_are_a_pure_function_of_seed_and_index() -> None:
    a, b, c = Dataset(500, 20), Dataset(500, 20), Dataset(500, 20, seed=8)
    for i in (0, 1, 42, 499):
        assert a.user(i) == b.user(i)
    assert a.get_company("cmp_00007") == b.get_company("cmp_00007")
    assert [a.user(i)["name"] for i in range(30)] != [c.user(i)["name"] for i in range(30)]
    # Reading a user twice, or reading others in between, changes nothing.
    first = a.user(42)
    a.search_users(size=200)
    assert a.user(42) == first


def test_base_order_is_strict_and_sort_values_match_the_documents() -> None:
    ds = Dataset(3000, 10)
    ms = [ds.users.base_ms_of(i) for i in range(3000)]
    assert all(x < y for x, y in zip(ms, ms[1:], strict=False))
    total, hits = ds.search_users(size=3000)
    assert total == 3000
    for doc, (sort_ms, key) in hits:
        assert epoch_ms(parse_timestamp(doc["modified_time"])) == sort_ms
        assert doc.get("user_id", key) == key


def test_timestamps_use_all_three_moesif_shapes(sample: list[dict]) -> None:
    stamps = [u[f] for u in sample for f in ("modified_time", "first_seen_time",
                                              "last_seen_time", "created") if f in u]
    assert any(SHAPE_7.match(s) for s in stamps)
    assert any(SHAPE_NO_ZONE.match(s) for s in stamps)
    assert any(SHAPE_SECONDS.match(s) for s in stamps)
    modified = [u["modified_time"] for u in sample]
    assert {bool(SHAPE_7.match(s)) for s in modified} == {True, False}
    assert any(SHAPE_SECONDS.match(s) for s in modified)


def test_users_look_like_moesif_users(sample: list[dict]) -> None:
    with_company = sum("company_id" in u for u in sample)
    assert 780 <= with_company <= 920
    assert any("email" not in u and "email" in u["metadata"] for u in sample)
    assert any("email" not in u and "email" not in u["metadata"] for u in sample)
    assert any(":" in u["ip_address"] for u in sample)
    assert any("." in u["ip_address"] for u in sample)
    assert any("created" not in u for u in sample)
    assert any("user_agent_string" not in u for u in sample)
    assert sum("user_agent_string" in u for u in sample) > 700
    assert any("clearbit" in u for u in sample) and any("clearbit" not in u for u in sample)
    assert any("gclid" in u.get("campaign", {}) for u in sample)
    names = [u["name"] for u in sample]
    assert any(re.search(r"[\u4e00-\u9fff]", n) for n in names)  # CJK
    assert any(re.search(r"[\U0001F300-\U0001FAFF]", n) for n in names)  # emoji
    assert any(re.search(r"[éëçøüł]", n) for n in names)  # accents
    user = sample[1]
    assert isinstance(user["session_token"], list)
    assert set(user["user_agent"]) == {"name", "os", "os_name", "os_major", "device", "major",
                                       "minor"}
    assert set(user["geo_ip"]) >= {"ip", "city_name", "region_name", "country_name",
                                   "country_code2", "location", "latitude", "longitude",
                                   "timezone", "postal_code"}
    assert user["app_id"] and user["org_id"]
    clearbit = next(u["clearbit"] for u in sample if "clearbit" in u)
    assert {"fullName", "givenName", "familyName"} <= set(clearbit["name"])
    assert {"domain", "name", "title"} <= set(clearbit["employment"])


def test_special_records_are_where_documented() -> None:
    ds = Dataset(100, 5)
    assert ds.special_users == {"no_user_id": list(NO_USER_ID_INDEXES),
                                "bad_created": BAD_CREATED_INDEX,
                                "big_metadata": BIG_METADATA_INDEX, "huge_name": HUGE_NAME_INDEX}
    for i in NO_USER_ID_INDEXES:
        doc = ds.user(i)
        assert "user_id" not in doc and ds.user_id(i) is None
        assert ds.user_key(i).startswith("AY")
        assert ds.get_user(f"usr_{i:07d}") is None
    assert ds.user(BAD_CREATED_INDEX)["created"] == "not-a-date"
    big = len(json.dumps(ds.user(BIG_METADATA_INDEX)["metadata"]))
    assert 55_000 <= big <= 70_000
    name = ds.user(HUGE_NAME_INDEX)["name"]
    assert len(name) == HUGE_NAME_CHARS
    # 6 bytes a character once ASCII-escaped: no trimming of other fields can save it.
    assert len(json.dumps(name).encode()) == 6 * HUGE_NAME_CHARS + 2 > 2 * 32 * 1024
    plain = Dataset(100, 5, special_records=False)
    assert plain.special_users == {}
    for i in (*NO_USER_ID_INDEXES, BAD_CREATED_INDEX, BIG_METADATA_INDEX, HUGE_NAME_INDEX):
        doc = plain.user(i)
        assert doc["user_id"] == f"usr_{i:07d}"
        assert len(json.dumps(doc)) < 8_000
        assert doc.get("created") != "not-a-date"


def test_companies_look_like_moesif_companies() -> None:
    ds = Dataset(10, 300)
    companies = [hit[0] for hit in ds.search_companies(size=300)[1]]
    assert len(companies) == 300 and companies[42]["company_id"] == "cmp_00042"
    assert any("domain_name" in c for c in companies)
    assert any("company_domain" in c for c in companies)
    assert any("ttfhw_s" in c for c in companies) and any("ttfhw_s" not in c for c in companies)
    assert all(isinstance(c["metadata"]["employees"], int) for c in companies)
    assert all(isinstance(c["session_token"], list) for c in companies)
    assert {"name", "plan", "industry"} <= set(companies[0]["metadata"])


def test_paging_ascending_and_descending_covers_everyone_once() -> None:
    ds = Dataset(1000, 10)
    asc = all_users(ds)
    keys = [sort[1] for _, sort in asc]
    assert len(keys) == len(set(keys)) == 1000
    assert [s for _, s in asc] == sorted(s for _, s in asc)
    desc = all_users(ds, descending=True)
    assert [s for _, s in desc] == [s for _, s in reversed(asc)]


def test_range_and_ids_filters() -> None:
    ds = Dataset(1000, 10)
    lo, hi = ds.users.base_ms_of(100), ds.users.base_ms_of(200)
    total, hits = ds.search_users(min_ms=lo, max_ms=hi, size=1000)
    assert total == len(hits) == 100
    assert hits[0][1][1] == "usr_0000100" and hits[-1][1][1] == "usr_0000199"
    total, hits = ds.search_users(ids=["usr_0000010", "usr_0000999", "nope", "usr_0000003"],
                                  size=10)
    assert total == 2 and [s[1] for _, s in hits] == ["usr_0000010", "usr_0000999"]
    total, hits = ds.search_users(ids=["usr_0000010", "usr_0000999"], min_ms=lo, size=10)
    assert total == 1 and hits[0][0]["user_id"] == "usr_0000999"
    assert ds.count_users(min_ms=lo) == 900


def test_company_membership_filter_matches_the_documents() -> None:
    ds = Dataset(1000, 60)
    wanted = ["cmp_00003", "cmp_00059", "cmp_99999"]
    members = {ds.user_key(i) for i in range(1000) if ds.user(i).get("company_id") in wanted}
    assert 10 <= len(members) <= 50
    assert ds.user_keys_in_companies(wanted) == members
    ds.update_user("usr_0000100", {"company_id": "cmp_00003"})
    moved = next(iter(sorted(members)))
    ds.update_user(moved, {"company_id": None})
    total, hits = ds.search_users(company_ids=wanted, size=100)
    assert {s[1] for _, s in hits} == (members | {"usr_0000100"}) - {moved}
    assert total == len(hits) and ds.count_users(company_ids=wanted) == total


def test_touch_moves_users_to_the_end_and_paging_sees_them_again() -> None:
    ds = Dataset(300, 10)
    seen, after = [], None
    _, page = ds.search_users(size=100)
    seen += [s[1] for _, s in page]
    after = tuple(page[-1][1])
    assert ds.touch_users(["usr_0000005", "usr_0000250"]) == 2  # one seen, one not yet
    while True:
        _, page = ds.search_users(size=100, search_after=after)
        if not page:
            break
        seen += [s[1] for _, s in page]
        after = tuple(page[-1][1])
    assert seen[-2:] == ["usr_0000005", "usr_0000250"]
    assert seen.count("usr_0000005") == 2 and seen.count("usr_0000250") == 1
    assert len(set(seen)) == 300 and ds.count_users() == 300
    touched = ds.get_user("usr_0000005")
    assert touched["name"] == Dataset(300, 10).get_user("usr_0000005")["name"]
    assert parse_timestamp(touched["modified_time"]) > datetime.now(UTC) - timedelta(minutes=5)


def test_update_add_and_records_moving_into_the_past() -> None:
    ds = Dataset(200, 10)
    ds.update_user("usr_0000150", {"metadata": {"plan": "gold"}, "email": None,
                                   "modified_time": "2020-01-01T00:00:00Z"})
    doc = ds.get_user("usr_0000150")
    assert doc["metadata"] == {"plan": "gold"} and "email" not in doc
    _, hits = ds.search_users(size=1)
    assert hits[0][1] == [epoch_ms(datetime(2020, 1, 1, tzinfo=UTC)), "usr_0000150"]
    key = ds.add_user({"user_id": "ext_1", "name": "Neu Nutzer", "email": "neu@example.de"})
    assert key == "ext_1" and ds.count_users() == 201
    _, hits = ds.search_users(size=1, descending=True)
    assert hits[0][0]["user_id"] == "ext_1" and "modified_time" in hits[0][0]
    with pytest.raises(ValueError):
        ds.add_user({"user_id": "usr_0000001"})
    with pytest.raises(KeyError):
        ds.touch_users(["usr_0000001", "missing"])
    assert ds.get_user("usr_0000001")["modified_time"] == Dataset(200, 10).user(1)[
        "modified_time"]  # the failed touch changed nothing
    with pytest.raises(ValueError):
        ds.update_user("usr_0000001", {"user_id": "other"})
    when = datetime(2030, 1, 1, tzinfo=UTC)
    ds.touch_companies(["cmp_00003"], when=when)
    ds.update_company("cmp_00004", {"metadata": {"name": "Renamed"}}, when=when)
    _, hits = ds.search_companies(size=2, descending=True)
    assert sorted(s[1] for _, s in hits) == ["cmp_00003", "cmp_00004"]
    assert {s[0] for _, s in hits} == {epoch_ms(when)}


def test_usermetrics_for_about_seventy_percent() -> None:
    ds = Dataset(1000, 10)
    ids = [ds.user_key(i) for i in range(1000)]
    metrics = ds.usermetrics(ids)
    assert 650 <= len(metrics) <= 750
    assert not any(ds.user_key(i) in metrics for i in NO_USER_ID_INDEXES)
    some = next(iter(metrics.values()))
    assert set(some) == {"event_count", "error_count", "avg_latency_ms", "top_endpoint",
                         "window"}
    assert ds.usermetrics(ids) == metrics
    ds.touch_users(ids[500:520])
    lo = ds.users.base_ms_of(250)
    pages = all_users(ds, size=64, with_metrics=True, min_ms=lo)
    total, _ = ds.search_users(with_metrics=True, min_ms=lo, size=1)
    expected = {k for k in metrics if ds.users.base_ms_of(int(k[4:])) >= lo}
    assert total == len(pages) == len(expected)
    assert {s[1] for _, s in pages} == expected


def test_search_user_sorts_are_the_sorts_of_search_users() -> None:
    # usermetrics answers from search_user_sorts (no documents built): same hits, same order.
    ds = Dataset(1500, 40)
    ds.touch_users([ds.user_key(i) for i in range(0, 1500, 9)],
                   when=datetime(2024, 6, 1, tzinfo=UTC))
    ds.update_user(ds.user_key(8), {"company_id": "cmp_00001"})
    ds.add_user({"user_id": "late", "modified_time": "2024-01-01T00:03:00Z"})
    ids = [ds.user_key(i) for i in range(0, 1500, 4)] + ["late", "nope"]
    lo = ds.users.base_ms_of(200)
    for filters in ({}, {"with_metrics": True}, {"ids": ids, "with_metrics": True},
                    {"min_ms": lo, "descending": True, "with_metrics": True},
                    {"company_ids": ["cmp_00001", "cmp_00007"], "with_metrics": True},
                    {"search_after": (lo, ds.user_key(200)), "ids": ids}):
        total, hits = ds.search_users(size=300, **filters)
        assert ds.search_user_sorts(size=300, **filters) == (total, [s for _, s in hits])


@pytest.mark.parametrize("ms", [0, 999, 1000, -1, -1000, -1001, 3_599_999, 86_399_999,
                                1_700_000_000_123, -62_135_596_800_000, 253_402_300_799_999])
def test_timestamp_shapes_match_datetime_formatting(ms: int) -> None:
    # The formatters build the text arithmetically (cached per hour); pin them to datetime.
    moment = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    assert fmt_7digits(ms, 42) == moment.isoformat(timespec="seconds") + \
        f".{ms % 1000:03d}0042Z"
    assert fmt_no_zone(ms) == moment.isoformat(timespec="milliseconds")
    assert fmt_seconds(ms) == moment.isoformat(timespec="seconds") + "Z"


def test_concurrent_touches_and_reads_stay_consistent() -> None:
    ds = Dataset(2000, 10)
    errors: list[BaseException] = []

    def toucher(offset: int) -> None:
        try:
            for n in range(50):
                ds.touch_users([ds.user_key(offset + n * 7)])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(20):
                total, hits = ds.search_users(size=200, descending=True)
                assert total == 2000 and len(hits) == 200
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=toucher, args=(k * 400,)) for k in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    keys = [s[1] for _, s in all_users(ds, size=500)]
    assert len(keys) == len(set(keys)) == 2000


def test_a_million_users_without_materialising_them() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ds = Dataset(1_000_000, 100_000)
        middle = (ds.users.base_ms_of(600_000), ds.user_key(600_000))
        total, hits = ds.search_users(size=1000, search_after=middle)
        last_total, last = ds.search_users(size=1000, descending=True)
        ds.touch_users([ds.user_key(10), ds.user_key(999_999)])
        _, touched = ds.search_users(size=2, descending=True)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert total == last_total == 1_000_000
    assert hits[0][1][1] == "usr_0600001" and hits[-1][1][1] == "usr_0601000"
    assert last[0][1][1] == "usr_0999999"
    assert {s[1] for _, s in touched} == {"usr_0000010", "usr_0999999"}
    assert grown < 10_000_000  # a million dicts would be gigabytes
