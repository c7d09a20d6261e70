"""Every run ends with a report: a run that raises stores `failed` (keys scrubbed, exit 1),
a SIGKILLed run is listed as `interrupted`, never `running` forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.reports.store import ReportStore
from connector.state.store import connect
from connector.sync import job
from connector.sync.job import run_sync
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY, assert_no_keys_in
from tests.helpers import sync_sandbox

runner = CliRunner()


@pytest.fixture
def sandbox():
    with sync_sandbox(300, 20) as sb:
        yield sb


def _env(sandbox, settings) -> dict[str, str]:
    return {"MOESIF_API_URL": sandbox.moesif_url, "SEGMENT_HOST": sandbox.segment_url,
            "MOESIF_MANAGEMENT_API_KEY": MANAGEMENT_KEY, "SEGMENT_WRITE_KEY": WRITE_KEY,
            "CONNECTOR_HOME": str(settings.connector_home), "MOESIF_PAGE_SIZE": "50",
            "MAPPINGS_DIR": str(settings.mappings_dir)}


@pytest.fixture
def companies_raise(monkeypatch):
    """A bug in the job: the companies pass raises, with a key in its message."""
    def broken(self, docs, cursor):
        raise RuntimeError(f"company pass broke (key {WRITE_KEY} in the message)")

    monkeypatch.setattr(job.SyncRun, "process_companies", broken)


def test_a_run_that_raises_stores_a_failed_report_and_exits_1(settings, companies_raise):
    outcome = run_sync(settings)
    assert outcome.exit_code == 1
    report = outcome.report
    assert report.status == "failed"
    assert report.error.startswith("RuntimeError: company pass broke")
    assert WRITE_KEY not in report.error and "***" in report.error
    assert report.entities["users"].delivered > 0  # what happened before still counts
    conn = connect(settings.state_path)
    stored = ReportStore(conn).get("latest")
    conn.close()
    assert stored == report
    assert_no_keys_in(json.dumps(stored.to_dict()))


def test_the_cli_prints_the_failed_run_and_one_error_line(sandbox, settings, companies_raise):
    result = runner.invoke(app, ["sync", "--no-progress"], env=_env(sandbox, settings))
    assert result.exit_code == 1
    assert "FAILED" in result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [ln for ln in errors if "RuntimeError: company pass broke" in ln]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert_no_keys_in(result.output)


def test_a_sigkilled_run_is_listed_as_interrupted(sandbox, settings):
    sandbox.segment.inject_delay(5.0, count=1)  # the first batch hangs: the run is mid-way
    env = dict(os.environ, **_env(sandbox, settings))
    proc = subprocess.Popen([sys.executable, "-m", "connector", "sync", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sandbox.segment.wait_for(1, timeout=30), "the first batch never arrived"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    sandbox.segment.release()
    cli_env = {"CONNECTOR_HOME": str(settings.connector_home)}
    listed = runner.invoke(app, ["report", "list"], env=cli_env, terminal_width=200)
    assert listed.exit_code == 0, listed.output
    run_line = next(ln for ln in listed.stdout.splitlines() if "incremental" in ln)
    assert "interrupted" in run_line and "running" not in run_line
    run_id = run_line.split()[0]
    shown = runner.invoke(app, ["report", "show", run_id], env=cli_env)
    assert shown.exit_code == 0 and "INTERRUPTED" in shown.stdout
    assert "ended before the run did" in shown.stdout
    # The next run stores the verdict and carries on from the saved state.
    assert run_sync(settings).exit_code == 0
    conn = connect(settings.state_path)
    runs = ReportStore(conn).list()
    conn.close()
    assert [r.status for r in runs] == ["success", "interrupted"]
