"""Oversized free-form objects are trimmed, not the user refused (over loopback).

Moesif's `campaign` and `user_agent` are free-form objects like `metadata`: one of them
over Segment's 32 KB used to make the whole user OVERSIZE (never sent). They are
trimmable now: dropped, largest first, with OVERSIZE_TRIMMED naming what went.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.errors import IssueCode
from connector.segment.sink import MAX_MESSAGE_BYTES
from tests.helpers import sync_sandbox
from tests.test_sync_poison import HEALTHY_USERS, delivered, load, sync


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(0, 0) as sb:
        yield sb



def wide(keys: int, text: str) -> dict[str, str]:
    return {f"k{i}": text for i in range(keys)}


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["campaign", "user_agent"]),
       keys=st.integers(300, 3000), text=st.sampled_from(["v" * 40, "é" * 12, "字" * 8]))
def test_a_huge_free_form_object_is_trimmed_and_the_user_sent(sandbox, homes, field, keys,
                                                               text):
    value = wide(keys, text)
    load(sandbox, "user", field, value)
    outcome = sync(sandbox, homes())
    assert outcome.exit_code == 0, outcome.report["error"]
    assert delivered(sandbox) == {*HEALTHY_USERS, "u_bad"}
    for m in sandbox.segment.messages:
        assert len(json.dumps(m)) <= MAX_MESSAGE_BYTES
    big = len(json.dumps(value)) > MAX_MESSAGE_BYTES
    trimmed = [i for i in outcome.report["issues"]
               if i["id"] == "u_bad" and i["code"] == IssueCode.OVERSIZE_TRIMMED]
    target = "campaign" if field == "campaign" else "userAgent"
    if big:
        assert trimmed and f"identify.traits.{target}" in trimmed[0]["detail"]
    assert not [i for i in outcome.report["issues"] if i["code"] == IssueCode.OVERSIZE]


def test_a_100_kb_campaign_no_longer_refuses_the_user(sandbox, homes):
    load(sandbox, "user", "campaign", wide(5000, "v" * 20))
    outcome = sync(sandbox, homes())
    assert "u_bad" in delivered(sandbox)
    sent = next(m for m in sandbox.segment.messages
                if m["type"] == "identify" and m["userId"] == "u_bad")
    assert "campaign" not in sent["traits"] and sent["traits"]["email"] == "u_bad@x.io"
    assert outcome.report["entities"]["users"]["invalid"] == 0


@pytest.mark.parametrize(("field", "named"), [("name", "traits.name"),
                                              ("email", "traits.email"),
                                              ("user_id", "userId")])
def test_an_oversize_refusal_names_the_field_that_is_too_big(sandbox, homes, field, named):
    load(sandbox, "user", field, "x" * 40_000)
    outcome = sync(sandbox, homes())
    assert outcome.exit_code == 0, outcome.report["error"]
    assert set(HEALTHY_USERS) <= delivered(sandbox)
    refused = [i for i in outcome.report["issues"] if i["code"] == IssueCode.OVERSIZE]
    assert len(refused) == 1 and f"largest field: {named} (" in refused[0]["detail"]
    assert "xxxxxxxx" not in refused[0]["detail"]


@pytest.mark.parametrize("mode", ["incremental", "dry-run"])
def test_a_company_none_of_whose_members_could_be_sent_is_not_counted_delivered(
        sandbox, homes, mode):
    """c_bad's only member (u_b) cannot be sent (a 40 KB company name makes it OVERSIZE):
    no message carried c_bad, so it is not 'delivered' but NO_MEMBERS, with a reason."""
    from connector.sync.job import run_sync
    from tests.conftest import make_settings

    load(sandbox, "company", "name", "N" * 40_000)
    outcome = run_sync(make_settings(homes(), moesif_api_url=sandbox.moesif_url,
                                     segment_host=sandbox.segment_url), mode=mode)
    assert outcome.exit_code == 0, outcome.report["error"]
    companies = outcome.report["entities"]["companies"]
    issues = {(i["entity"], i["id"], i["code"]) for i in outcome.report["issues"]}
    assert ("users", "u_b", IssueCode.OVERSIZE) in issues
    assert ("companies", "c_bad", IssueCode.NO_MEMBERS) in issues
    assert companies["invalid"] == 1 and companies["changed"] == 1  # c_ok only
    if mode == "incremental":
        assert companies["delivered"] == 1
        groups = {m["groupId"] for m in sandbox.segment.messages if m["type"] == "group"}
        assert groups == {"c_ok"}
