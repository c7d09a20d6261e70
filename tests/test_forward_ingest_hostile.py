"""HTTP ingest under hostile requests: framing (Content-Length, Transfer-Encoding),
media type and content coding, gzip streams (several members, truncated, trailing
bytes), bodies that end early or stop arriving, and event values JSON allows but
Unicode does not (an escaped lone surrogate). Each gets a clear answer, the server keeps
serving, and what was accepted is in the spool exactly once.

Requests go over raw sockets on loopback, so malformed framing reaches the server as sent.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.forward.encoder import EventEncoder
from connector.forward.masking import MaskConfig
from connector.forward.sources import IngestApp, IngestServer, gunzip
from connector.forward.spool import Spool
from connector.state.store import connect

TOKEN = "ingest-token-hostile-5e4d3c"
MAX_BODY = 64 * 1024


class Server:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.conn = connect(state)
        self.spool = Spool(self.conn, max_events=100_000)
        self.encoder = EventEncoder(False, MaskConfig.from_table({"userName": "EMAIL"}))
        self.app = IngestApp(self.spool, self.encoder, SecretStr(TOKEN), MAX_BODY,
                             keep=self.encoder.kept, read_timeout=0.5)
        self.server = IngestServer(self.app).start()

    def send(self, request: bytes, half_close: bool = False) -> tuple[int, dict[str, Any]]:
        with socket.create_connection(self.server.address, timeout=10) as sock:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head else 0
        return status, (orjson.loads(body) if body.startswith(b"{") else {})

    def post(self, body: bytes, headers: dict[str, str] | None = None,
             length: str | None = None) -> tuple[int, dict[str, Any]]:
        lines = [b"POST /v1/events HTTP/1.1", b"Host: test",
                 f"Authorization: Bearer {TOKEN}".encode(), b"Connection: close"]
        lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
        if length != "":
            lines.append(f"Content-Length: {len(body) if length is None else length}".encode())
        return self.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    def spooled_ids(self) -> list[str]:
        other = sqlite3.connect(self.state)
        try:
            return [r[0] for r in other.execute("SELECT transaction_id FROM spool")]
        finally:
            other.close()

    def close(self) -> None:
        self.server.stop()
        self.conn.close()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "state.sqlite3")
    yield s
    s.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("ingest") / "state.sqlite3")
    yield s
    s.close()


def _ev(i: int, **extra: Any) -> dict[str, Any]:
    return {"correlationId": f"hostile-{i}", "requestTimestamp": "2025-01-01T00:00:00Z",
            "apiName": "PizzaShackAPI", "proxyResponseCode": 200, **extra}


def _alive(s: Server) -> None:
    status, answer = s.post(orjson.dumps(_ev(10_000)))
    assert status == 202 and answer == {"accepted": 1}


# --- values JSON allows but Unicode does not -------------------------------------------
def test_a_lone_surrogate_in_one_event_does_not_refuse_the_others(server: Server) -> None:
    # Before: orjson refused the whole body ("invalid_json"), so the two valid events were
    # lost to a client that drops refused requests, while the same events in a log file
    # were taken (lone surrogates become U+FFFD there).
    body = ("[" + json.dumps(_ev(1)) + "," + json.dumps(_ev(2, userName="jo\ud800@x.org"))
            + "," + json.dumps(_ev(3)) + "]").encode()
    assert b"\\ud800" in body
    status, answer = server.post(body, {"Content-Type": "application/json"})
    assert status == 202 and answer == {"accepted": 3}
    assert len(server.spooled_ids()) == 3
    bodies = [orjson.loads(r[0]) for r in server.conn.execute("SELECT body FROM spool")]
    assert [b["metadata"].get("userName") for b in bodies] == [None, "*****@x.org", None]


def test_a_utf8_bom_before_the_body_is_taken(server: Server) -> None:
    status, answer = server.post(b"\xef\xbb\xbf" + orjson.dumps([_ev(1)]))
    assert status == 202 and answer == {"accepted": 1}


_counter = iter(range(1_000_000, 10_000_000))
# Any code point, lone surrogates included (json.dumps writes them as `\ud800` escapes).
_strings = st.lists(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)),
                    max_size=8).map("".join)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_strings, min_size=1, max_size=5))
def test_escaped_unicode_in_any_event_never_refuses_the_body(shared: Server,
                                                             values: list[str]) -> None:
    before = len(shared.spooled_ids())
    events = [_ev(next(_counter), apiResourceTemplate=value) for value in values]
    status, answer = shared.post(json.dumps(events).encode())
    assert status == 202, answer
    assert answer == {"accepted": len(values)}
    assert len(shared.spooled_ids()) == before + len(values)
# --- framing ---------------------------------------------------------------------------
@pytest.mark.parametrize("length", ["1_0", "+10", "\u0661\u0660", "10, 10", " ", "0x0a"])
def test_a_content_length_that_is_not_plain_digits_is_400(server: Server, length: str) -> None:
    # int() takes "1_0" and "+10" (and Arabic-Indic digits): the body was read by them.
    status, answer = server.post(b"[{},{},{}]", length=length)
    assert status == 400 and answer["error"] == "invalid_request"
    assert server.spooled_ids() == [] and server.spool.dead_letters() == []
    _alive(server)


def test_two_different_content_lengths_are_400(server: Server) -> None:
    body = orjson.dumps([_ev(1)])
    request = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + TOKEN.encode()
               + b"\r\nContent-Length: 2\r\nContent-Length: " + str(len(body)).encode()
               + b"\r\nConnection: close\r\n\r\n" + body)
    status, answer = server.send(request)
    assert status == 400 and answer["error"] == "invalid_request"
    assert server.spooled_ids() == []


@pytest.mark.parametrize("coding", ["chunked", "gzip, chunked", "Chunked ", "identity"])
def test_any_transfer_encoding_is_411_even_with_a_content_length(server: Server,
                                                                  coding: str) -> None:
    status, answer = server.post(b"[]", {"Transfer-Encoding": coding})
    assert status == 411 and answer["error"] == "length_required"
    _alive(server)


# --- bodies that end early or stop -----------------------------------------------------
def test_a_body_that_ends_early_gets_400_not_silence(server: Server) -> None:
    request = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + TOKEN.encode()
               + b"\r\nContent-Length: 500\r\n\r\n[{\"a\":1}")
    status, answer = server.send(request, half_close=True)
    assert status == 400 and answer["error"] == "incomplete_body"
    assert server.spooled_ids() == []
    _alive(server)


def test_a_body_that_stops_arriving_gets_408(server: Server) -> None:
    request = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + TOKEN.encode()
               + b"\r\nContent-Length: 500\r\n\r\n[{\"a\":1}")
    # The client keeps its side open and sends nothing more: the server's read timeout
    # (0.5 s here) ends the wait with an answer.
    status, answer = server.send(request)
    assert status == 408 and answer["error"] == "request_timeout"
    _alive(server)


def test_a_body_trickled_slower_than_the_minimum_rate_gets_408(tmp_path: Path) -> None:
    # Each byte arrives well within the read timeout, so the per-read timeout alone never
    # fires: before, a client could hold a connection slot for as long as it liked
    # (64 such clients and every other client got 503).
    s = Server(tmp_path / "state.sqlite3")
    s.app.min_body_rate = 200.0  # 100 bytes: 0.5 s grace + 0.5 s
    try:
        stop = threading.Event()
        with socket.create_connection(s.server.address, timeout=10) as sock:
            sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                         + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n")
            started = time.monotonic()
            sent = 0
            while sent < 100 and time.monotonic() - started < 5:
                try:
                    sock.sendall(b" ")
                except OSError:  # the server closed the connection
                    break
                sent += 1
                stop.wait(0.1)  # the slow client's pace (10 bytes/s), not a synchronisation
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3 and sent < 100
        _alive(s)
    finally:
        s.close()


def test_headers_trickled_byte_by_byte_do_not_hold_the_connection(server: Server) -> None:
    # The stdlib reads the request line and headers with the per-read timeout only: a
    # client sending one header byte per 0.1 s (read timeout 0.5 s) was never cut off.
    pace = threading.Event()
    with socket.create_connection(server.server.address, timeout=10) as sock:
        started = time.monotonic()
        closed = False
        for byte in b"POST /v1/events HTTP/1.1\r\nHost: t\r\n" + b"X-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if time.monotonic() - started > 5:
                break
            pace.wait(0.02)  # the slow client's pace, not a synchronisation
        if not closed:
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
        # Cut off at the request deadline (two read timeouts: 1 s), not after 5 s.
        assert time.monotonic() - started < 3
    _alive(server)


def test_a_large_body_at_a_normal_rate_is_taken(server: Server) -> None:
    events = [_ev(i, apiResourceTemplate="/" + "x" * 100) for i in range(150)]
    status, answer = server.post(orjson.dumps(events))
    assert status == 202 and answer == {"accepted": 150}


# --- media type and content coding -----------------------------------------------------
@pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/xml"])
def test_a_body_that_is_not_json_by_its_content_type_is_415(server: Server, media: str) -> None:
    status, answer = server.post(orjson.dumps(_ev(1)), {"Content-Type": media})
    assert status == 415 and answer["error"] == "unsupported_media_type"
    assert server.spooled_ids() == []


@pytest.mark.parametrize("media", ["application/json", "Application/JSON; charset=utf-8",
                                   "application/vnd.wso2+json"])
def test_json_media_types_are_taken(server: Server, media: str) -> None:
    status, _ = server.post(orjson.dumps(_ev(1)), {"Content-Type": media})
    assert status == 202


@pytest.mark.parametrize("coding", ["br", "deflate", "gzip, gzip", "compress"])
def test_an_unsupported_content_encoding_is_415_not_read_as_json(server: Server,
                                                                 coding: str) -> None:
    # Before: a body sent as "br" was parsed as plain JSON (and taken when it happened to
    # be plain); a really compressed one was called invalid JSON.
    status, answer = server.post(orjson.dumps(_ev(1)), {"Content-Encoding": coding})
    assert status == 415 and answer["error"] == "unsupported_encoding"
    assert server.spooled_ids() == []


def test_x_gzip_is_gzip(server: Server) -> None:
    status, answer = server.post(gzip.compress(orjson.dumps([_ev(1), _ev(2)])),
                                 {"Content-Encoding": "x-gzip"})
    assert status == 202 and answer == {"accepted": 2}


# --- gzip streams ----------------------------------------------------------------------
def test_every_gzip_member_is_read(server: Server) -> None:
    body = orjson.dumps([_ev(1), _ev(2), _ev(3)])
    members = gzip.compress(body[:25]) + gzip.compress(body[25:60]) + gzip.compress(body[60:])
    status, answer = server.post(members, {"Content-Encoding": "gzip"})
    assert status == 202 and answer == {"accepted": 3}


@pytest.mark.parametrize("damage", ["truncated", "half", "trailing garbage", "empty"])
def test_a_damaged_gzip_stream_is_invalid_gzip(server: Server, damage: str) -> None:
    whole = gzip.compress(orjson.dumps([_ev(1), _ev(2)]))
    body = {"truncated": whole[:-4], "half": whole[: len(whole) // 2],
            "trailing garbage": whole + b"garbage", "empty": b""}[damage]
    status, answer = server.post(body, {"Content-Encoding": "gzip"})
    assert status == 400 and answer["error"] == "invalid_gzip"
    assert server.spooled_ids() == []


def test_a_gzip_bomb_is_413_without_inflating_it(server: Server) -> None:
    bomb = gzip.compress(b" " * (50 * 1024 * 1024))
    assert len(bomb) < MAX_BODY
    status, answer = server.post(bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and answer["error"] == "body_too_large"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), cuts=st.lists(st.integers(0, 400), max_size=4),
       drop=st.integers(0, 30), pad=st.integers(0, 3))
def test_gunzip_reads_all_members_or_refuses(n: int, cuts: list[int], drop: int,
                                             pad: int) -> None:
    body = orjson.dumps([_ev(i) for i in range(n)])
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    members = [gzip.compress(body[a:b]) for a, b in zip(points, points[1:], strict=False)]
    stream = b"".join(members)
    damaged = stream[: len(stream) - drop] + b"\x00" * pad
    out = gunzip(damaged, MAX_BODY)
    # How much of the stream is still there (a dropped zero byte may be padded back); the
    # rest of `damaged` is zero padding.
    intact = next(m for m in range(min(len(stream), len(damaged)), -1, -1)
                  if damaged[:m] == stream[:m])
    ends = list(itertools.accumulate(len(m) for m in members))
    if intact in ends:  # whole members only: exactly their content, padding ignored
        assert out == body[:points[ends.index(intact) + 1]]
    else:  # a member cut short (or nothing left): refused, never a partial member
        assert out is None


def test_a_client_that_resets_the_connection_prints_no_traceback(
        server: Server, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    # socketserver's default handle_error printed a traceback to stderr for every client
    # that reset the connection while it was answered (seen under fuzzing).
    httpd = server.server.httpd
    for error in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe"),
                  TimeoutError("timed out")):
        try:
            raise error
        except OSError:
            httpd.handle_error(None, ("127.0.0.1", 1))
    assert "Traceback" not in capfd.readouterr().err
    assert caplog.records == []
    try:
        raise KeyError("a bug")
    except KeyError:
        httpd.handle_error(None, ("127.0.0.1", 1))
    assert "Traceback" not in capfd.readouterr().err  # logged, not printed
    assert [r.getMessage() for r in caplog.records] == [
        "ingest: a request failed unexpectedly (KeyError)"]
    _alive(server)
