"""Poison events never stop the stream, and nothing unmasked touches disk (issue 7,
items 10 and 11), in all three inputs: the ELK log, JSON lines and HTTP ingest.

Named cases first, then property-based tests that put arbitrary JSON values (any type,
size, depth, number) into any field of an event and check: the stream completes, every
other event reaches the Collector sandbox, the bad one is dead-lettered with a code, and
no value of a masked field (nor a captured header, with send_headers = false) appears in
any byte under CONNECTOR_HOME, the SQLite WAL included.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connector.errors import DeadLetterCode
from connector.forward.moesif_event import TRANSACTION_NAMESPACE
from connector.forward.pipeline import forward_status, run_forward
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings
from tests.helpers import wait_for

APP_ID = "moesif-app-id-poison-3c2b1a"
TOKEN = "ingest-token-poison-9d8c7b"
CODES = {code.value for code in DeadLetterCode}
MAX_LINE = 64 * 1024
WSO2 = """
[apim.analytics]
enable = true
type = "elk"

[apim.analytics.properties]
send_headers = false

[apim.analytics.mask]
"userIp" = "IPV4"
"userName" = "EMAIL"
"applicationOwner" = "EMAIL"
"userAgent" = "STRING"
request_headers = ["Authorization"]
"""
MASKED_FIELDS = ("userIp", "userName", "applicationOwner", "userAgent")
_counter = itertools.count(1)


# --- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[MoesifCollectorSandbox, str]]:
    app = MoesifCollectorSandbox({APP_ID})
    with app.server() as server:
        yield app, server.url


@pytest.fixture(scope="module")
def wso2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wso2") / "deployment.toml"
    path.write_text(WSO2)
    return path


def _settings(home: Path, url: str, **extra: Any) -> Settings:
    return Settings(_env_file=None, moesif_application_id=APP_ID, moesif_collector_url=url,
                    connector_home=home, forward_max_line_bytes=MAX_LINE, **extra)


class Secrets:
    """Personal values of one event: each must never reach the disk unmasked."""

    def __init__(self) -> None:
        n = next(_counter)
        token = uuid.uuid4().hex
        self.ip = f"10.{n % 250}.{(n * 7) % 250 + 1}.{(n * 13) % 250 + 1}"
        self.user = f"usr{token[:12]}"
        self.owner = f"own{token[12:24]}"
        self.agent = f"agent{token[24:]}"
        self.auth = f"tok{uuid.uuid4().hex}"
        self.custom_header = f"hdr{uuid.uuid4().hex}"

    def hidden(self) -> list[bytes]:
        """What must not appear: the whole IP, the local parts, the whole values."""
        return [v.encode() for v in (self.ip, self.user, self.owner, self.agent, self.auth,
                                     self.custom_header)]


def _event(secrets: Secrets, when: datetime | None = None) -> dict[str, Any]:
    when = when or datetime.now(UTC) - timedelta(hours=1)
    return {
        "apiName": "PizzaShackAPI", "apiContext": "/pizzashack/1.0.0",
        "apiResourceTemplate": "/menu", "apiMethod": "GET", "apiVersion": "1.0.0",
        "correlationId": str(uuid.uuid4()),
        "requestTimestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "proxyResponseCode": 200, "targetResponseCode": 200, "responseLatency": 12,
        "applicationId": "app-1", "keyType": "PRODUCTION",
        "userIp": secrets.ip, "userName": f"{secrets.user}@example.com@carbon.super",
        "applicationOwner": f"{secrets.owner}@corp.example", "userAgent": secrets.agent,
        "requestHeaders": {"Authorization": f"Bearer {secrets.auth}",
                           "X-Custom": secrets.custom_header},
        "properties": {"userName": f"{secrets.user}@example.com",
                       "responseHeaders": {"Set-Cookie": secrets.custom_header}},
    }


def _txid(event: dict[str, Any], kind: str = "response") -> str:
    return str(uuid.uuid5(TRANSACTION_NAMESPACE, f"{kind}:{event['correlationId']}"))


def _log_line(payload: str, kind: str = "response") -> bytes:
    return (f"15:56:07,928 [-] [PassThroughMessageProcessor-18]  INFO ELKCounterMetric "
            f"apimMetrics: apim:{kind}, properties :{payload}\n").encode()


def _home_bytes(home: Path) -> bytes:
    """Every byte under CONNECTOR_HOME: state file, WAL, shared memory, anything else."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def _assert_no_leak(home: Path, secrets: list[Secrets]) -> None:
    data = _home_bytes(home)
    assert data  # the state file exists: the check has something to look at
    for s in secrets:
        for value in s.hidden():
            assert value not in data, f"an unmasked value reached {home}"


def _dead_letters(settings: Settings) -> list[tuple[str, str, str, bytes | None]]:
    import sqlite3

    conn = sqlite3.connect(settings.state_path)
    try:
        return conn.execute("SELECT source, position, reason_code, raw FROM dead_letters "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()


# --- poison values, named -------------------------------------------------------------------
def _poison_payloads() -> list[tuple[str, str, str]]:
    """(name, JSON text of an event, expected reason code)."""
    s = Secrets()
    base = _event(s)

    def text(**changes: Any) -> str:
        return json.dumps({**base, "correlationId": str(uuid.uuid4()), **changes})

    deep = "[" * 300 + "]" * 300
    deeper = "{\"a\":" * 1100 + "1" + "}" * 1100
    return [
        ("time at the end of the range plus latency",
         text(requestTimestamp="9999-12-31T23:59:59.999Z", responseLatency=5000), "BAD_VALUE"),
        ("time zone shift out of range",
         text(requestTimestamp="0001-01-01T00:00:00+05:00"), "BAD_VALUE"),
        ("latency 1e20", text(responseLatency=1e20), None),
        ("latency Infinity", text().replace('"responseLatency": 12', '"responseLatency": Infinity'),
         "BAD_JSON"),
        ("latency 1e400", text().replace('"responseLatency": 12', '"responseLatency": 1e400'),
         "BAD_JSON"),
        ("NaN in metadata", text().replace('"keyType": "PRODUCTION"', '"keyType": NaN'),
         "BAD_JSON"),
        ("nested deeper than the encoder writes",
         text(extra="DEEP").replace('"DEEP"', deep), "BAD_VALUE"),
        ("nested deeper than the decoder reads",
         text(extra="DEEP").replace('"DEEP"', deeper), "BAD_JSON"),
        ("integer beyond 64 bits", text(responseSize=10**30), None),
        ("epoch far out of range", text(requestTimestamp=10**25), "BAD_TYPE"),
    ]


@pytest.mark.parametrize("fmt", ["log", "jsonl"])
def test_poison_events_are_dead_lettered_and_the_stream_goes_on(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str], wso2: Path,
        fmt: str) -> None:
    app, url = collector
    settings = _settings(tmp_path / "home", url)
    cases = _poison_payloads()
    good_events, lines = [], []
    for _, payload, _ in cases:
        good = _event(Secrets())
        good_events.append(good)
        lines.append(_log_line(payload) if fmt == "log" else payload.encode() + b"\n")
        lines.append(_log_line(json.dumps(good)) if fmt == "log"
                     else orjson.dumps(good) + b"\n")
    path = tmp_path / ("apim_metrics.log" if fmt == "log" else "events.jsonl")
    path.write_bytes(b"".join(lines))
    kwargs = {"from_log": path} if fmt == "log" else {"from_jsonl": str(path)}
    out = io.StringIO()
    code = run_forward(settings, once=True, parse_workers=0, wso2_config_path=wso2,
                       out=out, **kwargs)
    assert code == 0, out.getvalue()
    received = set(app.by_transaction_id)
    assert {_txid(e) for e in good_events} <= received  # every other event went through
    letters = _dead_letters(settings)
    expected = [(name, code) for name, _, code in cases if code is not None]
    assert [r for _, _, r, _ in letters] == [c for _, c in expected]
    positions = [int(p.split()[1]) for _, p, _, _ in letters]
    data = path.read_bytes()
    assert all(data[p - 1:p] == b"\n" for p in positions if p)  # a line starts there
    # The two survivors (1e20 latency, a wide integer) were delivered, sensibly.
    for _, payload, code_ in cases:
        if code_ is None:
            assert _txid(json.loads(payload)) in received
    # A restart does not stop on the same line: nothing is read again, nothing fails.
    assert run_forward(settings, once=True, parse_workers=0, wso2_config_path=wso2,
                       out=io.StringIO(), **kwargs) == 0
    assert len(_dead_letters(settings)) == len(letters)


def test_poison_events_over_http_ingest_get_a_400_naming_the_index(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str], wso2: Path) -> None:
    app, url = collector
    with _Listener(tmp_path / "home", url, wso2) as listener:
        for name, payload, code in _poison_payloads():
            try:
                orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # not JSON: the request itself is refused (invalid_json)
            good = _event(Secrets())
            body = b"[" + orjson.dumps(good) + b"," + payload.encode() + b"]"
            answer = listener.post(body)
            if code is None:
                assert answer.status_code == 202, name
                continue
            assert answer.status_code == 400, name
            assert answer.json()["index"] == 1 and answer.json()["reason"] == code
            assert answer.json()["accepted"] == 1
            wait_for(lambda good=good: _txid(good) in app.by_transaction_id)
        assert listener.post(orjson.dumps(_event(Secrets()))).status_code == 202


# --- nothing unmasked on disk, named ---------------------------------------------------------
def test_unparsable_and_unknown_kind_lines_are_never_stored_raw(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str], wso2: Path) -> None:
    _, url = collector
    settings = _settings(tmp_path / "home", url)
    secrets = [Secrets() for _ in range(4)]
    truncated = json.dumps(_event(secrets[0]))[:-40]
    unknown_kind = json.dumps(_event(secrets[1]))
    not_object = json.dumps([_event(secrets[2])])
    log = tmp_path / "apim_metrics.log"
    log.write_bytes(_log_line(truncated) + _log_line(unknown_kind, kind="mystery")
                    + _log_line(not_object) + _log_line(json.dumps(_event(secrets[3]))))
    assert run_forward(settings, from_log=log, once=True, parse_workers=0,
                       wso2_config_path=wso2, out=io.StringIO()) == 0
    letters = _dead_letters(settings)
    assert [r for _, _, r, _ in letters] == ["BAD_JSON", "UNKNOWN_KIND", "NOT_AN_OBJECT"]
    bad_json, unknown, listed = (orjson.loads(raw) for _, _, _, raw in letters)
    # Unparsable: a keyed fingerprint and the length, never the text.
    assert set(bad_json) == {"withheld", "blake2b", "length"}
    assert bad_json["length"] > len(truncated)
    assert set(listed) == {"withheld", "blake2b", "length"}
    # An event of an unknown kind is an object: kept, masked by the rules.
    assert unknown["userIp"].endswith(secrets[1].ip.rsplit(".", 1)[1])
    assert "***" in unknown["userIp"] and unknown["userAgent"] == "*****"
    assert unknown["userName"].startswith("*****@")
    assert "requestHeaders" not in unknown  # send_headers = false: no header value kept
    assert "responseHeaders" not in unknown["properties"]
    _assert_no_leak(settings.connector_home, secrets)


# --- property-based: arbitrary values in any field -----------------------------------------------
FIELDS = (
    "apiName", "apiMethod", "apiContext", "apiResourceTemplate", "apiVersion", "applicationId",
    "backendLatency", "correlationId", "destination", "proxyResponseCode", "targetResponseCode",
    "requestTimestamp", "responseLatency", "responseCacheHit", "requestHeaders",
    "responseHeaders", "properties", "errorCode", "errorType", "platform", "newField",
    "properties.userName", "properties.aiMetadata", "properties.requestHeaders",
    "requestHeaders.Authorization", "requestHeaders.X-Custom", *MASKED_FIELDS,
)
_SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=30)
            | st.floats(allow_nan=True, allow_infinity=True))
_VALUES = st.recursive(_SCALARS, lambda children: st.lists(children, max_size=4)
                       | st.dictionaries(st.text(max_size=10), children, max_size=4),
                       max_leaves=12)
# (JSON text, may JSON clients send it): big, deep, or any value.
_POISON = st.one_of(
    _VALUES.map(lambda v: (json.dumps(v), _plain_json(v))),
    st.integers(200, 1200).map(lambda d: ("[" * d + "]" * d, d <= 1000)),
    st.integers(2_000, 120_000).map(lambda n: (json.dumps("x" * n), True)),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "1" * 40, "-0.0", "1e-400"])
    .map(lambda t: (t, t not in ("1e400", "-1e400", "NaN", "Infinity"))),
)


def _plain_json(value: Any) -> bool:
    """True when orjson reads it (what an HTTP client can send): no NaN or Infinity."""
    try:
        orjson.loads(json.dumps(value))
        return True
    except (orjson.JSONDecodeError, ValueError):
        return False


def _poisoned(secrets: Secrets, field: str, poison_text: str) -> str:
    """An event's JSON text with `field` (a.b: nested) holding the poison. A masked field
    gets the poison next to its personal value, which must stay hidden whatever else."""
    event = _event(secrets)
    marker = f"POISON-{uuid.uuid4().hex}"
    target: Any = event
    *parents, leaf = field.split(".")
    for part in parents:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    if leaf in MASKED_FIELDS:
        target[leaf] = [target[leaf], marker]
    else:
        target[leaf] = marker
    return json.dumps(event).replace(f'"{marker}"', poison_text)


@settings(max_examples=35, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(poison=_POISON, field=st.sampled_from(FIELDS), fmt=st.sampled_from(["log", "jsonl"]),
       at=st.integers(0, 2))
def test_any_value_in_any_field_of_a_line(
        tmp_path_factory: pytest.TempPathFactory, collector: tuple[MoesifCollectorSandbox, str],
        wso2: Path, poison: tuple[str, bool], field: str, fmt: str, at: int) -> None:
    app, url = collector
    tmp = tmp_path_factory.mktemp("poison")
    settings_ = _settings(tmp / "home", url)
    secrets = [Secrets() for _ in range(3)]
    goods = [_event(s) for s in secrets[:2]]
    texts = [json.dumps(e) for e in goods]
    texts.insert(at % 3, _poisoned(secrets[2], field, poison[0]))
    body = b"".join(_log_line(t) if fmt == "log" else t.encode() + b"\n" for t in texts)
    path = tmp / "input"
    path.write_bytes(body)
    kwargs = {"from_log": path} if fmt == "log" else {"from_jsonl": str(path)}
    out = io.StringIO()
    code = run_forward(settings_, once=True, parse_workers=0, wso2_config_path=wso2,
                       out=out, **kwargs)
    letters = _dead_letters(settings_)
    # The stream completed: exit 1 only when the Collector refused the event we sent.
    assert code == 0 or [r for _, _, r, _ in letters] == ["REJECTED_BY_COLLECTOR"], \
        out.getvalue()
    assert {_txid(e) for e in goods} <= set(app.by_transaction_id)
    status = forward_status(settings_)
    counters = status["counters"]
    assert status["backlog"] == 0
    assert counters["delivered"] + counters["dead_lettered"] == 3  # each event: one fate
    assert len(letters) == counters["dead_lettered"] <= 1
    assert all(reason in CODES for _, _, reason, _ in letters)
    event(f"dead letters: {sorted(r for _, _, r, _ in letters)}")
    _assert_no_leak(settings_.connector_home, secrets)


class _Listener:
    """run_forward --listen in a thread, for a module's worth of requests."""

    def __init__(self, home: Path, url: str, wso2: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.settings = _settings(home, url, forward_ingest_token=TOKEN,
                                  forward_batch_age_seconds=0.05)
        self.stop = threading.Event()
        self.code: int | None = None
        self.wso2 = wso2
        self.thread = threading.Thread(target=self._run)
        self.http = requests.Session()
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.code = run_forward(self.settings, listen=f"127.0.0.1:{self.port}",
                                wso2_config_path=self.wso2, parse_workers=0,
                                stop_event=self.stop, out=io.StringIO())

    def __enter__(self) -> _Listener:
        self.thread.start()

        def up() -> bool:
            try:
                return self.http.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up)
        return self

    def post(self, body: bytes) -> requests.Response:
        return self.http.post(self.url + "/v1/events", data=body, timeout=30,
                              headers={"Authorization": f"Bearer {TOKEN}"})

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.stop.set()
        self.thread.join(timeout=30)
        assert self.code == 0


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory,
             collector: tuple[MoesifCollectorSandbox, str], wso2: Path) -> Iterator[_Listener]:
    _, url = collector
    with _Listener(tmp_path_factory.mktemp("listen") / "home", url, wso2) as running:
        yield running


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(poison=_POISON.filter(lambda p: p[1]), field=st.sampled_from(FIELDS),
       at=st.integers(0, 2))
def test_any_value_in_any_field_over_http_ingest(
        collector: tuple[MoesifCollectorSandbox, str], listener: _Listener,
        poison: tuple[str, bool], field: str, at: int) -> None:
    app, _ = collector
    secrets = [Secrets() for _ in range(3)]
    goods = [_event(s) for s in secrets[:2]]
    texts = [json.dumps(e) for e in goods]
    texts.insert(at, _poisoned(secrets[2], field, poison[0]))
    before = forward_status(listener.settings)["counters"]
    answer = listener.post(("[" + ",".join(texts) + "]").encode())
    if answer.status_code == 413:  # a body over FORWARD_MAX_BODY_BYTES: refused whole
        return
    assert answer.status_code in (202, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["index"] == at and answer.json()["reason"] in CODES
        assert answer.json()["accepted"] == 2
    wait_for(lambda: {_txid(e) for e in goods} <= set(app.by_transaction_id))
    wait_for(lambda: forward_status(listener.settings)["backlog"] == 0)
    after = forward_status(listener.settings)["counters"]
    fates = {k: after[k] - before[k] for k in ("delivered", "dead_lettered")}
    assert fates["delivered"] + fates["dead_lettered"] == 3
    event(f"answer {answer.status_code}, dead letters: {fates['dead_lettered']}")
    # Refused by us (400), or taken and then refused by the Collector, or delivered.
    assert fates["dead_lettered"] == 1 if answer.status_code == 400 else fates["dead_lettered"] <= 1
    _assert_no_leak(listener.settings.connector_home, secrets)


def test_the_leak_check_would_see_a_leak(tmp_path: Path) -> None:
    """The grep above is not vacuous: an unmasked value in the WAL is found."""
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    secrets = Secrets()
    conn = sqlite3.connect(home / "state.sqlite3")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (secrets.user,))
    conn.commit()
    assert (home / "state.sqlite3-wal").exists()
    with pytest.raises(AssertionError):
        _assert_no_leak(home, [secrets])
    conn.close()
    assert re.fullmatch(r"usr[0-9a-f]{12}", secrets.user)
