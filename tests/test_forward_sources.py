"""Forward sources: the log tailer (rotation, partial lines, offsets), JSON lines, and the
HTTP ingest endpoint (auth, limits, back-pressure, 202 only once spooled)."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from pydantic import SecretStr

from connector.forward.errors import MISSING_FIELD, MalformedEvent
from connector.forward.sources import (
    IngestApp,
    IngestServer,
    LogTailer,
    StdinLines,
    jsonl_object,
    parse_listen,
)
from connector.forward.spool import Spool
from connector.state.store import connect

TOKEN = "ingest-token-for-tests-7f3a"


@pytest.fixture()
def spool(tmp_path: Path) -> Spool:
    conn = connect(tmp_path / "state.sqlite3")
    yield Spool(conn, max_events=1000)
    conn.close()


def _lines(prefix: str, n: int, start: int = 0) -> str:
    return "".join(f"{prefix} line {i:05d} {'z' * (i % 37)}\n" for i in range(start, start + n))


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def _drain(tailer: LogTailer, spool: Spool) -> list[str]:
    """Read everything available now, spooling each chunk with its offset (as the
    pipeline does), and return the lines read."""
    out: list[str] = []
    while (chunk := tailer.read_chunk()) is not None:
        out.extend(line.decode() for line in chunk.lines)
        spool.append([], chunk.offset_update)
    return out


def _expected(prefix: str, n: int, start: int = 0) -> list[str]:
    return _lines(prefix, n, start).splitlines()


# --- the tailer ------------------------------------------------------------------------
def test_reads_complete_lines_and_waits_for_a_partial_one(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 3) + "partial without newl")
    tailer = LogTailer(log, "log:t", spool)
    assert _drain(tailer, spool) == _expected("a", 3)
    assert tailer.read_chunk() is None  # the partial line is not handed out
    saved = spool.get_offset("log:t")
    assert saved is not None and saved[1] == len(_lines("a", 3).encode())
    _append(log, "ine\n")
    assert _drain(tailer, spool) == ["partial without newline"]
    tailer.close()


def test_restart_resumes_at_saved_offset(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 50))
    first = LogTailer(log, "log:t", spool)
    assert _drain(first, spool) == _expected("a", 50)
    first.close()
    _append(log, _lines("a", 20, start=50))
    second = LogTailer(log, "log:t", spool)
    assert _drain(second, spool) == _expected("a", 20, start=50)
    second.close()


def test_unspooled_chunk_is_read_again_after_restart(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 10))
    first = LogTailer(log, "log:t", spool)
    assert first.read_chunk() is not None  # read, but "crashed" before spool.append
    first.close()
    second = LogTailer(log, "log:t", spool)
    assert _drain(second, spool) == _expected("a", 10)
    second.close()


def test_rotation_mid_stream_loses_and_repeats_nothing(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 100))
    tailer = LogTailer(log, "log:t", spool, chunk_bytes=1024)
    got = _drain(tailer, spool)
    # The appender writes more, then rotates (rename) and starts a new file.
    _append(log, _lines("a", 30, start=100) + "last line before rota")
    _append(log, "tion\n")
    log.rename(tmp_path / "apim_metrics-01-02-2025-1.log")
    _append(log, _lines("b", 40))
    got += _drain(tailer, spool)
    expected = _expected("a", 130) + ["last line before rotation"] + _expected("b", 40)
    assert got == expected
    # The saved offset now belongs to the new file.
    ident, offset = spool.get_offset("log:t")  # type: ignore[misc]
    assert ident.inode == os.stat(log).st_ino and offset == log.stat().st_size
    tailer.close()


def test_rotation_while_stopped_reads_the_renamed_file_first(tmp_path: Path,
                                                             spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 40))
    first = LogTailer(log, "log:t", spool)
    _drain(first, spool)
    first.close()
    # While the forwarder is down: more lines, two rotations, a new current file.
    _append(log, _lines("a", 10, start=40))
    log.rename(tmp_path / "apim_metrics-01-02-2025-1.log")
    _append(log, _lines("b", 25))
    log.rename(tmp_path / "apim_metrics-01-02-2025-2.log")
    _append(log, _lines("c", 5))
    second = LogTailer(log, "log:t", spool)
    got = _drain(second, spool)
    assert got == _expected("a", 10, start=40) + _expected("b", 25) + _expected("c", 5)
    second.close()


def test_truncated_file_is_read_from_the_start(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 60))
    tailer = LogTailer(log, "log:t", spool)
    _drain(tailer, spool)
    with open(log, "w", encoding="utf-8") as handle:  # copytruncate-style
        handle.write(_lines("n", 3))
    assert _drain(tailer, spool) == _expected("n", 3)
    tailer.close()


def test_replaced_file_with_same_size_is_recognised_by_fingerprint(tmp_path: Path,
                                                                   spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 60))
    first = LogTailer(log, "log:t", spool)
    _drain(first, spool)
    first.close()
    # Rewritten in place (same inode) with different content and a larger size.
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(_lines("r", 80))
    second = LogTailer(log, "log:t", spool)
    assert _drain(second, spool) == _expected("r", 80)
    second.close()


def test_line_longer_than_a_chunk(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    long_line = "L" * 5000
    _append(log, "short\n" + long_line + "\nafter\n")
    tailer = LogTailer(log, "log:t", spool, chunk_bytes=1024)
    assert _drain(tailer, spool) == ["short", long_line, "after"]
    tailer.close()


def test_waits_for_a_missing_file_then_reads_it(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    tailer = LogTailer(log, "log:t", spool)
    assert tailer.read_chunk() is None
    _append(log, _lines("a", 2))
    assert _drain(tailer, spool) == _expected("a", 2)
    tailer.close()


def test_chunks_once_stops_at_the_current_end(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    _append(log, _lines("a", 5000))
    tailer = LogTailer(log, "log:t", spool, chunk_bytes=4096)
    lines = [ln for chunk in tailer.chunks(threading.Event(), once=True) for ln in chunk.lines]
    assert len(lines) == 5000
    tailer.close()


def test_chunk_positions_are_byte_offsets(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "apim_metrics.log"
    text = _lines("a", 20)
    _append(log, text)
    tailer = LogTailer(log, "log:t", spool)
    chunk = tailer.read_chunk()
    assert chunk is not None
    data = text.encode()
    for position, line in chunk.positions():
        assert data[position: position + len(line)] == line
    tailer.close()


# --- JSON lines ------------------------------------------------------------------------
def test_jsonl_object_and_stdin_lines() -> None:
    assert jsonl_object(b'{"a": 1}') == {"a": 1}
    assert jsonl_object(b"   ") is None
    with pytest.raises(MalformedEvent) as bad:
        jsonl_object(b'{"a": ')
    assert bad.value.reason_code == "BAD_JSON"
    with pytest.raises(MalformedEvent) as not_object:
        jsonl_object(b"[1, 2]")
    assert not_object.value.reason_code == "NOT_AN_OBJECT"
    stream = io.BytesIO(b"".join(b'{"n": %d}\n' % i for i in range(5)) + b'{"n": 5}')
    chunks = list(StdinLines(stream, chunk_lines=2).chunks(threading.Event()))
    assert all(1 <= len(c.lines) <= 2 for c in chunks)
    assert [pos for c in chunks for pos, _ in c.positions()] == [1, 2, 3, 4, 5, 6]
    assert all(c.offset_update is None for c in chunks)


def test_parse_listen() -> None:
    assert parse_listen("9099") == ("127.0.0.1", 9099)
    assert parse_listen(":9099") == ("127.0.0.1", 9099)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:9099") == ("::1", 9099)
    with pytest.raises(ValueError):
        parse_listen("host:notaport")


# --- HTTP ingest -----------------------------------------------------------------------
def _simple_encoder(raw: dict[str, Any], kind: str | None) -> tuple[str, bytes]:
    """Stands in for validate+mask+map (tested with the real mapper in the pipeline)."""
    if "requestTimestamp" not in raw:
        raise MalformedEvent(MISSING_FIELD, "field 'requestTimestamp' is missing")
    txid = str(uuid.uuid5(uuid.NAMESPACE_URL, str(raw.get("correlationId"))))
    return txid, orjson.dumps({"transaction_id": txid, **raw})


class _Ingest:
    def __init__(self, spool: Spool, state: Path, max_body: int = 4096) -> None:
        self.spool = spool
        self.state = state
        self.seen_in_spool_at_202: list[int] = []
        self.app = IngestApp(spool, _simple_encoder, SecretStr(TOKEN), max_body)
        self.server = IngestServer(self.app).start()
        self.url = self.server.url + "/v1/events"
        self.session = requests.Session()

    def post(self, body: Any, token: str | None = TOKEN,
             headers: dict[str, str] | None = None) -> requests.Response:
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.session.post(self.url, data=data, headers=headers, timeout=10)

    def rows(self) -> int:
        other = sqlite3.connect(self.state)  # an independent reader: sees committed data only
        try:
            return other.execute("SELECT count(*) FROM spool").fetchone()[0]
        finally:
            other.close()

    def close(self) -> None:
        self.session.close()
        self.server.stop()


@pytest.fixture()
def ingest(tmp_path: Path, spool: Spool) -> _Ingest:
    server = _Ingest(spool, tmp_path / "state.sqlite3")
    yield server
    server.close()


def _ev(i: int) -> dict[str, Any]:
    return {"correlationId": f"c-{i}", "requestTimestamp": "2025-01-01T00:00:00Z"}


def test_ingest_requires_the_bearer_token(ingest: _Ingest) -> None:
    assert ingest.post(_ev(1), token=None).status_code == 401
    wrong = ingest.post(_ev(1), token="not-the-token")
    assert wrong.status_code == 401
    assert TOKEN not in wrong.text
    assert ingest.rows() == 0


def test_ingest_202_only_after_the_events_are_committed(ingest: _Ingest) -> None:
    response = ingest.post([_ev(1), _ev(2)])
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    # Checked from another connection right when the 202 arrived: already committed.
    assert ingest.rows() == 2
    single = ingest.post(_ev(3))
    assert single.status_code == 202 and ingest.rows() == 3
    counters = ingest.spool.counters()
    assert counters["spooled"] == 3 and counters["masked"] == 3


def test_ingest_400_for_invalid_json_or_event_names_the_index(ingest: _Ingest) -> None:
    bad_json = ingest.post(b'{"correlationId": ')
    assert bad_json.status_code == 400 and bad_json.json()["error"] == "invalid_json"
    bad_event = ingest.post([_ev(1), {"correlationId": "no time"}, _ev(3)])
    assert bad_event.status_code == 400
    assert bad_event.json()["index"] == 1 and bad_event.json()["reason"] == MISSING_FIELD
    not_object = ingest.post([_ev(1), 42])
    assert not_object.status_code == 400 and not_object.json()["index"] == 1
    # Each event stands alone: the valid ones are taken, the invalid ones dead-lettered.
    assert bad_event.json()["accepted"] == 2 and not_object.json()["accepted"] == 1
    assert [r["index"] for r in bad_event.json()["rejected"]] == [1]
    assert ingest.rows() == 3
    letters = ingest.spool.dead_letters()
    assert [(d["source"], d["position"], d["reason_code"]) for d in letters] == [
        ("http", "request event 1", MISSING_FIELD), ("http", "request event 1", "NOT_AN_OBJECT")]
    # The connection is still good for the next request.
    assert ingest.post(_ev(9)).status_code == 202


def test_ingest_413_over_the_body_limit(ingest: _Ingest) -> None:
    big = [_ev(i) for i in range(200)]
    assert len(orjson.dumps(big)) > 4096
    response = ingest.post(big)
    assert response.status_code == 413
    assert ingest.rows() == 0


def test_ingest_503_with_retry_after_when_spool_full(ingest: _Ingest) -> None:
    ingest.spool.max_events = 2
    assert ingest.post([_ev(1), _ev(2)]).status_code == 202
    full = ingest.post(_ev(3))
    assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1
    assert ingest.rows() == 2
    health = ingest.session.get(ingest.server.url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["spool_full"] is True


def test_ingest_accepts_gzip_bodies(ingest: _Ingest) -> None:
    import gzip

    body = gzip.compress(orjson.dumps([_ev(1), _ev(2)]))
    response = ingest.post(body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 202 and ingest.rows() == 2


def test_healthz_and_unknown_path(ingest: _Ingest) -> None:
    health = ingest.session.get(ingest.server.url + "/healthz", timeout=10)
    assert health.json()["status"] == "ok"
    assert ingest.session.get(ingest.server.url + "/nope", timeout=10).status_code == 404
