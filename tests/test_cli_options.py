"""Every numeric option of every command: out of range is a usage error (exit 2) before
anything starts, never an 'unexpected OverflowError' (exit 1)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from connector.cli import app

runner = CliRunner()


# (command path, option, is a port): every numeric option a command takes.
CASES = [
    (("schedule",), "--metrics-port", True),
    (("forward",), "--metrics-port", True),
    (("sandbox",), "--moesif-port", True),
    (("sandbox",), "--segment-port", True),
    (("sandbox",), "--collector-port", True),
    (("sandbox",), "--users", False),
    (("sandbox",), "--companies", False),
    (("demo",), "--users", False),
    (("demo",), "--companies", False),
    (("demo",), "--events", False),
    (("forward",), "--deadline", False),
    (("forward", "dead-letters", "list"), "--limit", False),
    (("report", "list"), "--limit", False),
    (("report", "issues"), "--limit", False),
]


@pytest.mark.parametrize(("path", "option", "is_port"), CASES)
@pytest.mark.parametrize("value", ["-1", "99999", "99999999999999999999"])
def test_an_out_of_range_number_is_a_usage_error(tmp_path, path, option, is_port, value):
    if not is_port and value != "-1":
        pytest.skip("a large count is a valid count")
    args = [*path, option, value]
    if path == ("forward",):
        args += ["--from-log", str(tmp_path / "x.log"), "--once"]
    result = runner.invoke(app, args, env={"CONNECTOR_HOME": str(tmp_path / "home"),
                                           "COLUMNS": "80"})
    assert result.exit_code == 2, (args, result.output)
    assert "unexpected" not in result.output and "Traceback" not in result.output
