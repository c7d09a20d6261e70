"""The forwarder end to end, over loopback against the sandbox Moesif Collector: real log
files, real HTTP, real subprocesses for SIGKILL/SIGTERM. Nothing is mocked."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from connector.forward.config import resolve_config
from connector.forward.encoder import EncoderSpec
from connector.forward.parse import process_lines
from connector.forward.pipeline import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_OK,
    forward_status,
    run_forward,
    summary_lines,
)
from connector.forward.sender import REJECTED_BY_COLLECTOR
from connector.forward.spool import COUNTER_NAMES, Spool
from connector.sandbox.apim_log import LogGenerator, LogStats
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings
from connector.state.store import connect
from tests.helpers import wait_for

APP_ID = "moesif-app-id-test-9f8e7d6c5b4a"
TOKEN = "ingest-token-test-1a2b3c4d5e"
# Fast retries, so an outage costs wall time only for as long as the outage lasts.
FAST_RETRY = {"backoff_initial": 0.02, "backoff_max": 0.1, "timeout": 5.0}
# The 60-second Collector outage, for real (fast retries keep the test at ~61 s).
# `FORWARD_TEST_OUTAGE_SECONDS=5 pytest ...` shortens it while iterating locally.
OUTAGE_SECONDS = float(os.environ.get("FORWARD_TEST_OUTAGE_SECONDS", "60"))
DEPLOYMENT_TOML = """
[apim.analytics]
enable = true
type = "elk"

[apim.analytics.properties]
moesifKey = "{key}"
send_headers = false

[apim.analytics.mask]
"userIp" = "IPV4"
"userName" = "EMAIL"
request_headers = ["Authorization"]
"""


# --- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture()
def sandbox() -> Iterator[tuple[MoesifCollectorSandbox, str]]:
    app = MoesifCollectorSandbox({APP_ID})
    with app.server() as server:
        yield app, server.url


def _settings(home: Path, url: str, **extra: Any) -> Settings:
    return Settings(moesif_application_id=APP_ID, moesif_collector_url=url,
                    connector_home=home, **extra)


def _write_log(path: Path, n: int, start: int = 0, append: bool = False) -> LogStats:
    return LogGenerator(seed=7).write(path, n, start=start, append=append)


def _expected_txids(path: Path, settings: Settings, wso2: Path | None = None) -> set[str]:
    """The transaction ids of every valid event in the file (same config, computed
    inline), to compare with what the sandbox received."""
    encoder = EncoderSpec.of(resolve_config(settings, wso2), _secret(settings)).build()
    lines = path.read_bytes().split(b"\n")[:-1]
    result = process_lines(encoder, "log", "test", lines, 0, "byte", None)
    return {txid for txid, _ in result.events}


def _secret(settings: Settings) -> bytes:
    """The installation's key of content-derived transaction ids (created on first use,
    the same one the forwarder then reads)."""
    conn = connect(settings.state_path)
    try:
        return Spool(conn, settings.forward_spool_max_events).installation_secret()
    finally:
        conn.close()


def _state_rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(settings.state_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


_RUNNING: list[_Background] = []


@pytest.fixture(autouse=True)
def _stop_background_runs() -> Iterator[None]:
    """A failed test must not leave a forwarder retrying against a stopped sandbox."""
    yield
    while _RUNNING:
        runner = _RUNNING.pop()
        runner.stop.set()
        runner.thread.join(timeout=30)


def _saved_offset(settings: Settings) -> int:
    """The log offset saved so far (0 before the forwarder created its tables)."""
    try:
        rows = _state_rows(settings, "SELECT offset FROM source_offsets")
    except sqlite3.OperationalError:  # the file or table does not exist yet
        return 0
    return rows[0][0] if rows else 0


class _Background:
    """run_forward in a thread (follow mode) with its own stop event."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.stop = threading.Event()
        self.out = io.StringIO()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(settings, kwargs))
        self.thread.start()
        _RUNNING.append(self)

    def _run(self, settings: Settings, kwargs: dict[str, Any]) -> None:
        self.code = run_forward(settings, stop_event=self.stop, out=self.out, **kwargs)

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        assert self.code is not None
        return self.code


# --- --once ------------------------------------------------------------------------------
def test_once_delivers_every_valid_event_and_dead_letters_malformed_lines(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 3000)
    settings = _settings(tmp_path / "home", url)
    out = io.StringIO()
    code = run_forward(settings, from_log=log, once=True, parse_workers=0, out=out)
    assert code == EXIT_OK
    assert app.unique_count == stats.events and app.duplicate_count == 0
    assert set(app.by_transaction_id) == _expected_txids(log, settings)
    # Every malformed line is a dead letter with its byte position and reason.
    letters = _state_rows(settings, "SELECT source, position, reason_code, raw "
                                    "FROM dead_letters")
    assert len(letters) == stats.malformed
    data = log.read_bytes()
    for source, position, reason, _raw in letters:
        assert source == f"log:{log}"
        assert position.startswith("byte ")
        offset = int(position.split()[1])
        assert offset == 0 or data[offset - 1:offset] == b"\n"  # a line starts there
        assert b"apimMetrics:" in data[offset:].split(b"\n", 1)[0]
        assert reason in {"BAD_JSON", "BAD_LINE", "UNKNOWN_KIND", "NOT_AN_OBJECT"}
    assert f"dead_lettered={stats.malformed}" in out.getvalue()
    assert f"delivered={stats.events}" in out.getvalue()
    # A second --once sends nothing new.
    batches = app.batches
    assert run_forward(settings, from_log=log, once=True, parse_workers=0,
                       out=io.StringIO()) == EXIT_OK
    assert app.batches == batches and app.received_count == stats.events


def test_once_with_parse_workers_matches_inline(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 4000)
    settings = _settings(tmp_path / "home", url, forward_batch_events=300)
    code = run_forward(settings, from_log=log, once=True, parse_workers=2, out=io.StringIO())
    assert code == EXIT_OK
    assert set(app.by_transaction_id) == _expected_txids(log, settings)
    assert app.unique_count == stats.events and app.duplicate_count == 0
    status = forward_status(settings)
    assert status["backlog"] == 0 and status["delivered"] == stats.events
    assert status["dead_letters"]["total"] == stats.malformed
    assert status["sources"][f"log:{log}"]["offset"] == log.stat().st_size


def test_nothing_unmasked_reaches_the_state_file(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    _write_log(log, 1500)
    wso2 = tmp_path / "deployment.toml"
    wso2.write_text(DEPLOYMENT_TOML.format(key="file-key-not-used"))
    settings = _settings(tmp_path / "home", url)
    # Stop before sending (outage) so every event is still in the spool when we look.
    app.outage(True)
    runner = _Background(settings, from_log=log, wso2_config_path=wso2, parse_workers=0,
                         client_options=FAST_RETRY)
    wait_for(lambda: _saved_offset(settings) == log.stat().st_size)
    assert runner.finish() == EXIT_OK
    raw_ips = set()
    gen = LogGenerator(seed=7)
    for _, event in (gen.event(i) for i in range(1500)):
        if isinstance(event.get("userIp"), str) and "." in event["userIp"]:
            raw_ips.add(event["userIp"])
    assert raw_ips
    stored = b"".join(p.read_bytes() for p in settings.state_path.parent.iterdir())
    quoted_ips = {m.decode() for m in re.findall(rb'"(\d+\.\d+\.\d+\.\d+)"', stored)}
    assert quoted_ips & raw_ips == set()
    assert re.search(rb'\d+\.\d+\.\*\*\*\.\d+', stored)  # masked form is there


# --- Moesif refusing one event ----------------------------------------------------------
def test_a_400_isolates_the_bad_event_into_dead_letters(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 1200)
    settings = _settings(tmp_path / "home", url, forward_batch_events=500)
    expected = _expected_txids(log, settings)
    bad = sorted(expected)[17]
    app.reject_transaction_ids({bad})
    code = run_forward(settings, from_log=log, once=True, parse_workers=0,
                       client_options=FAST_RETRY, out=io.StringIO())
    assert code == EXIT_INCOMPLETE  # Moesif refused an event: --once reports it
    assert set(app.by_transaction_id) == expected - {bad}
    assert app.unique_count == stats.events - 1
    rows = _state_rows(settings, "SELECT position, detail, raw FROM dead_letters "
                                 f"WHERE reason_code = '{REJECTED_BY_COLLECTOR}'")
    assert len(rows) == 1
    position, detail, raw = rows[0]
    assert bad in position and "400" in detail and orjson.loads(raw)["transaction_id"] == bad
    assert forward_status(settings)["backlog"] == 0


# --- outages and retries ------------------------------------------------------------------
def test_collector_outage_loses_nothing(tmp_path: Path,
                                       sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 1500)
    settings = _settings(tmp_path / "home", url, forward_batch_events=200)
    app.outage_for(OUTAGE_SECONDS, mode="close")  # connections dropped unanswered
    started = time.monotonic()
    code = run_forward(settings, from_log=log, once=True, parse_workers=0,
                       client_options=FAST_RETRY, out=io.StringIO())
    assert code == EXIT_OK
    assert time.monotonic() - started >= OUTAGE_SECONDS  # it really waited the outage out
    assert app.connections_dropped > 0
    assert app.unique_count == stats.events
    assert set(app.by_transaction_id) == _expected_txids(log, settings)
    assert forward_status(settings)["counters"]["retried"] > 0


def test_retry_never_gives_up(tmp_path: Path,
                              sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 200)
    settings = _settings(tmp_path / "home", url)
    failures = 300  # far past any bounded retry policy (WSO2's reporter stops at 3)
    app.inject(503, count=failures)
    app.inject(429, count=5, retry_after=0)
    no_wait = {"wait": lambda state: 0.0, "timeout": 5.0}
    code = run_forward(settings, from_log=log, once=True, parse_workers=0,
                       client_options=no_wait, out=io.StringIO(), senders=1)
    assert code == EXIT_OK
    assert app.status_counts[503] == failures and app.status_counts[429] == 5
    assert app.unique_count == stats.events


def test_back_pressure_stops_reading_when_spool_is_full(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 6000)
    settings = _settings(tmp_path / "home", url, forward_spool_max_events=100)
    app.outage(True)
    runner = _Background(settings, from_log=log, parse_workers=0, client_options=FAST_RETRY)

    wait_for(lambda: _saved_offset(settings) > 0 and app.status_counts[503] > 3)
    depth = _state_rows(settings, "SELECT count(*) FROM spool")[0][0]
    assert 100 <= depth < 2000           # full, overshooting by at most one chunk
    assert _saved_offset(settings) < log.stat().st_size  # reading stopped, nothing dropped
    app.outage(False)
    wait_for(lambda: app.unique_count == stats.events)
    assert runner.finish() == EXIT_OK
    assert set(app.by_transaction_id) == _expected_txids(log, settings)


# --- following a log ----------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "parse-workers"])
def test_follow_mode_rotation_mid_stream(tmp_path: Path, workers: int,
                                         sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    first = _write_log(log, 800)
    settings = _settings(tmp_path / "home", url, forward_batch_age_seconds=0.05)
    # With workers, each wait below also proves a quiet log is not left in read-ahead.
    runner = _Background(settings, from_log=log, parse_workers=workers)
    wait_for(lambda: app.unique_count == first.events)
    more = _write_log(log, 300, start=800, append=True)
    log.rename(tmp_path / "apim_metrics-01-02-2025-1.log")
    after = _write_log(log, 400, start=1100)
    wait_for(lambda: app.unique_count == first.events + more.events + after.events)
    assert runner.finish() == EXIT_OK
    assert app.duplicate_count == 0
    assert "exit=0" in runner.out.getvalue()


def test_partial_last_line_waits_for_its_newline(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    gen = LogGenerator(seed=7, noise_ratio=0, malformed_ratio=0)
    lines = list(gen.lines(3))
    log.write_text(lines[0] + lines[1] + lines[2][:200])
    settings = _settings(tmp_path / "home", url)
    assert run_forward(settings, from_log=log, once=True, parse_workers=0,
                       out=io.StringIO()) == EXIT_OK
    assert app.unique_count == 2
    assert _state_rows(settings, "SELECT count(*) FROM dead_letters")[0][0] == 0
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(lines[2][200:])
    assert run_forward(settings, from_log=log, once=True, parse_workers=0,
                       out=io.StringIO()) == EXIT_OK
    assert app.unique_count == 3 and app.duplicate_count == 0


# --- JSON lines ---------------------------------------------------------------------------
def _jsonl(n: int, bad_every: int = 0) -> tuple[bytes, int, int]:
    gen = LogGenerator(seed=11, noise_ratio=0, malformed_ratio=0)
    lines, good, bad = [], 0, 0
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(b'{"apiName": "no timestamp"}' if (i // bad_every) % 2
                         else b'{"truncated": ')
            bad += 1
        else:
            lines.append(orjson.dumps(gen.event(i)[1]))
            good += 1
    return b"\n".join(lines) + b"\n", good, bad


def test_jsonl_file_once_and_offsets(tmp_path: Path,
                                     sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    data, good, bad = _jsonl(400, bad_every=50)
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    settings = _settings(tmp_path / "home", url)
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       out=io.StringIO()) == EXIT_OK
    assert app.unique_count == good
    letters = _state_rows(settings, "SELECT source, position, reason_code FROM dead_letters")
    assert len(letters) == bad
    assert {reason for _, _, reason in letters} == {"BAD_JSON", "MISSING_FIELD"}
    assert all(source == f"jsonl:{path}" and position.startswith("byte ")
               for source, position, _ in letters)
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       out=io.StringIO()) == EXIT_OK
    assert app.received_count == good  # nothing sent twice


def test_jsonl_from_standard_input(tmp_path: Path,
                                   sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    data, good, bad = _jsonl(120, bad_every=40)
    settings = _settings(tmp_path / "home", url)
    code = run_forward(settings, from_jsonl="-", stdin=io.BytesIO(data), out=io.StringIO())
    assert code == EXIT_OK  # EOF ends the input: delivered, then exit
    assert app.unique_count == good
    positions = [p for (p,) in _state_rows(settings, "SELECT position FROM dead_letters")]
    assert positions == ["line 40", "line 80", "line 120"]


# --- crashes and signals (the forwarder in its own process) ------------------------------
_CHILD = """
import sys
from pathlib import Path
from connector.forward.pipeline import run_forward
from connector.settings import Settings
if __name__ == "__main__":
    sys.exit(run_forward(Settings(), from_log=Path(sys.argv[1]), once=sys.argv[2] == "once",
                         parse_workers=int(sys.argv[3]),
                         client_options={"backoff_initial": 0.02, "backoff_max": 0.1}))
"""


def _child(log: Path, home: Path, url: str, mode: str, workers: int,
           batch: int = 50) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MOESIF_APPLICATION_ID=APP_ID, MOESIF_COLLECTOR_URL=url,
               CONNECTOR_HOME=str(home), FORWARD_BATCH_EVENTS=str(batch),
               FORWARD_BATCH_AGE_SECONDS="0.05")
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(log), mode, str(workers)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(home.parent))


def test_sigkill_mid_stream_then_restart_delivers_exactly_once(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 6000)
    home = tmp_path / "home"
    child = _child(log, home, url, "follow", workers=2)
    assert app.wait_for(lambda sb: sb.unique_count >= 300, timeout=30)
    app.outage(True)  # freeze deliveries so the kill lands mid-stream
    workers = psutil.Process(child.pid).children()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    delivered_before = app.unique_count
    assert 300 <= delivered_before < stats.events
    # Parse workers do not outlive their parent.
    wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                          for w in workers))
    app.outage(False)
    restart = _child(log, home, url, "once", workers=0, batch=500)
    out, err = restart.communicate(timeout=60)
    assert restart.returncode == EXIT_OK, err.decode()
    settings = _settings(home, url)
    assert set(app.by_transaction_id) == _expected_txids(log, settings)
    assert app.unique_count == stats.events  # every event at least once, unique by id


def test_sigterm_stops_cleanly_and_keeps_the_rest(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    stats = _write_log(log, 3000)
    home = tmp_path / "home"
    app.outage(True)  # nothing can be delivered: SIGTERM must cut the retry wait short
    child = _child(log, home, url, "follow", workers=0)
    assert app.wait_for(lambda sb: sb.status_counts[503] >= 2, timeout=30)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=15)
    assert child.returncode == EXIT_OK
    assert b"forward: read=" in err and b"backlog=" in err
    assert APP_ID.encode() not in out + err
    app.outage(False)
    restart = _child(log, home, url, "once", workers=0, batch=500)
    restart.communicate(timeout=60)
    assert restart.returncode == EXIT_OK
    assert app.unique_count == stats.events


# --- HTTP ingest through the real mapper ------------------------------------------------------
def test_http_ingest_end_to_end(tmp_path: Path,
                                sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    settings = _settings(tmp_path / "home", url, forward_ingest_token=TOKEN,
                         forward_batch_age_seconds=0.05)
    port = _free_port()
    runner = _Background(settings, listen=f"127.0.0.1:{port}", parse_workers=0)
    ingest = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(ingest + "/healthz"))
    gen = LogGenerator(seed=7, noise_ratio=0, malformed_ratio=0)
    events = [gen.event(i)[1] for i in range(20)]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with requests.Session() as http:
        assert http.post(ingest + "/v1/events", json=events[0], timeout=10).status_code == 401
        accepted = http.post(ingest + "/v1/events", json=events, headers=auth, timeout=10)
        assert accepted.status_code == 202 and accepted.json() == {"accepted": 20}
        invalid = http.post(ingest + "/v1/events", json=[events[0], {"apiName": "x"}],
                            headers=auth, timeout=10)
        assert invalid.status_code == 400 and invalid.json()["index"] == 1
        assert invalid.json()["reason"] == "MISSING_FIELD"
        assert http.get(ingest + "/healthz", timeout=10).json()["status"] == "ok"
    wait_for(lambda: app.unique_count == 20)
    assert runner.finish() == EXIT_OK


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


# --- configuration ----------------------------------------------------------------------------
def test_configuration_errors_exit_2_naming_the_problem(tmp_path: Path) -> None:
    log = tmp_path / "apim_metrics.log"
    log.write_text("")
    home = tmp_path / "home"

    def run(settings: Settings, **kwargs: Any) -> tuple[int, str]:
        out = io.StringIO()
        return run_forward(settings, out=out, **kwargs), out.getvalue()

    code, text = run(Settings(connector_home=home), from_log=log, once=True)
    assert code == EXIT_CONFIG and "MOESIF_APPLICATION_ID" in text
    bad_mask = tmp_path / "bad.toml"
    bad_mask.write_text('[apim.analytics.mask]\n"userIp" = "IPV5"\n')
    code, text = run(_settings(home, "http://127.0.0.1:9"), from_log=log, once=True,
                     wso2_config_path=bad_mask)
    assert code == EXIT_CONFIG and "userIp" in text
    code, text = run(_settings(home, "http://127.0.0.1:9"), listen="127.0.0.1:0", once=True)
    assert code == EXIT_CONFIG and "--once" in text
    code, text = run(_settings(home, "http://127.0.0.1:9"), listen="127.0.0.1:0")
    assert code == EXIT_CONFIG and "FORWARD_INGEST_TOKEN" in text
    code, text = run(_settings(home, "http://127.0.0.1:9"), from_log=tmp_path / "nope.log",
                     once=True)
    assert code == EXIT_CONFIG and "nope.log" in text
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        code, text = run(_settings(home, "http://127.0.0.1:9", forward_ingest_token=TOKEN),
                         listen=f"127.0.0.1:{taken}")
    assert code == EXIT_CONFIG and f"--listen 127.0.0.1:{taken}" in text


def test_wrong_application_id_stops_with_exit_2(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    _write_log(log, 50)
    settings = Settings(moesif_application_id="wrong-app-id-0000", moesif_collector_url=url,
                        connector_home=tmp_path / "home")
    out = io.StringIO()
    assert run_forward(settings, from_log=log, once=True, parse_workers=0, out=out) == 2
    assert "application id" in out.getvalue() and "wrong-app-id-0000" not in out.getvalue()
    assert forward_status(settings)["backlog"] > 0  # kept for when the id is fixed


def test_environment_overrides_deployment_toml(tmp_path: Path) -> None:
    wso2 = tmp_path / "deployment.toml"
    wso2.write_text(DEPLOYMENT_TOML.format(key="key-from-file").replace(
        "send_headers = false", 'send_headers = false\nmoesif_base_url = "https://c.example"'))
    from_file = resolve_config(Settings(connector_home=tmp_path), wso2)
    assert from_file.application_id.get_secret_value() == "key-from-file"
    assert from_file.collector_url == "https://c.example"
    from_env = resolve_config(Settings(moesif_application_id="key-from-env",
                                       moesif_collector_url="http://127.0.0.1:1",
                                       connector_home=tmp_path), wso2)
    assert from_env.application_id.get_secret_value() == "key-from-env"
    assert from_env.collector_url == "http://127.0.0.1:1"
    assert "key-from" not in repr(from_env)
    default = resolve_config(Settings(moesif_application_id="k", connector_home=tmp_path))
    assert default.collector_url == "https://api.moesif.net"


def test_no_key_value_in_any_output_or_file(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str],
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    app, url = sandbox
    log = tmp_path / "apim_metrics.log"
    _write_log(log, 500)
    settings = _settings(tmp_path / "home", url, forward_ingest_token=TOKEN)
    app.inject(503, count=3)  # retries log warnings: they must not carry the id
    app.reject_transaction_ids(set(list(_expected_txids(log, settings))[:1]))
    caplog.set_level("DEBUG")
    out = io.StringIO()
    run_forward(settings, from_log=log, once=True, parse_workers=0,
                client_options=FAST_RETRY, out=out)
    captured = capsys.readouterr()
    texts = [out.getvalue(), caplog.text, captured.out, captured.err,
             repr(forward_status(settings))]
    for secret in (APP_ID, TOKEN):
        assert all(secret not in text for text in texts)
        for path in settings.state_path.parent.iterdir():
            assert secret.encode() not in path.read_bytes(), path.name


# --- keyed transaction ids (issue 7, item 16) ---------------------------------------------------
def test_the_installation_secret_is_made_once_kept_in_the_state_and_never_shown(
        tmp_path: Path, sandbox: tuple[MoesifCollectorSandbox, str],
        caplog: pytest.LogCaptureFixture) -> None:
    app, url = sandbox
    when = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    # No correlationId, same time, same API: only the (masked) user tells them apart.
    events = [{"requestTimestamp": when, "apiName": "A", "apiContext": "/a",
               "proxyResponseCode": 200, "userIp": f"10.0.{i}.1"} for i in range(5)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    wso2 = tmp_path / "deployment.toml"
    wso2.write_text(DEPLOYMENT_TOML.format(key="unused"))
    settings = _settings(tmp_path / "home", url)
    caplog.set_level("DEBUG")
    out = io.StringIO()
    assert run_forward(settings, from_jsonl=str(path), once=True, parse_workers=0,
                       wso2_config_path=wso2, out=out) == EXIT_OK
    assert app.unique_count == 5  # none collided after masking
    first_ids = set(app.by_transaction_id)
    secret = _secret(settings)
    assert len(secret) == 32
    rows = _state_rows(settings, "SELECT name FROM forward_secrets")
    assert rows == [("transaction_id_key",)]
    # The same installation, the same events again (a restart replaying a file): the same
    # ids, so Moesif de-duplicates them.
    again = tmp_path / "again.jsonl"
    again.write_bytes(path.read_bytes())
    assert run_forward(settings, from_jsonl=str(again), once=True, parse_workers=0,
                       wso2_config_path=wso2, out=io.StringIO()) == EXIT_OK
    assert set(app.by_transaction_id) == first_ids and app.duplicate_count == 5
    assert _secret(settings) == secret  # generated once
    # Another installation derives other ids: they cannot be computed without the key.
    other = _settings(tmp_path / "other-home", url)
    assert run_forward(other, from_jsonl=str(path), once=True, parse_workers=0,
                       wso2_config_path=wso2, out=io.StringIO()) == EXIT_OK
    assert app.unique_count == 10
    # Never sent, never logged.
    sent = orjson.dumps(app.events)
    for text in (secret.hex().encode(), secret):
        assert text not in sent
        assert text not in (out.getvalue() + caplog.text).encode()


# --- deployment.toml (issue 7, item 17) ---------------------------------------------------------
def test_analytics_disabled_in_deployment_toml_exits_2(tmp_path: Path) -> None:
    log = tmp_path / "apim_metrics.log"
    log.write_text("")
    wso2 = tmp_path / "deployment.toml"
    wso2.write_text(DEPLOYMENT_TOML.format(key="k").replace("enable = true", "enable = false"))
    out = io.StringIO()
    code = run_forward(_settings(tmp_path / "home", "http://127.0.0.1:9"), from_log=log,
                       once=True, wso2_config_path=wso2, out=out)
    assert code == EXIT_CONFIG == 2
    assert "analytics is disabled" in out.getvalue() and str(wso2) in out.getvalue()


@pytest.mark.parametrize("placeholder", ["$secret{moesif_key}", "$env{NO_SUCH_VARIABLE_X}"])
def test_an_unresolvable_moesif_key_exits_2_naming_the_key(
        tmp_path: Path, placeholder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_VARIABLE_X", raising=False)
    log = tmp_path / "apim_metrics.log"
    log.write_text("")
    wso2 = tmp_path / "deployment.toml"
    wso2.write_text(DEPLOYMENT_TOML.format(key=placeholder))
    out = io.StringIO()
    settings = Settings(_env_file=None, connector_home=tmp_path / "home")
    code = run_forward(settings, from_log=log, once=True, wso2_config_path=wso2, out=out)
    text = out.getvalue()
    assert code == EXIT_CONFIG
    assert "moesifKey" in text and "MOESIF_APPLICATION_ID" in text
    assert placeholder.split("{")[0] in text and "moesif_key}" not in text
    # With MOESIF_APPLICATION_ID set, the placeholder is not needed.
    config = resolve_config(Settings(_env_file=None, moesif_application_id="from-env",
                                     connector_home=tmp_path / "home"), wso2)
    assert config.application_id.get_secret_value() == "from-env"


# --- the exit summary ------------------------------------------------------------------
@given(values=st.lists(st.integers(0, 10**15), min_size=len(COUNTER_NAMES),
                       max_size=len(COUNTER_NAMES)),
       backlog=st.integers(0, 10**12), code=st.sampled_from([0, 1, 2, 130, 143]))
def test_the_exit_summary_fits_80_columns_and_keeps_every_counter(values, backlog, code):
    counters = dict(zip(COUNTER_NAMES, values, strict=True))
    lines = summary_lines(counters, backlog, code)
    assert all(len(line) <= 80 and line.startswith("forward: ") for line in lines)
    assert lines[-1].endswith(f" backlog={backlog} exit={code}")
    words = " ".join(line.removeprefix("forward: ") for line in lines).split()
    assert words == [f"{n}={v}" for n, v in counters.items()] + [f"backlog={backlog}",
                                                                 f"exit={code}"]
