"""The Management API client against the Moesif sandbox over loopback."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from connector.moesif.management import (
    BackoffPolicy,
    MoesifAuthError,
    MoesifError,
    MoesifManagementClient,
    seconds_to_next_minute,
)
from tests.conftest import MANAGEMENT_KEY
from tests.helpers import sync_sandbox


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(250, 20) as sb:
        yield sb


def client(sb, key=MANAGEMENT_KEY, retries=2) -> MoesifManagementClient:
    return MoesifManagementClient(sb.moesif_url, SecretStr(key), max_retries=retries,
                                  backoff=BackoffPolicy(base=0.01, cap=0.02), timeout=5)


def test_keyset_paging_returns_every_record_once_in_order(sandbox):
    pages = list(client(sandbox).iter_modified("users", since=None, until=None, page_size=40))
    keys = [h["_id"] for p in pages for h in p.hits]
    assert len(keys) == len(set(keys)) == 250
    sorts = [h["sort"] for p in pages for h in p.hits]
    assert sorts == sorted(sorts)


def test_fetch_by_ids_and_members(sandbox):
    c = client(sandbox)
    ids = [sandbox.dataset.company_id(i) for i in range(5)]
    found = {d["company_id"] for p in c.fetch_by_ids("companies", ids) for d in p.sources}
    assert found == set(ids)
    members = [d for p in c.fetch_by_ids("users", ids, field="company_id", page_size=7)
               for d in p.sources]
    assert members and {d["company_id"] for d in members} <= set(ids)


def test_user_metrics_for_a_page(sandbox):
    ids = [sandbox.dataset.user_id(i) for i in range(20, 40)]
    metrics = client(sandbox).user_metrics(ids)
    assert metrics and set(metrics) <= set(ids)


def test_wrong_key_is_an_auth_error_naming_the_setting(sandbox):
    with pytest.raises(MoesifAuthError) as err:
        client(sandbox, key="wrong-key-123456").search("users", {"size": 1})
    assert "MOESIF_MANAGEMENT_API_KEY" in str(err.value) and "wrong-key" not in str(err.value)


def test_rate_limits_do_not_use_up_the_retry_budget(sandbox):
    sandbox.moesif.inject(429, count=6)  # more 429s than max_retries
    page = client(sandbox, retries=1).search("users", {"size": 3})
    assert len(page.hits) == 3


def test_server_errors_give_up_after_max_retries(sandbox):
    sandbox.moesif.inject(503, count=5)
    with pytest.raises(MoesifError, match="gave up"):
        client(sandbox, retries=1).search("users", {"size": 3})
    sandbox.moesif.clear_faults()


def test_next_minute_boundary():
    assert seconds_to_next_minute(120.0) == 60.0
    assert seconds_to_next_minute(179.5) == pytest.approx(0.5)
