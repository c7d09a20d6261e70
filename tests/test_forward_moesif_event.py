"""WSO2 event -> Moesif Collector event, driven by mappings/apim_events.toml."""

from __future__ import annotations

import copy
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.common.timeutil import parse_timestamp
from connector.forward.apim import validate_event, validate_event_dict
from connector.forward.errors import MalformedEvent
from connector.forward.masking import MASK, MaskConfig
from connector.forward.moesif_event import (
    TRANSACTION_NAMESPACE,
    EventMapper,
    default_mapping_path,
    load_mapping,
)
from connector.settings import ConfigError

# The seed's apim_event_response table, one realistic value per field.
RESPONSE_SEED = {
    "apiCreator": "creator-admin",
    "apiCreatorTenantDomain": "carbon.super",
    "apiId": "eeb6c7d4-1d8c-4a74-a9f6-1f5f1e7b9a5e",
    "apiMethod": "get",
    "apiName": "PizzaShackAPI",
    "apiResourceTemplate": "/menu",
    "apiType": "HTTP",
    "apiVersion": "1.0.0",
    "applicationId": "1b6e4e4e-6f0e-4b77-9c9e-7a2a8c2e2b1a",
    "applicationName": "DefaultApplication",
    "applicationOwner": "owner.person@corp.com",
    "backendLatency": 22,
    "correlationId": "a9f4bd28-ab2c-4dcf-9c39-5de2ea6cc2ac",
    "destination": "https://backend.internal:9443/pizzashack/v1/api/",
    "eventType": "response",
    "gatewayType": "SYNAPSE",
    "keyType": "PRODUCTION",
    "userName": "john.doe@example.com@carbon.super",
    "proxyResponseCode": 200,
    "regionId": "eu-west",
    "requestMediationLatency": 12,
    "requestTimestamp": "2024-02-22T04:12:49.371Z",
    "responseCacheHit": False,
    "responseLatency": 37.5,
    "responseMediationLatency": 2,
    "targetResponseCode": 201,
    "userAgent": "Mozilla/5.0 (X11; Linux) Firefox/122.0",
    "userIp": "192.168.1.98",
    "commonName": "client.example.com",
    "responseContentType": "application/json",
    "subType": "DEFAULT",
    "isEgress": True,
    "apiContext": "/pizzashack/1.0.0",
    "responseSize": 1234,
    "requestHeaders": {"Authorization": "Bearer req-token-123", "Accept": "*/*"},
    "responseHeaders": {"content-type": "application/json", "X-API-Key": "resp-key-456"},
    "vendorName": "OpenAI",
    "vendorVersion": "v1",
    "model": "gpt-3.5-turbo",
    "promptTokens": 11,
    "completionTokens": 21,
    "totalTokens": 32,
    "hour": "2024-02-22T04",
}
# The seed's apim_event_faulty table.
FAULTY_SEED = {
    "apiCreator": "creator-admin",
    "apiCreatorTenantDomain": "carbon.super",
    "apiId": "eeb6c7d4-1d8c-4a74-a9f6-1f5f1e7b9a5e",
    "apiMethod": "POST",
    "apiName": "PizzaShackAPI",
    "apiResourceTemplate": "/order",
    "apiType": "HTTP",
    "apiVersion": "1.0.0",
    "applicationId": "UNKNOWN",
    "applicationName": "UNKNOWN",
    "applicationOwner": "UNKNOWN",
    "backendLatency": 0,
    "correlationId": "f00dfeed-ab2c-4dcf-9c39-5de2ea6cc2ac",
    "destination": "https://backend.internal:9443/pizzashack/v1/api/",
    "eventType": "fault",
    "gatewayType": "SYNAPSE",
    "keyType": "SANDBOX",
    "platform": "Linux",
    "properties": {"apiContext": "/pizzashack/1.0.0", "commonName": "N/A"},
    "apiContext": "/pizzashack/1.0.0",
    "userName": "jane.roe@example.org@carbon.super",
    "proxyResponseCode": 429,
    "regionId": "default",
    "requestMediationLatency": 3,
    "requestTimestamp": 1708575298433,
    "responseCacheHit": False,
    "responseLatency": 5,
    "responseMediationLatency": 0,
    "targetResponseCode": -1,
    "userAgent": "curl",
    "userIp": "2001:db8::1",
    "errorCode": 900800,
    "errorMessage": "Message throttled out",
    "errorType": "THROTTLED",
}
SEED_MASK = MaskConfig.from_table(
    {
        "userIp": "IPV4",
        "userName": "EMAIL",
        "userId": "EMAIL",
        "userAgent": "STRING",
        "applicationOwner": "EMAIL",
        "response_headers": ["Authorization", "X-API-Key"],
        "request_headers": ["Authorization", "Cookie"],
    }
)
HEADER_FIELDS = {"requestHeaders", "responseHeaders"}


def mapper(send_headers: bool = False, mask: MaskConfig | None = None, **kw: object) -> EventMapper:
    return EventMapper(send_headers, mask or MaskConfig(), **kw)


# --- every seed field survives -------------------------------------------------------


@pytest.mark.parametrize("kind,seed", [("response", RESPONSE_SEED), ("faulty", FAULTY_SEED)])
def test_every_seed_field_survives_with_its_type(kind: str, seed: dict) -> None:
    event = mapper(send_headers=True).process(copy.deepcopy(seed), kind)
    metadata = event["metadata"]
    for name, value in seed.items():
        if name in HEADER_FIELDS:
            target = event["request" if name == "requestHeaders" else "response"]["headers"]
            assert {k: target[k] for k in value} == value, name
            continue
        expected = value.removesuffix("@carbon.super") if name == "userName" else value
        assert name in metadata, name
        assert metadata[name] == expected and type(metadata[name]) is type(expected), name
    assert metadata["eventKind"] == kind
    # and the mapped fields carry them too
    assert event["request"]["verb"] == seed["apiMethod"].upper()
    assert event["request"]["api_version"] == "1.0.0"
    assert event["request"]["ip_address"] == seed["userIp"]
    assert event["response"]["status"] == seed["proxyResponseCode"]
    assert event["user_id"] == seed["userName"].removesuffix("@carbon.super")
    assert event["direction"] == "Incoming" and event["weight"] == 1


def test_response_event_shape() -> None:
    event = mapper().process(RESPONSE_SEED)
    assert event["request"]["time"] == "2024-02-22T04:12:49.371Z"
    assert event["request"]["uri"] == "/pizzashack/1.0.0/menu"
    assert event["request"]["verb"] == "GET"
    assert event["response"]["time"] == "2024-02-22T04:12:49.408Z"  # + 37.5 ms
    assert event["company_id"] == RESPONSE_SEED["applicationId"]
    assert event["transaction_id"] == str(
        uuid.uuid5(TRANSACTION_NAMESPACE, f"response:{RESPONSE_SEED['correlationId']}")
    )
    # send_headers = false: only what the event itself knows
    assert event["request"]["headers"] == {"User-Agent": RESPONSE_SEED["userAgent"]}
    assert event["response"]["headers"] == {"Content-Type": "application/json"}
    orjson.dumps(event)  # serialisable as is


# --- faults --------------------------------------------------------------------------


def test_fault_uri_user_and_time() -> None:
    event = mapper().process(FAULTY_SEED)
    assert event["request"]["uri"] == "/pizzashack/1.0.0/order"
    assert event["user_id"] == "jane.roe@example.org"
    assert event["request"]["time"] == "2024-02-22T04:14:58.433Z"  # epoch millis in
    assert event["response"] == {
        "time": "2024-02-22T04:14:58.438Z",
        "status": 429,
        "headers": {},
    }
    assert "company_id" not in event  # UNKNOWN
    meta = event["metadata"]
    assert (meta["errorCode"], meta["errorType"]) == (900800, "THROTTLED")
    assert meta["errorMessage"] == "Message throttled out"
    assert meta["eventKind"] == "faulty" and meta["targetResponseCode"] == -1


@pytest.mark.parametrize(
    "changes,uri",
    [
        ({"apiResourceTemplate": "N/A"}, "/pizzashack/1.0.0"),
        ({"apiResourceTemplate": None}, "/pizzashack/1.0.0"),
        ({"apiContext": "/ctx/", "apiResourceTemplate": "/items/{id}"}, "/ctx/items/{id}"),
        ({"apiContext": "N/A", "apiResourceTemplate": "N/A", "properties": {}}, "/PizzaShackAPI"),
        ({"apiContext": "N/A", "apiName": "N/A", "properties": {}}, "/"),
        (
            {"properties": {"gatewayUrl": "https://gw.example.com/pizzashack/1.0.0/order"}},
            "https://gw.example.com/pizzashack/1.0.0/order",
        ),
    ],
)
def test_uri_is_never_na(changes: dict, uri: str) -> None:
    raw = {**FAULTY_SEED, **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    event = mapper().process(raw)
    assert event["request"]["uri"] == uri
    assert "N/A" not in event["request"]["uri"]


def test_user_id_is_the_user_never_the_api_creator() -> None:
    raw = {k: v for k, v in FAULTY_SEED.items() if k != "userName"}
    event = mapper().process(raw)
    assert "user_id" not in event
    assert b"creator-admin" not in orjson.dumps({k: event[k] for k in event if k != "metadata"})
    raw["properties"] = {"userName": "props.user@carbon.super"}
    assert mapper().process(raw)["user_id"] == "props.user"


def test_missing_verb_defaults_to_get_and_missing_status_drops_response() -> None:
    raw = {"requestTimestamp": "2024-02-22T04:12:49.371Z", "apiMethod": "N/A"}
    event = mapper().process(raw, "faulty")
    assert event["request"]["verb"] == "GET"
    assert "response" not in event and "apiMethod" in event["metadata"]
    raw["targetResponseCode"] = 502
    assert mapper().process(raw, "faulty")["response"]["status"] == 502
    raw["proxyResponseCode"] = -1
    assert mapper().process(raw, "faulty")["response"]["status"] == 502


# --- masking through the mapping ---------------------------------------------------


def test_nothing_personal_leaves_unmasked() -> None:
    for seed in (RESPONSE_SEED, FAULTY_SEED):
        for send_headers in (False, True):
            event = mapper(send_headers, SEED_MASK).process(copy.deepcopy(seed))
            text = orjson.dumps(event).decode()
            for secret in (
                "john.doe",
                "jane.roe",
                "192.168.1.98",
                "owner.person",
                "Firefox",
                "req-token-123",
                "resp-key-456",
                "0db8:0000:0000:0000",
            ):
                assert secret not in text, (seed["eventType"], send_headers, secret)


def test_masked_values_in_mapped_fields_and_metadata() -> None:
    event = mapper(True, SEED_MASK).process(RESPONSE_SEED)
    assert event["request"]["ip_address"] == "192.168.***.98"
    assert event["user_id"] == "*****@example.com"  # suffix stripped BEFORE masking
    assert event["metadata"]["userName"] == "*****@example.com"
    assert event["metadata"]["applicationOwner"] == "*****@corp.com"
    assert event["metadata"]["userIp"] == "192.168.***.98"
    assert event["request"]["headers"] == {
        "Authorization": MASK,
        "Accept": "*/*",
        "User-Agent": MASK,
    }
    assert event["response"]["headers"] == {"content-type": "application/json", "X-API-Key": MASK}
    fault = mapper(False, SEED_MASK).process(FAULTY_SEED)
    assert fault["request"]["ip_address"] == "2001:0db8:0000:****:****:****:****:0001"
    assert fault["user_id"] == "*****@example.org"


def test_carbon_super_stripped_everywhere_before_email_masking() -> None:
    raw = {
        "requestTimestamp": 1708575298433,
        "userName": "john@example.com@carbon.super",
        "properties": {"userName": "john@example.com@CARBON.SUPER"},
    }
    event = mapper(False, MaskConfig.from_table({"userName": "EMAIL"})).process(raw)
    assert event["user_id"] == "*****@example.com"
    assert event["metadata"]["userName"] == "*****@example.com"
    assert event["metadata"]["properties"]["userName"] == "*****@example.com"
    plain = mapper().process({"requestTimestamp": 1708575298433, "userName": "admin@carbon.super"})
    assert plain["user_id"] == "admin"


def test_send_headers_false_drops_every_captured_header() -> None:
    raw = copy.deepcopy(RESPONSE_SEED)
    raw["properties"] = {
        "requestHeaders": {"Cookie": "nested-cookie"},
        "responseHeaders": {"Set-Cookie": "nested-set-cookie"},
    }
    event = mapper(False).process(raw)
    text = orjson.dumps(event).decode()
    for value in ("req-token-123", "resp-key-456", "nested-cookie", "nested-set-cookie"):
        assert value not in text
    for where in (event["metadata"], event["metadata"]["properties"]):
        assert not HEADER_FIELDS & set(where)


def test_send_headers_true_uses_captured_headers_from_properties() -> None:
    raw = {
        "requestTimestamp": 1708575298433,
        "userAgent": "Chrome",
        "responseContentType": "text/plain",
        "properties": {
            "requestHeaders": {"user-agent": "curl/8", "Cookie": "c=1"},
            "responseHeaders": {"X-Trace": "t"},
        },
        "proxyResponseCode": 200,
    }
    event = mapper(True, SEED_MASK).process(raw)
    # the captured user-agent wins over the derived one (and the userAgent rule masks it)
    assert event["request"]["headers"] == {"user-agent": MASK, "Cookie": MASK}
    assert event["response"]["headers"] == {"X-Trace": "t", "Content-Type": "text/plain"}


# --- transaction ids ---------------------------------------------------------------


def test_transaction_id_is_deterministic_and_differs_per_kind() -> None:
    m = mapper()
    raw = {"requestTimestamp": 1708575298433, "correlationId": "c-1"}
    first, again = m.process(raw, "response"), m.process(copy.deepcopy(raw), "response")
    fault = m.process(raw, "faulty")
    other = m.process({**raw, "correlationId": "c-2"}, "response")
    assert first["transaction_id"] == again["transaction_id"]
    assert first["transaction_id"] != fault["transaction_id"]
    assert first["transaction_id"] != other["transaction_id"]
    parsed = uuid.UUID(first["transaction_id"])
    assert parsed.version == 5 and len(first["transaction_id"]) == 36
    assert first["transaction_id"] == str(uuid.uuid5(TRANSACTION_NAMESPACE, "response:c-1"))
    # a new mapper (a restart) gives the same id
    assert (
        mapper(True, SEED_MASK).process(raw, "response")["transaction_id"]
        == (first["transaction_id"])
    )


def test_transaction_id_uses_the_unmasked_correlation_id() -> None:
    masking_it = MaskConfig.from_table({"correlationId": "STRING"})
    a = mapper(False, masking_it).process({"requestTimestamp": 1, "correlationId": "a"})
    b = mapper(False, masking_it).process({"requestTimestamp": 1, "correlationId": "b"})
    assert a["metadata"]["correlationId"] == MASK
    assert a["transaction_id"] != b["transaction_id"]


def test_transaction_id_without_correlation_id_comes_from_content() -> None:
    m = mapper(False, SEED_MASK)
    raw = {"requestTimestamp": "2024-02-22T04:12:49.371Z", "apiName": "A", "userIp": "1.2.3.4"}
    reordered = dict(reversed(list(raw.items())))
    first = m.process(raw, "response")["transaction_id"]
    assert m.process(reordered, "response")["transaction_id"] == first
    assert m.process(raw, "faulty")["transaction_id"] != first
    assert m.process({**raw, "apiName": "B"}, "response")["transaction_id"] != first
    assert m.process({**raw, "correlationId": "N/A"}, "response")["transaction_id"] != first
    uuid.UUID(first)


# --- companies -----------------------------------------------------------------------


def test_unknown_company_values() -> None:
    raw = {"requestTimestamp": 1, "applicationId": "UNKNOWN"}
    assert "company_id" not in mapper().process(raw)
    assert "company_id" not in mapper().process({**raw, "applicationId": "unknown "})
    assert mapper().process({**raw, "applicationId": "app-1"})["company_id"] == "app-1"
    custom = mapper(unknown_company_values={"NONE", "-"})
    assert custom.process(raw)["company_id"] == "UNKNOWN"
    assert "company_id" not in custom.process({**raw, "applicationId": "-"})
    from_settings = mapper(unknown_company_values="UNKNOWN, NONE")
    assert "company_id" not in from_settings.process({**raw, "applicationId": "NONE"})
    assert "company_id" not in mapper().process({**raw, "applicationId": "N/A"})


# --- entry points --------------------------------------------------------------------


def test_to_moesif_accepts_models_and_dicts_and_process_validates() -> None:
    m = mapper(False, SEED_MASK)
    expected = m.process(RESPONSE_SEED)
    assert m.to_moesif(validate_event(RESPONSE_SEED)) == expected
    kind, data, _ = validate_event_dict(RESPONSE_SEED)
    assert m.to_moesif(data, kind) == expected
    assert m.to_moesif(copy.deepcopy(RESPONSE_SEED)) == expected
    assert m.to_moesif(validate_event(FAULTY_SEED))["metadata"]["eventKind"] == "faulty"
    with pytest.raises(MalformedEvent) as caught:
        m.process({"apiName": "x"})
    assert caught.value.reason_code == "MISSING_FIELD"
    with pytest.raises(MalformedEvent) as caught:
        m.to_moesif(RESPONSE_SEED, "timeout")
    assert caught.value.reason_code == "UNKNOWN_KIND"


def test_already_masked_events_are_not_masked_twice() -> None:
    m = mapper(False, SEED_MASK)
    masked = SEED_MASK.apply(dict(RESPONSE_SEED, userName="x@y.z"))
    assert m.to_moesif(masked, "response", already_masked=True)["request"]["ip_address"] == (
        "192.168.***.98"
    )
    # twice would be whole: that is why to_moesif masks by itself by default
    assert m.to_moesif(masked, "response")["request"]["ip_address"] == MASK


def test_inputs_are_never_mutated() -> None:
    raw = copy.deepcopy(RESPONSE_SEED)
    raw["properties"] = {"userName": "a@b.c@carbon.super", "requestHeaders": {"Cookie": "c"}}
    before = copy.deepcopy(raw)
    mapper(True, SEED_MASK).process(raw)
    assert raw == before


def test_metadata_keeps_properties_nested_and_ai_fields() -> None:
    raw = {
        "requestTimestamp": 1708575298433,
        "properties": {
            "aiMetadata": {"vendorName": "OpenAI", "model": "gpt-4o"},
            "aiTokenUsage": {"promptTokens": 3, "completionTokens": 4, "totalTokens": 7},
            "requestSize": 10,
            "custom": {"deep": [1, 2.5, True, None]},
        },
    }
    meta = mapper().process(raw)["metadata"]
    assert meta["vendorName"] == "OpenAI" and meta["model"] == "gpt-4o"
    assert (meta["promptTokens"], meta["completionTokens"], meta["totalTokens"]) == (3, 4, 7)
    assert meta["properties"]["custom"] == {"deep": [1, 2.5, True, None]}
    assert meta["requestSize"] == 10


def test_mapping_is_fast_enough() -> None:
    # Generous bound (the real cost is ~20 us): catches accidental per-event recompiling.
    m = mapper(True, SEED_MASK)
    events = [dict(RESPONSE_SEED, correlationId=str(i)) for i in range(5000)]
    started = time.perf_counter()
    for raw in events:
        m.process(raw)
    assert time.perf_counter() - started < 2.5


# --- the mapping file ----------------------------------------------------------------


def test_the_shipped_mapping_loads() -> None:
    path = default_mapping_path()
    assert path.is_file() and path.name == "apim_events.toml"
    mapping = load_mapping(path)
    assert mapping.time_is_request_timestamp and mapping.kind_key == "eventKind"


def custom_mapping(tmp_path: Path, old: str, new: str) -> Path:
    text = default_mapping_path().read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "apim_events.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_a_custom_mapping_changes_the_output(tmp_path: Path) -> None:
    path = custom_mapping(tmp_path, 'from = [\n  "properties.gatewayUrl",\n',
                          'from = [\n  {template = "https://gw.local{apiContext}"},\n'
                          '  "properties.gatewayUrl",\n')
    event = EventMapper(False, MaskConfig(), mapping_path=path).process(RESPONSE_SEED)
    assert event["request"]["uri"] == "https://gw.local/pizzashack/1.0.0"
    path = custom_mapping(tmp_path, 'kind_key = "eventKind"', 'kind_key = "wso2Kind"')
    event = EventMapper(False, MaskConfig(), mapping_path=path).process(RESPONSE_SEED)
    assert event["metadata"]["wso2Kind"] == "response" and "eventKind" not in event["metadata"]
    path = custom_mapping(
        tmp_path, '  "requestHeaders",\n', '  "requestHeaders",\n  "destination",\n'
    )
    event = EventMapper(False, MaskConfig(), mapping_path=path).process(RESPONSE_SEED)
    assert "destination" not in event["metadata"] and "apiName" in event["metadata"]
    path = custom_mapping(tmp_path, 'from = ["apiMethod"]\ndefault = "GET"',
                          'from = ["apiMethod"]\ndefault = "POST"')
    event = EventMapper(False, MaskConfig(), mapping_path=path).process(
        {k: v for k, v in RESPONSE_SEED.items() if k != "apiMethod"})
    assert event["request"]["verb"] == "POST"


@pytest.mark.parametrize(
    "old,new,entry,reason",
    [
        ('target = "request.verb"', 'target = "request.verbb"', "request.verbb",
         "unknown Moesif field"),
        ('target = "request.time"', 'target = "request.timestamp"', "request.timestamp",
         "unknown Moesif field"),
        ('[[event]]\ntarget = "request.time"                  # sent as ISO 8601 UTC\n'
         'from = ["requestTimestamp"]\n', "", "request.time", "is required"),
        ('from = ["apiVersion"]', "from = []", "request.api_version", "needs `from`"),
        ('from = ["apiVersion"]', "from = [1]", "request.api_version", "unknown source"),
        ('from = ["userIp"]', 'from = [{template = "{userIp"}]', "request.ip_address",
         "unbalanced"),
        ('from = ["userIp"]', 'from = [{template = "{}"}]', "request.ip_address",
         "bad template placeholder"),
        ('from = ["userIp"]', 'from = [{template = "ip"}]', "request.ip_address",
         "no {placeholder}"),
        ('from = ["userIp"]', 'from = ["@company.ip"]', "request.ip_address",
         "no joined documents"),
        ('from = ["userIp"]', 'from = [{join = ["userIp"]}]', "request.ip_address",
         "no join"),
        ('from = ["userIp"]', 'from = ["userIp"]\ntype = "string"', "request.ip_address",
         "type has no meaning"),
        ('from = ["userIp"]', 'from = ["userIp"]\ncolour = "blue"', "request.ip_address",
         "unknown key"),
        ('from = [{value = "Incoming"}]', 'from = [{value = "Sideways"}]', "direction",
         "not a valid value"),
        ("from = [{value = 1}]", "from = [{value = 0}]", "weight", "not a valid value"),
        ('from = ["apiMethod"]\ndefault = "GET"', 'from = ["apiMethod"]\ndefault = ""',
         "request.verb", "`default`"),
        ('target = "request.headers.User-Agent"', 'target = "request.headerz.User-Agent"',
         "request.headerz.User-Agent", "unknown Moesif field"),
    ],
)
def test_broken_mapping_names_file_entry_and_reason(
    tmp_path: Path, old: str, new: str, entry: str, reason: str
) -> None:
    path = custom_mapping(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        EventMapper(False, MaskConfig(), mapping_path=path)
    message = str(caught.value)
    assert str(path) in message and f"'{entry}'" in message and reason in message


@pytest.mark.parametrize(
    "old,new,entry,reason",
    [
        ('version = "1"', 'version = "2"', "version", "unsupported mapping version"),
        ('kind_key = "eventKind"', 'kind_key = "eventKind"\ncolour = "blue"', "colour",
         "unknown entry"),
        ('kind_key = "eventKind"', 'kind_key = ""', "kind_key", "non-empty string"),
        ('unknown_values = ["", "N/A"]', "unknown_values = [1]", "unknown_values",
         "list of strings"),
        ('strip_suffix = "@carbon.super"', "strip_suffix = 1", "strip_suffix", "a string"),
        ("[metadata]", "[request]\n[metadata]", "[request]", "unknown section"),
    ],
)
def test_broken_file_tables_name_file_entry_and_reason(
    tmp_path: Path, old: str, new: str, entry: str, reason: str
) -> None:
    path = custom_mapping(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        EventMapper(False, MaskConfig(), mapping_path=path)
    message = str(caught.value)
    assert str(path) in message and entry in message and reason in message


def test_broken_mapping_error_gives_the_line(tmp_path: Path) -> None:
    path = custom_mapping(tmp_path, 'from = [{value = "Incoming"}]',
                          'from = [{value = "Sideways"}]')
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    lines = path.read_text().splitlines()
    entry = lines.index('from = [{value = "Sideways"}]') - 1  # the entry's [[event]] line
    assert lines[entry - 1] == "[[event]]"
    assert f"(line {entry})" in str(caught.value)


def test_mapping_syntax_error_and_unreadable_file(tmp_path: Path) -> None:
    path = custom_mapping(tmp_path, "\n[options]\n", "\n[options\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line"):
        load_mapping(path)
    missing = tmp_path / "none.toml"
    with pytest.raises(ConfigError) as caught:
        EventMapper(False, MaskConfig(), mapping_path=missing)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(
    "stamp,latency,request_time,response_time",
    [
        (
            "2024-02-22T06:14:58.433+02:00",
            67,
            "2024-02-22T04:14:58.433Z",
            "2024-02-22T04:14:58.500Z",
        ),
        ("2024-02-22T04:14:58.4339999Z", 0, "2024-02-22T04:14:58.433Z", "2024-02-22T04:14:58.433Z"),
        (1708575298433, 1000.4, "2024-02-22T04:14:58.433Z", "2024-02-22T04:14:59.433Z"),
        (1708575298433, -5, "2024-02-22T04:14:58.433Z", "2024-02-22T04:14:58.433Z"),
    ],
)
def test_times_are_iso_utc_milliseconds(
    stamp: object, latency: float, request_time: str, response_time: str
) -> None:
    raw = {"requestTimestamp": stamp, "responseLatency": latency, "proxyResponseCode": 200}
    event = mapper().process(raw)
    assert event["request"]["time"] == request_time
    assert event["response"]["time"] == response_time


# --- transaction ids without a correlationId (issue 7, item 16) --------------------------------


def test_requests_that_mask_alike_never_share_a_transaction_id() -> None:
    m = mapper(False, SEED_MASK, transaction_secret=b"k" * 32)
    when = "2024-02-22T04:12:49.371Z"
    # Two users, same API, same millisecond: identical once masked.
    a = m.process({"requestTimestamp": when, "apiName": "A", "userIp": "10.1.2.3",
                   "userName": "alice@example.com"}, "response")
    b = m.process({"requestTimestamp": when, "apiName": "A", "userIp": "10.1.9.3",
                   "userName": "bob@example.com"}, "response")
    assert a["metadata"] == b["metadata"] and a["request"] == b["request"]
    assert a["transaction_id"] != b["transaction_id"]


def test_content_ids_are_keyed_by_the_installation_secret() -> None:
    raw = {"requestTimestamp": "2024-02-22T04:12:49.371Z", "userIp": "10.1.2.3"}
    first = mapper(False, SEED_MASK, transaction_secret=b"a" * 32).process(raw)["transaction_id"]
    again = mapper(False, SEED_MASK, transaction_secret=b"a" * 32).process(raw)["transaction_id"]
    other = mapper(False, SEED_MASK, transaction_secret=b"b" * 32).process(raw)["transaction_id"]
    assert first == again  # a restart of the same installation: Moesif de-duplicates
    assert first != other  # without the secret, the id cannot be recomputed from guesses
    assert len(first) == 36 and uuid.UUID(first).version == 8
    from connector.common.jsonutil import dumps_sorted

    unkeyed = {str(uuid.uuid5(TRANSACTION_NAMESPACE, f"response:{dumps_sorted(v).decode()}"))
               for v in (raw, {**raw, "userIp": "10.1.***.3"})}
    assert first not in unkeyed


@given(ips=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=2,
                    max_size=20, unique=True))
@settings(max_examples=30, deadline=None)
def test_content_ids_are_unique_per_request(ips: list[tuple[int, int]]) -> None:
    m = mapper(False, SEED_MASK, transaction_secret=b"s" * 32)
    ids = {m.process({"requestTimestamp": 1708575298433, "userIp": f"10.{a}.{b}.1"},
                     "response")["transaction_id"] for a, b in ips}
    assert len(ids) == len(ips)


# --- a blank correlationId is no correlation id -------------------------------------------
@pytest.mark.parametrize("blank", [" ", "\t", "  \r\n", "\u3000", "\u00a0"])
def test_a_blank_correlation_id_never_makes_two_requests_share_an_id(blank: str) -> None:
    # Before: " " was a correlation id like any other, so every event carrying it got
    # uuid5("response: ") and Moesif kept only the first of them.
    m = mapper(False, SEED_MASK, transaction_secret=b"w" * 32)
    a = m.process({"requestTimestamp": 1708575298433, "correlationId": blank,
                   "userIp": "10.1.2.3"}, "response")["transaction_id"]
    b = m.process({"requestTimestamp": 1708575298434, "correlationId": blank,
                   "userIp": "10.1.2.4"}, "response")["transaction_id"]
    assert a != b
    # The same event again still gets the same id (replays stay idempotent).
    again = m.process({"requestTimestamp": 1708575298433, "correlationId": blank,
                       "userIp": "10.1.2.3"}, "response")["transaction_id"]
    assert again == a


@given(blank=st.text(st.characters(whitelist_categories=("Zs", "Cc")), min_size=1,
                     max_size=5).filter(str.isspace),
       times=st.lists(st.integers(1_600_000_000_000, 1_800_000_000_000), min_size=2,
                      max_size=6, unique=True))
@settings(max_examples=40, deadline=None)
def test_blank_correlation_ids_are_content_ids(blank: str, times: list[int]) -> None:
    m = mapper(False, SEED_MASK, transaction_secret=b"v" * 32)
    ids = {m.process({"requestTimestamp": t, "correlationId": blank}, "response")
           ["transaction_id"] for t in times}
    assert len(ids) == len(times)


# --- the response time written from the request's text ---------------------------------
_INSTANTS = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59))


@given(when=_INSTANTS, latency=st.one_of(
    st.integers(-5, 90_000_000), st.floats(0.001, 5e6, allow_nan=False),
    st.sampled_from([1, 999, 1000, 59_999, 86_399_999, 86_400_000])))
def test_response_time_from_text_is_the_datetime_sum(when: datetime, latency: float) -> None:
    from connector.forward.moesif_event import _iso, _response_time

    text = _iso(when.replace(microsecond=when.microsecond // 1000 * 1000, tzinfo=UTC))
    parsed = parse_timestamp(text)
    try:
        expected = _iso(parsed + timedelta(milliseconds=latency))
    except OverflowError:
        with pytest.raises(MalformedEvent):
            _response_time(parsed, latency, text)
        return
    assert _response_time(parsed, latency, text) == expected
    assert _response_time(parsed, latency) == expected


@given(when=_INSTANTS)
def test_wso2_request_time_reads_as_the_lenient_parser_does(when: datetime) -> None:
    from connector.forward.apim import _parse_utc, request_time_of

    text = when.strftime("%Y-%m-%dT%H:%M:%S") if when.year >= 1000 else \
        f"{when.year:04d}" + when.strftime("-%m-%dT%H:%M:%S")
    text += f".{when.microsecond // 1000:03d}Z"
    fast = _parse_utc(text)
    assert fast == parse_timestamp(text) and fast.tzinfo is UTC
    assert request_time_of(text) == fast


@pytest.mark.parametrize("text", ["2026-13-01T00:00:00.000Z", "2026-02-30T00:00:00.000Z",
                                  "0000-01-01T00:00:00.000Z", "2026-01-01T24:00:00.000Z"])
def test_an_impossible_wso2_shaped_time_is_still_refused(text: str) -> None:
    from connector.forward.apim import request_time_of

    with pytest.raises(ValueError, match="requestTimestamp"):
        request_time_of(text)
