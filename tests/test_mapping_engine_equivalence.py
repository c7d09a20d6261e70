"""The compiled mapping engine against the rule-list interpreter it replaced
(tests/legacy_mapping.py, frozen): record by record, the same messages (key order
included), issues, missing required fields and coverage events, over the sandbox data set,
its special records and arbitrary poison values in every field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from connector import mapping as new_engine
from connector.sandbox.dataset import Dataset
from tests import legacy_mapping as old_engine

ROOT = Path(__file__).resolve().parent.parent
NEW = new_engine.load_mappings(ROOT / "mappings")
OLD = old_engine.load_mappings(ROOT / "mappings")
USERS, COMPANIES = 3_000, 300


def ordered(value: Any) -> str:
    """JSON that keeps key order and tells NaN, infinities and big integers apart."""
    return json.dumps(value, default=repr, allow_nan=True)


def same(section: str, doc: dict[str, Any], joins: dict[str, Any],
         old_cache: dict | None = None, new_cache: dict | None = None) -> None:
    old = OLD.apply(section, doc, joins, cache=old_cache)
    new = NEW.apply(section, doc, joins, cache=new_cache)
    assert ordered(new.message) == ordered(old.message)
    assert new.issues == old.issues
    assert new.missing_required == old.missing_required
    assert NEW.field_events(new) == OLD.field_events(old)


def user_joins(data: Dataset, doc: dict[str, Any]) -> dict[str, Any]:
    company = data.get_company(doc["company_id"]) if doc.get("company_id") else None
    uid = doc.get("user_id")
    metrics = data.usermetrics([uid]).get(uid) if isinstance(uid, str) else None
    return {"@company": company, "@metrics": metrics}


def test_every_record_of_the_data_set_maps_alike():
    data = Dataset(USERS, COMPANIES)
    old_cache: dict = {}
    new_cache: dict = {}
    for i in range(USERS):
        doc = data.user(i)
        joins = user_joins(data, doc)
        same("identify", doc, joins, old_cache, new_cache)
        same("identify", doc, joins)  # without a page cache too
        if joins["@company"] is not None:
            same("group", joins["@company"], {})
    for j in range(COMPANIES):
        doc = data.get_company(data.company_id(j))
        same("company_object", doc, {})
        same("group", doc, {})


def test_the_special_records_map_alike():
    data = Dataset(40, 5)
    special = data.special_users
    indexes = [*special["no_user_id"], *(v for k, v in special.items() if k != "no_user_id")]
    assert len(indexes) == 5
    for i in indexes:
        doc = data.user(i)
        same("identify", doc, user_joins(data, doc))


USER_FIELDS = ["user_id", "name", "email", "created", "modified_time", "company_id",
               "first_name", "last_name", "ip_address", "geo_ip", "user_agent_string",
               "metadata", "campaign", "first_seen_time", "last_seen_time"]
COMPANY_FIELDS = ["company_id", "name", "created", "modified_time", "first_seen_time",
                  "ip_address", "company_domain", "metadata", "geo_ip"]
LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
    st.floats(), st.just(math.nan), st.just(math.inf), st.text(max_size=8),
    st.sampled_from(["", "N/A", "\ud800x", "2024-05-01T10:00:00Z", "12", "1e3", "true",
                     "not-a-date", " 7 "]),
)
POISON = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["lat", "lon", "ip",
                                                                     "email", "name"])),
                    inner, max_size=3)), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 199), field=st.sampled_from(USER_FIELDS), value=POISON,
       company_field=st.sampled_from(COMPANY_FIELDS), company_value=POISON,
       metrics=st.one_of(st.none(), POISON))
def test_poison_values_map_alike(index, field, value, company_field, company_value, metrics):
    data = Dataset(200, 20)
    doc = dict(data.user(index))
    joins = user_joins(data, doc)
    doc[field] = value
    if joins["@company"] is not None:
        joins["@company"] = {**joins["@company"], company_field: company_value}
        same("group", joins["@company"], {})
        same("company_object", joins["@company"], {})
    joins["@metrics"] = metrics
    same("identify", doc, joins, {}, {})
    same("identify", doc, joins)


# --- the forward path: Moesif events of the old and new event mappers ----------------------
FORWARD_EVENTS = 2_500


def forward_mappers(send_headers: bool, mask: Any) -> tuple[Any, Any]:
    from connector.forward.moesif_event import EventMapper
    from tests.legacy_moesif_event import EventMapper as OldEventMapper

    secret = b"s" * 32
    return (OldEventMapper(send_headers, mask, {"UNKNOWN"}, transaction_secret=secret),
            EventMapper(send_headers, mask, {"UNKNOWN"}, transaction_secret=secret))


def parse(line: str) -> Any:
    from connector.forward.errors import MalformedEvent
    from connector.forward.logline import parse_metrics_line
    try:
        return parse_metrics_line(line)
    except MalformedEvent:  # a broken line: no event to map
        return None


def outcome(mapper: Any, raw: Any, kind: Any) -> str:
    from connector.forward.errors import MalformedEvent
    try:
        return ordered(mapper.process(raw, kind))
    except MalformedEvent as exc:
        return f"malformed {exc.reason_code}: {exc.detail}"


def test_every_generated_apim_event_maps_alike():
    from connector.forward.masking import MaskConfig
    from connector.sandbox.apim_log import LogGenerator

    masks = [MaskConfig(), MaskConfig(rules={"userName": "EMAIL", "userIp": "IPV4",
                                             "applicationOwner": "STRING"},
                                      request_headers=["Authorization"])]
    pairs = [forward_mappers(headers, mask) for headers in (False, True) for mask in masks]
    seen = 0
    for line in LogGenerator(seed=11, headers_ratio=0.5).lines(FORWARD_EVENTS):
        parsed = parse(line)
        if parsed is None:
            continue
        kind, raw = parsed
        for old, new in pairs:
            expected = outcome(old, raw, kind)
            assert outcome(new, raw, kind) == expected
        seen += 1
    assert seen > FORWARD_EVENTS * 0.8


EVENT_FIELDS = ["apiContext", "apiResourceTemplate", "apiMethod", "proxyResponseCode",
                "targetResponseCode", "responseLatency", "userName", "applicationId",
                "correlationId", "userIp", "userAgent", "requestTimestamp", "gatewayUrl",
                "properties", "apiName", "apiVersion", "responseContentType"]


def _has_blank(value) -> bool:
    """A whitespace-only string anywhere in the value."""
    if isinstance(value, str):
        return value != "" and value.isspace()
    if isinstance(value, dict):
        return any(_has_blank(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_blank(v) for v in value)
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 300), field=st.sampled_from(EVENT_FIELDS), value=POISON)
def test_poison_apim_values_map_alike(index, field, value):
    from connector.forward.masking import MaskConfig
    from connector.sandbox.apim_log import LogGenerator

    # The one intended change since the frozen engine: a whitespace-only value counts as
    # unknown like "" (tests/test_forward_moesif_event.py covers it), so it is left out.
    assume(not _has_blank(value))

    line = next(LogGenerator(seed=5).lines(1, start=index))
    parsed = parse(line)
    if parsed is None:
        return
    kind, raw = parsed
    raw = {**raw, field: value}
    old, new = forward_mappers(True, MaskConfig(rules={"userName": "EMAIL"}))
    assert outcome(new, raw, kind) == outcome(old, raw, kind)
