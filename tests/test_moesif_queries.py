"""Issue 12 items 3 and 4 in the Management API client: by-id paging without the
confirming empty page, the client-side per-minute limiter, and the search-path fallback."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from connector.moesif.management import (
    ALTERNATE_SEARCH_PATHS,
    SEARCH_PATHS,
    BackoffPolicy,
    MoesifEndpointError,
    MoesifManagementClient,
    QueryLimiter,
)
from connector.sandbox.moesif_management import MoesifManagementSandbox
from tests.conftest import MANAGEMENT_KEY
from tests.helpers import sync_sandbox


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(300, 40) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _clean(sandbox):
    sandbox.moesif.missing_paths = set()
    yield
    sandbox.moesif.missing_paths = set()


def client(sb, **kw) -> MoesifManagementClient:
    return MoesifManagementClient(sb.moesif_url, SecretStr(MANAGEMENT_KEY), max_retries=1,
                                  backoff=BackoffPolicy(base=0.01, cap=0.02), timeout=5, **kw)


def requests_of(sb) -> int:
    return sb.moesif.stats()["counters"].get("requests", 0)


def test_by_id_query_that_found_every_id_asks_no_empty_page(sandbox):
    c = client(sandbox)
    ids = [sandbox.dataset.company_id(i) for i in range(25)]
    before = requests_of(sandbox)
    found = [d["company_id"] for p in c.fetch_by_ids("companies", ids, page_size=100)
             for d in p.sources]
    assert sorted(found) == sorted(ids)
    assert requests_of(sandbox) - before == 1  # not 2: 25 ids cannot match a 26th record


def test_a_total_of_matches_seen_ends_paging_without_the_empty_page(sandbox):
    c = client(sandbox)
    before = requests_of(sandbox)
    pages = list(c.iter_modified("users", since=None, until=None, page_size=100))
    assert sum(len(p.hits) for p in pages) == 300 and pages[-1].exact_total
    assert requests_of(sandbox) - before == 3


def test_a_lower_bound_total_still_pages_to_the_empty_page(sandbox, monkeypatch):
    """Elasticsearch's {"value": n, "relation": "gte"} is no exact count."""
    c = client(sandbox)
    real = c._search_post

    def bounded(kind, body, params):
        data = real(kind, body, params)
        data["hits"]["total"] = {"value": 100, "relation": "gte"}
        return data

    monkeypatch.setattr(c, "_search_post", bounded)
    before = requests_of(sandbox)
    pages = list(c.iter_modified("users", since=None, until=None, page_size=100))
    assert sum(len(p.hits) for p in pages) == 300 and not pages[-1].exact_total
    assert requests_of(sandbox) - before == 4


def test_by_id_query_with_missing_ids_still_pages_to_the_end(sandbox):
    c = client(sandbox)
    ids = [sandbox.dataset.company_id(i) for i in range(5)] + ["cmp_nope_1", "cmp_nope_2"]
    found = [d["company_id"] for p in c.fetch_by_ids("companies", ids, page_size=3)
             for d in p.sources]
    assert sorted(found) == sorted(ids[:5])


def test_members_by_company_id_page_to_the_empty_page(sandbox):
    """company_id is not the users' own id: N companies can have more than N members."""
    c = client(sandbox)
    ids = [sandbox.dataset.company_id(i) for i in range(3)]
    members = [d for p in c.fetch_by_ids("users", ids, field="company_id", page_size=2)
               for d in p.sources]
    expected = sandbox.dataset.user_keys_in_companies(ids)
    assert len(members) == len(expected) > 3


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_limiter_waits_for_the_next_calendar_minute():
    clock = FakeClock(600.0 + 50)  # 50 s into a minute
    limiter = QueryLimiter(3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    assert clock.slept == []
    limiter.acquire()  # the 4th in the same minute waits for the boundary
    assert len(clock.slept) == 1 and 10.0 <= clock.slept[0] <= 10.1
    assert int(clock.now // 60) == 11


def test_a_stop_cuts_the_limiters_wait_short():
    """SIGTERM during a wait for the next minute's budget stops at once (Interrupted),
    instead of sleeping out the rest of the minute."""
    import threading

    from connector.errors import Interrupted

    stop = threading.Event()
    stop.set()
    limiter = QueryLimiter(1, clock=FakeClock(600.0 + 1), stop_event=stop)
    limiter.acquire()
    with pytest.raises(Interrupted):
        limiter.acquire()  # would wait ~59 s; the set stop event ends it at once


def test_a_limited_client_never_meets_the_servers_429(sandbox):
    """Sandbox and limiter share one (fake) calendar: 5 queries a minute each."""
    clock = FakeClock(1_000_020.0)
    moesif = MoesifManagementSandbox(sandbox.dataset, MANAGEMENT_KEY,
                                     rate_limit_per_minute=5, clock=clock)
    with moesif.server() as server:
        c = MoesifManagementClient(server.url, SecretStr(MANAGEMENT_KEY), max_retries=0,
                                   timeout=5,
                                   limiter=QueryLimiter(5, clock=clock, sleep=clock.sleep))
        pages = list(c.iter_modified("users", since=None, until=None, page_size=20))
    assert sum(len(p.hits) for p in pages) == 300
    stats = moesif.stats()["counters"]
    # 15 pages, no confirming empty page (hits.total says all were seen): 3 minutes
    assert stats.get("status_429", 0) == 0 and stats["requests"] == 15
    assert len(clock.slept) == 2


@pytest.mark.parametrize("kind", ["users", "companies"])
def test_a_404_on_the_default_path_switches_to_the_other(sandbox, kind, caplog):
    default = SEARCH_PATHS[kind].removeprefix("/v1/search/~/")
    sandbox.moesif.missing_paths = {default}
    c = client(sandbox)
    with caplog.at_level(logging.WARNING, logger="connector.moesif.management"):
        first = c.search(kind, {"size": 5, "query": {"match_all": {}}})
        second = c.search(kind, {"size": 5, "query": {"match_all": {}}})
    assert first.hits and second.hits
    assert c.search_paths[kind] == ALTERNATE_SEARCH_PATHS[kind]
    assert sum("from now on" in r.getMessage() for r in caplog.records) == 1
    seen = [t for _, t, _ in list(sandbox.moesif.requests_seen)[-3:]]
    assert all("metrics/" in t and "from=" in t for t in seen[-2:])


def test_companies_found_on_the_metrics_path_are_the_same_records(sandbox):
    c = client(sandbox)
    plain = [d for p in c.iter_modified("companies", since=None, until=None, page_size=15)
             for d in p.sources]
    sandbox.moesif.missing_paths = {"search/companies"}
    other = [d for p in client(sandbox).iter_modified("companies", since=None, until=None,
                                                      page_size=15) for d in p.sources]
    assert other == plain and len(plain) == 40


def test_the_metrics_path_missing_keeps_the_default(sandbox):
    sandbox.moesif.missing_paths = {"search/companymetrics/companies"}
    c = client(sandbox)
    assert c.search("companies", {"size": 2}).hits
    assert c.search_paths["companies"] == SEARCH_PATHS["companies"]


def test_both_paths_404_is_a_configuration_error_naming_both(sandbox):
    sandbox.moesif.missing_paths = {"search/companies", "search/companymetrics/companies"}
    with pytest.raises(MoesifEndpointError) as err:
        client(sandbox).search("companies", {"size": 2})
    assert err.value.status == 404 and "companymetrics" in str(err.value)
    assert "MOESIF_API_URL" in str(err.value)
