"""`moesif-segment check`: settings and connectivity, before the first run.

Each check says what it looked at and, when it fails, what to change. Keys are shown only
as their last four characters.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import requests
from rich.console import Console
from rich.table import Table

from connector.errors import ExitCode
from connector.mapping import load_mappings
from connector.moesif.management import MoesifAuthError, MoesifError, MoesifManagementClient
from connector.redaction import last4
from connector.settings import ConfigError, Settings
from connector.store import check_home, connect, state_error


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


def _secret(value) -> str | None:  # noqa: ANN001 - SecretStr | None
    return value.get_secret_value() if value is not None else None


def check_required(settings: Settings) -> list[CheckResult]:
    results = []
    for env, value in (("MOESIF_MANAGEMENT_API_KEY", settings.moesif_management_api_key),
                       ("SEGMENT_WRITE_KEY", settings.segment_write_key)):
        secret = _secret(value)
        results.append(CheckResult(f"{env} set", bool(secret and secret.strip()),
                                   last4(secret) if secret else "missing: export it"))
    app_id = _secret(settings.moesif_application_id)
    results.append(CheckResult(
        "MOESIF_APPLICATION_ID (forward only)", True,
        last4(app_id) if app_id else "not set (needed only by `forward`)"))
    return results


def check_moesif(settings: Settings) -> CheckResult:
    name = f"Moesif Management API at {settings.moesif_api_url}"
    if settings.moesif_management_api_key is None:
        return CheckResult(name, False, "skipped: MOESIF_MANAGEMENT_API_KEY is missing")
    client = MoesifManagementClient(settings.moesif_api_url, settings.moesif_management_api_key,
                                    timeout=min(settings.moesif_timeout_seconds, 10.0),
                                    max_retries=1)
    try:
        page = client.search("users", {"size": 1, "query": {"match_all": {}}})
    except MoesifAuthError as exc:
        return CheckResult(name, False, str(exc))
    except MoesifError as exc:
        return CheckResult(name, False, f"unreachable or failing: {exc}")
    return CheckResult(name, True, f"reachable, key accepted ({page.total} users)")


def check_segment(settings: Settings) -> CheckResult:
    name = f"Segment host {settings.segment_host}"
    key = _secret(settings.segment_write_key)
    if not key:
        return CheckResult(name, False, "skipped: SEGMENT_WRITE_KEY is missing")
    try:
        # An empty batch sends nothing; any answer proves the host is reachable.
        resp = requests.post(f"{settings.segment_host}/v1/batch", json={"batch": []},
                             auth=(key, ""), timeout=10)
    except requests.RequestException as exc:
        return CheckResult(name, False, f"unreachable: {type(exc).__name__}")
    if resp.status_code in (401, 403):
        return CheckResult(name, False, f"answered {resp.status_code}: write key refused")
    if resp.status_code >= 500:
        return CheckResult(name, False, f"answered {resp.status_code}")
    return CheckResult(name, True, f"reachable (HTTP {resp.status_code}); note: Segment "
                                   "accepts unknown write keys with 200, check the source's "
                                   "debugger after the first run")


def check_state_dir(settings: Settings) -> CheckResult:
    """CONNECTOR_HOME writable and its state file (if any) a sound SQLite file; a damaged
    one is only read, never changed."""
    home = settings.connector_home
    name = f"state directory {home}"
    try:
        check_home(home)
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-test-"):
            pass
        if settings.state_path.exists():
            connect(settings.state_path).close()
    except ConfigError as exc:
        return CheckResult(name, False, str(exc))
    except OSError as exc:
        mapped = state_error(exc, settings.state_path)
        return CheckResult(name, False, str(mapped) if mapped else
                           f"not writable: {exc.strerror}; set CONNECTOR_HOME")
    return CheckResult(name, True, "writable" + (", state file readable"
                                                 if settings.state_path.exists() else ""))


def check_mappings(settings: Settings) -> CheckResult:
    try:
        mappings = load_mappings(settings.mappings_dir)
    except ConfigError as exc:
        return CheckResult("mapping files", False, str(exc))
    files = ", ".join(os.fspath(f) for f in mappings.files)
    return CheckResult("mapping files", True, f"valid (version {mappings.version}): {files}")


def check_state_store(settings: Settings) -> list[CheckResult]:
    """STATE_URL's PostgreSQL reachable (schema created if missing), and who holds the
    sync lease (also for the SQLite file, when it exists)."""
    from connector.lease import describe_holder
    from connector.store import connect_state, db_errors, state_location

    if not settings.state_url and not settings.state_path.exists():
        return []
    name = f"state store {state_location(settings)}"
    try:
        conn = connect_state(settings)
        try:
            detail = describe_holder(conn)
        finally:
            conn.close()
    except ConfigError as exc:
        return [CheckResult(name, False, str(exc))]
    except db_errors() as exc:
        return [CheckResult(name, False, f"{type(exc).__name__}: {exc}")]
    return [CheckResult(name, True, detail)]


def check_alerts(settings: Settings) -> CheckResult:
    """Issue 9: no stale sync, every alert delivered, a usable ALERT_WEBHOOK_URL."""
    from connector.alerts import check_result

    try:
        ok, detail = check_result(settings)
    except ConfigError as exc:
        return CheckResult("alerts", False, str(exc))
    return CheckResult("alerts", ok, detail)


CHECKS: list[Callable[[Settings], CheckResult | list[CheckResult]]] = [
    check_required, check_moesif, check_segment, check_state_dir, check_mappings,
    check_state_store, check_alerts]


def run_checks(settings: Settings, console: Console | None = None) -> ExitCode:
    console = console or Console()
    table = Table(title="moesif-segment check")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    all_ok = True
    for check in CHECKS:
        outcome = check(settings)
        for result in outcome if isinstance(outcome, list) else [outcome]:
            all_ok &= result.ok
            mark = "[green]PASS[/green]" if result.ok else "[red]FAIL[/red]"
            table.add_row(result.name, mark, result.detail)
    console.print(table)
    return ExitCode.OK if all_ok else ExitCode.CONFIGURATION
