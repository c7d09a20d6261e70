"""The Moesif Management API sandbox, over loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connector.common.timeutil import parse_timestamp
from connector.sandbox.dataset import NO_USER_ID_INDEXES, Dataset, epoch_ms
from connector.sandbox.httpbase import SandboxServer
from connector.sandbox.moesif_management import MoesifManagementSandbox

KEY = "test-management-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
USERS, COMPANIES = 1500, 120
SORT = [{"modified_time": {"order": "asc"}}, {"user_id.raw": {"order": "asc"}}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def read_only() -> Iterator[tuple[MoesifManagementSandbox, SandboxServer]]:
    """Shared by tests that do not mutate the dataset (server shutdown costs ~0.5 s)."""
    app = MoesifManagementSandbox(Dataset(USERS, COMPANIES), KEY)
    with app.server() as srv:
        yield app, srv


@pytest.fixture
def app(read_only: tuple[MoesifManagementSandbox, SandboxServer]) -> Iterator[Any]:
    sandbox, _ = read_only
    sandbox.clear_faults()
    sandbox.rate_limit_per_minute = None
    yield sandbox
    sandbox.clear_faults()
    sandbox.rate_limit_per_minute = None


@pytest.fixture
def url(read_only: tuple[MoesifManagementSandbox, SandboxServer], app: Any) -> str:
    return read_only[1].url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def search(http: requests.Session, url: str, body: dict[str, Any], kind: str = "users",
           **kw: Any) -> requests.Response:
    kw.setdefault("timeout", 10)
    return http.post(f"{url}/v1/search/~/search/{kind}", json=body, headers=AUTH, **kw)


def page_all(http: requests.Session, url: str, body: dict[str, Any], kind: str = "users",
             between_pages: Any = None) -> list[dict[str, Any]]:
    hits, after, pages = [], None, 0
    while True:
        payload = dict(body, **({"search_after": after} if after else {}))
        res = search(http, url, payload, kind)
        assert res.status_code == 200, res.text
        page = res.json()["hits"]["hits"]
        if not page:
            return hits
        hits += page
        after = page[-1]["sort"]
        pages += 1
        if between_pages:
            between_pages(pages)


def test_requests_without_the_right_bearer_key_get_401(http: requests.Session, url: str) -> None:
    path = f"{url}/v1/search/~/search/users"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        res = http.post(path, json={"size": 1}, headers=headers, timeout=10)
        assert res.status_code == 401
        assert "message" in res.json()
    assert http.get(f"{url}/v1/search/~/users/usr_0000001", timeout=10).status_code == 401


def test_keyset_paging_covers_every_user_once_in_order(http: requests.Session,
                                                      url: str) -> None:
    hits = page_all(http, url, {"size": 137, "sort": SORT, "_source": ["user_id"]})
    ids = [h["_id"] for h in hits]
    assert len(ids) == len(set(ids)) == USERS
    sorts = [tuple(h["sort"]) for h in hits]
    assert sorts == sorted(sorts)
    for hit in hits[:50]:
        assert epoch_ms(parse_timestamp(hit["_source"]["modified_time"])) == hit["sort"][0]
    no_id = [h for h in hits if "user_id" not in h["_source"]]
    assert len(no_id) == len(NO_USER_ID_INDEXES)
    assert all(h["sort"][1] == h["_id"] and h["_id"].startswith("AY") for h in no_id)


def test_short_sort_forms_id_tiebreaker_and_descending(http: requests.Session,
                                                       url: str) -> None:
    short = search(http, url, {"size": 5, "sort": ["modified_time", "_id"]}).json()
    long = search(http, url, {"size": 5, "sort": SORT}).json()
    assert short["hits"]["hits"] == long["hits"]["hits"]
    desc = page_all(http, url, {"size": 400, "sort": [{"modified_time": "desc"},
                                                      {"_id": {"order": "desc"}}]})
    sorts = [tuple(h["sort"]) for h in desc]
    assert len(sorts) == USERS and sorts == sorted(sorts, reverse=True)
    body = search(http, url, {"size": 3}).json()  # no sort: modified_time asc
    assert body["timed_out"] is False and isinstance(body["took"], int)
    assert body["hits"]["total"] == USERS and body["hits"]["hits"][0]["_id"] == "usr_0000000"


def test_companies_page_fully(http: requests.Session, url: str) -> None:
    sort = [{"modified_time": {"order": "asc"}}, {"company_id.raw": {"order": "asc"}}]
    hits = page_all(http, url, {"size": 50, "sort": sort}, kind="companies")
    assert [h["_id"] for h in hits] == [f"cmp_{j:05d}" for j in range(COMPANIES)]
    assert all(h["_source"]["company_id"] == h["_id"] for h in hits)


def test_range_filter_with_iso_strings_and_epoch_ms(http: requests.Session, app: Any,
                                                    url: str) -> None:
    ds = app.dataset
    lo_ms, hi_ms = ds.users.base_ms_of(200), ds.users.base_ms_of(300)
    lo_iso = parse_timestamp(lo_ms).isoformat().replace("+00:00", "Z")
    bodies = [
        {"range": {"modified_time": {"gte": lo_iso, "lt": hi_ms}}},
        {"range": {"modified_time": {"gt": lo_ms - 1, "lte": hi_ms - 1}}},
    ]
    for clause in bodies:
        body = {"size": 500, "sort": SORT, "query": {"bool": {"filter": [clause]}}}
        res = search(http, url, body).json()["hits"]
        assert res["total"] == 100
        assert [h["_id"] for h in res["hits"]] == [ds.user_key(i) for i in range(200, 300)]
    count = http.post(f"{url}/v1/search/~/count/users", headers=AUTH, timeout=10,
                      json={"query": {"bool": {"must": bodies[0]}}})
    assert count.json() == {"count": 100}


def test_terms_and_term_filters(http: requests.Session, url: str) -> None:
    ids = ["usr_0000007", "usr_0001400", "usr_9999999"]
    body = {"size": 10, "sort": SORT,
            "query": {"bool": {"filter": [{"terms": {"user_id.raw": ids}}]}}}
    res = search(http, url, body).json()["hits"]
    assert res["total"] == 2 and [h["_id"] for h in res["hits"]] == ids[:2]
    members = {"query": {"bool": {"filter": [{"terms": {"company_id.raw": ["cmp_00011"]}}]}},
               "size": 100, "sort": SORT}
    res = search(http, url, members).json()["hits"]
    assert res["total"] == len(res["hits"]) > 0
    assert {h["_source"]["company_id"] for h in res["hits"]} == {"cmp_00011"}
    body = {"size": 10, "sort": [{"modified_time": "asc"}, {"company_id.raw": "asc"}],
            "query": {"bool": {"filter": {"term": {"company_id.raw": "cmp_00011"}}}}}
    res = search(http, url, body, kind="companies").json()["hits"]
    assert [h["_id"] for h in res["hits"]] == ["cmp_00011"]


@pytest.mark.parametrize("body", [
    {"size": 10001},
    {"size": 0},
    {"size": "10"},
    {"size": 10, "from": 20},
    {"query": {"match": {"name": "alice"}}},
    {"query": {"bool": {"should": [{"match_all": {}}]}}},
    {"query": {"bool": {"filter": [{"range": {"created": {"gte": 0}}}]}}},
    {"query": {"bool": {"filter": [{"range": {"modified_time": {"gte": "now-1h"}}}]}}},
    {"query": {"bool": {"filter": [{"terms": {"email.raw": ["a@b.c"]}}]}}},
    {"sort": [{"modified_time": {"order": "asc"}}]},
    {"sort": [{"modified_time": "asc"}, {"user_id.raw": "desc"}]},
    {"sort": [{"name.raw": "asc"}, {"user_id.raw": "asc"}]},
    {"sort": SORT, "search_after": [123]},
    {"sort": SORT, "search_after": ["x", "usr_0000001"]},
])
def test_unsupported_queries_are_400(http: requests.Session, url: str,
                                     body: dict[str, Any]) -> None:
    res = search(http, url, body)
    assert res.status_code == 400
    assert res.json()["message"].startswith("unsupported query")


def test_usermetrics(http: requests.Session, app: Any, url: str) -> None:
    path = f"{url}/v1/search/~/search/usermetrics/users"
    assert http.post(path, json={"size": 5}, headers=AUTH, timeout=10).status_code == 400
    hits, after = [], None
    while True:
        body = {"size": 300, "sort": SORT, **({"search_after": after} if after else {})}
        res = http.post(f"{path}?from=-24h&to=now", json=body, headers=AUTH, timeout=10)
        assert res.status_code == 200
        page = res.json()["hits"]
        if not page["hits"]:
            break
        total = page["total"]
        hits += page["hits"]
        after = page["hits"][-1]["sort"]
    assert total == len(hits) and 0.65 * USERS <= total <= 0.75 * USERS
    assert all(set(h["_source"]) == {"user_id", "metrics"} for h in hits)
    assert hits[0]["_source"]["metrics"]["window"] == "24h"
    expected = app.dataset.usermetrics([app.dataset.user_key(i) for i in range(USERS)])
    assert {h["_id"] for h in hits} == set(expected)


def test_single_records_and_404(http: requests.Session, app: Any, url: str) -> None:
    base = f"{url}/v1/search/~"
    user = http.get(f"{base}/users/usr_0000042", headers=AUTH, timeout=10)
    assert user.status_code == 200 and user.json() == app.dataset.get_user("usr_0000042")
    company = http.get(f"{base}/companies/cmp_00042", headers=AUTH, timeout=10)
    assert company.json()["company_id"] == "cmp_00042"
    assert http.get(f"{base}/users/nobody", headers=AUTH, timeout=10).status_code == 404
    assert http.get(f"{base}/companies/cmp_99999", headers=AUTH,
                    timeout=10).status_code == 404
    assert http.post(f"{base}/count/users", headers=AUTH, timeout=10).json() == {"count": USERS}


def test_injected_429_has_no_retry_after_unless_given(http: requests.Session, app: Any,
                                                      url: str) -> None:
    app.inject(429, count=2)
    first, second = search(http, url, {"size": 1}), search(http, url, {"size": 1})
    assert first.status_code == second.status_code == 429
    assert "Retry-After" not in first.headers
    assert search(http, url, {"size": 1}).status_code == 200
    app.inject(429, retry_after="3")
    assert search(http, url, {"size": 1}).headers["Retry-After"] == "3"
    app.inject(503, path_contains="/companies")
    assert search(http, url, {"size": 1}).status_code == 200
    assert search(http, url, {"size": 1}, kind="companies").status_code == 503
    assert search(http, url, {"size": 1}, kind="companies").status_code == 200


def test_injected_delay_provokes_a_client_timeout(http: requests.Session, app: Any,
                                                  url: str) -> None:
    app.inject_delay(5.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        search(http, url, {"size": 1}, timeout=0.3)
    assert search(http, url, {"size": 1}).status_code == 200


def test_rate_limit_is_a_calendar_minute_window(http: requests.Session, app: Any,
                                                url: str) -> None:
    now = [1_700_000_000.0 - 1_700_000_000.0 % 60 + 5]
    app.clock = lambda: now[0]
    try:
        app.rate_limit_per_minute = 3
        codes = [search(http, url, {"size": 1}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = search(http, url, {"size": 1})
        assert limited.status_code == 429 and "Retry-After" not in limited.headers
        now[0] += 55  # the next calendar minute, although only 55 s later
        assert search(http, url, {"size": 1}).status_code == 200
    finally:
        app.clock = time.time


def test_requests_are_recorded(http: requests.Session, app: Any, url: str) -> None:
    body = {"size": 2, "sort": SORT}
    search(http, url, body)
    method, path, seen = app.requests_seen[-1]
    assert (method, path, seen) == ("POST", "/v1/search/~/search/users", body)
    stats = http.get(f"{url}/_sandbox/stats", timeout=10).json()
    assert stats["counters"]["requests"] >= 1 and stats["users"] == USERS


def test_touch_during_paging_over_the_admin_endpoint(http: requests.Session) -> None:
    app = MoesifManagementSandbox(Dataset(600, 10), KEY)
    with app.server() as srv:
        def touch(pages: int) -> None:
            if pages == 1:  # one already seen, one not yet
                res = http.post(f"{srv.url}/_sandbox/touch", timeout=10,
                                json={"users": ["usr_0000010", "usr_0000400"]})
                assert res.json()["touched_users"] == 2

        hits = page_all(http, srv.url, {"size": 100, "sort": SORT}, between_pages=touch)
        ids = [h["_id"] for h in hits]
        assert ids[-2:] == ["usr_0000010", "usr_0000400"]
        assert ids.count("usr_0000010") == 2 and ids.count("usr_0000400") == 1
        assert len(set(ids)) == 600
        missing = http.post(f"{srv.url}/_sandbox/touch", json={"users": ["nope"]}, timeout=10)
        assert missing.status_code == 404
        res = http.post(f"{srv.url}/_sandbox/fault", json={"status": 500, "count": 1},
                        timeout=10)
        assert res.status_code == 200
        assert search(http, srv.url, {"size": 1}).status_code == 500
        assert search(http, srv.url, {"size": 1}).status_code == 200


def test_serve_runs_both_peers_in_a_separate_process(http: requests.Session) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.sandbox.serve", "--users", "50", "--companies", "5",
         "--management-key", "k1", "--write-key", "w1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = json.loads(proc.stdout.readline())
        assert line["pid"] == proc.pid
        res = http.post(f"{line['moesif_api_url']}/v1/search/~/search/users", timeout=10,
                        json={"size": 100}, headers={"Authorization": "Bearer k1"})
        assert res.json()["hits"]["total"] == 50
        res = http.post(f"{line['segment_host']}/v1/batch", auth=("w1", ""), timeout=10,
                        json={"batch": [{"type": "identify", "userId": "u1"}]})
        assert res.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0
