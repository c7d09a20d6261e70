"""The apim_event_response / apim_event_faulty models: every seed field, types, lifting."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.forward.apim import (
    _ACCEPTED_TYPES,
    ApimFaultyEvent,
    ApimResponseEvent,
    infer_kind,
    validate_event,
    validate_event_dict,
)
from connector.forward.errors import MalformedEvent

# The seed's apim_event_response table, one realistic value per field.
RESPONSE_SEED = {
    "apiCreator": "admin",
    "apiCreatorTenantDomain": "carbon.super",
    "apiId": "eeb6c7d4-1d8c-4a74-a9f6-1f5f1e7b9a5e",
    "apiMethod": "GET",
    "apiName": "PizzaShackAPI",
    "apiResourceTemplate": "/menu",
    "apiType": "HTTP",
    "apiVersion": "1.0.0",
    "applicationId": "1b6e4e4e-6f0e-4b77-9c9e-7a2a8c2e2b1a",
    "applicationName": "DefaultApplication",
    "applicationOwner": "owner@example.com",
    "backendLatency": 22,
    "correlationId": "a9f4bd28-ab2c-4dcf-9c39-5de2ea6cc2ac",
    "destination": "https://backend.internal:9443/pizzashack/v1/api/",
    "eventType": "response",
    "gatewayType": "SYNAPSE",
    "keyType": "PRODUCTION",
    "userName": "john.doe@example.com@carbon.super",
    "proxyResponseCode": 200,
    "regionId": "default",
    "requestMediationLatency": 12,
    "requestTimestamp": "2024-02-22T04:12:49.371Z",
    "responseCacheHit": False,
    "responseLatency": 37.5,
    "responseMediationLatency": 2,
    "targetResponseCode": 200,
    "userAgent": "Chrome",
    "userIp": "192.168.1.98",
    "commonName": "client.example.com",
    "responseContentType": "application/json",
    "subType": "DEFAULT",
    "isEgress": True,
    "apiContext": "/pizzashack/1.0.0",
    "responseSize": 1234,
    "requestHeaders": {"Authorization": "Bearer abc", "Accept": "*/*"},
    "responseHeaders": {"Content-Type": "application/json", "X-API-Key": "k"},
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
    "apiCreator": "admin",
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
    "keyType": "PRODUCTION",
    "platform": "Linux",
    "properties": {"apiContext": "/pizzashack/1.0.0", "userName": "jane@carbon.super"},
    "apiContext": "/pizzashack/1.0.0",
    "userName": "jane@carbon.super",
    "proxyResponseCode": 401,
    "regionId": "default",
    "requestMediationLatency": 3,
    "requestTimestamp": 1708575298433,
    "responseCacheHit": False,
    "responseLatency": 5,
    "responseMediationLatency": 0,
    "targetResponseCode": -1,
    "userAgent": "curl",
    "userIp": "2001:db8::1",
    "errorCode": 900901,
    "errorMessage": "Invalid Credentials",
    "errorType": "AUTH",
}


def test_every_response_seed_field_is_declared_and_keeps_its_type() -> None:
    event = validate_event(RESPONSE_SEED, "response")
    assert isinstance(event, ApimResponseEvent)
    declared = set(ApimResponseEvent.model_fields)
    assert set(RESPONSE_SEED) <= declared
    dumped = event.to_dict()
    for name, value in RESPONSE_SEED.items():
        assert dumped[name] == value and type(dumped[name]) is type(value), name


def test_every_faulty_seed_field_is_declared_and_keeps_its_type() -> None:
    event = validate_event(FAULTY_SEED, "faulty")
    assert isinstance(event, ApimFaultyEvent)
    assert set(FAULTY_SEED) <= set(ApimFaultyEvent.model_fields)
    dumped = event.to_dict()
    for name, value in FAULTY_SEED.items():
        assert dumped[name] == value and type(dumped[name]) is type(value), name


@pytest.mark.parametrize("kind", ["response", "faulty"])
@pytest.mark.parametrize(
    "stamp",
    [
        "2024-02-22T04:14:58.433Z",
        "2024-02-22T04:14:58.4330000Z",
        "2024-02-22T04:14:58.433",
        "2024-02-22T06:14:58.433+02:00",
        1708575298433,
        1708575298.433,
    ],
)
def test_request_timestamp_iso_or_epoch_on_both_kinds(kind: str, stamp: object) -> None:
    event = validate_event({"requestTimestamp": stamp}, kind)
    assert event.request_time == datetime(2024, 2, 22, 4, 14, 58, 433000, tzinfo=UTC)
    assert event.requestTimestamp == stamp  # original value kept


@pytest.mark.parametrize(
    "raw,code",
    [
        ({"apiName": "x"}, "MISSING_FIELD"),
        ({"requestTimestamp": None}, "MISSING_FIELD"),
        ({"requestTimestamp": "yesterday"}, "BAD_TYPE"),
        ({"requestTimestamp": True}, "BAD_TYPE"),
        ({"requestTimestamp": {"at": 1}}, "BAD_TYPE"),
        ({"requestTimestamp": 1e30}, "BAD_TYPE"),
    ],
)
def test_request_timestamp_is_required_and_checked(raw: dict, code: str) -> None:
    for validate in (validate_event, validate_event_dict):
        with pytest.raises(MalformedEvent) as caught:
            validate(raw)
        assert caught.value.reason_code == code
        assert "requestTimestamp" in caught.value.detail


@pytest.mark.parametrize(
    "field,value",
    [
        ("proxyResponseCode", "two hundred"),
        ("responseCacheHit", "maybe"),
        ("apiName", 42),
        ("backendLatency", [1]),
        ("properties", "not an object"),
        ("requestHeaders", ["Authorization"]),
        ("userIp", {"v4": "secret-ip-value"}),
    ],
)
def test_wrong_types_name_the_field_and_never_the_value(field: str, value: object) -> None:
    raw = {"requestTimestamp": "2024-02-22T04:12:49.371Z", field: value}
    for validate in (validate_event, validate_event_dict):
        with pytest.raises(MalformedEvent) as caught:
            validate(raw, "response")
        assert caught.value.reason_code == "BAD_TYPE"
        assert field in caught.value.detail
        assert str(value) not in str(caught.value)


def test_not_an_object_and_unknown_kind() -> None:
    for raw in ([1], "text", None, 5):
        with pytest.raises(MalformedEvent) as caught:
            validate_event(raw)
        assert caught.value.reason_code == "NOT_AN_OBJECT"
    with pytest.raises(MalformedEvent) as caught:
        validate_event_dict({"requestTimestamp": 1708575298433}, "request")
    assert caught.value.reason_code == "UNKNOWN_KIND"


def test_numbers_and_booleans_keep_their_types_and_lax_inputs_are_coerced() -> None:
    event = validate_event(
        {
            "requestTimestamp": 1708575298433,
            "backendLatency": 1.5,
            "responseLatency": 7,
            "proxyResponseCode": "401",
            "responseCacheHit": "true",
        },
        "faulty",
    )
    assert type(event.backendLatency) is float and type(event.responseLatency) is int
    assert event.proxyResponseCode == 401 and event.responseCacheHit is True


def test_extra_keys_are_kept_with_their_types() -> None:
    raw = {"requestTimestamp": 1708575298433, "newField": {"a": [1, True]}, "count": 3}
    dumped = validate_event(raw).to_dict()
    assert dumped["newField"] == {"a": [1, True]} and dumped["count"] == 3


def test_kind_inference() -> None:
    assert infer_kind({"errorType": "AUTH"}) == "faulty"
    assert infer_kind({"errorCode": 900901}) == "faulty"
    assert infer_kind({"errorCode": None, "proxyResponseCode": 500}) == "response"
    assert isinstance(validate_event(FAULTY_SEED), ApimFaultyEvent)
    assert isinstance(validate_event(RESPONSE_SEED), ApimResponseEvent)
    assert validate_event_dict(FAULTY_SEED)[0] == "faulty"


def test_fields_are_lifted_from_properties_when_missing_at_top_level() -> None:
    raw = {
        "requestTimestamp": "2024-02-22T04:12:49.371Z",
        "userName": "top@example.com",
        "properties": {
            "apiContext": "/ctx/1.0",
            "userName": "nested@example.com",
            "requestSize": 10,
            "responseSize": 20,
            "responseContentType": "text/plain",
            "commonName": "cn",
            "isEgress": True,
            "subtype": "AIAPI",
            "requestHeaders": {"A": "1"},
            "responseHeaders": {"B": "2"},
            "aiMetadata": {"vendorName": "OpenAI", "vendorVersion": "v1", "model": "gpt-4o"},
            "aiTokenUsage": {
                "promptTokens": 5,
                "completionTokens": 6,
                "totalTokens": 11,
                "hour": 4,
            },
        },
    }
    original = copy.deepcopy(raw)
    event = validate_event(raw)
    assert event.apiContext == "/ctx/1.0"
    assert event.userName == "top@example.com"  # the top level wins
    assert (event.requestSize, event.responseSize) == (10, 20)
    assert event.responseContentType == "text/plain" and event.commonName == "cn"
    assert event.isEgress is True and event.subType == "AIAPI"
    assert event.requestHeaders == {"A": "1"} and event.responseHeaders == {"B": "2"}
    assert (event.vendorName, event.vendorVersion, event.model) == ("OpenAI", "v1", "gpt-4o")
    assert (event.promptTokens, event.completionTokens, event.totalTokens) == (5, 6, 11)
    assert event.hour == 4 and type(event.hour) is int
    assert event.properties == original["properties"]  # properties kept whole
    assert raw == original  # input untouched
    assert validate_event_dict(raw)[1] == event.to_dict()


def test_wrongly_typed_properties_value_stays_in_properties_instead_of_failing() -> None:
    raw = {"requestTimestamp": 1708575298433, "properties": {"responseSize": "big"}}
    event = validate_event(raw)
    assert event.responseSize is None and event.properties == {"responseSize": "big"}
    assert validate_event_dict(raw)[1] == event.to_dict()


@pytest.mark.parametrize(
    "raw",
    [
        RESPONSE_SEED,
        FAULTY_SEED,
        {"requestTimestamp": "2024-02-22T04:12:49.371Z", "proxyResponseCode": 200.0},
        {"requestTimestamp": 1708575298433, "responseCacheHit": "false", "x": None},
        {"requestTimestamp": 1708575298433, "properties": {"aiTokenUsage": {"hour": "04"}}},
    ],
)
def test_fast_path_gives_what_the_model_gives(raw: dict) -> None:
    original = copy.deepcopy(raw)
    kind, data, when = validate_event_dict(raw)
    event = validate_event(raw)
    assert kind == event.KIND
    assert data == event.to_dict() and when == event.request_time
    assert {k: type(v) for k, v in data.items()} == {k: type(v) for k, v in event.to_dict().items()}
    assert raw == original


def test_model_is_tolerant_of_ai_event_without_any_ai_fields() -> None:
    event = validate_event({"requestTimestamp": 1708575298433, "properties": {"aiMetadata": 5}})
    assert event.vendorName is None and event.properties == {"aiMetadata": 5}


NUMBER_FIELDS = sorted(name for kind in ("response", "faulty")
                       for name, types in _ACCEPTED_TYPES[kind].items()
                       if int in types and bool not in types)


@given(field=st.sampled_from(NUMBER_FIELDS), value=st.booleans(),
       kind=st.sampled_from(["response", "faulty"]))
def test_a_boolean_is_no_number(field: str, value: bool, kind: str) -> None:
    """pydantic's lax mode reads True as 1: a status code of `true` must be refused."""
    if field not in _ACCEPTED_TYPES[kind]:
        return
    raw = {"requestTimestamp": "2024-02-22T04:12:49.371Z", field: value}
    for validate in (validate_event, validate_event_dict):
        with pytest.raises(MalformedEvent) as caught:
            validate(raw, kind)
        assert caught.value.reason_code == "BAD_TYPE"
        assert field in caught.value.detail


def test_number_fields_are_found() -> None:
    assert {"proxyResponseCode", "targetResponseCode", "errorCode", "responseLatency",
            "hour"} <= set(NUMBER_FIELDS)

