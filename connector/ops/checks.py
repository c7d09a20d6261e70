"""`moesif-segment check`: settings and connectivity, before the first run.

Each check says what it looked at and, when it fails, what to change. Keys are shown only
as their last four characters.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table
from rich.text import Text

from connector.common.redaction import last4
from connector.errors import ConnectorError, ExitCode
from connector.mapping import load_mappings
from connector.moesif.management import MoesifAuthError, MoesifError, MoesifManagementClient
from connector.settings import ConfigError, Settings
from connector.state.store import check_home, connect, state_error


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
    """The answer judged by the sync's own table (SEGMENT_POLICY), so `check` passes only
    what a sync would accept: a 404 or a proxy's HTML page is the wrong SEGMENT_HOST, a
    5xx an outage, not "reachable"."""
    from connector.http.policy import Action
    from connector.segment.sink import SEGMENT_POLICY

    name = f"Segment host {settings.segment_host}"
    key = _secret(settings.segment_write_key)
    if not key:
        return CheckResult(name, False, "skipped: SEGMENT_WRITE_KEY is missing")
    path = f"{settings.segment_host}/v1/batch"
    try:
        # An empty batch sends nothing; the Tracking API answers it like any batch.
        resp = requests.post(path, json={"batch": []}, auth=(key, ""), timeout=10,
                             allow_redirects=False)
    except requests.RequestException as exc:
        verdict = SEGMENT_POLICY.judge_exception(exc, path)
        return CheckResult(name, False, f"unreachable: {verdict.message}")
    verdict = SEGMENT_POLICY.judge(resp, path, [key])
    if verdict.action is Action.AUTH:
        return CheckResult(name, False, f"answered {resp.status_code}: write key refused")
    if verdict.action in (Action.CONFIG, Action.RETRY):
        return CheckResult(name, False, verdict.message)
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
    from connector.ops.lease import describe_holder
    from connector.state.store import connect_state, db_errors, state_location

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
    from connector.alerts.rules import RULES

    # A misspelt name leaves its rule on without a word (rules.py compares names exactly).
    disabled = [n.strip() for n in settings.alert_rules_disabled.split(",") if n.strip()]
    unknown = [n for n in disabled if n not in RULES]
    if unknown:
        return CheckResult("alerts", False, f"ALERT_RULES_DISABLED: unknown rule(s) "
                           f"{', '.join(unknown)} (known: {', '.join(RULES)})")
    try:
        ok, detail = check_result(settings)
    except ConfigError as exc:
        return CheckResult("alerts", False, str(exc))
    return CheckResult("alerts", ok, detail)


CHECKS: list[Callable[[Settings], CheckResult | list[CheckResult]]] = [
    check_required, check_moesif, check_segment, check_state_dir, check_mappings,
    check_state_store, check_alerts]


def _row(name: str, ok: bool | None, detail: str) -> tuple[Text, Text, Text]:
    """A table row as rich Text, never markup: a detail quoting a TOML section such as
    `[apim.analytics.properties]` (or a path with brackets) must print as written."""
    mark = (Text("WARN", style="yellow") if ok is None else
            Text("PASS", style="green") if ok else Text("FAIL", style="red"))
    return Text(name), mark, Text(detail)


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
            table.add_row(*_row(result.name, result.ok, result.detail))
    console.print(table)
    return ExitCode.OK if all_ok else ExitCode.CONFIGURATION


# --- what a deployment runs: sync, forward, or both -----------------------------------------
class Scope(StrEnum):
    ALL = "all"          # whatever the settings say the deployment runs
    SYNC = "sync"
    FORWARD = "forward"


@dataclass
class CheckWarning:
    """Worth a look, but nothing fails because of it (an unknown variable)."""

    name: str
    detail: str


def checked_trigger(settings: Settings) -> object:
    """The schedule's trigger as `schedule` builds it, proven usable: its next fire time
    and period computed once, so an interval too long for a date ('99999999h') is a
    ConfigError naming the setting now, not an OverflowError at start or at a tick."""
    from datetime import UTC, datetime

    from connector.sync.schedule import build_trigger, schedule_period

    setting = "SYNC_CRON" if (settings.sync_cron or "").strip() else "SYNC_INTERVAL"
    try:
        trigger = build_trigger(settings)
        trigger.get_next_fire_time(None, datetime.now(UTC))
        schedule_period(trigger)
    except ValueError as exc:
        raise ConfigError(str(exc) if setting in str(exc) else f"{setting}: {exc}") from None
    except OverflowError:
        raise ConfigError(f"{setting}: too long to schedule (the next run would be "
                          "past the year 9999)") from None
    return trigger


def check_schedule(settings: Settings) -> CheckResult:
    """SYNC_INTERVAL / SYNC_CRON exactly as `schedule` reads them."""
    name = "schedule (SYNC_INTERVAL / SYNC_CRON)"
    try:
        trigger = checked_trigger(settings)
    except ConfigError as exc:
        return CheckResult(name, False, str(exc))
    return CheckResult(name, True, f"valid: {trigger}")


def check_application_id(settings: Settings, wso2_config: Path | None = None) -> CheckResult:
    """MOESIF_APPLICATION_ID (or deployment.toml's moesifKey), and deployment.toml readable,
    resolved exactly as `forward` resolves them."""
    from connector.forward.config import resolve_config

    name = "MOESIF_APPLICATION_ID" + (f" and {wso2_config}" if wso2_config else "")
    try:
        config = resolve_config(settings, wso2_config)
    except ConfigError as exc:
        return CheckResult(name, False, str(exc))
    return CheckResult(name, True, f"{last4(config.application_id.get_secret_value())}; "
                                   f"Collector {config.collector_url}")


def check_collector(settings: Settings, wso2_config: Path | None = None) -> CheckResult:
    """The Collector reachable and accepting the application id (GET /v1/config, no event)."""
    from connector.forward.config import resolve_config
    from connector.moesif.collector import CollectorClient

    try:
        config = resolve_config(settings, wso2_config)
    except ConfigError:
        return CheckResult("Moesif Collector", False,
                           "skipped: no usable MOESIF_APPLICATION_ID")
    name = f"Moesif Collector at {config.collector_url}"
    client = CollectorClient(config.collector_url, config.application_id, timeout=10.0,
                             retry_forever=False, max_attempts=2, backoff_initial=0.2,
                             backoff_max=1.0)
    try:
        client.check(max_attempts=2)
    except ConnectorError as exc:
        return CheckResult(name, False, str(exc))
    return CheckResult(name, True, "reachable, application id accepted")


def check_event_mapping(settings: Settings) -> CheckResult:
    """The forwarder's apim_events.toml compiles."""
    from connector.forward.moesif_event import default_mapping_path, load_mapping

    path = default_mapping_path()
    try:
        load_mapping(path)
    except ConfigError as exc:
        return CheckResult("event mapping", False, str(exc))
    return CheckResult("event mapping", True, f"valid: {path}")


def _known_variables() -> dict[str, str]:
    """Environment names of every setting, upper-cased, mapped to themselves."""
    names = {name.upper() for name in Settings.model_fields}
    return {n: n for n in names}


# How close (difflib's ratio) a name of any prefix must be to a setting's to be warned
# about: 0.94 for SEGMNET_WRITE_KEY, under 0.8 for every common unrelated variable.
_NEAR_MISS = 0.85


def _connector_like(name: str, prefixes: set[str]) -> bool:
    return name.split("_", 1)[0] in prefixes and "_" in name


def check_unknown_variables(settings: Settings,
                            environ: dict[str, str] | None = None,
                            env_file: Path | None = None) -> list[CheckWarning]:
    """Variables in the environment or `.env` that look like the connector's but are not
    (SYNC_INTERVALL, SEGMENT_WRITEKEY): they are silently ignored, so say so, with the
    closest known name."""
    import difflib

    known = _known_variables()
    prefixes = {n.split("_", 1)[0] for n in known}
    found: dict[str, str] = {}
    for name in (environ if environ is not None else os.environ):
        found.setdefault(name.upper(), "environment")
    path = env_file if env_file is not None else Path(".env")
    warnings = []
    if path.is_file():
        from dotenv import dotenv_values

        from connector.settings import dotenv_problems

        problems: list[str] = []
        with dotenv_problems(path, problems):
            names = list(dotenv_values(path))
        for name in names:
            found.setdefault(name.upper(), str(path))
        warnings += [CheckWarning(p.split(":", 1)[0], p.split(": ", 1)[1])
                     for p in sorted(set(problems))]
    for name, where in sorted(found.items()):
        if name in known:
            continue
        # A typo in the first word (MOSEIF_..., CONECTOR_HOME) has no known prefix: a
        # name this close to a setting is warned about whatever its prefix.
        near = difflib.get_close_matches(name, list(known), n=1, cutoff=_NEAR_MISS)
        if not near and not _connector_like(name, prefixes):
            continue
        close = near or difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "not a setting of the connector"
        warnings.append(CheckWarning(f"unknown variable {name}", f"({where}) ignored; {hint}"))
    return warnings


def _wanted(settings: Settings, scope: Scope) -> tuple[bool, bool]:
    """(sync, forward): what to check. `all` checks what the settings say will run; with
    nothing set it checks the sync, whose keys it then names as missing."""
    if scope is Scope.SYNC:
        return True, False
    if scope is Scope.FORWARD:
        return False, True
    sync = any(_secret(v) for v in (settings.moesif_management_api_key,
                                    settings.segment_write_key))
    forward = bool(_secret(settings.moesif_application_id))
    return sync or not forward, forward


def scoped_checks(settings: Settings, scope: Scope = Scope.ALL,
                  wso2_config: Path | None = None) -> list[CheckResult]:
    """Every check the scope asks for, sync's (CHECKS and the schedule) and forward's."""
    sync, forward = _wanted(settings, scope)
    results: list[CheckResult] = []
    if sync:
        for check in CHECKS:
            outcome = check(settings)
            results += outcome if isinstance(outcome, list) else [outcome]
        results.append(check_schedule(settings))
    if forward:
        results.append(check_application_id(settings, wso2_config))
        results.append(check_collector(settings, wso2_config))
        results.append(check_event_mapping(settings))
        if not sync:
            results.append(check_state_dir(settings))
    return results


def run_scoped_checks(settings: Settings, scope: Scope = Scope.ALL,
                      wso2_config: Path | None = None,
                      console: Console | None = None) -> ExitCode:
    """`moesif-segment check [sync|forward]`: a table, then the warnings; exit 0 or 2."""
    console = console or Console()
    results = scoped_checks(settings, scope, wso2_config)
    warnings = check_unknown_variables(settings)
    table = Table(title=f"moesif-segment check ({scope.value})")
    table.add_column("check", overflow="fold")
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for result in results:
        table.add_row(*_row(result.name, result.ok, result.detail))
    for warning in warnings:
        table.add_row(*_row(warning.name, None, warning.detail))
    console.print(table)
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.CONFIGURATION
