"""The newcomer's first command, in-process: no keys, only the local sandbox."""

from connector.demo import DEMO_APP_ID, DEMO_MANAGEMENT_KEY, DEMO_WRITE_KEY, run_demo
from connector.state.store import connect


def test_demo_syncs_forwards_and_leaves_an_html_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNECTOR_HOME", str(tmp_path / "home"))
    assert run_demo(users=150, companies=15, log_lines=200) == 0
    out = capsys.readouterr().out
    html = next((tmp_path / "home" / "demo" / "reports").glob("*.html"))
    assert str(html) in out and "<svg" in html.read_text()
    assert "unique events" in out
    # Issue 9: a drift section, and one signed alert to the receiver the demo starts.
    assert "Schema drift" in out and "metadata.beta_program" in out
    assert "Alert receiver got alert.raised (signature verified)" in out
    assert "schema_added" in out
    conn = connect(tmp_path / "home" / "demo" / "state.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM record_hash").fetchone()[0] > 0
    for key in (DEMO_MANAGEMENT_KEY, DEMO_WRITE_KEY, DEMO_APP_ID):
        assert key not in out


def test_demo_output_fits_80_columns_and_its_hint_runs_as_printed(tmp_path, monkeypatch,
                                                                   capsys):
    from typer.testing import CliRunner

    from connector.cli import app

    monkeypatch.setenv("CONNECTOR_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("COLUMNS", "80")
    assert run_demo(users=120, companies=12, log_lines=100) == 0
    lines = capsys.readouterr().out.splitlines()
    long = [ln for ln in lines if len(ln) > 80 and str(tmp_path) not in ln]  # paths: whole
    assert not long, long
    hint = lines[lines.index("Inspect it:") + 1:]
    home = hint[0].strip().removeprefix("export CONNECTOR_HOME=")
    for command in hint[1:]:
        args = command.split()[1:]
        result = CliRunner().invoke(app, args, env={"CONNECTOR_HOME": home, "COLUMNS": "80"})
        assert result.exit_code == 0, (command, result.output)
