"""Search answers of the wrong shape and paging that does not advance, over loopback.

The Moesif sandbox sends raw bodies (`inject_body`) or rewrites its search answers
(`rewrite`) the way a wrong address or a broken server might: each ends as a clear error
(a configuration error naming MOESIF_API_URL, or a Moesif error that stops paging), never
an AttributeError, a silent "nothing changed" or an endless loop; a hit of the wrong type
is one record reported, and the rest of its page goes on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from connector.errors import ConfigError, IssueCode
from connector.moesif.management import (
    BackoffPolicy,
    MoesifAuthError,
    MoesifEndpointError,
    MoesifError,
    MoesifManagementClient,
    Page,
)
from connector.sync.job import run_sync
from tests.conftest import MANAGEMENT_KEY, make_settings
from tests.helpers import sync_sandbox


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(30, 4) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _clean(sandbox):
    sandbox.moesif.clear_faults()
    yield
    sandbox.moesif.clear_faults()


def client(sb) -> MoesifManagementClient:
    return MoesifManagementClient(sb.moesif_url, SecretStr(MANAGEMENT_KEY), max_retries=1,
                                  backoff=BackoffPolicy(base=0.01, cap=0.02), timeout=5)


def pages(sb, page_size: int = 10) -> list[Page]:
    return list(client(sb).iter_modified("users", since=None, until=None,
                                         page_size=page_size))


@pytest.mark.parametrize("body", ["null", "[1, 2]", '"text"', "7", "{}", '{"took": 1}',
                                  '{"hits": [1, 2]}', '{"hits": "abc"}', '{"hits": null}',
                                  '{"hits": {"hits": {"a": 1}, "total": 1}}',
                                  '{"hits": {"hits": "x", "total": 1}}'])
def test_json_that_is_no_search_result_is_a_configuration_error(sandbox, body):
    sandbox.moesif.inject_body(body, count=3)
    with pytest.raises(MoesifEndpointError) as err:
        pages(sandbox)
    assert "MOESIF_API_URL" in str(err.value) and MANAGEMENT_KEY not in str(err.value)


NOT_A_RESULT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["hits", "total", "took", "_source"]), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=NOT_A_RESULT)
def test_any_json_answer_is_pages_or_a_moesif_error(sandbox, body):
    """Whatever JSON the address answers: pages of records, or a Moesif error (never an
    AttributeError or TypeError escaping the client)."""
    sandbox.moesif.clear_faults()
    sandbox.moesif.inject_body(json.dumps(body), count=1)
    try:
        for page in pages(sandbox):
            assert all(isinstance(doc, dict) for doc in page.sources)
    except MoesifError:
        pass


def test_hits_of_the_wrong_type_are_records_reported_not_the_run_s_end(sandbox, tmp_path):
    def spoil(path: str, body: Any, payload: Any) -> Any:
        if path.endswith("search/users") and isinstance(payload, dict):
            hits = payload["hits"]["hits"]
            if hits and "search_after" not in (body or {}):
                first = hits[0]
                # a number, a text and a hit whose _source is no object, before the rest
                hits[:0] = [7, "x", {"_id": "odd", "_source": [1, 2], "sort": first["sort"]}]
        return payload

    def run(home: str) -> tuple[Any, set[str], list[Any]]:
        sandbox.segment.reset()
        outcome = run_sync(make_settings(tmp_path / home, moesif_api_url=sandbox.moesif_url,
                                         segment_host=sandbox.segment_url))
        sent = {m["userId"] for m in sandbox.segment.messages if m["type"] == "identify"}
        missing = [i for i in outcome.report["issues"] if i["code"] == IssueCode.MISSING_ID]
        return outcome, sent, missing

    _, baseline, missing_before = run("plain")  # the data set has id-less users of its own
    sandbox.moesif.rewrite = spoil
    outcome, sent, missing = run("spoiled")
    assert outcome.exit_code == 0, outcome.report["error"]
    assert sent == baseline and len(baseline) > 20
    assert len(missing) == len(missing_before) + 3 and "odd" in {i["id"] for i in missing}


def test_a_server_that_ignores_search_after_stops_paging(sandbox):
    moesif = sandbox.moesif

    def first_page_again(path: str, body: Any, payload: Any) -> Any:
        if isinstance(body, dict) and "search_after" in body:
            again = {k: v for k, v in body.items() if k != "search_after"}
            return moesif._search("users", again)
        return payload

    moesif.rewrite = first_page_again
    seen = []
    with pytest.raises(MoesifError, match="does not advance"):
        for page in client(sandbox).iter_modified("users", since=None, until=None,
                                                   page_size=10):
            seen.append(page)
            assert len(seen) < 5, "paging loops"
    assert len(seen) == 1  # the repeated page is not handed on


def test_a_page_whose_total_is_not_exact_and_repeats_still_ends(sandbox):
    """Without an exact `total` to stop at, only the repeat detection ends the paging."""
    moesif = sandbox.moesif

    def inexact_and_stuck(path: str, body: Any, payload: Any) -> Any:
        if isinstance(body, dict) and "search_after" in body:
            again = {k: v for k, v in body.items() if k != "search_after"}
            payload = moesif._search("users", again)
        payload["hits"]["total"] = {"value": 10_000, "relation": "gte"}
        return payload

    moesif.rewrite = inexact_and_stuck
    with pytest.raises(MoesifError, match="does not advance"):
        pages(sandbox)


def test_a_run_against_a_json_api_that_is_not_moesif_is_a_configuration_error(sandbox,
                                                                            tmp_path):
    sandbox.moesif.inject_body('{"status": "ok"}', count=50)
    outcome = run_sync(make_settings(tmp_path / "home", moesif_api_url=sandbox.moesif_url,
                                     segment_host=sandbox.segment_url))
    assert outcome.exit_code == 2, outcome.report
    assert "MOESIF_API_URL" in outcome.report["error"]
    assert issubclass(MoesifEndpointError, ConfigError)


KEY_CHARS = st.text(min_size=1, max_size=12).filter(
    lambda t: not (t.isascii() and t.isprintable() and not any(c.isspace() for c in t)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=KEY_CHARS, where=st.sampled_from(["start", "middle", "end"]))
def test_a_key_no_header_can_carry_is_an_auth_error_naming_the_setting(sandbox, bad, where):
    """Non-ASCII, control characters or line breaks in the key: a MoesifAuthError at the
    first request (not retried, no UnicodeEncodeError or InvalidHeader as an outage),
    without the key in its text."""
    key = {"start": bad + "k3y-abcdef", "middle": "k3y" + bad + "abcdef",
           "end": "k3y-abcdef" + bad}[where]
    if key.strip() != key and _clean_after_strip(key):
        return  # spaces around a good key are trimmed: it works (next test)
    c = MoesifManagementClient(sandbox.moesif_url, SecretStr(key), max_retries=2,
                               backoff=BackoffPolicy(base=0.01, cap=0.02), timeout=5)
    with pytest.raises(MoesifAuthError) as err:
        c.search("users", {"size": 1})
    assert "MOESIF_MANAGEMENT_API_KEY" in str(err.value)
    assert key not in str(err.value) and c.retries == 0


def _clean_after_strip(key: str) -> bool:
    k = key.strip()
    return bool(k) and k.isascii() and k.isprintable() and not any(c.isspace() for c in k)


@pytest.mark.parametrize("key", [f" {MANAGEMENT_KEY}", f"{MANAGEMENT_KEY}\n",
                                 f"\t{MANAGEMENT_KEY} "])
def test_spaces_around_the_key_are_trimmed(sandbox, key):
    page = client_with(sandbox, key).search("users", {"size": 2})
    assert len(page.hits) == 2


def test_a_non_ascii_key_is_refused_before_any_run(sandbox, tmp_path):
    # The settings refuse it at load (exit 2 from every command); a client given one
    # directly still names the setting at its first request (the tests around this one).
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path / "home", moesif_api_url=sandbox.moesif_url,
                      segment_host=sandbox.segment_url,
                      moesif_management_api_key=SecretStr("ключ-1234567890"))
    assert "moesif_management_api_key" in str(caught.value)
    assert "ключ" not in str(caught.value)


def client_with(sb, key: str) -> MoesifManagementClient:
    return MoesifManagementClient(sb.moesif_url, SecretStr(key), max_retries=1,
                                  backoff=BackoffPolicy(base=0.01, cap=0.02), timeout=5)


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1, 2], True, ""])
@pytest.mark.parametrize("bad_sort", [None, "text", {"a": 1}, 7])
def test_paging_past_a_hit_without_a_usable_sort_array(sandbox, bad_id, bad_sort):
    """A hit whose `sort` is no array (or absent) is paged past by its derived sort
    [epoch ms, id], built from an id that can be a sort value (the hit's `_id` when the
    record's own id is an object, a list, a boolean or empty): never a 400 from sending
    an object back as `search_after`."""
    def spoil(path: str, body: Any, payload: Any) -> Any:
        if path.endswith("search/users") and isinstance(payload, dict):
            for hit in payload["hits"]["hits"]:
                hit["_source"] = dict(hit["_source"], user_id=bad_id)
                if bad_sort is None:
                    hit.pop("sort", None)
                else:
                    hit["sort"] = bad_sort
        return payload

    sandbox.moesif.rewrite = spoil
    got = pages(sandbox, page_size=7)
    assert sum(len(p.hits) for p in got) == 30
