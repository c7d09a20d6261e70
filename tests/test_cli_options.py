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


# Every option refuses a negative number; ports also refuse what is over 65535 (a large
# count is a valid count, so counts are not given those).
OUT_OF_RANGE = [(path, option, value) for path, option, is_port in CASES
                for value in (["-1", "99999", "99999999999999999999"] if is_port else ["-1"])]


@pytest.mark.parametrize(("path", "option", "value"), OUT_OF_RANGE)
def test_an_out_of_range_number_is_a_usage_error(tmp_path, path, option, value):
    args = [*path, option, value]
    if path == ("forward",):
        args += ["--from-log", str(tmp_path / "x.log"), "--once"]
    result = runner.invoke(app, args, env={"CONNECTOR_HOME": str(tmp_path / "home"),
                                           "COLUMNS": "80"})
    assert result.exit_code == 2, (args, result.output)
    assert option in result.output, result.output  # refused for this option, not another
    assert "unexpected" not in result.output and "Traceback" not in result.output


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from connector.cli import main

    monkeypatch.setattr("sys.argv", ["moesif-segment", *args])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.mark.parametrize(("args", "line"), [
    (["sync", "--bogus"], "error: sync: No such option: --bogus (see --help)"),
    (["nosuchcmd"], "error: No such command 'nosuchcmd'. (see --help)"),
    (["report", "issues", "latest", "--limit", "0"],
     "error: report issues: --limit: must be at least 1 (see --help)"),
    (["sandbox", "--moesif-port", "99999"],
     "error: sandbox: --moesif-port: must be at most 65535 (see --help)"),
])
def test_a_usage_mistake_is_one_error_line_and_exit_2(monkeypatch, capsys, tmp_path, args,
                                                      line):
    monkeypatch.setenv("CONNECTOR_HOME", str(tmp_path / "home"))
    code, out, err = _main(monkeypatch, capsys, *args)
    assert code == 2 and out == "" and err.splitlines() == [line]


def test_help_and_version_still_exit_0(monkeypatch, capsys):
    code, out, _ = _main(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("moesif-segment ")
    code, out, _ = _main(monkeypatch, capsys, "sync", "--help")
    assert code == 0 and "--dry-run" in out


def test_a_bad_number_setting_reads_short(monkeypatch):
    from connector.errors import ConfigError
    from connector.settings import load_settings

    for value, text in (("1e30", "LEASE_SECONDS: must be a valid integer"),
                        ("99999999", "LEASE_SECONDS: must be at most 604800"),
                        ("1", "LEASE_SECONDS: must be at least 10")):
        monkeypatch.setenv("LEASE_SECONDS", value)
        with pytest.raises(ConfigError) as err:
            load_settings(_env_file=None)
        assert str(err.value) == f"invalid setting(s): {text}"
