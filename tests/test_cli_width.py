"""Human output fits an 80-column terminal (COLUMNS=80)."""

from __future__ import annotations

from typer.testing import CliRunner

from connector.alerts.rules import Verdict
from connector.alerts.state import AlertStore
from connector.cli import app
from connector.state.store import connect

runner = CliRunner()


def test_alerts_list_fits_80_columns(tmp_path):
    home = tmp_path / "home"
    conn = connect(home / "state.sqlite3")
    store = AlertStore(conn)
    message = ("10 of 1,000 records failed delivery in run 20261201T000000Z-abcdef; the "
               "next run retries them (see `moesif-segment report issues latest`)")
    store.apply([Verdict("records_failed", True, message)], run_id="r1")
    store.record_delivery(store.pending()[0][0], False, "127.0.0.1:9: connection refused "
                          "after 5 attempts, the receiver did not answer at all")
    conn.close()
    result = runner.invoke(app, ["alerts", "list"],
                           env={"CONNECTOR_HOME": str(home), "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "records_failed" in result.output
    wide = [line for line in result.output.splitlines() if len(line) > 80]
    assert not wide, wide


def test_sync_and_its_log_lines_fit_80_columns(tmp_path):
    """The summary on stdout and the text log on stderr (the run id once per line, the
    closing summary one line per entity)."""
    from tests.conftest import MANAGEMENT_KEY, WRITE_KEY
    from tests.helpers import sync_sandbox

    with sync_sandbox(120, 10) as sb:
        env = {"MOESIF_API_URL": sb.moesif_url, "SEGMENT_HOST": sb.segment_url,
               "MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY, "SEGMENT_WRITE_KEY": WRITE_KEY,
               "CONNECTOR_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
        for args in (["sync", "--no-progress"], ["schedule", "--once", "--no-progress"]):
            result = runner.invoke(app, args, env=env)
            assert result.exit_code == 0, result.output
            assert "users:" in result.output
            wide = [line for line in result.output.splitlines() if len(line) > 80]
            assert not wide, wide


def test_alerts_test_fits_80_columns_and_names_the_host_once(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"CONNECTOR_HOME": str(tmp_path / "home"), "COLUMNS": "80",
           "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{port}/services/T0/B0/abcdefabcdef",
           "ALERT_WEBHOOK_MAX_SECONDS": "0.5"}
    result = runner.invoke(app, ["alerts", "test"], env=env)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"127.0.0.1:{port}: FAILED (") and lines[0].count(str(port)) == 1
    assert lines[1] == "note: unsigned, ALERT_WEBHOOK_SECRET is not set"
    assert all(len(line) <= 80 for line in result.output.splitlines())
    assert "abcdefabcdef" not in result.output


def teardown_function() -> None:
    import logging

    root = logging.getLogger()  # the CLI's handler wrote to the runner's (closed) stream
    for handler in [h for h in root.handlers if getattr(h, "_connector_handler", False)]:
        root.removeHandler(handler)
