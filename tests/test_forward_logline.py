"""Lines of WSO2's apim_metrics.log: real formats, every MDC variant, noise, broken lines."""

from __future__ import annotations

import orjson
import pytest

from connector.forward.errors import MalformedEvent
from connector.forward.logline import is_metrics_line, parse_metrics_line

RESPONSE = {
    "apiName": "PizzaShackAPI",
    "proxyResponseCode": 200,
    "requestTimestamp": "2024-02-22T04:12:49.371Z",
    "userName": "john.doe@example.com@carbon.super",
    "userIp": "192.168.1.98",
    "responseCacheHit": False,
    "backendLatency": 22,
    "properties": {"apiContext": "/pizzashack/1.0.0", "isEgress": False},
}
FAULT = {
    "apiName": "PizzaShackAPI",
    "requestTimestamp": "2024-02-22T04:14:58.433Z",
    "proxyResponseCode": 401,
    "errorType": "AUTH",
    "errorCode": 900901,
    "targetResponseCode": -1,
}


def line(prefix: str, kind: str, payload: dict | str, label: str = "properties :") -> str:
    body = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return f"{prefix} apimMetrics: apim:{kind}, {label}{body}"


@pytest.mark.parametrize(
    "prefix",
    [
        "15:56:07,928 [-] [PassThroughMessageProcessor-18]  INFO ELKCounterMetric",
        "10:58:02,391 [] [PassThroughMessageProcessor-8]  INFO ELKCounterMetric",
        "10:58:02,391 [10.0.0.5-gw-host-1] [PassThroughMessageProcessor-8]  INFO ELKCounterMetric",
        "10:58:02,391 [fe80::1-gw-host] [pool-12-thread-3 worker 7] DEBUG ELKCounterMetric",
        "",
    ],
)
@pytest.mark.parametrize("kind,payload", [("response", RESPONSE), ("faulty", FAULT)])
def test_every_mdc_variant_and_kind(prefix: str, kind: str, payload: dict) -> None:
    assert parse_metrics_line(line(prefix, kind, payload)) == (kind, payload)


def test_real_faulty_line_verbatim() -> None:
    text = (
        "10:58:02,391 [] [PassThroughMessageProcessor-8]  INFO ELKCounterMetric apimMetrics: "
        'apim:faulty, properties :{"apiName":"PizzaShackAPI","requestTimestamp":'
        '"2024-02-22T04:14:58.433Z","proxyResponseCode":401,"errorType":"AUTH",'
        '"targetResponseCode":-1}\n'
    )
    kind, props = parse_metrics_line(text)
    assert kind == "faulty"
    assert props["targetResponseCode"] == -1 and props["errorType"] == "AUTH"


@pytest.mark.parametrize("label", ["properties:", "properties  :  ", "properties\t:"])
def test_tolerates_whitespace_around_the_colon(label: str) -> None:
    assert parse_metrics_line(line("x", "response", RESPONSE, label)) == ("response", RESPONSE)


@pytest.mark.parametrize("ending", ["\r\n", "\n", "\r", "   \r\n", ""])
def test_line_endings_are_stripped(ending: str) -> None:
    assert parse_metrics_line(line("x", "faulty", FAULT) + ending) == ("faulty", FAULT)


def test_types_survive_parsing() -> None:
    _, props = parse_metrics_line(line("x", "response", RESPONSE))
    assert props["proxyResponseCode"] == 200 and type(props["proxyResponseCode"]) is int
    assert props["responseCacheHit"] is False
    assert props["properties"]["isEgress"] is False


def test_json_mentioning_properties_and_markers_is_kept_whole() -> None:
    payload = {
        "requestTimestamp": "2024-02-22T04:12:49.371Z",
        "errorMessage": "apimMetrics: apim:unknown, properties :{",
        "properties": {"properties": "x"},
    }
    assert parse_metrics_line(line("x", "faulty", payload)) == ("faulty", payload)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "15:56:07,928 [-] [main]  INFO CarbonServerManager Server started in 12 sec",
        "TID: [-1234] [] [2024-02-22 10:58:02,391]  INFO {org.wso2.Foo} - "
        "apim:response, properties :{}",
        "java.lang.NullPointerException: apim:faulty",
        "    at org.wso2.carbon.apimgt.gateway.Foo.bar(Foo.java:42)",
    ],
)
def test_other_log_lines_are_none(text: str) -> None:
    assert parse_metrics_line(text) is None
    assert not is_metrics_line(text)


@pytest.mark.parametrize(
    "text,code",
    [
        (line("x", "response", orjson.dumps(RESPONSE).decode()[:-10]), "BAD_JSON"),
        (line("x", "response", '{"apiName": "PizzaShackAPI", "userName": "alice@ex'), "BAD_JSON"),
        (line("x", "response", ""), "BAD_JSON"),
        (line("x", "response", "{} trailing"), "BAD_JSON"),
        (line("x", "response", "[1, 2]"), "NOT_AN_OBJECT"),
        (line("x", "response", '"text"'), "NOT_AN_OBJECT"),
        (line("x", "unknown", RESPONSE), "UNKNOWN_KIND"),
        (line("x", "", RESPONSE), "UNKNOWN_KIND"),
        ("12:00:00,000 [-] [t] INFO ELKCounterMetric apimMetrics: something else", "BAD_LINE"),
        ("12:00:00,000 [-] [t] INFO ELKCounterMetric apimMetrics: apim:response, {}", "BAD_LINE"),
        ("x apimMetrics: apim:response, properties {}", "BAD_LINE"),
    ],
)
def test_broken_metrics_lines_raise_with_a_reason(text: str, code: str) -> None:
    assert is_metrics_line(text)
    with pytest.raises(MalformedEvent) as caught:
        parse_metrics_line(text)
    assert caught.value.reason_code == code
    assert caught.value.detail


def test_error_detail_never_echoes_line_content() -> None:
    text = line("x", "response", '{"userName": "alice.secret@example.com", "userIp": "10.9.8.')
    with pytest.raises(MalformedEvent) as caught:
        parse_metrics_line(text)
    assert "alice" not in str(caught.value) and "10.9.8" not in caught.value.detail


def test_malformed_event_pickles_with_its_reason() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(MalformedEvent("BAD_JSON", "truncated")))
    assert (error.reason_code, error.detail) == ("BAD_JSON", "truncated")


def test_event_json_follows_orjson_rules_even_in_the_lone_surrogate_fallback() -> None:
    from connector.forward.logline import loads_event

    assert loads_event('{"a": "x\\ud83d"}') == {"a": "x\ufffd"}  # a truncated emoji
    assert loads_event('{"a": "\\ud83d", "n": 99999999999999999999}')["n"] == 1e20
    for text in ('{"a": "\\ud83d", "n": NaN}', '{"a": "\\ud83d", "n": Infinity}',
                 '{"a": "\\ud83d", "n": 1e400}', '{"n": NaN}',
                 '{"a": "\\ud83d", "d": ' + "[" * 990 + "]" * 990 + "}"):
        with pytest.raises(ValueError):
            loads_event(text)
