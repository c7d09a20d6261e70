"""Ids of only spaces or control characters are no ids (over loopback, sandboxes).

"   ", "\\t\\n" or "\\x00" as a userId would make one Segment profile of every record
carrying such an id, and as a company_id one account of them: the user is MISSING_ID (not
sent), a member's blank company_id is BAD_VALUE (sent without a company), and the rest of
the run goes on.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.errors import IssueCode
from connector.sync.records import _id_text
from tests.helpers import sync_sandbox
from tests.test_sync_poison import HEALTHY_USERS, delivered, load, sync

BLANK = st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x00\x01\x1f\x7f\x85\xa0"
                                         "\u200b\u2028\u3000\ufeff"), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(0, 0) as sb:
        yield sb



@given(BLANK)
def test_blank_text_is_no_id(value):
    assert _id_text(value) is None


@pytest.mark.parametrize("value", ["u1", "a b", " x ", "a\x00b", "é🚀", "0", "\ufffd"])
def test_text_with_a_visible_character_is_an_id(value):
    assert _id_text(value) == value


@pytest.mark.parametrize("value", ["   ", "\t", "\x00", "\u200b"])
def test_a_blank_user_id_is_missing_not_sent(sandbox, homes, value):
    load(sandbox, "user", "user_id", value)
    outcome = sync(sandbox, homes())
    assert outcome.exit_code == 0, outcome.report["error"]
    assert delivered(sandbox) == set(HEALTHY_USERS)  # u_bad carried the blank id
    assert value not in {m["userId"] for m in sandbox.segment.messages}
    assert IssueCode.MISSING_ID in outcome.report["issue_counts"]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=BLANK)
def test_a_blank_company_id_is_sent_without_a_company(sandbox, homes, value):
    load(sandbox, "user", "company_id", value)
    outcome = sync(sandbox, homes())
    assert outcome.exit_code == 0, outcome.report["error"]
    assert delivered(sandbox) == {*HEALTHY_USERS, "u_bad"}
    groups = {m["groupId"] for m in sandbox.segment.messages if m["type"] == "group"}
    assert groups == {"c_ok", "c_bad"}  # no account for the blank id
    issues = {(i["id"], i["code"]) for i in outcome.report["issues"]}
    assert ("u_bad", IssueCode.BAD_VALUE) in issues


def duplicate_hits(which: list[int], changed: bool, entity: str = "users"):
    """Rewrite the `entity` pass's search so a page holds some of its hits twice (the
    copy last, with another name when `changed`); look-ups by id are left alone."""
    name_field = "name" if entity == "users" else "company_name"

    def rewrite(path: str, body: Any, payload: Any) -> Any:
        by_id = "terms" in str(body)
        if path.endswith(f"search/{entity}") and isinstance(payload, dict) and not by_id:
            hits = payload["hits"]["hits"]
            for i in which:
                if i < len(hits):
                    copy = {**hits[i], "_source": dict(hits[i]["_source"])}
                    if changed:
                        copy["_source"][name_field] = "Second Version"
                    hits.append(copy)
                    rewrite.copies += 1  # type: ignore[attr-defined]
        return payload
    rewrite.copies = 0  # type: ignore[attr-defined]
    return rewrite


def consistent(counts: dict[str, int]) -> bool:
    return (counts["fetched"] == counts["changed"] + counts["unchanged"] + counts["invalid"]
            and counts["changed"] == counts["delivered"] + counts["failed"]
            and counts["sent"] == counts["changed"])


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.lists(st.integers(0, 3), min_size=1, max_size=4), changed=st.booleans())
def test_a_user_twice_in_a_page_is_sent_once_in_its_last_version(sandbox, homes, which,
                                                                  changed):
    load(sandbox)
    sandbox.moesif.rewrite = rewrite = duplicate_hits(which, changed)
    try:
        outcome = sync(sandbox, homes())
    finally:
        sandbox.moesif.rewrite = None
    assert outcome.exit_code == 0, outcome.report["error"]
    assert rewrite.copies > 0  # the page did hold a user twice
    identifies = [m for m in sandbox.segment.messages if m["type"] == "identify"]
    ids = [m["userId"] for m in identifies]
    assert sorted(ids) == sorted(set(ids)) == sorted({*HEALTHY_USERS, "u_bad"})
    if changed:
        names = {m["traits"].get("name") for m in identifies}
        assert "Second Version" in names  # the last one of a user's hits is what went
    users = outcome.report["entities"]["users"]
    assert consistent(users), users


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.lists(st.integers(0, 1), min_size=1, max_size=3), changed=st.booleans(),
       runs=st.integers(1, 2))
def test_a_company_twice_in_a_page_is_counted_once_and_its_members_sent_once(
        sandbox, homes, which, changed, runs):
    load(sandbox)
    home = homes()
    if runs == 2:  # a second run: companies are no longer all new
        assert sync(sandbox, home).exit_code == 0
        sandbox.dataset.touch_companies(["c_ok", "c_bad"])
        sandbox.segment.reset()
    sandbox.moesif.rewrite = rewrite = duplicate_hits(which, changed, "companies")
    try:
        outcome = sync(sandbox, home)
    finally:
        sandbox.moesif.rewrite = None
    assert outcome.exit_code == 0, outcome.report["error"]
    assert rewrite.copies > 0  # the page did hold a company twice
    groups = [(m["userId"], m["groupId"]) for m in sandbox.segment.messages
              if m["type"] == "group"]
    assert len(groups) == len(set(groups)), groups  # no member sent twice
    companies = outcome.report["entities"]["companies"]
    assert consistent(companies), companies
    assert companies["fetched"] == 2
