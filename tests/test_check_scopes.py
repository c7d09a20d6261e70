"""`check [all|sync|forward]`: what will run is what gets checked, over loopback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner

from connector.cli import app
from connector.ops.checks import (
    Scope,
    check_schedule,
    check_unknown_variables,
    run_scoped_checks,
    scoped_checks,
)
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings
from tests.conftest import APP_ID, assert_no_keys_in


@pytest.fixture(scope="module")
def collector_url():
    collector = MoesifCollectorSandbox({APP_ID}, record_events=False)
    with collector.server() as server:
        yield server.url


@pytest.fixture
def forward_only(settings_factory, collector_url):
    return settings_factory(moesif_management_api_key=None, segment_write_key=None,
                            moesif_collector_url=collector_url)


def test_schedule_settings_are_checked_like_schedule_reads_them(settings_factory):
    bad = check_schedule(settings_factory(sync_interval="15x"))
    assert not bad.ok and "SYNC_INTERVAL" in bad.detail
    both = check_schedule(settings_factory(sync_interval="15m", sync_cron="0 * * * *"))
    assert not both.ok
    assert check_schedule(settings_factory(sync_cron="*/5 * * * *")).ok


def test_a_forward_only_deployment_passes_without_segment_keys(forward_only):
    results = scoped_checks(forward_only, Scope.ALL)
    assert all(r.ok for r in results), results
    names = " ".join(r.name for r in results)
    assert "SEGMENT_WRITE_KEY" not in names and "Collector" in names
    console = Console(record=True, width=100)
    assert run_scoped_checks(forward_only, Scope.ALL, console=console) == 0
    assert_no_keys_in(console.export_text())


def test_forward_checks_fail_on_a_refused_id_and_a_missing_one(forward_only):
    wrong = forward_only.model_copy(update={"moesif_application_id": SecretStr("not-the-id")})
    failed = [r for r in scoped_checks(wrong, Scope.FORWARD) if not r.ok]
    assert [r.name.split(" at ")[0] for r in failed] == ["Moesif Collector"]
    missing = forward_only.model_copy(update={"moesif_application_id": None})
    failed = [r for r in scoped_checks(missing, Scope.FORWARD) if not r.ok]
    assert any("MOESIF_APPLICATION_ID" in r.detail for r in failed)
    # With nothing set, `all` checks the sync and names its missing keys.
    assert any("SEGMENT_WRITE_KEY" in r.name for r in scoped_checks(missing, Scope.ALL))


def test_unreadable_deployment_toml_fails_forward(forward_only, tmp_path):
    results = scoped_checks(forward_only, Scope.FORWARD, tmp_path / "nope.toml")
    assert not results[0].ok and "nope.toml" in results[0].detail


def test_unknown_variables_are_warned_with_the_closest_name(settings_factory, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SEGMENT_WRITEKEY=abc\nMOESIF_API_URL=http://x.test\n")
    warnings = check_unknown_variables(
        settings_factory(), {"SYNC_INTERVALL": "15m", "HOME": "/root", "SYNC_CRON": "x"},
        env_file)
    found = {w.name.removeprefix("unknown variable "): w.detail for w in warnings}
    assert set(found) == {"SYNC_INTERVALL", "SEGMENT_WRITEKEY"}
    assert "SYNC_INTERVAL?" in found["SYNC_INTERVALL"] and "environment" in found["SYNC_INTERVALL"]
    assert "SEGMENT_WRITE_KEY?" in found["SEGMENT_WRITEKEY"] and ".env" in found["SEGMENT_WRITEKEY"]


def test_cli_check_target_and_interval_mistakes_exit_2(tmp_path):
    runner = CliRunner()
    env = {"CONNECTOR_HOME": str(tmp_path / "home")}
    result = runner.invoke(app, ["check", "nope"], env=env)
    assert result.exit_code == 2 and "error: check: unknown target 'nope'" in result.stderr
    result = runner.invoke(app, ["check", "sync"], env={**env, "SYNC_INTERVAL": "15x",
                                                        "COLUMNS": "200"})
    assert result.exit_code == 2 and "SYNC_INTERVAL: not an interval" in result.stdout


def test_a_misspelt_rule_to_disable_fails_the_alerts_check(tmp_path):
    from connector.ops.checks import check_alerts
    from tests.conftest import make_settings

    result = check_alerts(make_settings(tmp_path, alert_rules_disabled="runtime,Stale,runtim"))
    assert not result.ok
    assert "ALERT_RULES_DISABLED: unknown rule(s) Stale, runtim" in result.detail
    assert check_alerts(make_settings(tmp_path, alert_rules_disabled="runtime,stale")).ok


COMMON_VARIABLES = ("PATH", "HOME", "LANG", "TERM", "PWD", "SHELL", "PYTHONPATH",
                    "HOSTNAME", "USER", "LC_ALL", "COLUMNS", "SSH_AUTH_SOCK", "TZ",
                    "XDG_RUNTIME_DIR", "LS_COLORS", "KUBERNETES_SERVICE_HOST",
                    "DATABASE_URL", "VIRTUAL_ENV", "HTTPS_PROXY", "NO_PROXY")


def _typos(name: str) -> st.SearchStrategy[str]:
    """One transposition, deletion or duplication in a setting's name."""
    i = st.integers(0, len(name) - 2)
    return st.one_of(
        i.map(lambda k: name[:k] + name[k + 1] + name[k] + name[k + 2:]),
        i.map(lambda k: name[:k] + name[k + 1:]),
        i.map(lambda k: name[:k] + name[k] + name[k:]))


@hyp_settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(n.upper() for n in Settings.model_fields)).flatmap(_typos))
def test_a_typo_anywhere_in_a_setting_name_is_warned(tmp_path_factory, typo):
    """A typo in the first word (MOSEIF_..., CONECTOR_HOME) too, not only after a known
    prefix; the common variables of a shell or a pod are never warned about."""
    known = {n.upper() for n in Settings.model_fields}
    if typo in known or len(typo) < 8:
        return
    environ = {typo: "x", **dict.fromkeys(COMMON_VARIABLES, "x")}
    warnings = check_unknown_variables(Settings(_env_file=None), environ,
                                       tmp_path_factory.mktemp("e") / ".env")
    assert [w.name for w in warnings] == [f"unknown variable {typo}"]


def test_a_detail_quoting_a_toml_section_prints_as_written(settings_factory, tmp_path):
    toml = tmp_path / "deployment.toml"
    toml.write_text('[apim.analytics]\nenable = true\ntype = "moesif"\n'
                    '[apim.analytics.properties]\nmoesifKey = "$secret{moesif_key}"\n')
    settings = settings_factory(moesif_application_id=None)
    console = Console(width=300, record=True, color_system=None)
    assert run_scoped_checks(settings, Scope.FORWARD, toml, console=console) != 0
    text = console.export_text()
    assert "moesifKey under [apim.analytics.properties] is a $secret{...}" in text


@hyp_settings(max_examples=50, deadline=None)
@given(detail=st.text(alphabet=st.sampled_from("[]/ab=#$\\{}:"), min_size=1, max_size=40))
def test_any_detail_text_is_printed_literally_not_as_markup(detail: str) -> None:
    from rich.table import Table

    from connector.ops.checks import _row

    table = Table()
    for name in ("check", "result", "detail"):
        table.add_column(name, no_wrap=True)
    table.add_row(*_row("name [x]", False, detail))
    console = Console(width=500, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert detail.strip() in text and "name [x]" in text and "FAIL" in text
