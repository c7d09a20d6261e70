"""The Segment Tracking API sandbox, over loopback HTTP."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from segment.analytics import Client

from connector.sandbox.httpbase import SandboxServer
from connector.sandbox.segment_tracking import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    SegmentSandbox,
    library_size,
    oversize,
)

KEY = "test-write-key"
OTHER_KEY = "second-write-key"


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[SegmentSandbox, SandboxServer]]:
    app = SegmentSandbox({KEY, OTHER_KEY})
    with app.server() as srv:
        yield app, srv


@pytest.fixture
def app(running: tuple[SegmentSandbox, SandboxServer]) -> SegmentSandbox:
    running[0].reset()
    return running[0]


@pytest.fixture
def url(running: tuple[SegmentSandbox, SandboxServer], app: SegmentSandbox) -> str:
    return running[1].url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def identify(n: int | str, **extra: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": f"usr_{n}", "messageId": f"m-{n}",
            "timestamp": "2024-01-01T00:00:00.123+00:00", "traits": {"plan": "pro"}, **extra}


def post(http: requests.Session, url: str, batch: Any, key: str | None = KEY,
         **kw: Any) -> requests.Response:
    kw.setdefault("timeout", 10)
    auth = (key, "") if key else None
    return http.post(f"{url}/v1/batch", json={"batch": batch}, auth=auth, **kw)


def post_raw(http: requests.Session, url: str, data: bytes,
             headers: dict[str, str] | None = None) -> requests.Response:
    return http.post(f"{url}/v1/batch", data=data, auth=(KEY, ""), timeout=10,
                     headers={"Content-Type": "application/json", **(headers or {})})


def sized_message(total: int, filler: str = "x") -> dict[str, Any]:
    """An identify whose library size is exactly `total` bytes."""
    msg = identify("sized", traits={"pad": ""})
    base = library_size(msg)
    cost = library_size({"p": filler}) - library_size({"p": ""})
    count, rest = divmod(total - base, cost)
    msg["traits"]["pad"] = filler * count + "y" * rest
    assert library_size(msg) == total
    return msg


def test_unknown_or_missing_write_key_is_401(http: requests.Session, app: SegmentSandbox,
                                             url: str) -> None:
    for key in (None, "wrong-key"):
        res = post(http, url, [identify(1)], key=key)
        assert res.status_code == 401 and res.json()["code"] == "invalid_write_key"
    # The library also puts writeKey in the body: that alone is accepted, as is either key.
    res = http.post(f"{url}/v1/batch", json={"batch": [identify(2)], "writeKey": OTHER_KEY},
                    timeout=10)
    assert res.status_code == 200
    assert post(http, url, [identify(3)], key=OTHER_KEY).json() == {"success": True}
    assert app.unauthorized == 2 and app.received_count == 2


def test_batches_are_recorded_and_duplicates_counted(http: requests.Session,
                                                     app: SegmentSandbox, url: str) -> None:
    group = {"type": "group", "userId": "usr_1", "groupId": "cmp_1", "messageId": "g-1",
             "traits": {"name": "Acme"}}
    assert post(http, url, [identify(1), identify(2), group]).status_code == 200
    assert post(http, url, [identify(1, traits={"plan": "gold"})]).status_code == 200
    assert app.batches == 2 and app.received_count == 4
    assert app.duplicates == 1 and app.unique_message_ids == 3
    assert app.by_message_id["m-1"]["traits"] == {"plan": "gold"}
    assert [m["messageId"] for m in app.messages] == ["m-1", "m-2", "g-1", "m-1"]
    stats = http.get(f"{url}/_sandbox/stats", timeout=10).json()
    assert stats["unique_message_ids"] == 3 and stats["by_type"] == {"identify": 3, "group": 1}
    assert http.post(f"{url}/_sandbox/reset", timeout=10).status_code == 200
    assert app.received_count == 0 and app.messages == []


def test_single_message_endpoints(http: requests.Session, app: SegmentSandbox,
                                  url: str) -> None:
    res = http.post(f"{url}/v1/identify", json={"userId": "u1", "traits": {}}, auth=(KEY, ""),
                    timeout=10)
    assert res.status_code == 200
    res = http.post(f"{url}/v1/group", json={"userId": "u1", "groupId": "c1"}, auth=(KEY, ""),
                    timeout=10)
    assert res.status_code == 200
    res = http.post(f"{url}/v1/group", json={"userId": "u1"}, auth=(KEY, ""), timeout=10)
    assert res.status_code == 400
    assert [m["type"] for m in app.messages] == ["identify", "group"]


def test_message_limit_counts_escaped_non_ascii_like_the_library(
        http: requests.Session, app: SegmentSandbox, url: str) -> None:
    # About 11 KB as UTF-8, but each 'é' costs 6 bytes once ASCII-escaped: over 32 KB.
    accents = identify("accents", traits={"bio": "é" * 5500})
    assert len(orjson.dumps(accents)) < 12_000 < MAX_MESSAGE_BYTES < library_size(accents)
    res = post(http, url, [identify(1), accents])
    assert res.status_code == 400 and res.json()["code"] == "message_too_large"
    assert app.received_count == 0 and app.rejected == 1  # the whole batch is refused
    at_limit = sized_message(MAX_MESSAGE_BYTES, filler="é")
    assert oversize(at_limit) is None
    assert post(http, url, [at_limit]).status_code == 200
    over = sized_message(MAX_MESSAGE_BYTES + 1)
    assert oversize(over) == MAX_MESSAGE_BYTES + 1
    assert post(http, url, [over]).status_code == 400


def test_message_limit_counts_escaped_del_like_the_library() -> None:
    # DEL is one byte to orjson but a 6-byte escape to the library: 6,000 of them are over
    # 32 KB although the orjson size times three is not (the fast path must not pass it).
    dels = identify("del", traits={"bio": "\x7f" * 6000})
    assert len(orjson.dumps(dels)) * 3 < MAX_MESSAGE_BYTES < library_size(dels)
    assert oversize(dels) == library_size(dels)
    assert oversize(sized_message(MAX_MESSAGE_BYTES, filler="\x7f")) is None
    assert oversize(sized_message(MAX_MESSAGE_BYTES + 1, filler="\x7f")) == \
        MAX_MESSAGE_BYTES + 1


def test_request_body_limit_before_and_after_gunzip(http: requests.Session,
                                                    app: SegmentSandbox, url: str) -> None:
    def body_of_size(total: int) -> bytes:
        batch = [sized_message(30_000) for _ in range(17)]
        data = orjson.dumps({"batch": batch})
        batch[-1]["traits"]["pad"] += "z" * (total - len(data))
        data = orjson.dumps({"batch": batch})
        assert len(data) == total
        return data

    assert post_raw(http, url, body_of_size(MAX_BATCH_BYTES)).status_code == 200
    res = post_raw(http, url, body_of_size(MAX_BATCH_BYTES + 1))
    assert res.status_code == 400 and res.json()["code"] == "payload_too_large"
    zipped = gzip.compress(body_of_size(MAX_BATCH_BYTES + 1))
    assert len(zipped) < 50_000
    res = post_raw(http, url, zipped, {"Content-Encoding": "gzip"})
    assert res.status_code == 400 and res.json()["code"] == "payload_too_large"
    small = gzip.compress(orjson.dumps({"batch": [identify("gz")]}))
    assert post_raw(http, url, small, {"Content-Encoding": "gzip"}).status_code == 200
    assert app.received_count == 18 and app.rejections["payload_too_large"] == 2


def test_more_than_2500_messages_are_silently_cut(http: requests.Session,
                                                  app: SegmentSandbox, url: str) -> None:
    batch = [{"type": "identify", "userId": f"u{n}", "messageId": f"m{n}"} for n in range(2600)]
    res = post(http, url, batch)
    assert res.status_code == 200
    assert app.received_count == 2500 and app.dropped_over_limit == 100
    assert app.messages[-1]["messageId"] == "m2499" and "m2500" not in app.by_message_id


@pytest.mark.parametrize(("message", "reason"), [
    ({"userId": "u"}, "type"),
    ({"type": "purchase", "userId": "u"}, "type"),
    ({"type": "identify"}, "userId or anonymousId"),
    ({"type": "identify", "userId": ""}, "userId or anonymousId"),
    ({"type": "group", "userId": "u"}, "groupId"),
    ({"type": "identify", "userId": "u", "messageId": "m" * 101}, "messageId"),
    ({"type": "identify", "userId": "u", "timestamp": "yesterday"}, "timestamp"),
    ({"type": "identify", "anonymousId": "a", "traits": ["x"]}, "traits"),
])
def test_invalid_messages_are_400_with_a_reason(http: requests.Session, app: SegmentSandbox,
                                                url: str, message: dict[str, Any],
                                                reason: str) -> None:
    res = post(http, url, [identify(1), message])
    assert res.status_code == 400
    assert reason in res.json()["message"] and "batch[1]" in res.json()["message"]
    assert app.received_count == 0 and app.rejected == 1


def test_malformed_bodies_are_400(http: requests.Session, app: SegmentSandbox,
                                  url: str) -> None:
    assert post(http, url, {"not": "a list"}).json()["code"] == "invalid_request"
    assert post_raw(http, url, b"{nope").status_code == 400
    ok = identify(1, messageId="x" * 100, timestamp="2023-07-27T21:52:58.0990000Z")
    assert post(http, url, [ok]).status_code == 200


def test_injected_faults(http: requests.Session, app: SegmentSandbox, url: str) -> None:
    app.inject(429, retry_after="2")
    res = post(http, url, [identify(1)])
    assert res.status_code == 429
    assert res.headers["Retry-After"] == "2" and int(res.headers["X-RateLimit-Reset"]) > 0
    app.inject(500, count=0)  # a no-op
    app.inject(500, count=2)
    assert [post(http, url, [identify(1)]).status_code for _ in range(3)] == [500, 500, 200]
    assert app.received_count == 1 and app.faults_served == 3  # faulted batches not recorded
    res = http.post(f"{url}/_sandbox/fault", json={"status": 503}, timeout=10)
    assert res.status_code == 200 and post(http, url, [identify(1)]).status_code == 503


def test_fault_after_some_requests_html_pages_and_refused_users(
        http: requests.Session, app: SegmentSandbox, url: str) -> None:
    app.inject(503, count=1, after=2)
    assert [post(http, url, [identify(i)]).status_code for i in range(4)] == [200, 200, 503, 200]
    res = http.post(f"{url}/_sandbox/fault", json={"status": 404, "html": True}, timeout=10)
    assert res.status_code == 200
    page = post(http, url, [identify(9)])
    assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
    assert page.text.startswith("<html>")
    app.refuse_users({"usr_7"})
    refused = post(http, url, [identify(6), identify(7)])
    assert refused.status_code == 400 and "batch[1]" in refused.json()["message"]
    assert post(http, url, [identify(6)]).status_code == 200
    assert app.stats()["requests"] == 7  # admin requests not counted


def test_delay_makes_a_client_time_out_after_the_batch_arrived(
        http: requests.Session, app: SegmentSandbox, url: str) -> None:
    app.inject_delay(5.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(http, url, [identify(1)], timeout=0.3)
    assert post(http, url, [identify(1)]).status_code == 200  # the client's retry
    assert app.received_count == 2 and app.duplicates == 1


def test_the_real_library_delivers_to_the_sandbox(app: SegmentSandbox, url: str) -> None:
    errors: list[Any] = []
    client = Client(KEY, host=url, gzip=True, on_error=lambda exc, batch: errors.append(exc),
                    upload_interval=0.05, max_retries=0)
    try:
        client.identify("usr_1", {"name": "Zoë 王"}, message_id="lib-1")
        client.group("usr_1", "cmp_1", {"name": "Acme"}, message_id="lib-2")
        client.flush()
    finally:
        client.join()
    assert not errors
    assert app.wait_for(2, timeout=10)
    assert app.by_message_id["lib-1"]["traits"] == {"name": "Zoë 王"}
    assert app.by_message_id["lib-2"]["groupId"] == "cmp_1"


def test_a_full_size_batch_with_recording_off() -> None:
    app = SegmentSandbox(KEY, record_messages=False)
    with app.server() as srv, requests.Session() as http:
        msg = {"type": "identify", "userId": "u", "traits": {"pad": "p" * 120}}
        batch = [dict(msg, messageId=f"m{n}") for n in range(2500)]
        data = json.dumps({"batch": batch}).encode()
        assert 400_000 < len(data) <= MAX_BATCH_BYTES
        assert post_raw(http, srv.url, data).status_code == 200
        assert post_raw(http, srv.url, data).status_code == 200
    assert app.received_count == 5000 and app.duplicates == 2500
    assert app.messages == [] and app.unique_message_ids == 2500
