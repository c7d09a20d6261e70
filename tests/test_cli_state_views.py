"""The forwarder's read-only views (`forward status`, `forward dead-letters list|show`)
on a CONNECTOR_HOME that cannot hold state: exit 2 naming it, never a table of zeros."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from connector.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [["forward", "status"], ["forward", "status", "--json"],
                                  ["forward", "dead-letters", "list"],
                                  ["forward", "dead-letters", "show", "1"]])
def test_a_file_in_place_of_connector_home_is_exit_2(tmp_path, args):
    home = tmp_path / "home"
    home.write_text("not a directory")
    result = runner.invoke(app, args, env={"CONNECTOR_HOME": str(home)})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "CONNECTOR_HOME" in lines[0] and "not a directory" in lines[0]


def test_status_without_a_state_file_says_so(tmp_path):
    result = runner.invoke(app, ["forward", "status"],
                           env={"CONNECTOR_HOME": str(tmp_path / "new"), "COLUMNS": "80"})
    assert result.exit_code == 0
    assert "None" not in result.output and "none yet" in result.output
