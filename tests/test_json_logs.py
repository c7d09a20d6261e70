"""JSON logs: every line an object with the run id (the forwarder's too), the run's
summary as structured fields, nothing plain on stderr."""

from __future__ import annotations

import json
import logging

from typer.testing import CliRunner

from connector.cli import app
from connector.sandbox.apim_log import LogGenerator
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from tests.conftest import APP_ID, MANAGEMENT_KEY, WRITE_KEY, assert_no_keys_in
from tests.helpers import sync_sandbox

runner = CliRunner()


def json_lines(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines
    return [json.loads(ln) for ln in lines]  # a plain line fails here


def teardown_function() -> None:
    root = logging.getLogger()  # the CLI's handler wrote to the runner's stream
    for handler in [h for h in root.handlers if getattr(h, "_connector_handler", False)]:
        root.removeHandler(handler)


def test_sync_json_logs_carry_the_run_id_and_a_structured_summary(tmp_path):
    with sync_sandbox(120, 10) as sb:
        env = {"MOESIF_API_URL": sb.moesif_url, "SEGMENT_HOST": sb.segment_url,
               "MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY, "SEGMENT_WRITE_KEY": WRITE_KEY,
               "CONNECTOR_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
        result = runner.invoke(app, ["sync", "--log-format", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert_no_keys_in(result.stderr)
    lines = json_lines(result.stderr)
    run_id = next(ln["run_id"] for ln in lines if ln["run_id"])
    assert all(ln["run_id"] == run_id for ln in lines), lines
    summary = next(ln for ln in lines if ln.get("event") == "sync_finished")
    assert summary["status"] == "success" and summary["exit_code"] == 0
    users = summary["entities"]["users"]
    assert users["fetched"] == 120 and users["delivered"] + users["invalid"] == 120
    assert isinstance(summary["issues"], dict) and summary["duration_s"] > 0
    assert f"moesif-segment report show {run_id}" in result.stdout  # the summary: stdout


def test_forward_json_logs_have_a_run_id_and_no_plain_counters_line(tmp_path):
    log = tmp_path / "apim_metrics.log"
    LogGenerator(seed=4).write(log, 80)
    collector = MoesifCollectorSandbox({APP_ID}, record_events=False)
    with collector.server() as server:
        env = {"MOESIF_APPLICATION_ID": APP_ID, "MOESIF_COLLECTOR_URL": server.url,
               "CONNECTOR_HOME": str(tmp_path / "home")}
        result = runner.invoke(app, ["forward", "--from-log", str(log), "--once",
                                     "--log-format", "json"], env=env)
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stderr)
    assert all(str(ln["run_id"]).startswith("fwd-") for ln in lines), lines
    done = next(ln for ln in lines if ln.get("event") == "forward_finished")
    assert done["delivered"] == collector.unique_count > 0 and done["backlog"] == 0


def test_an_error_in_json_mode_is_a_json_line_with_the_prefix(tmp_path):
    env = {"MOESIF_APPLICATION_ID": APP_ID, "CONNECTOR_HOME": str(tmp_path / "home")}
    result = runner.invoke(app, ["forward", "--log-format", "json"], env=env)
    assert result.exit_code == 2
    (line,) = json_lines(result.stderr)
    assert line["level"] == "ERROR" and line["msg"].startswith("error: say where events")
    assert line["exit_code"] == 2
