"""Issue 12 item 3 at the level of a sync run: companies first into the state store, users
pages join them from there, and the Moesif query budget per 1,000 users."""

from __future__ import annotations

import pytest

from connector.state.store import connect_state
from connector.sync.job import run_sync
from connector.sync.state import CompanyCache
from tests.helpers import sync_sandbox

USERS, COMPANIES, PAGE = 2000, 200, 100


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(USERS, COMPANIES, special_records=False,
                            record_messages=False) as sb:
        yield sb


def queries(sb) -> int:
    return sb.moesif.stats()["counters"].get("requests", 0)


def paths_since(sb, n: int) -> list[str]:
    return [t.split("?")[0].rsplit("/search/", 1)[-1] for _, t, _ in
            list(sb.moesif.requests_seen)[-n:]] if n else []


@pytest.mark.parametrize(("metrics", "budget"), [(True, 2.2), (False, 1.2)])
def test_a_full_sync_stays_within_the_query_budget(sandbox, settings_factory, metrics, budget):
    settings = settings_factory(moesif_api_url=sandbox.moesif_url,
                                segment_host=sandbox.segment_url, moesif_page_size=PAGE,
                                sync_user_metrics=metrics)
    before = queries(sandbox)
    outcome = run_sync(settings, mode="full")
    made = queries(sandbox) - before
    assert outcome.exit_code == 0
    assert outcome.report.entities["users"].delivered == USERS
    # companies: 2 pages; users: 20 pages (+20 metrics); companies again by id: 2
    assert made == 2 + 20 + (20 if metrics else 0) + 2
    # per page of users (1,000 users at the default page size)
    assert made / (USERS / PAGE) <= budget
    paths = paths_since(sandbox, made)
    assert paths[:2] == ["companies", "companies"]  # companies first
    assert ("usermetrics/users" in paths) is metrics
    conn = connect_state(settings)
    try:
        assert CompanyCache(conn).count() == COMPANIES
    finally:
        conn.close()


def test_users_pages_join_their_companies_from_the_state_store(sandbox, settings_factory):
    settings = settings_factory(moesif_api_url=sandbox.moesif_url,
                                segment_host=sandbox.segment_url, moesif_page_size=PAGE,
                                sync_user_metrics=False)
    assert run_sync(settings).exit_code == 0
    touched = [sandbox.dataset.user_key(i) for i in range(0, USERS, 4)]  # 500 users
    sandbox.dataset.touch_users(touched)
    try:
        before = queries(sandbox)
        outcome = run_sync(settings)
        made = queries(sandbox) - before
        assert outcome.exit_code == 0
        assert outcome.report.entities["users"].delivered == len(touched)
        paths = paths_since(sandbox, made)
        # the companies pass (its look-back window has them all again: 2 pages), the
        # users pages, then the companies once by id: no company search per users page
        first, last = paths.index("users"), len(paths) - paths[::-1].index("users")
        assert paths[:first] == ["companies"] * first and first <= 2
        assert set(paths[first:last]) == {"users"} and last - first >= 5
        assert paths[last:] == ["companies"] * (made - last) and made - last <= 2
    finally:
        sandbox.dataset.clear_mutations()


def test_a_company_missing_from_the_store_is_fetched_by_id_once(sandbox, settings_factory):
    settings = settings_factory(moesif_api_url=sandbox.moesif_url,
                                segment_host=sandbox.segment_url, moesif_page_size=PAGE,
                                sync_user_metrics=False, moesif_lookback_seconds=0)
    assert run_sync(settings).exit_code == 0
    conn = connect_state(settings)
    try:  # a store from before the cache existed, or emptied by hand
        conn.execute("DELETE FROM company_cache")
    finally:
        conn.close()
    touched = [sandbox.dataset.user_key(i) for i in range(PAGE)]
    sandbox.dataset.touch_users(touched)
    try:
        before = queries(sandbox)
        outcome = run_sync(settings)
        made = queries(sandbox) - before
        assert outcome.exit_code == 0
        assert outcome.report.entities["users"].delivered == PAGE
        assert not [i for i in outcome.report.issues if i.code == "COMPANY_NOT_FOUND"]
        # the companies pass (the newest company), the users pages (the touched users and
        # the newest one: two pages), the first page's companies by id (the store lost
        # them; the second page's user's company is among them: no query for it), then
        # the companies settled by id (101 ids: two queries). The prefetch thread may ask
        # for the second users page before the first page's companies are fetched.
        paths = paths_since(sandbox, made)
        assert paths[0] == "companies" and paths.count("users") == 2
        assert paths.count("companies") == 4 and paths[-2:] == ["companies"] * 2
    finally:
        sandbox.dataset.clear_mutations()
