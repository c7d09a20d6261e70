"""SYNC_INTERVAL / SYNC_CRON of any size: a PASS or a FAIL naming the setting in `check`,
exit 2 with one line from `schedule`, never an OverflowError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from connector.cli import app
from connector.ops.checks import check_schedule
from tests.conftest import make_settings

INTERVALS = st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**30),
                      st.sampled_from(["", "s", "m", "h", "d"]))


@settings(max_examples=200, deadline=None)
@given(interval=INTERVALS)
def test_any_interval_is_a_pass_or_a_named_fail(tmp_path_factory, interval):
    result = check_schedule(make_settings(tmp_path_factory.mktemp("h"), sync_interval=interval))
    assert result.ok or "SYNC_INTERVAL" in result.detail


def test_schedule_refuses_an_overflowing_interval_in_one_line(tmp_path):
    env = {"CONNECTOR_HOME": str(tmp_path / "home"), "SYNC_INTERVAL": "99999999h",
           "MOESIF_MANAGEMENT_API_KEY": "mgmt-key-0001", "SEGMENT_WRITE_KEY": "wk-0002",
           "MOESIF_API_URL": "http://127.0.0.1:9", "SEGMENT_HOST": "http://127.0.0.1:9"}
    result = CliRunner().invoke(app, ["schedule", "--once", "--no-progress"], env=env)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: SYNC_INTERVAL: too long to schedule (the next run would be past the year "
        "9999)"]


def teardown_function() -> None:
    import logging

    root = logging.getLogger()  # the CLI's handler wrote to the runner's (closed) stream
    for handler in [h for h in root.handlers if getattr(h, "_connector_handler", False)]:
        root.removeHandler(handler)
