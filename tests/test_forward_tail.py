"""A file whose last line has no newline: in a `--once` run its event is taken when the
line holds a whole record (a JSON-lines export, a log cut off after its last line), and
left for a later run when it does not (a writer still writing it). Either way every event
is delivered exactly once across runs, whatever the point the writer had reached.

Before: `--once` stopped at the last newline, so a JSON-lines file without a trailing
newline never delivered its last event, and the run still exited 0 without a word.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.forward.parse import process_lines, record_is_complete
from connector.forward.pipeline import run_forward
from connector.forward.sources import LogTailer
from connector.forward.spool import Spool
from connector.sandbox.apim_log import LogGenerator
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings
from connector.state.store import connect

APP_ID = "moesif-app-id-tail-8e7f6a"


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[MoesifCollectorSandbox, str]]:
    app = MoesifCollectorSandbox({APP_ID})
    with app.server() as server:
        yield app, server.url


def _settings(home: Path, url: str) -> Settings:
    return Settings(_env_file=None, moesif_application_id=APP_ID, moesif_collector_url=url,
                    connector_home=home)


def _events(seed: int, n: int) -> list[bytes]:
    gen = LogGenerator(seed=seed, noise_ratio=0, malformed_ratio=0)
    return [orjson.dumps(gen.event(i)[1]) for i in range(n)]


def _metrics_line(event: bytes) -> bytes:
    return (b"15:56:07,928 [-] [PassThroughMessageProcessor-18]  INFO ELKCounterMetric "
            b"apimMetrics: apim:response, properties :" + event)


# --- named cases, through the whole forwarder -------------------------------------------
def test_jsonl_file_without_a_final_newline_delivers_its_last_event(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = collector
    before = app.unique_count
    events = _events(21, 3)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(events))  # no newline after the last one
    settings = _settings(tmp_path / "home", url)
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       out=io.StringIO()) == 0
    assert app.unique_count == before + 3
    # The writer finishes the line and adds one more: nothing is sent twice.
    with open(path, "ab") as handle:
        handle.write(b"\n" + _events(22, 1)[0] + b"\n")
    received = app.received_count
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       out=io.StringIO()) == 0
    assert app.unique_count == before + 4 and app.received_count == received + 1


def test_log_cut_after_a_whole_metrics_line_delivers_it(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = collector
    before = app.unique_count
    path = tmp_path / "apim_metrics.log"
    path.write_bytes(b"\r\n".join(_metrics_line(e) for e in _events(23, 2)))
    settings = _settings(tmp_path / "home", url)
    assert run_forward(settings, from_log=path, once=True, parse_workers=0,
                       out=io.StringIO()) == 0
    assert app.unique_count == before + 2


def test_an_unfinished_last_line_is_left_for_a_later_run(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str],
        caplog: pytest.LogCaptureFixture) -> None:
    app, url = collector
    before = app.unique_count
    first, last = _events(24, 2)
    path = tmp_path / "events.jsonl"
    path.write_bytes(first + b"\n" + last[:-5])
    settings = _settings(tmp_path / "home", url)
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       out=io.StringIO()) == 0
    assert app.unique_count == before + 1
    assert "not a complete record yet" in caplog.text
    assert last[:-5].decode() not in caplog.text  # position and length only
    with open(path, "ab") as handle:
        handle.write(last[-5:] + b"\n")
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       out=io.StringIO()) == 0
    assert app.unique_count == before + 2


# --- property: any cut point, two runs, each event exactly once --------------------------
def _read_once(path: Path, spool: Spool, fmt: str) -> list[bytes]:
    tailer = LogTailer(path, f"{fmt}:{path}", spool, tail_complete=record_is_complete(fmt))
    lines: list[bytes] = []
    try:
        for chunk in tailer.chunks(threading.Event(), once=True):
            lines.extend(chunk.lines)
            spool.append([], chunk.offset_update)
    finally:
        tailer.close()
    return lines


class _Encoder:
    """Only what process_lines needs: the record's correlation id is its identity."""
    max_line_bytes = 1 << 20

    def __call__(self, raw: dict[str, Any], kind: str | None) -> tuple[str, bytes]:
        return str(raw.get("correlationId")), b""

    def kept(self, event: Any, line: bytes | None = None) -> bytes:
        return b""


_EVENTS = _events(25, 4)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["jsonl", "log"]), crlf=st.booleans(),
       # Cut points anywhere in the file (about 7,000-7,400 bytes: every record).
       cuts=st.lists(st.integers(0, 7500), min_size=1, max_size=3), final_nl=st.booleans())
def test_any_cut_point_delivers_each_event_exactly_once(
        tmp_path_factory: pytest.TempPathFactory, fmt: str, crlf: bool, cuts: list[int],
        final_nl: bool) -> None:
    records = _EVENTS if fmt == "jsonl" else [_metrics_line(e) for e in _EVENTS]
    eol = b"\r\n" if crlf else b"\n"
    whole = eol.join(records) + (eol if final_nl else b"")
    folder = tmp_path_factory.mktemp("tail")
    path = folder / "input"
    conn = connect(folder / "state.sqlite3")
    try:
        spool = Spool(conn, max_events=1000)
        seen: list[str] = []
        written = 0
        for cut in sorted(min(c, len(whole)) for c in cuts) + [len(whole)]:
            with open(path, "ab") as handle:  # the writer got this far, then a run
                handle.write(whole[written:cut])
            written = max(written, cut)
            lines = _read_once(path, spool, fmt)
            result = process_lines(_Encoder(), fmt, "t", lines, 0, "line", None)  # type: ignore[arg-type]
            assert result.dead_letters == []
            seen += [txid for txid, _ in result.events]
        expected = [orjson.loads(e)["correlationId"] for e in _EVENTS]
        assert sorted(seen) == sorted(expected)
    finally:
        conn.close()
