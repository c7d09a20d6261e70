"""The apim_metrics.log generator: WSO2's format, every seed field, determinism, totals."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.common.timeutil import parse_timestamp
from connector.sandbox.apim_log import (
    FAULTY,
    FAULTY_FIELDS,
    MALFORMED,
    NOISE,
    RESPONSE,
    RESPONSE_FIELDS,
    LogGenerator,
)

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
N = 3000

# WSO2's pattern: %d{HH:mm:ss,SSS} [%X{ip}-%X{host}] [%t] %5p %c{1} %m%n
LINE = re.compile(
    r"^(?P<clock>\d\d:\d\d:\d\d,\d{3}) (?P<mdc>\[[^\]]*\]) \[(?P<thread>[^\]]+)\] "
    r"(?P<level>[ A-Z]{5}) (?P<logger>\S+) (?P<message>.*)$"
)
METRIC = re.compile(r"^apimMetrics: apim:(?P<kind>\w+), properties :(?P<json>.*)$")


def classify(record: str) -> tuple[str, dict[str, Any] | None]:
    """A reference reader: what a parser should make of one record."""
    first = record.split("\n", 1)[0]
    match = LINE.match(first)
    assert match, f"not in WSO2's format: {first[:120]}"
    if "apimMetrics:" not in record:
        return NOISE, None
    metric = METRIC.match(match["message"])
    if not metric or metric["kind"] not in (RESPONSE, FAULTY):
        return MALFORMED, None
    try:
        event = orjson.loads(metric["json"])
    except orjson.JSONDecodeError:
        return MALFORMED, None
    if not isinstance(event, dict):
        return MALFORMED, None
    return metric["kind"], event


@pytest.fixture(scope="module")
def generated() -> tuple[LogGenerator, list[str]]:
    generator = LogGenerator(seed=11, start=START)
    return generator, list(generator.lines(N))


@pytest.fixture(scope="module")
def events(generated: tuple[LogGenerator, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for record in generated[1]:
        kind, event = classify(record)
        if event is not None:
            found.append((kind, event))
    return found


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    first = list(LogGenerator(seed=3, start=START).lines(500))
    again = list(LogGenerator(seed=3, start=START).lines(500))
    other = list(LogGenerator(seed=4, start=START).lines(500))
    assert first == again
    assert first != other
    assert all(record.endswith("\n") for record in first)


def test_random_access_and_continuation_match_the_stream(
    generated: tuple[LogGenerator, list[str]],
) -> None:
    generator, records = generated
    fresh = LogGenerator(seed=11, start=START)
    assert list(fresh.lines(100, start=2000)) == records[2000:2100]
    for index in (0, 17, 1234, N - 1):
        kind, event = fresh.event(index)
        parsed_kind, parsed = classify(records[index])
        assert fresh.line(index) == records[index]
        if kind in (RESPONSE, FAULTY):
            assert (parsed_kind, parsed) == (kind, event)


def test_totals_add_up(generated: tuple[LogGenerator, list[str]]) -> None:
    generator, records = generated
    stats = generator.stats
    kinds = Counter(classify(record)[0] for record in records)
    assert stats.records == len(records) == N
    assert stats.events == stats.responses + stats.faults == kinds[RESPONSE] + kinds[FAULTY]
    assert stats.responses == kinds[RESPONSE]
    assert stats.noise == kinds[NOISE] > 0
    assert stats.malformed == kinds[MALFORMED] > 0
    assert stats.physical_lines == sum(record.count("\n") for record in records) > N
    assert stats.records == stats.events + stats.noise + stats.malformed
    assert LogGenerator(seed=11, start=START).count_expected(N) == stats
    # Ratios near the defaults.
    assert 0.10 < stats.faults / stats.events < 0.20
    assert 0.03 < stats.noise / N < 0.08


def test_every_seed_field_appears(events: list[tuple[str, dict[str, Any]]]) -> None:
    response_keys: set[str] = set()
    faulty_keys: set[str] = set()
    for kind, event in events:
        (response_keys if kind == RESPONSE else faulty_keys).update(event)
    assert set(RESPONSE_FIELDS) <= response_keys, set(RESPONSE_FIELDS) - response_keys
    assert set(FAULTY_FIELDS) <= faulty_keys, set(FAULTY_FIELDS) - faulty_keys
    assert len(RESPONSE_FIELDS) == 43 and len(FAULTY_FIELDS) == 34


def test_field_types(events: list[tuple[str, dict[str, Any]]]) -> None:
    for kind, event in events:
        assert isinstance(event["proxyResponseCode"], int)
        assert isinstance(event["targetResponseCode"], int)
        assert isinstance(event["responseCacheHit"], bool)
        for latency in ("backendLatency", "responseLatency", "requestMediationLatency",
                        "responseMediationLatency"):
            assert isinstance(event[latency], int) and event[latency] >= 0
        uuid.UUID(event["correlationId"])
        uuid.UUID(event["apiId"])
        assert isinstance(event["properties"], dict)
        if kind == RESPONSE:
            assert isinstance(event["requestTimestamp"], str)
            assert event["requestTimestamp"].endswith("Z")
            assert isinstance(event["isEgress"], bool)
            assert isinstance(event["responseSize"], int)
        parse_timestamp(event["requestTimestamp"])


def test_correlation_ids_are_unique(events: list[tuple[str, dict[str, Any]]]) -> None:
    ids = [event["correlationId"] for _, event in events]
    assert len(set(ids)) == len(ids)


def error_type_for(code: int) -> str:
    if 900900 <= code <= 900999:
        return "AUTH"
    if 900800 <= code <= 900899:
        return "THROTTLED"
    if 101500 <= code <= 101599 or code == 303001:
        return "TARGET_CONNECTIVITY"
    raise AssertionError(f"code outside the documented ranges: {code}")


def test_faults_are_consistent(events: list[tuple[str, dict[str, Any]]]) -> None:
    faults = [event for kind, event in events if kind == FAULTY]
    assert faults
    for event in faults:
        assert event["targetResponseCode"] == -1
        assert event["eventType"] == "fault"
        assert error_type_for(event["errorCode"]) == event["errorType"]
        assert event["errorMessage"]
        assert event["proxyResponseCode"] >= 400
    assert {e["errorType"] for e in faults} == {"AUTH", "THROTTLED", "TARGET_CONNECTIVITY"}
    assert any(e["applicationId"] == "UNKNOWN" for e in faults)
    assert any(e["applicationId"] != "UNKNOWN" for e in faults)
    assert any("apiMethod" not in e and "apiResourceTemplate" not in e for e in faults)
    assert any(isinstance(e["requestTimestamp"], int) for e in faults)  # the seed's Long
    assert any(isinstance(e["requestTimestamp"], str) for e in faults)
    assert any(e["errorCode"] == 303001 for e in faults)


def test_users_ips_and_agents_vary(events: list[tuple[str, dict[str, Any]]]) -> None:
    names = {event.get("userName") for _, event in events} - {None}
    assert "admin@carbon.super" in names
    assert "john.doe@example.com@carbon.super" in names
    assert "alice@tenant.com" in names
    assert "bob" in names
    ips = [event["userIp"] for _, event in events]
    parsed = [ipaddress.ip_address(ip) for ip in ips]
    assert any(ip.version == 4 for ip in parsed)
    assert any(ip.version == 6 for ip in parsed)
    assert "2001:db8::7" in ips
    assert any("::" in ip for ip in ips)
    assert any(ip.count(":") == 7 and "::" not in ip for ip in ips)  # uncompressed IPv6
    agents = {event["userAgent"] for _, event in events}
    assert "Chrome" in agents and any(a.startswith("Mozilla/5.0") for a in agents)
    assert {event["platform"] for _, event in events} >= {"Windows", "Other"}


def test_headers_in_various_letter_cases(events: list[tuple[str, dict[str, Any]]]) -> None:
    with_headers = [event for _, event in events if "requestHeaders" in event]
    assert 0.2 < len(with_headers) / len(events) < 0.35
    names: set[str] = set()
    for event in with_headers:
        names.update(event["requestHeaders"])
        names.update(event["responseHeaders"])
        assert event["properties"]["requestHeaders"] == event["requestHeaders"]
    assert {"Authorization", "authorization", "AUTHORIZATION"} <= names
    assert {"Cookie", "cookie"} <= names
    assert {"X-API-Key", "x-api-key"} <= names


def test_ai_events_carry_vendor_and_tokens_twice(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    ai = [event for _, event in events if "vendorName" in event]
    assert 0.05 < len(ai) / len(events) < 0.15
    for event in ai:
        meta, usage = event["properties"]["aiMetadata"], event["properties"]["aiTokenUsage"]
        assert (meta["vendorName"], meta["vendorVersion"], meta["model"]) == (
            event["vendorName"], event["vendorVersion"], event["model"])
        assert event["totalTokens"] == event["promptTokens"] + event["completionTokens"]
        assert usage["totalTokens"] == event["totalTokens"]
        assert isinstance(event["hour"], str) and usage["hour"] == event["hour"]
        assert event["subType"] == "AIAPI"


def test_properties_shape(events: list[tuple[str, dict[str, Any]]]) -> None:
    for kind, event in events:
        props = event["properties"]
        assert props["apiContext"] == event["apiContext"]
        if "userName" in event:
            assert props["userName"] == event["userName"]
        if kind == RESPONSE:
            assert {"requestSize", "responseSize", "responseContentType", "commonName",
                    "isEgress", "subtype"} <= set(props)


def test_mdc_variants_noise_and_malformed(generated: tuple[LogGenerator, list[str]]) -> None:
    records = generated[1]
    mdcs = {LINE.match(record.split("\n", 1)[0])["mdc"]  # type: ignore[index]
            for record in records}
    assert {"[-]", "[]", "[10.1.2.3-gw-1]"} <= mdcs
    noise = [r for r in records if "apimMetrics:" not in r]
    assert any("\n\tat " in r for r in noise)  # a multi-line stack trace
    assert any(" WARN " in r for r in noise)
    malformed = [r for r in records if classify(r)[0] == MALFORMED]
    assert any("apim:unknown" in r for r in malformed)
    assert any(re.search(r"properties :(\[|null|\d|\")", r) for r in malformed)


def test_default_start_is_within_moesifs_30_days() -> None:
    generator = LogGenerator()
    event = next(generator.event(i)[1] for i in range(50)
                 if generator.event(i)[0] == RESPONSE)
    moment = parse_timestamp(event["requestTimestamp"])
    assert timedelta(0) < datetime.now(UTC) - moment < timedelta(days=2)


def test_write_and_cli(tmp_path: Path) -> None:
    path = tmp_path / "apim_metrics.log"
    stats = LogGenerator(seed=5, start=START).write(path, 1000)
    text = path.read_text()
    assert text.count("\n") == stats.physical_lines
    assert text == "".join(LogGenerator(seed=5, start=START).lines(1000))
    out = tmp_path / "cli.log"
    done = subprocess.run(
        [sys.executable, "-m", "connector.sandbox.apim_log", "--lines", "500", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    printed = orjson.loads(done.stdout)
    assert printed["records"] == 500
    assert out.read_text().count("apimMetrics:") == printed["events"] + printed["malformed"]


def test_fast_enough() -> None:
    import time

    started = time.perf_counter()
    for _ in LogGenerator(seed=2).lines(20_000):
        pass
    # ~0.3 s on the development machine; 200,000 lines take ~3 s.
    assert time.perf_counter() - started < 5
