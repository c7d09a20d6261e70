"""The last line a command prints is scrubbed of every secret the process knows, whoever
wrote its text: settings' keys and the passwords of URL options (nats://user:pass@...)."""

from __future__ import annotations

import io

import typer
from typer.testing import CliRunner

from connector.cli.commands import _RedactingStream, _remember_url_secrets
from connector.cli.errors import command_boundary
from connector.errors import ConfigError
from connector.settings import load_settings

runner = CliRunner()


def _app_raising(text: str) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @command_boundary
    def boom() -> None:
        raise ConfigError(text)

    @app.command()
    @command_boundary
    def crash() -> None:
        raise RuntimeError(text)

    return app


def test_an_error_quoting_a_key_is_printed_without_it():
    key = "seg-LastLineKey-4711"
    load_settings(_env_file=None, segment_write_key=key)
    for command in ("boom", "crash"):
        result = runner.invoke(_app_raising(f"refused {key} at host"), [command])
        assert key not in result.output and "refused *** at host" in result.output
        assert result.output.count("\n") == 1


def test_a_nats_url_password_is_scrubbed_from_lines_the_bridge_prints():
    _remember_url_secrets("nats://svc:NatsOptionPw99@nats:4222", None)
    out = io.StringIO()
    stream = _RedactingStream(out)
    print("error: --from-nats: cannot connect to NATS at nats://svc:NatsOptionPw99@nats:4222",
          file=stream)
    assert "NatsOptionPw99" not in out.getvalue() and "svc:***@nats" in out.getvalue()
    result = runner.invoke(_app_raising("at nats://svc:NatsOptionPw99@nats:4222"), ["boom"])
    assert result.exit_code == 2 and "at nats://svc:***@nats:4222" in result.output


def test_with_json_logs_the_bridge_lines_become_json_lines_without_the_password():
    import json
    import logging

    from connector.ops.logsetup import setup_logging

    _remember_url_secrets("nats://svc:JsonModePw42@nats:4222")
    captured = io.StringIO()
    handler = setup_logging("INFO", "json", [], stream=captured)
    try:
        stream = _RedactingStream(io.StringIO())
        print("error: --from-nats: cannot connect to NATS at nats://svc:JsonModePw42@nats",
              file=stream)
        stream.write("forward: delivered=0 ")
        stream.write("exit=2\n")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [(ln["level"], ln["msg"]) for ln in lines] == [
        ("ERROR", "error: --from-nats: cannot connect to NATS at nats://svc:***@nats"),
        ("INFO", "forward: delivered=0 exit=2")]


def test_a_failed_sync_with_json_logs_writes_only_json_on_stderr(tmp_path):
    import json
    import logging
    import socket

    from connector.cli import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {"CONNECTOR_HOME": str(tmp_path / "home"), "MOESIF_API_URL": closed,
           "SEGMENT_HOST": closed, "MOESIF_MAX_RETRIES": "0",
           "MOESIF_MANAGEMENT_API_KEY": "mgmt-json-key-0001", "SEGMENT_WRITE_KEY": "wk-0002"}
    try:
        result = runner.invoke(app, ["sync", "--log-format", "json"], env=env)
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_connector_handler", False)]:
            root.removeHandler(handler)
    assert result.exit_code == 2  # nothing listens at MOESIF_API_URL: the setting
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # a plain line fails
    assert lines[-1]["level"] == "ERROR" and lines[-1]["msg"].startswith("error: ")
