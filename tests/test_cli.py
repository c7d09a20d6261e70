"""The `moesif-segment` command as a user runs it (typer's runner, real sandboxes)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from connector.cli import app
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY, assert_no_keys_in, assert_no_keys_in_tree
from tests.helpers import sync_sandbox

runner = CliRunner()


@pytest.fixture
def env(tmp_path):
    with sync_sandbox(300, 20) as sb:
        yield {
            "MOESIF_API_URL": sb.moesif_url, "SEGMENT_HOST": sb.segment_url,
            "MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY, "SEGMENT_WRITE_KEY": WRITE_KEY,
            "CONNECTOR_HOME": str(tmp_path / "home"), "MOESIF_PAGE_SIZE": "100",
        }


def invoke(args, env):
    result = runner.invoke(app, args, env=env)
    assert_no_keys_in(result.output)
    return result


def test_sync_then_report_show_json(env, tmp_path):
    result = invoke(["sync", "--no-progress"], env)
    assert result.exit_code == 0, result.output
    assert "users" in result.output and "delivered" in result.output
    shown = invoke(["report", "show", "latest", "--format", "json"], env)
    report = json.loads(shown.output)
    assert report["mode"] == "incremental" and report["status"] == "success"
    users = report["entities"]["users"]
    assert users["fetched"] == users["changed"] + users["unchanged"] + users["invalid"]
    listed = invoke(["report", "list"], env)
    assert report["run_id"][:15] in listed.output
    assert_no_keys_in_tree(tmp_path / "home")


def test_dry_run_and_real_run_are_both_listed(env):
    assert invoke(["sync", "--dry-run", "--no-progress"], env).exit_code == 0
    assert invoke(["sync", "--no-progress"], env).exit_code == 0
    runs = json.loads(invoke(["report", "show", "latest", "--format", "json"], env).output)
    assert runs["mode"] == "incremental"
    listed = invoke(["report", "list", "--limit", "5"], env).output
    assert "dry-run" in listed


def test_missing_key_is_exit_2_naming_the_setting(env):
    env = dict(env, SEGMENT_WRITE_KEY="")
    result = invoke(["sync", "--no-progress"], env)
    assert result.exit_code == 2
    assert "SEGMENT_WRITE_KEY" in result.output


def test_a_missing_mappings_dir_is_one_error_line_and_no_run(env, tmp_path):
    result = invoke(["sync", "--no-progress"], dict(env, MAPPINGS_DIR=str(tmp_path / "none")))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: mapping file "), result.output
    assert "none" in lines[0] and "fetched" not in result.output
    assert "no runs recorded yet" in invoke(["report", "list"], env).output


def test_schedule_once_runs_one_leased_sync(env):
    result = invoke(["schedule", "--once", "--no-progress"], env)
    assert result.exit_code == 0, result.output
    report = json.loads(invoke(["report", "show", "latest", "--format", "json"], env).output)
    assert report["entities"]["users"]["delivered"] > 0


def test_bad_schedule_setting_is_exit_2(env):
    result = invoke(["schedule", "--once"], dict(env, SYNC_INTERVAL="every tuesday"))
    assert result.exit_code == 2 and "SYNC_INTERVAL" in result.output


def test_html_report_is_written(env, tmp_path):
    invoke(["sync", "--no-progress"], env)
    out = tmp_path / "r.html"
    result = invoke(["report", "show", "latest", "--format", "html", "--output", str(out)], env)
    assert result.exit_code == 0 and out.read_text().lstrip().lower().startswith("<!doctype html")


def test_forward_once_then_status(tmp_path):
    from connector.sandbox.apim_log import LogGenerator
    from connector.sandbox.moesif_collector import MoesifCollectorSandbox
    from tests.conftest import APP_ID

    log = tmp_path / "apim_metrics.log"
    stats = LogGenerator(seed=3).write(log, 300)
    collector = MoesifCollectorSandbox({APP_ID}, record_events=False)
    with collector.server() as server:
        env = {"MOESIF_APPLICATION_ID": APP_ID, "MOESIF_COLLECTOR_URL": server.url,
               "CONNECTOR_HOME": str(tmp_path / "home")}
        result = invoke(["forward", "--from-log", str(log), "--once"], env)
        assert result.exit_code == 0, result.output
        assert collector.unique_count == stats.events  # every valid event, once
        status = json.loads(invoke(["forward", "status", "--json"], env).output)
        assert status["backlog"] == 0
        assert status["counters"]["delivered"] == collector.unique_count
        table = invoke(["forward", "status"], env).output
        assert "delivered" in table and "apim_metrics.log" in table
    assert_no_keys_in_tree(tmp_path / "home")


def test_an_unexpected_error_is_one_line_and_exit_1(env, monkeypatch):
    import connector.cli.commands as cli

    def broken(*_args, **_kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(cli, "run_sync_locked", broken)
    result = invoke(["sync", "--no-progress"], env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: unexpected RuntimeError: something nobody expected (run with --log-level "
        "DEBUG for the traceback)"]
    assert "Traceback" not in result.output


def test_a_connector_error_is_one_line_with_its_exit_code(env, monkeypatch):
    import connector.cli.commands as cli
    from connector.errors import EndpointError

    def wrong_host(*_args, **_kwargs):
        raise EndpointError("SEGMENT_HOST answered 404: check the URL", status=404)

    monkeypatch.setattr(cli, "run_sync_locked", wrong_host)
    result = invoke(["sync", "--no-progress"], env)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: SEGMENT_HOST answered 404: check the URL"]


def test_an_unknown_log_level_is_exit_2_naming_the_option(env):
    result = invoke(["sync", "--log-level", "VERBOSE"], env)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --log-level: unknown level 'VERBOSE' (use DEBUG, INFO, WARNING or ERROR)"]
