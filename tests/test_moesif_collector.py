"""CollectorClient against the sandbox Collector over loopback."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from connector.moesif.collector import (
    USER_AGENT,
    BatchRejected,
    CollectorAuthError,
    CollectorClient,
    CollectorConfigError,
    CollectorEndpointError,
    DeliveryFailed,
    DeliveryInterrupted,
    encode_batch,
    parse_retry_after,
)
from connector.sandbox.httpbase import SandboxServer
from connector.sandbox.moesif_collector import MoesifCollectorSandbox

APP_ID = "test-app-id-7f3a9c2e51"
WRONG_ID = "wrong-app-id-0b4d8e6f27"
FAST = 0.01  # backoff for tests: real waits, but tiny


def fast_wait(_state: Any) -> float:
    return FAST


def make_event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    event: dict[str, Any] = {
        "request": {"time": now, "uri": f"https://gw.example.com/pizzashack/1.0.0/menu/{i}",
                    "verb": "GET", "headers": {"User-Agent": "Chrome"}},
        "response": {"time": now, "status": 200, "headers": {}},
        "transaction_id": str(uuid.uuid4()),
        "direction": "Incoming",
        "weight": 1,
        "metadata": {"index": i},
    }
    event.update(overrides)
    return event


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MoesifCollectorSandbox, SandboxServer]]:
    # One server per module: stopping one costs half a second (serve_forever's poll).
    app = MoesifCollectorSandbox({APP_ID})
    with app.server() as srv:
        yield app, srv


@pytest.fixture()
def sandbox(shared: tuple[MoesifCollectorSandbox, SandboxServer]) -> MoesifCollectorSandbox:
    shared[0].reset()
    return shared[0]


@pytest.fixture()
def server(shared: tuple[MoesifCollectorSandbox, SandboxServer],
           sandbox: MoesifCollectorSandbox) -> SandboxServer:
    return shared[1]


def client_for(url: str, app_id: str = APP_ID, **kwargs: Any) -> CollectorClient:
    kwargs.setdefault("wait", fast_wait)
    return CollectorClient(url, SecretStr(app_id), timeout=5.0, **kwargs)


class RetryLog:
    """An `on_retry` hook that tests can wait on."""

    def __init__(self, wake_after: int = 1) -> None:
        self.calls: list[tuple[int, str]] = []
        self.wake_after = wake_after
        self.reached = threading.Event()

    def __call__(self, attempt: int, reason: str) -> None:
        self.calls.append((attempt, reason))
        if len(self.calls) >= self.wake_after:
            self.reached.set()


def run_in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_201_with_gzip_and_headers(server: SandboxServer, sandbox: MoesifCollectorSandbox) -> None:
    events = [make_event(i) for i in range(3)]
    with client_for(server.url) as client:
        client.post_batch(events)
    assert sandbox.events == events
    assert sandbox.gzip_requests == 1
    assert sandbox.status_counts[201] == 1
    assert sandbox.user_agents == {USER_AGENT}
    assert USER_AGENT.startswith("moesif-segment-connector/")


def test_encoded_events_are_sent_without_reparsing(
    server: SandboxServer, sandbox: MoesifCollectorSandbox
) -> None:
    events = [make_event(i) for i in range(4)]
    encoded = [orjson.dumps(e) for e in events]
    assert orjson.loads(encode_batch(encoded)) == events
    assert encode_batch([]) == b"[]"
    with client_for(server.url) as client:
        client.post_batch(encoded[:2])  # a list of encoded events
        client.post_batch(encode_batch(encoded[2:]))  # the encoded array
    assert sandbox.events == events
    assert sandbox.batches == 2


def test_5xx_is_retried_until_accepted(server: SandboxServer,
                                       sandbox: MoesifCollectorSandbox) -> None:
    sandbox.inject(503, count=2)
    sandbox.inject(500)
    retries = RetryLog()
    with client_for(server.url, on_retry=retries) as client:
        client.post_batch([make_event()])
    assert [attempt for attempt, _ in retries.calls] == [1, 2, 3]
    assert retries.calls[0][1] == "HTTP 503"
    assert retries.calls[2][1] == "HTTP 500"
    assert sandbox.received_count == 1
    assert sandbox.status_counts == {503: 2, 500: 1, 201: 1}


def test_408_is_retried(server: SandboxServer, sandbox: MoesifCollectorSandbox) -> None:
    sandbox.inject(408)
    with client_for(server.url) as client:
        client.post_batch([make_event()])
    assert sandbox.status_counts == {408: 1, 201: 1}


def test_429_retry_after_is_honoured(server: SandboxServer,
                                     sandbox: MoesifCollectorSandbox) -> None:
    sandbox.inject(429, retry_after=1)
    retries = RetryLog()
    with client_for(server.url, on_retry=retries) as client:
        started = time.monotonic()
        client.post_batch([make_event()])
        elapsed = time.monotonic() - started
    # The backoff alone would wait 0.01 s; Retry-After asked for a full second.
    assert elapsed >= 0.95
    assert retries.calls == [(1, "HTTP 429, Retry-After 1s")]
    assert sandbox.received_count == 1


def test_retry_after_is_capped(server: SandboxServer, sandbox: MoesifCollectorSandbox) -> None:
    sandbox.inject(503, retry_after=3600)
    with client_for(server.url, retry_after_max=0.05) as client:
        started = time.monotonic()
        client.post_batch([make_event()])
    assert time.monotonic() - started < 2.0
    assert sandbox.received_count == 1


def test_parse_retry_after_forms() -> None:
    now = time.time()
    in_five = datetime.fromtimestamp(now, UTC) + timedelta(seconds=5)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(format_datetime(in_five, usegmt=True), now=now) == pytest.approx(
        5.0, abs=1.0)
    # A date in the past, 0 or a negative value: the floor of a second, never a tight loop.
    assert parse_retry_after("Mon, 01 Jan 1990 00:00:00 GMT") == 1.0
    assert parse_retry_after("0") == 1.0 and parse_retry_after("-5") == 1.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_then_server_starts_nothing_dropped() -> None:
    sandbox = MoesifCollectorSandbox({APP_ID})
    port = free_port()
    retries = RetryLog(wake_after=2)
    events = [make_event(i) for i in range(5)]
    client = client_for(f"http://127.0.0.1:{port}", on_retry=retries)
    thread, outcome = run_in_thread(lambda: client.post_batch(events))
    assert retries.reached.wait(10), "the client never retried"
    assert "connection" in retries.calls[0][1]
    with sandbox.server(port=port):
        thread.join(10)
        assert not thread.is_alive()
    assert "error" not in outcome
    assert sandbox.events == events
    client.close()


def test_outage_closing_connections_then_recovery(
    server: SandboxServer, sandbox: MoesifCollectorSandbox
) -> None:
    sandbox.outage(True, mode="close")
    retries = RetryLog(wake_after=3)
    client = client_for(server.url, on_retry=retries)
    thread, outcome = run_in_thread(lambda: client.post_batch([make_event()]))
    assert retries.reached.wait(10)
    assert sandbox.wait_for(lambda s: s.connections_dropped >= 3, timeout=10)
    assert sandbox.received_count == 0
    sandbox.outage(False)
    thread.join(10)
    assert not thread.is_alive() and "error" not in outcome
    assert sandbox.received_count == 1
    assert all("connection" in reason for _, reason in retries.calls)
    client.close()


def test_timeout_is_retried_and_the_duplicate_is_deduplicated(
    server: SandboxServer, sandbox: MoesifCollectorSandbox
) -> None:
    # The first request is held past the client's timeout but still lands: the retry
    # delivers the same transaction id again, which Moesif de-duplicates.
    sandbox.inject_delay(1.0)
    event = make_event()
    client = CollectorClient(server.url, SecretStr(APP_ID), timeout=0.2, wait=fast_wait)
    retries = RetryLog()
    client.on_retry = retries
    client.post_batch([event])
    assert retries.calls and retries.calls[0][1].startswith("timeout")
    assert sandbox.wait_for(lambda s: s.received_count == 2, timeout=10)
    assert sandbox.by_transaction_id == {event["transaction_id"]: 2}
    assert sandbox.unique_count == 1
    client.close()


def test_400_raises_batch_rejected_with_moesifs_answer(
    server: SandboxServer, sandbox: MoesifCollectorSandbox
) -> None:
    bad = make_event(1)
    del bad["request"]["uri"]
    retries = RetryLog()
    with client_for(server.url, on_retry=retries) as client, \
            pytest.raises(BatchRejected) as caught:
        client.post_batch([make_event(0), bad, make_event(2)])
    assert caught.value.status == 400
    answer = orjson.loads(caught.value.body_text)
    assert answer["errors"] == [{"index": 1, "reason": "request.uri is required",
                                 "transaction_id": bad["transaction_id"]}]
    assert retries.calls == []
    assert sandbox.requests == 1
    assert sandbox.received_count == 0


def test_rejected_transaction_id_is_named(server: SandboxServer,
                                          sandbox: MoesifCollectorSandbox) -> None:
    events = [make_event(i) for i in range(3)]
    sandbox.reject_transaction_ids({events[2]["transaction_id"]})
    with client_for(server.url) as client, pytest.raises(BatchRejected) as caught:
        client.post_batch(events)
    assert events[2]["transaction_id"] in caught.value.body_text
    assert "'index': 2" in repr(orjson.loads(caught.value.body_text))


def test_401_raises_auth_error_without_the_id(
    server: SandboxServer, sandbox: MoesifCollectorSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(server.url, app_id=WRONG_ID)
    with pytest.raises(CollectorAuthError) as caught:
        client.post_batch([make_event()])
    assert caught.value.status == 401
    assert "refused the application id" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), repr(client), caplog.text):
        assert WRONG_ID not in text
    assert sandbox.requests == 1  # not retried
    with pytest.raises(CollectorAuthError):
        client.check()
    client.close()


def test_app_id_not_in_retry_logs(server: SandboxServer, sandbox: MoesifCollectorSandbox,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.inject(502, count=2)
    with client_for(server.url) as client:
        client.post_batch([make_event()])
    assert "retrying" in caplog.text
    assert APP_ID not in caplog.text


def test_check_reads_the_config(server: SandboxServer) -> None:
    with client_for(server.url) as client:
        config = client.check()
    assert config["sample_rate"] == 100


def test_check_is_bounded_during_an_outage(server: SandboxServer,
                                            sandbox: MoesifCollectorSandbox) -> None:
    sandbox.outage(True)
    with client_for(server.url) as client, pytest.raises(DeliveryFailed) as caught:
        client.check(max_attempts=2)
    assert caught.value.attempts == 2


def test_wrong_path_is_an_endpoint_error(server: SandboxServer) -> None:
    with client_for(server.url + "/not-moesif") as client, \
            pytest.raises(CollectorEndpointError) as caught:
        client.post_batch([make_event()])
    assert caught.value.status == 404
    assert "MOESIF_COLLECTOR_URL" in str(caught.value)


def test_stop_event_interrupts_an_endless_retry(
    server: SandboxServer, sandbox: MoesifCollectorSandbox
) -> None:
    sandbox.outage(True)
    stop = threading.Event()
    retries = RetryLog(wake_after=1)
    # A long backoff: without the stop event this would wait a minute between tries.
    client = client_for(server.url, on_retry=retries, stop_event=stop, wait=lambda _s: 60.0)
    thread, outcome = run_in_thread(lambda: client.post_batch([make_event()]))
    assert retries.reached.wait(10)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), DeliveryInterrupted)
    assert sandbox.received_count == 0
    client.close()


def test_stop_event_interrupts_many_quick_retries(
    server: SandboxServer, sandbox: MoesifCollectorSandbox
) -> None:
    sandbox.outage(True)
    stop = threading.Event()
    retries = RetryLog(wake_after=5)
    client = client_for(server.url, on_retry=retries, stop_event=stop)
    thread, outcome = run_in_thread(lambda: client.post_batch([make_event()]))
    assert retries.reached.wait(10)  # retry_forever: it keeps going
    stop.set()
    thread.join(5)
    assert isinstance(outcome.get("error"), DeliveryInterrupted)
    client.close()


def test_max_attempts_gives_up(server: SandboxServer, sandbox: MoesifCollectorSandbox) -> None:
    sandbox.outage(True)
    with client_for(server.url, max_attempts=3) as client, \
            pytest.raises(DeliveryFailed) as caught:
        client.post_batch([make_event()])
    assert caught.value.attempts == 3
    assert caught.value.reason == "HTTP 503"
    assert sandbox.requests == 3


def test_simulated_outage_loses_nothing(server: SandboxServer,
                                        sandbox: MoesifCollectorSandbox) -> None:
    """Many batches through an outage window: each is delivered exactly once."""
    sandbox.outage(True)
    retries = RetryLog(wake_after=4)
    batches = [[make_event(b * 10 + i) for i in range(10)] for b in range(5)]
    client = client_for(server.url, on_retry=retries)

    def send_all() -> None:
        for batch in batches:
            client.post_batch(batch)

    thread, outcome = run_in_thread(send_all)
    assert retries.reached.wait(10)
    sandbox.outage(False)
    thread.join(10)
    assert "error" not in outcome
    assert sandbox.unique_count == 50 and sandbox.received_count == 50
    client.close()


def test_unusable_url_is_a_config_error_not_an_endless_retry() -> None:
    with client_for("gw.example.com:8443") as client, pytest.raises(CollectorConfigError):
        client.post_batch([make_event()])


def test_empty_batch_sends_nothing(server: SandboxServer,
                                   sandbox: MoesifCollectorSandbox) -> None:
    with client_for(server.url) as client:
        client.post_batch([])
    assert sandbox.requests == 0


def test_repr_hides_the_id() -> None:
    client = CollectorClient("http://127.0.0.1:9", SecretStr(APP_ID))
    assert APP_ID not in repr(client)
    assert APP_ID not in str(vars(client))
    client.close()
