"""Bounded inputs (issue 7, items 13-15): line length, HTTP ingest (read timeout,
connection cap, Bearer in any case, an atomic spool limit), and `--from-jsonl -` streaming
from a live pipe with a clean SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from pydantic import SecretStr

from connector.forward.pipeline import forward_status, run_forward
from connector.forward.sources import IngestApp, IngestServer, LogTailer, StdinLines
from connector.forward.spool import Spool
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings
from connector.state.store import connect
from tests.helpers import wait_for

APP_ID = "moesif-app-id-bounds-5e4d3c"
TOKEN = "ingest-token-bounds-2b1a0f"


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[MoesifCollectorSandbox, str]]:
    app = MoesifCollectorSandbox({APP_ID})
    with app.server() as server:
        yield app, server.url


@pytest.fixture()
def spool(tmp_path: Path) -> Iterator[Spool]:
    conn = connect(tmp_path / "state.sqlite3")
    yield Spool(conn, max_events=1000)
    conn.close()


def _event(i: int = 0) -> dict[str, Any]:
    return {"correlationId": str(uuid.uuid4()), "apiName": f"api-{i}", "apiContext": "/a",
            "apiMethod": "GET", "proxyResponseCode": 200,
            "requestTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}


def _txid(event: dict[str, Any]) -> str:
    from connector.forward.moesif_event import uuid5

    return uuid5(f"response:{event['correlationId']}")


def _drain(tailer: LogTailer, spool: Spool) -> list[Any]:
    out: list[Any] = []
    while (chunk := tailer.read_chunk()) is not None:
        out.extend([("skipped", chunk.first_position, chunk.skipped)] if chunk.skipped
                   else [line.decode() for line in chunk.lines])
        spool.append([], chunk.offset_update)
    return out


# --- item 13: line length ----------------------------------------------------------------------
def test_a_line_over_the_limit_is_skipped_with_its_position(tmp_path: Path,
                                                            spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    log.write_bytes(b"short\n" + b"L" * 20_000 + b"\nafter\n" + b"M" * 3000 + b"\n")
    tailer = LogTailer(log, "log:t", spool, chunk_bytes=1024, max_line_bytes=4096)
    assert _drain(tailer, spool) == ["short", ("skipped", 6, 20_000), "after", "M" * 3000]
    assert spool.get_offset("log:t")[1] == log.stat().st_size
    tailer.close()


def test_a_growing_partial_line_is_not_read_again_from_its_start(
        tmp_path: Path, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "apim_metrics.log"
    log.write_bytes(b"first\n")
    tailer = LogTailer(log, "log:t", spool, chunk_bytes=4096, max_line_bytes=64 * 1024)
    assert _drain(tailer, spool) == ["first"]
    read = [0]
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read[0] += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    written = 0
    for _ in range(100):  # 100 polls while a 200 KB line without a newline grows
        with open(log, "ab") as handle:
            handle.write(b"x" * 2000)
        written += 2000
        assert tailer.read_chunk() is None
    # Each byte is looked at about once, not once per poll (that would be ~10 MB).
    assert read[0] < 2 * written
    with open(log, "ab") as handle:
        handle.write(b"\nnext\n")
    monkeypatch.undo()
    assert _drain(tailer, spool) == [("skipped", 6, written), "next"]
    tailer.close()


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "parse-workers"])
def test_a_long_line_in_the_log_is_dead_lettered_and_the_rest_delivered(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str], workers: int) -> None:
    app, url = collector
    events = [_event(i) for i in range(4)]
    line = [orjson.dumps(e) + b"\n" for e in events]
    # and a poison event right after it: its response time leaves the datetime range
    poison = orjson.dumps({"apiName": "x", "requestTimestamp": "9999-12-31T23:59:59Z",
                           "responseLatency": 5000, "proxyResponseCode": 200}) + b"\n"
    huge = b'{"apiName": "' + b"h" * (3 * 1024 * 1024) + b'"}\n'  # 3 MB, default limit 1 MiB
    path = tmp_path / "events.jsonl"
    path.write_bytes(line[0] + line[1] + huge + poison + line[2] + line[3])
    settings = Settings(_env_file=None, moesif_application_id=APP_ID, moesif_collector_url=url,
                        connector_home=tmp_path / "home")
    assert settings.forward_max_line_bytes == 1_048_576
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=workers,
                       out=io.StringIO()) == 0
    assert {_txid(e) for e in events} <= set(app.by_transaction_id)
    status = forward_status(settings)
    assert status["dead_letters"]["by_reason"] == {"LINE_TOO_LONG": 1, "BAD_VALUE": 1}
    conn = sqlite3.connect(settings.state_path)
    position, detail, raw = conn.execute(
        "SELECT position, detail, raw FROM dead_letters ORDER BY id").fetchone()
    conn.close()
    assert position.startswith(f"byte {len(line[0] + line[1])} (inode ") and raw is None
    assert str(len(huge) - 1) in detail and "FORWARD_MAX_LINE_BYTES" in detail


def test_an_over_long_unterminated_line_of_a_rotated_file_is_skipped(
        tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    log.write_bytes(b"one\n" + b"Z" * 10_000)  # rotated away mid-line: it never ends
    tailer = LogTailer(log, "log:t", spool, chunk_bytes=1024, max_line_bytes=4096)
    assert _drain(tailer, spool) == ["one"]
    log.rename(tmp_path / "apim_metrics-01-02-2025-1.log")
    log.write_bytes(b"two\n")
    assert _drain(tailer, spool) == [("skipped", 4, 10_000), "two"]
    tailer.close()


def test_standard_input_skips_a_long_line_without_holding_it() -> None:
    data = b'{"a": 1}\n' + b"y" * 50_000 + b'\n{"b": 2}\n'
    source = StdinLines(io.BytesIO(data), max_line_bytes=4096)
    chunks = list(source.chunks(threading.Event()))
    flat = [(c.first_position, c.skipped or [bytes(x) for x in c.lines]) for c in chunks]
    assert flat == [(1, [b'{"a": 1}']), (2, 50_000), (3, [b'{"b": 2}'])]


# --- item 14: HTTP ingest is bounded ------------------------------------------------------------
def _encode(raw: dict[str, Any], kind: str | None) -> tuple[str, bytes]:
    txid = str(uuid.uuid5(uuid.NAMESPACE_URL, str(raw.get("correlationId"))))
    return txid, orjson.dumps({"transaction_id": txid})


class _Ingest:
    def __init__(self, spool: Spool, **options: Any) -> None:
        self.spool = spool
        self.app = IngestApp(spool, _encode, SecretStr(TOKEN), **options)
        self.server = IngestServer(self.app).start()
        self.url = self.server.url + "/v1/events"

    def post(self, body: Any, auth: str = f"Bearer {TOKEN}") -> requests.Response:
        return requests.post(self.url, data=orjson.dumps(body), timeout=10,
                             headers={"Authorization": auth})


@pytest.fixture()
def ingest(spool: Spool) -> Iterator[_Ingest]:
    server = _Ingest(spool, read_timeout=0.5, max_connections=4)
    yield server
    server.server.stop()


def test_bearer_scheme_is_case_insensitive(ingest: _Ingest) -> None:
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert ingest.post(_event(), auth=f"{scheme} {TOKEN}").status_code == 202, scheme
    for auth in (f"Basic {TOKEN}", f"Bearer{TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer "):
        assert ingest.post(_event(), auth=auth).status_code == 401, auth


def test_a_stalled_client_is_disconnected_after_the_read_timeout(ingest: _Ingest) -> None:
    host, port = ingest.server.address
    for partial, expected in (
            (b"POST /v1/events HTTP/1.1\r\nHost: x\r\n", b""),  # headers never end
            ((f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
              "\r\nContent-Length: 100\r\n\r\n{\"a\":").encode(),  # body never ends:
             b"HTTP/1.1 408 ")):                                   # told so, then closed
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(partial)
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes (10 s: it failed)
                answer += chunk
            assert answer.startswith(expected) and (expected or answer == b"")
            assert time.monotonic() - started < 5  # closed after the 0.5 s read timeout
    assert ingest.post(_event()).status_code == 202


def test_connections_over_the_cap_get_503(ingest: _Ingest) -> None:
    host, port = ingest.server.address
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(4)]
    try:
        slots = ingest.server.httpd.slots
        wait_for(lambda: slots._value == 0)  # all four held by the server's threads
        with socket.create_connection((host, port), timeout=10) as extra:
            extra.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          f"{TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
        assert b"Retry-After: 1" in answer
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: ingest.server.httpd.slots._value == 4)
    assert ingest.post(_event()).status_code == 202


def test_a_request_that_could_never_fit_the_spool_is_413(ingest: _Ingest) -> None:
    ingest.spool.max_events = 100
    answer = ingest.post([_event(i) for i in range(101)])
    assert answer.status_code == 413 and answer.json()["limit_events"] == 100
    assert ingest.spool.depth() == 0


def test_concurrent_clients_never_push_the_spool_past_its_limit(ingest: _Ingest) -> None:
    ingest.spool.max_events = 100
    ingest.app.max_connections = 64
    ingest.server.httpd.slots = threading.BoundedSemaphore(64)
    barrier = threading.Barrier(50)
    statuses: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client() -> None:
        body = [_event(i) for i in range(10)]
        barrier.wait()
        answer = ingest.post(body)
        with lock:
            accepted = answer.json().get("accepted", 0) if answer.status_code == 202 else 0
            statuses.append((answer.status_code, accepted))

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(statuses) == 50
    assert {code for code, _ in statuses} <= {202, 503}
    accepted = sum(n for _, n in statuses)
    assert accepted == ingest.spool.depth() == 100  # full, and not one event past it
    assert sum(1 for code, _ in statuses if code == 503) == 40


# --- item 15: --from-jsonl - streams -----------------------------------------------------------
_CHILD = """
import sys
from connector.forward.pipeline import run_forward
from connector.settings import Settings
if __name__ == "__main__":
    sys.exit(run_forward(Settings(), from_jsonl="-", parse_workers=0,
                         client_options={"backoff_initial": 0.02, "backoff_max": 0.1}))
"""


def _spooled(home: Path) -> int:
    try:
        conn = sqlite3.connect(home / "state.sqlite3")
        try:
            return conn.execute("SELECT count(*) FROM spool").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return -1


def test_a_live_pipe_is_spooled_within_the_batch_age_and_sigterm_keeps_it(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = collector
    home = tmp_path / "home"
    env = dict(os.environ, MOESIF_APPLICATION_ID=APP_ID, MOESIF_COLLECTOR_URL=url,
               CONNECTOR_HOME=str(home), FORWARD_BATCH_AGE_SECONDS="0.2",
               PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             cwd=str(tmp_path))
    assert child.stdin is not None
    try:
        first = [_event(i) for i in range(30)]
        child.stdin.write(b"".join(orjson.dumps(e) + b"\n" for e in first))
        child.stdin.flush()
        # Delivered while the pipe stays open: not held until 2,000 lines or EOF.
        assert app.wait_for(lambda sb: {_txid(e) for e in first} <= set(sb.by_transaction_id),
                            timeout=20)
        app.outage(True)
        second = [_event(i) for i in range(20)]
        child.stdin.write(b"".join(orjson.dumps(e) + b"\n" for e in second))
        child.stdin.flush()
        wait_for(lambda: _spooled(home) == 20)  # spooled even though Moesif is down
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=20)
    finally:
        app.outage(False)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err.decode()
    assert b"Fatal Python error" not in err
    assert b"backlog=20" in err
    # What was read is kept: the next run delivers it.
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    settings = Settings(_env_file=None, moesif_application_id=APP_ID,
                        moesif_collector_url=url, connector_home=home)
    assert run_forward(settings, from_jsonl=str(empty), once=True, parse_workers=0,
                       out=io.StringIO()) == 0
    assert {_txid(e) for e in second} <= set(app.by_transaction_id)
