"""A state home that cannot hold the state is a configuration error (exit 2, one line),
and a damaged state file is never written to, overwritten or deleted."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from connector.cli import app
from connector.errors import ConfigError, ExitCode
from connector.reports.store import ReportStore
from connector.state.store import connect, state_error, state_errors
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY

runner = CliRunner()


def _valid_state(path: Path, runs: int = 30) -> None:
    conn = connect(path)
    store = ReportStore(conn)
    for i in range(runs):
        store.save({"run_id": f"r{i:03d}", "started_at": f"2026-11-22T05:{i % 60:02d}:00.000Z",
                    "status": "success", "issues": [{"entity": "users", "id": f"u{j}",
                                                     "code": "BAD_VALUE", "detail": "x" * 200}
                                                    for j in range(20)]})
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _damaged_files(tmp_path: Path) -> dict[str, bytes]:
    good = tmp_path / "good.sqlite3"
    _valid_state(good)
    data = good.read_bytes()
    return {
        "text": b"this is not a database, it is somebody's notes\n" * 20,
        "random": os.urandom(8192),
        "truncated": data[: len(data) // 2 + 100],
        "truncated-at-a-page": data[: 3 * 4096],
        "half-header": data[:60],
        "zeroed-header": b"\0" * 100 + data[100:],
    }


@pytest.mark.parametrize("kind", ["text", "random", "truncated", "truncated-at-a-page",
                                  "half-header", "zeroed-header"])
def test_a_damaged_state_file_is_a_config_error_and_left_untouched(tmp_path, kind):
    content = _damaged_files(tmp_path)[kind]
    path = tmp_path / "home" / "state.sqlite3"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        connect(path)
    message = str(caught.value)
    assert "CONNECTOR_HOME" in message and str(path) in message
    assert "move it aside" in message
    assert path.read_bytes() == content
    assert not (path.parent / "state.sqlite3-wal").exists()


def test_connector_home_that_is_a_file(tmp_path):
    home = tmp_path / "home"
    home.write_text("not a directory")
    with pytest.raises(ConfigError, match="CONNECTOR_HOME .* is not a directory"):
        connect(home / "state.sqlite3")
    assert home.read_text() == "not a directory"


def test_a_sound_state_file_opens_and_keeps_its_runs(tmp_path):
    path = tmp_path / "state.sqlite3"
    _valid_state(path, runs=3)
    conn = connect(path)
    assert ReportStore(conn).count() == 3
    conn.close()
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")  # what SQLite itself creates first: a new, empty state
    connect(empty).close()


def test_a_full_disk_is_a_config_error_naming_connector_home(tmp_path):
    path = tmp_path / "home" / "state.sqlite3"
    conn = connect(path)
    # A real SQLite "database or disk is full": the file may not grow past a few pages.
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA max_page_count=8")
    with pytest.raises(ConfigError) as caught, state_errors(path):
        conn.execute("CREATE TABLE filler (x TEXT)")
        for _ in range(100):
            conn.execute("INSERT INTO filler VALUES (?)", ("x" * 4000,))
    message = str(caught.value)
    assert "full" in message and "CONNECTOR_HOME" in message and str(path.parent) in message
    conn.close()


def test_a_read_only_state_is_a_config_error_naming_connector_home(tmp_path):
    path = tmp_path / "home" / "state.sqlite3"
    connect(path).close()
    # A real SQLite refusal to write (what a read-only mount or file gives).
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(ConfigError) as caught, state_errors(path):
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert "CONNECTOR_HOME" in str(caught.value) and "writable" in str(caught.value)
    denied = state_error(PermissionError(errno.EACCES, "Permission denied"), path)
    assert denied is not None and "not writable" in str(denied)
    full = state_error(OSError(errno.ENOSPC, "No space left on device"), path)
    assert full is not None and "full" in str(full)


def test_connector_home_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="CONNECTOR_HOME"):
        connect(blocker / "home" / "state.sqlite3")


def test_errors_that_are_not_state_home_problems_are_left_alone():
    assert state_error(sqlite3.OperationalError("database is locked"), None) is None
    assert state_error(sqlite3.IntegrityError("UNIQUE constraint failed"), None) is None
    assert state_error(ValueError("x"), None) is None


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(min_size=1, max_size=4096))
def test_any_garbage_state_file_is_refused_unchanged(tmp_path, content):
    path = tmp_path / "garbage" / "state.sqlite3"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="CONNECTOR_HOME"):
        connect(path).close()
    assert path.read_bytes() == content


# --- every command that opens the state -------------------------------------------------

COMMANDS = [["sync", "--no-progress"], ["schedule", "--once", "--no-progress"],
            ["report", "list"], ["report", "show"], ["forward", "status"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_command_says_one_line_and_exits_2_on_a_damaged_state(tmp_path, args):
    home = tmp_path / "home"
    home.mkdir()
    state = home / "state.sqlite3"
    content = b"garbage " * 512
    state.write_bytes(content)
    env = {"CONNECTOR_HOME": str(home), "MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
           "SEGMENT_WRITE_KEY": WRITE_KEY, "MOESIF_API_URL": "http://127.0.0.1:9",
           "SEGMENT_HOST": "http://127.0.0.1:9"}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == ExitCode.CONFIGURATION, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "CONNECTOR_HOME" in lines[0] and "Traceback" not in result.output
    assert state.read_bytes() == content


@pytest.mark.parametrize("args", [["sync", "--no-progress"], ["report", "list"]],
                         ids=lambda a: a[0])
def test_connector_home_that_is_a_file_exits_2(tmp_path, args):
    home = tmp_path / "home"
    home.write_text("x")
    env = {"CONNECTOR_HOME": str(home), "MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
           "SEGMENT_WRITE_KEY": WRITE_KEY}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: CONNECTOR_HOME") and "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_fails_the_state_row_and_leaves_the_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    state = home / "state.sqlite3"
    state.write_bytes(b"not sqlite" * 100)
    env = {"CONNECTOR_HOME": str(home), "COLUMNS": "200"}
    result = runner.invoke(app, ["check"], env=env)
    assert result.exit_code == 2
    assert "damaged" in result.output
    assert state.read_bytes() == b"not sqlite" * 100


def test_a_header_ahead_of_the_file_is_not_truncation_while_a_wal_is_beside_it(tmp_path):
    """Mid-checkpoint, another connection has written page 1 (new page count) but not yet
    the pages after it: with a WAL beside the file that is not damage (it was seen as
    `truncated` under concurrent forwarder connections)."""
    from connector.state.store import check_state_file

    path = tmp_path / "state.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 20)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:4096])  # the header still counts every page
    wal = path.with_name(path.name + "-wal")
    wal.write_bytes(b"")
    check_state_file(path)  # a WAL beside it: SQLite recovers, not our call
    wal.unlink()
    with pytest.raises(ConfigError, match="truncated"):
        check_state_file(path)


def test_processes_opening_a_new_state_file_at_once_all_get_it(tmp_path: Path) -> None:
    """A scheduler and a forwarder started together on a fresh home: SQLite answers the
    second switch to WAL with 'database is locked' at once (no busy wait). Seen about
    once in 150 opens before connect() retried it; here 600 opens, 6 at a time."""
    import threading

    from connector.state.store import connect

    errors: list[str] = []
    for attempt in range(100):
        path = tmp_path / f"home-{attempt}" / "state.sqlite3"
        barrier = threading.Barrier(6)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                conn = connect(path)
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                conn.close()
                if mode != "wal":
                    errors.append(f"journal mode {mode}")
            except sqlite3.Error as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
