"""The Segment sink against the Segment sandbox over loopback."""

from __future__ import annotations

import json

import orjson
import pytest
from pydantic import SecretStr

from connector.sandbox.segment_tracking import SegmentSandbox
from connector.segment.sink import (
    _MOST_PER_BYTE,
    MAX_MESSAGE_BYTES,
    OutMessage,
    SegmentAuthError,
    SegmentSink,
    json_size,
    library_size_bound,
)
from tests.conftest import WRITE_KEY


@pytest.fixture
def segment():
    sandbox = SegmentSandbox({WRITE_KEY})
    with sandbox.server() as server:
        yield sandbox, server.url


def make_sink(url: str, key: str = WRITE_KEY, **kw) -> SegmentSink:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    return SegmentSink(SecretStr(key), url, **kw)


def out(sink: SegmentSink, i: int, payload: str = "x") -> OutMessage:
    msg = sink.shape("identify", {"userId": f"u{i}", "traits": {"p": payload}}, None, f"m-{i}")
    return OutMessage.of(msg, ("users", f"u{i}"))


def test_delivers_in_batches_within_limits(segment):
    sandbox, url = segment
    sink = make_sink(url, batch_messages=40)
    messages = [out(sink, i) for i in range(100)]
    result = sink.send(messages)
    assert result.delivered == {f"m-{i}" for i in range(100)}
    assert not result.failed
    assert result.batches == 3
    assert set(sandbox.by_message_id) == result.delivered


def test_batches_respect_byte_budget(segment):
    _, url = segment
    sink = make_sink(url, batch_bytes=50_000)
    messages = [out(sink, i, "é" * 2000) for i in range(30)]  # ~12 KB each as the library counts
    batches = list(sink.batches(messages))
    assert len(batches) > 1
    for batch in batches:
        assert sum(m.size + 1 for m in batch) + 200 <= 50_000


def test_size_is_measured_like_the_library(segment):
    _, url = segment
    sink = make_sink(url)
    msg = sink.shape("identify", {"userId": "u", "traits": {"n": "字" * 6000}}, None, "m")
    # 6,000 CJK characters are 18 KB of UTF-8 but 36 KB as the library counts them
    assert len(json.dumps(msg, ensure_ascii=False).encode()) < MAX_MESSAGE_BYTES
    out_msg = OutMessage.of(msg, ("users", "u"))
    assert out_msg.library_size == json_size(msg) > MAX_MESSAGE_BYTES
    assert out_msg.size < MAX_MESSAGE_BYTES  # the UTF-8 bytes alone would have passed


@pytest.mark.parametrize("text", ["plain", "naïve café", "字" * 40, "🚀🦄 emoji", "a,b:c" * 9,
                                  "del\x7fchar", "tab\tquote\"back\\slash"])
def test_size_bound_never_undercounts(text):
    msg = {"type": "identify", "traits": {"t": text, "n": [1, 2.5, None, True, 1e-7, 3e20],
                                          "o": {"k": text}}}
    encoded = orjson.dumps(msg)
    bound = library_size_bound(encoded)
    assert json_size(msg) <= bound <= json_size(msg) * 2
    # the shortcut for small messages is a bound of the bound: never an undercount
    assert bound <= len(encoded) * _MOST_PER_BYTE
    assert OutMessage.of(msg, ("users", "u")).library_size >= json_size(msg)


def test_size_shortcut_holds_for_the_worst_byte():
    """DEL is the byte the library widens most (to \\u007f): six times its size."""
    msg = {"t": "\x7f" * 5000}
    encoded = orjson.dumps(msg)
    assert json_size(msg) <= len(encoded) * _MOST_PER_BYTE
    assert json_size(msg) > len(encoded) * (_MOST_PER_BYTE - 1)


def test_retries_5xx_and_429_then_succeeds(segment):
    sandbox, url = segment
    sandbox.inject(503, count=2)
    sandbox.inject(429, count=1, retry_after="0")
    sink = make_sink(url)
    result = sink.send([out(sink, i) for i in range(5)])
    assert len(result.delivered) == 5 and result.retries == 3


def test_persistent_failure_is_reported_not_lost(segment):
    sandbox, url = segment
    sandbox.inject(500, count=100)
    sink = make_sink(url, max_retries=2)
    result = sink.send([out(sink, i) for i in range(3)])
    assert not result.delivered
    assert {code for code, _ in result.failed.values()} == {"DELIVERY_FAILED"}


def test_body_is_what_the_library_would_send(segment):
    sandbox, url = segment
    sink = make_sink(url)
    sink.send([out(sink, 1, "naïve ☃")])
    received = sandbox.messages[0]
    assert received["traits"] == {"p": "naïve ☃"}
    assert received["context"]["library"]["name"] == "analytics-python"
    assert received["type"] == "identify" and received["messageId"] == "m-1"


def test_wrong_write_key_is_an_auth_error_without_the_key(segment):
    _, url = segment
    wrong = "wrong-key-1234567890"
    sink = make_sink(url, key=wrong)
    with pytest.raises(SegmentAuthError) as err:
        sink.send([out(sink, 1)])
    assert wrong not in str(err.value) and "SEGMENT_WRITE_KEY" in str(err.value)


def test_a_400_isolates_the_bad_message(segment):
    sandbox, url = segment
    sink = make_sink(url)
    good = [out(sink, i) for i in range(7)]
    bad_msg = dict(good[3].message, messageId="x" * 150)  # over Segment's 100-char limit
    good[3] = OutMessage.of(bad_msg, ("users", "u3"))
    result = sink.send(good)
    assert set(result.failed) == {"x" * 150}
    assert result.failed["x" * 150][0] == "REJECTED"
    assert len(result.delivered) == 6


def test_gzipped_batches_are_read_by_the_sandbox_as_sent(segment):
    sandbox, url = segment
    sink = make_sink(url, gzip=True, batch_messages=25)
    messages = [out(sink, i, "ü" * 300) for i in range(60)]
    result = sink.send(messages)
    assert result.delivered == {f"m-{i}" for i in range(60)}
    assert not result.failed
    assert sandbox.by_message_id["m-7"]["traits"] == {"p": "ü" * 300}
