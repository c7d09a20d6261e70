"""Poison values in Moesif records never stop a sync run (issue 7, item 1).

Over loopback against the sandboxes: the Moesif sandbox serves whatever a record holds
(NaN and Infinity literals, integers past 64 bits, lone surrogates, deep nesting) the way
a server might, and the Segment sandbox shows what arrived.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.common.timeutil import parse_timestamp, utcnow
from connector.errors import IssueCode
from connector.sync.job import run_sync
from tests.conftest import make_settings
from tests.helpers import sync_sandbox
from tests.test_mapping import JSONISH, put

T0 = "2024-03-01T10:00:00.000Z"
HEALTHY_USERS = ("u_a", "u_b", "u_c")  # u_a and u_bad in c_ok, u_b in c_bad, u_c alone


def company(cid: str, minute: int) -> dict[str, Any]:
    return {"company_id": cid, "name": f"{cid} Ltd", "created": "2023-01-01T00:00:00Z",
            "modified_time": f"2024-03-01T09:{minute:02d}:00.000Z", "company_domain": "x.io",
            "metadata": {"plan": "pro", "employees": 12, "address": {"city": "Oslo"}}}


def user(uid: str, second: int, company_id: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "user_id": uid, "name": f"User {uid}", "email": f"{uid}@x.io",
        "created": "2023-05-01T00:00:00Z", "modified_time": f"2024-03-01T10:00:{second:02d}Z",
        "ip_address": "192.0.2.1", "metadata": {"plan": "pro", "seats": 3},
        "geo_ip": {"city_name": "Oslo", "latitude": 59.9, "longitude": 10.7},
    }
    if company_id:
        doc["company_id"] = company_id
    return doc


def non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    return False


def ours(message: dict[str, Any]) -> list[Any]:
    """What the mapping put in a message (the library's envelope has nulls of its own)."""
    return [message.get("traits"), message.get("context")]


def has_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(has_none(v) for v in value.values())
    if isinstance(value, list):
        return any(has_none(v) for v in value)
    return False


def in_the_future(value: Any) -> bool:
    try:
        return parse_timestamp(value) > utcnow()
    except ValueError:
        return False


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(0, 0) as sb:
        yield sb



def load(sandbox, target: str | None = None, field: str | None = None, value: Any = None,
         ) -> None:
    """Fresh records in the sandbox; `target` ('user' or 'company') gets `field` = value."""
    sandbox.dataset.clear_mutations()
    sandbox.segment.reset()
    companies = {"c_ok": company("c_ok", 1), "c_bad": company("c_bad", 2)}
    users = {"u_a": user("u_a", 1, "c_ok"), "u_b": user("u_b", 2, "c_bad"),
             "u_c": user("u_c", 3, None), "u_bad": user("u_bad", 4, "c_ok")}
    if target == "user":
        put(users["u_bad"], field, value)
    elif target == "company":
        put(companies["c_bad"], field, value)
    for key, doc in companies.items():
        sandbox.dataset.add_company(doc, key=key)
    for key, doc in users.items():
        sandbox.dataset.add_user(doc, key=key)


def sync(sandbox, home):
    settings_ = make_settings(home, moesif_api_url=sandbox.moesif_url,
                              segment_host=sandbox.segment_url)
    return run_sync(settings_)


def delivered(sandbox, kind: str = "identify") -> set[str]:
    return {m["userId"] for m in sandbox.segment.messages if m["type"] == kind}


@pytest.mark.parametrize("employees", ["NaN", "Infinity", 1e30, "99999999999999999999",
                                       float("nan"), float("-inf"), 2**64, 10**400])
def test_a_poison_employee_count_is_left_out_and_the_run_goes_on(sandbox, homes, employees):
    load(sandbox, "company", "metadata.employees", employees)
    outcome = sync(sandbox, homes())
    report = outcome.report
    assert outcome.exit_code == 0 and report["status"] == "success", report["error"]
    assert delivered(sandbox) == {*HEALTHY_USERS, "u_bad"}
    assert delivered(sandbox, "group") == {"u_a", "u_b", "u_bad"}
    assert report["entities"]["companies"]["delivered"] == 2
    named = [i for i in report["issues"] if i["code"] == IssueCode.BAD_VALUE]
    assert any(i["entity"] == "companies" and i["id"] == "c_bad" and "employee" in i["detail"]
               for i in named), named
    for m in sandbox.segment.messages:
        traits = m["traits"]
        sent = traits.get("employees", traits.get("company", {}).get("employee_count", 12))
        assert sent == 12 or m.get("groupId", traits.get("company", {}).get("id")) == "c_bad"
        if m.get("groupId") == "c_bad":
            assert "employees" not in traits  # left out, never null
        assert not non_finite(m) and not has_none(ours(m))


def test_deep_and_wide_free_form_values_are_cut_not_fatal(sandbox, homes):
    deep: Any = "bottom"
    for _ in range(300):
        deep = {"d": deep}
    load(sandbox, "user", "metadata", {"deep": deep, "big": 2**70, "nan": float("nan"),
                                       "text": "half \ud83d", "fine": [1, "two"]})
    outcome = sync(sandbox, homes())
    assert outcome.exit_code == 0, outcome.report["error"]
    assert delivered(sandbox) == {*HEALTHY_USERS, "u_bad"}
    sent = next(m for m in sandbox.segment.messages
                if m["type"] == "identify" and m["userId"] == "u_bad")
    metadata = sent["traits"]["metadata"]
    assert metadata["fine"] == [1, "two"] and "big" not in metadata and "nan" not in metadata
    assert metadata["text"] == "half \ufffd"
    codes = {(i["id"], i["code"]) for i in outcome.report["issues"]}
    assert ("u_bad", "BAD_VALUE") in codes and ("u_bad", "BAD_ENCODING") in codes


USER_FIELDS = ["user_id", "name", "email", "created", "modified_time", "company_id",
               "metadata", "metadata.email", "metadata.name", "geo_ip", "geo_ip.latitude",
               "ip_address", "campaign", "clearbit", "user_agent", "first_name", "extra"]
COMPANY_FIELDS = ["company_id", "name", "created", "modified_time", "first_seen_time",
                  "ttfhw_s", "metadata", "metadata.employees", "metadata.name", "plan",
                  "company_domain", "ip_address", "extra"]
POISON = st.one_of(st.tuples(st.just("user"), st.sampled_from(USER_FIELDS)),
                   st.tuples(st.just("company"), st.sampled_from(COMPANY_FIELDS)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=POISON, value=JSONISH)
def test_any_value_in_any_field_never_stops_the_run(sandbox, homes, where, value):
    target, field = where
    load(sandbox, target, field, value)
    outcome = sync(sandbox, homes())
    report = outcome.report
    assert outcome.exit_code == 0 and report["status"] == "success", report["error"]
    sent = delivered(sandbox)
    assert set(HEALTHY_USERS) <= sent  # every other record went through
    if target == "user" and not (field == "modified_time" and in_the_future(value)):
        # the poisoned one: delivered (without the bad value) or reported. (A record
        # modified "in the future" is not in this run's window: it comes when its time does.)
        reported = {i["id"] for i in report["issues"]}
        if field == "user_id" and isinstance(value, str | int) and value not in ("", True, False):
            assert str(value) in sent or "u_bad" in reported  # an id after all, or refused
        else:
            assert "u_bad" in sent or "u_bad" in reported
    elif target == "company":
        assert "u_bad" in sent
    for m in sandbox.segment.messages:
        assert not non_finite(m)  # NaN and Infinity are never sent
        if not has_none(value):
            assert not has_none(ours(m))  # ... nor turned into null
    assert set(report["issue_counts"]) <= set(IssueCode)


def test_an_unforeseen_error_on_one_record_fails_that_record_only(sandbox, homes, monkeypatch):
    """The per-record guard: a bug hit by one record (simulated by making our own mapping
    raise for it) leaves that record out as a failure, retried by the next run."""
    from connector.sync.job import SyncRun

    load(sandbox)
    original = SyncRun._map_user

    def buggy(self, doc, page, cache):
        if doc.get("user_id") == "u_bad":
            raise RuntimeError("value 4242 of the record")
        return original(self, doc, page, cache)

    monkeypatch.setattr(SyncRun, "_map_user", buggy)
    home = homes()
    first = sync(sandbox, home)
    assert first.exit_code == 1 and first.report["status"] == "partial"
    assert delivered(sandbox) == set(HEALTHY_USERS)
    failed = [i for i in first.report["issues"] if i["code"] == IssueCode.MAPPING_FAILED]
    assert [(i["id"], i["attempts"]) for i in failed] == [("u_bad", 1)]
    assert "RuntimeError" in failed[0]["detail"] and "4242" not in failed[0]["detail"]
    users = first.report["entities"]["users"]
    assert users["failed"] == 1 and users["delivered"] == 3
    monkeypatch.setattr(SyncRun, "_map_user", original)  # the fix is deployed
    second = sync(sandbox, home)
    assert second.exit_code == 0 and "u_bad" in delivered(sandbox)
    assert second.report["entities"]["users"]["retried"] == 1
