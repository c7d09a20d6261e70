"""The sandbox Collector's contract, faults and record, over loopback with plain requests."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import requests

from connector.sandbox.httpbase import SandboxServer
from connector.sandbox.moesif_collector import MoesifCollectorSandbox

APP_ID = "sandbox-app-4e1d77"
OTHER_ID = "sandbox-app-second"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def make_event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    now = iso(datetime.now(UTC))
    event: dict[str, Any] = {
        "request": {"time": now, "uri": f"https://gw.example.com/api/{i}", "verb": "POST",
                    "headers": {}},
        "response": {"time": now, "status": 201, "headers": {"Content-Type": "text/plain"}},
        "transaction_id": str(uuid.uuid4()),
        "direction": "Incoming",
        "weight": 1,
    }
    event.update(overrides)
    return event


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MoesifCollectorSandbox, SandboxServer]]:
    app = MoesifCollectorSandbox({APP_ID, OTHER_ID})
    with app.server() as srv:
        yield app, srv


@pytest.fixture()
def sandbox(shared: tuple[MoesifCollectorSandbox, SandboxServer]) -> MoesifCollectorSandbox:
    shared[0].reset()
    return shared[0]


@pytest.fixture()
def url(shared: tuple[MoesifCollectorSandbox, SandboxServer],
        sandbox: MoesifCollectorSandbox) -> str:
    return shared[1].url


@pytest.fixture()
def post(url: str) -> Iterator[Callable[..., requests.Response]]:
    session = requests.Session()

    def send(body: Any, path: str = "/v1/events/batch", app_id: str | None = APP_ID,
             compress: bool = True) -> requests.Response:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if app_id is not None:
            headers["X-Moesif-Application-Id"] = app_id
        if compress:
            data = gzip.compress(data, 1)
            headers["Content-Encoding"] = "gzip"
        return session.post(url + path, data=data, headers=headers, timeout=10)

    yield send
    session.close()


def test_batch_accepted_with_201_and_recorded(sandbox: MoesifCollectorSandbox,
                                              post: Callable[..., requests.Response]) -> None:
    events = [make_event(i) for i in range(3)]
    answer = post(events)
    assert answer.status_code == 201
    assert answer.content == b""
    assert sandbox.events == events
    assert (sandbox.received_count, sandbox.unique_count, sandbox.batches) == (3, 3, 1)
    assert sandbox.gzip_requests == 1


def test_uncompressed_batch_and_single_event(sandbox: MoesifCollectorSandbox,
                                             post: Callable[..., requests.Response]) -> None:
    assert post([make_event(0)], compress=False).status_code == 201
    assert post(make_event(1), path="/v1/events").status_code == 201
    assert post([make_event(2)], path="/v1/events").status_code == 400  # not an object
    assert post(make_event(3)).status_code == 400  # batch wants an array
    assert sandbox.received_count == 2
    assert sandbox.gzip_requests == 3


def test_second_known_id_is_accepted(post: Callable[..., requests.Response]) -> None:
    assert post([make_event()], app_id=OTHER_ID).status_code == 201


@pytest.mark.parametrize("app_id", [None, "not-a-known-id"])
def test_unknown_or_missing_id_is_401(sandbox: MoesifCollectorSandbox,
                                      post: Callable[..., requests.Response],
                                      app_id: str | None) -> None:
    answer = post([make_event()], app_id=app_id)
    assert answer.status_code == 401
    assert sandbox.received_count == 0
    assert sandbox.status_counts[401] == 1


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for key in parents:
            target = target[key]
        del target[last]
    return change


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for key in parents:
            target = target[key]
        target[last] = value
    return change


OLD = iso(datetime.now(UTC) - timedelta(days=31))

INVALID = [
    (_drop("request"), "request object is required"),
    (_drop("request.time"), "request.time is required"),
    (_set("request.time", "yesterday"), "request.time is not ISO 8601"),
    (_drop("request.uri"), "request.uri is required"),
    (_drop("request.verb"), "request.verb is required"),
    (_drop("request.headers"), "request.headers must be an object"),
    (_set("request.headers", ["a"]), "request.headers must be an object"),
    (_set("response.status", "200"), "response.status must be an integer"),
    (_set("response.status", True), "response.status must be an integer"),
    (_drop("response.time"), "response.time is required"),
    (_set("transaction_id", "1234"), "transaction_id must be a 36-character UUID"),
    (_set("direction", "Sideways"), "direction must be Incoming, Outgoing or Internal"),
    (_set("weight", 0), "weight must be an integer >= 1"),
    (_set("weight", 1.5), "weight must be an integer >= 1"),
    (_set("request.time", OLD), "older than 30 days"),
]


@pytest.mark.parametrize(("change", "reason"), INVALID, ids=[r for _, r in INVALID])
def test_validation_names_index_and_reason(
    sandbox: MoesifCollectorSandbox, post: Callable[..., requests.Response],
    change: Callable[[dict[str, Any]], None], reason: str,
) -> None:
    events = [make_event(i) for i in range(3)]
    change(events[1])
    answer = post(events)
    assert answer.status_code == 400
    errors = answer.json()["errors"]
    assert [e["index"] for e in errors] == [1]
    assert reason in errors[0]["reason"]
    assert sandbox.received_count == 0  # the whole batch is refused
    assert sandbox.rejected_batches == 1


def test_optional_fields_may_be_absent(sandbox: MoesifCollectorSandbox,
                                       post: Callable[..., requests.Response]) -> None:
    event = make_event()
    for key in ("response", "transaction_id", "direction", "weight"):
        del event[key]
    assert post([event]).status_code == 201
    assert sandbox.unique_count == 1  # no transaction id: counted on its own
    assert sandbox.no_transaction_id_count == 1


def test_old_events_allowed_when_configured(post: Callable[..., requests.Response]) -> None:
    app = MoesifCollectorSandbox(APP_ID, reject_older_than_days=None)
    event = make_event()
    event["request"]["time"] = OLD
    with app.server() as srv:
        answer = requests.post(srv.url + "/v1/events/batch", data=orjson.dumps([event]),
                               headers={"X-Moesif-Application-Id": APP_ID}, timeout=10)
    assert answer.status_code == 201
    assert app.received_count == 1


def test_invalid_json_and_gzip_are_400(url: str,
                                       post: Callable[..., requests.Response]) -> None:
    assert post(b"[{not json").status_code == 400
    truncated = gzip.compress(orjson.dumps([make_event()]))[:-12]
    headers = {"X-Moesif-Application-Id": APP_ID, "Content-Encoding": "gzip"}
    answer = requests.post(url + "/v1/events/batch", data=truncated, headers=headers,
                           timeout=10)
    assert answer.status_code == 400
    assert "gzip" in answer.json()["message"]


def test_event_over_1mb_is_400(sandbox: MoesifCollectorSandbox,
                               post: Callable[..., requests.Response]) -> None:
    big = make_event(1, metadata={"blob": "x" * 1_050_000})
    answer = post([make_event(0), big])
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["index"] == 1
    assert "exceeds" in answer.json()["errors"][0]["reason"]


def test_body_over_limit_is_413_compressed_or_not() -> None:
    app = MoesifCollectorSandbox(APP_ID, max_body_bytes=20_000)
    events = [make_event(i, metadata={"pad": "y" * 500}) for i in range(60)]  # ~40 kB raw
    raw = orjson.dumps(events)
    headers = {"X-Moesif-Application-Id": APP_ID}
    with app.server() as srv, requests.Session() as session:
        plain = session.post(srv.url + "/v1/events/batch", data=raw, headers=headers,
                             timeout=10)
        packed = session.post(srv.url + "/v1/events/batch", data=gzip.compress(raw),
                              headers={**headers, "Content-Encoding": "gzip"}, timeout=10)
        # The connection stays usable after a 413: the body was read, not left behind.
        small = session.post(srv.url + "/v1/events/batch", data=orjson.dumps(events[:2]),
                             headers=headers, timeout=10)
    assert len(gzip.compress(raw)) < 20_000 < len(raw)
    assert plain.status_code == 413
    assert packed.status_code == 413
    assert small.status_code == 201
    assert app.received_count == 2


def test_dedupe_by_transaction_id(sandbox: MoesifCollectorSandbox,
                                  post: Callable[..., requests.Response]) -> None:
    first, second = make_event(0), make_event(1)
    assert post([first, second]).status_code == 201
    assert post([first]).status_code == 201
    assert sandbox.by_transaction_id == {first["transaction_id"]: 2,
                                         second["transaction_id"]: 1}
    assert (sandbox.received_count, sandbox.unique_count, sandbox.duplicate_count) == (3, 2, 1)


def test_injected_statuses_then_normal(sandbox: MoesifCollectorSandbox,
                                       post: Callable[..., requests.Response]) -> None:
    sandbox.inject(503, count=2)
    sandbox.inject(429, retry_after=7)
    codes = [post([make_event(i)]) for i in range(4)]
    assert [a.status_code for a in codes] == [503, 503, 429, 201]
    assert codes[2].headers["Retry-After"] == "7"
    assert "Retry-After" not in codes[0].headers
    assert sandbox.received_count == 1


def test_injected_html_page(sandbox: MoesifCollectorSandbox,
                            post: Callable[..., requests.Response]) -> None:
    sandbox.inject(404, html=True)
    page = post([make_event(0)])
    assert page.status_code == 404 and page.headers["Content-Type"] == "text/html"
    assert page.text.startswith("<html>") and sandbox.received_count == 0
    assert post([make_event(1)]).status_code == 201


def test_outage_503_then_off(sandbox: MoesifCollectorSandbox,
                             post: Callable[..., requests.Response]) -> None:
    sandbox.outage(True)
    assert post([make_event()]).status_code == 503
    assert sandbox.in_outage()
    sandbox.outage(False)
    assert post([make_event()]).status_code == 201


def test_outage_close_mode_drops_the_connection(
    sandbox: MoesifCollectorSandbox, post: Callable[..., requests.Response]
) -> None:
    sandbox.outage(True, mode="close")
    with pytest.raises(requests.ConnectionError):
        post([make_event()])
    assert sandbox.connections_dropped == 1
    sandbox.outage(False)
    assert post([make_event()]).status_code == 201
    with pytest.raises(ValueError):
        sandbox.outage(True, mode="sometimes")


def test_outage_until_ends_by_itself(sandbox: MoesifCollectorSandbox,
                                     post: Callable[..., requests.Response]) -> None:
    sandbox.outage_for(0.3)
    assert post([make_event()]).status_code == 503
    deadline = time.monotonic() + 5
    status = 503
    while status == 503 and time.monotonic() < deadline:
        status = post([make_event()]).status_code
    assert status == 201
    assert not sandbox.in_outage()


def test_inject_delay_holds_the_answer(sandbox: MoesifCollectorSandbox,
                                       post: Callable[..., requests.Response]) -> None:
    sandbox.inject_delay(0.3)
    started = time.monotonic()
    assert post([make_event()]).status_code == 201
    assert time.monotonic() - started >= 0.29
    started = time.monotonic()
    assert post([make_event()]).status_code == 201
    assert time.monotonic() - started < 0.29


def test_rejected_transaction_ids(sandbox: MoesifCollectorSandbox,
                                  post: Callable[..., requests.Response]) -> None:
    events = [make_event(i) for i in range(4)]
    sandbox.reject_transaction_ids({events[3]["transaction_id"]})
    answer = post(events)
    assert answer.status_code == 400
    assert answer.json()["errors"] == [{"index": 3, "reason": "transaction_id rejected by the "
                                        "sandbox rule",
                                        "transaction_id": events[3]["transaction_id"]}]
    assert post(events[:3]).status_code == 201
    assert sandbox.last_rejection is not None and sandbox.last_rejection["status"] == 400


def test_admin_endpoints(sandbox: MoesifCollectorSandbox, url: str,
                         post: Callable[..., requests.Response]) -> None:
    post([make_event()])
    stats = requests.get(url + "/_sandbox/stats", timeout=5).json()
    assert stats["received_count"] == 1 and stats["status_counts"] == {"201": 1}
    assert requests.post(url + "/_sandbox/outage", json={"on": True}, timeout=5).json()["outage"]
    assert post([make_event()]).status_code == 503
    requests.post(url + "/_sandbox/outage", json={"on": False}, timeout=5)
    requests.post(url + "/_sandbox/inject", json={"status": 500, "count": 1}, timeout=5)
    assert post([make_event()]).status_code == 500
    reset = requests.post(url + "/_sandbox/reset", timeout=5).json()
    assert reset["received_count"] == 0 and reset["requests"] == 0
    assert sandbox.events == []


def test_reset_clears_record_and_faults(sandbox: MoesifCollectorSandbox,
                                        post: Callable[..., requests.Response]) -> None:
    post([make_event()])
    sandbox.inject(500, count=5)
    sandbox.outage(True)
    sandbox.reset()
    assert post([make_event()]).status_code == 201
    assert sandbox.received_count == 1 and sandbox.batches == 1


def test_config_endpoint(url: str) -> None:
    answer = requests.get(url + "/v1/config", headers={"X-Moesif-Application-Id": APP_ID},
                          timeout=5)
    assert answer.status_code == 200
    assert answer.headers["X-Moesif-Config-ETag"]
    assert answer.json()["sample_rate"] == 100
    assert requests.get(url + "/v1/config", timeout=5).status_code == 401


def test_wait_for_wakes_on_a_request(sandbox: MoesifCollectorSandbox,
                                     post: Callable[..., requests.Response]) -> None:
    assert not sandbox.wait_for(lambda s: s.received_count >= 1, timeout=0.05)
    sender = threading.Thread(target=lambda: post([make_event()]))
    sender.start()
    assert sandbox.wait_for(lambda s: s.received_count >= 1, timeout=5)
    sender.join(5)


def test_no_record_mode_keeps_counts_only() -> None:
    app = MoesifCollectorSandbox(APP_ID, record_events=False)
    event = make_event()
    with app.server() as srv:
        requests.post(srv.url + "/v1/events/batch", data=orjson.dumps([event, event]),
                      headers={"X-Moesif-Application-Id": APP_ID}, timeout=5)
    assert app.events == []
    assert (app.received_count, app.unique_count) == (2, 1)


def test_cli_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.sandbox.moesif_collector", "--app-id", APP_ID,
         "--no-record", "--port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        collector_url = orjson.loads(proc.stdout.readline())["collector_url"]
        answer = requests.post(collector_url + "/v1/events/batch",
                               data=gzip.compress(orjson.dumps([make_event()])),
                               headers={"X-Moesif-Application-Id": APP_ID,
                                        "Content-Encoding": "gzip"}, timeout=10)
        assert answer.status_code == 201
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert orjson.loads(out.strip().splitlines()[-1])["stats"]["received_count"] == 1


def test_latency_holds_each_event_request_like_a_remote_round_trip() -> None:
    app = MoesifCollectorSandbox({APP_ID}, latency=0.25)
    with app.server() as srv:
        headers = {"X-Moesif-Application-Id": APP_ID}
        started = time.perf_counter()
        answer = requests.post(srv.url + "/v1/events/batch", json=[make_event()],
                               headers=headers, timeout=10)
        held = time.perf_counter() - started
    assert answer.status_code == 201
    assert held >= 0.25
    assert app.stats()["received_count"] == 1
