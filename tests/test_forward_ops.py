"""The forwarder for an operator: a deadline on `--once`, dead letters listed, shown and
replayed (over loopback, against the Collector sandbox)."""

from __future__ import annotations

import json
import socket

import orjson
import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.forward.spool import DeadLetter, Spool
from connector.sandbox.apim_log import LogGenerator
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.state.store import connect
from tests.conftest import APP_ID

runner = CliRunner()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def valid_event(index: int = 0) -> dict:
    gen = LogGenerator(seed=11)
    for i in range(index, index + 50):
        kind, event = gen.event(i)
        if event and kind == "response":
            return event
    raise AssertionError("no response event in the generator's first lines")


def test_once_deadline_exits_1_and_keeps_the_backlog(tmp_path):
    log = tmp_path / "apim_metrics.log"
    LogGenerator(seed=2).write(log, 30)
    env = {"MOESIF_APPLICATION_ID": APP_ID, "MOESIF_COLLECTOR_URL": closed_port_url(),
           "CONNECTOR_HOME": str(tmp_path / "home")}
    result = runner.invoke(app, ["forward", "--from-log", str(log), "--once",
                                 "--deadline", "1"], env=env)
    assert result.exit_code == 1
    assert "error: forward --once: --deadline 1 s passed" in result.stderr
    status = json.loads(runner.invoke(app, ["forward", "status", "--json"], env=env).stdout)
    assert status["backlog"] > 0 and status["delivered"] == 0


@pytest.fixture
def collector():
    app_ = MoesifCollectorSandbox({APP_ID})
    with app_.server() as server:
        yield app_, server.url


def test_dead_letters_list_show_and_replay(tmp_path, collector):
    sandbox, url = collector
    env = {"MOESIF_APPLICATION_ID": APP_ID, "MOESIF_COLLECTOR_URL": url,
           "CONNECTOR_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    broken = valid_event()
    del broken["requestTimestamp"]  # the one required field: MISSING_FIELD
    source = tmp_path / "events.jsonl"
    source.write_text(json.dumps(broken) + "\n{not json\n")
    result = runner.invoke(app, ["forward", "--from-jsonl", str(source), "--once"], env=env)
    assert result.exit_code == 0, result.output
    listed = [json.loads(ln) for ln in runner.invoke(
        app, ["forward", "dead-letters", "list", "--json"], env=env).stdout.splitlines()]
    reasons = {letter["reason_code"]: letter["id"] for letter in listed}
    assert set(reasons) == {"BAD_JSON", "MISSING_FIELD"}, listed
    table = runner.invoke(app, ["forward", "dead-letters", "list"], env=env).stdout
    assert "BAD_JSON" in table and max(len(ln) for ln in table.splitlines()) <= 80
    shown = json.loads(runner.invoke(
        app, ["forward", "dead-letters", "show", str(reasons["BAD_JSON"])], env=env).stdout)
    assert shown["content"]["withheld"]  # a line that could not be masked is not kept
    assert runner.invoke(app, ["forward", "dead-letters", "show", "999"], env=env).exit_code == 2

    # A letter whose stored (masked) event the current mapping accepts: as after a fix.
    conn = connect(tmp_path / "home" / "state.sqlite3")
    Spool(conn, 1000).append([], dead_letters=[DeadLetter(
        "log:/x", "byte 0", "BAD_VALUE", "failed before the fix",
        orjson.dumps(valid_event(60)))])
    conn.close()
    result = runner.invoke(app, ["forward", "dead-letters", "replay", "--reason", "bad_value"],
                           env=env)
    assert result.exit_code == 0 and "spooled again: 1;" in result.stdout, result.output
    other = [str(i) for r, i in reasons.items()]
    result = runner.invoke(app, ["forward", "dead-letters", "replay", *other], env=env)
    assert result.exit_code == 1 and "not replayable (kept only as a fingerprint): 1" \
        in result.stdout, result.output
    before = sandbox.unique_count
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert runner.invoke(app, ["forward", "--from-jsonl", str(empty), "--once"],
                         env=env).exit_code == 0
    assert sandbox.unique_count == before + 1  # the replayed event was delivered
