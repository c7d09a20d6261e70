"""`moesif-segment demo`: the first run of a newcomer, with no keys and no network.

Starts the local sandbox (Moesif Management API, Segment Tracking API, Moesif Collector),
syncs the sandbox's users and companies into the Segment sandbox, forwards a generated
`apim_metrics.log` into the Collector sandbox, then prints the summary and the path of
the HTML report. State lives in `<CONNECTOR_HOME>/demo`, wiped at each demo.
"""

from __future__ import annotations

import io
import shlex
import shutil
import tempfile
import textwrap
import threading
from pathlib import Path

import typer
from pydantic import SecretStr

from connector.settings import Settings, load_settings

DEMO_MANAGEMENT_KEY = "demo-management-key"
DEMO_WRITE_KEY = "demo-write-key"
DEMO_APP_ID = "demo-application-id"


def demo_settings(home: Path, moesif_url: str, segment_url: str, collector_url: str) -> Settings:
    base = load_settings()
    return base.model_copy(update={
        "connector_home": home,
        "moesif_api_url": moesif_url,
        "segment_host": segment_url,
        "moesif_collector_url": collector_url,
        "moesif_management_api_key": SecretStr(DEMO_MANAGEMENT_KEY),
        "segment_write_key": SecretStr(DEMO_WRITE_KEY),
        "moesif_application_id": SecretStr(DEMO_APP_ID),
    })


DEMO_ALERT_SECRET = "demo-alert-secret"


def _wrap(text: str) -> str:
    """Demo lines fit an 80-column terminal (URLs and paths are never broken)."""
    return "\n".join(textwrap.fill(part, width=80, break_long_words=False,
                                    break_on_hyphens=False, subsequent_indent="    ")
                      for part in text.split("\n"))


def _drift_and_alert(sandbox, settings: Settings, users: int):  # noqa: ANN001, ANN202
    """Issue 9 in the demo: some Moesif users gain a metadata field; a second run reports
    the drift and, with SCHEMA_DRIFT_POLICY=alert, sends a signed `schema_added` alert to
    a receiver the demo starts. Returns the second run's outcome (its report is saved)."""
    from connector.sandbox.alert_receiver import AlertReceiver
    from connector.sync.job import run_sync

    ds = sandbox.dataset
    for i in range(0, users, 10):
        doc = ds.get_user(ds.user_key(i))
        if doc:
            ds.users.update(ds.user_key(i), {
                "metadata": {**(doc.get("metadata") or {}), "beta_program": True}}, None)
    receiver = AlertReceiver(secret=DEMO_ALERT_SECRET)
    with receiver.server() as server:
        alerting = settings.model_copy(update={
            "alert_webhook_url": server.url, "schema_drift_policy": "alert",
            "alert_webhook_secret": SecretStr(DEMO_ALERT_SECRET)})
        typer.echo(_wrap("\nSome Moesif users gained metadata.beta_program; syncing again "
                         "with SCHEMA_DRIFT_POLICY=alert and an alert receiver at "
                         f"{server.url}"))
        outcome = run_sync(alerting, "incremental")
        receiver.wait_for(1, timeout=settings.alert_webhook_max_seconds)
    schema = outcome.report.schema_section or {}
    typer.echo("Schema drift in that run (see `report show latest`):")
    for kind in ("added", "type_changed", "vanished"):
        for item in schema.get(kind) or []:
            typer.echo(_wrap(f"  schema {kind}: {item.get('entity')}.{item.get('path')} "
                             f"({', '.join(item.get('types') or [])}) in "
                             f"{item.get('records')} of {item.get('of_records')} records"))
    for got in receiver.received:
        signed = "signature verified" if got.verified else "signature NOT verified"
        typer.echo(_wrap(f"Alert receiver got {got.payload.get('event')} ({signed}): "
                         f"{got.payload.get('text')}"))
    if not receiver.received:
        typer.echo("Alert receiver got nothing (see `moesif-segment alerts list`)")
    return outcome


def run_demo(users: int = 2000, companies: int = 200, log_lines: int = 5000) -> int:
    from connector.forward.pipeline import run_forward
    from connector.ops.logsetup import setup_logging
    from connector.reports.render import render_html, render_summary
    from connector.sandbox.apim_log import LogGenerator
    from connector.sandbox.moesif_collector import MoesifCollectorSandbox
    from connector.sandbox.serve import start_sync_sandbox
    from connector.sync.job import run_sync

    home = load_settings().connector_home / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    setup_logging("WARNING", "text", [DEMO_MANAGEMENT_KEY, DEMO_WRITE_KEY, DEMO_APP_ID])
    typer.echo(f"Starting the local sandbox ({users} users, {companies} companies)...")
    collector = MoesifCollectorSandbox({DEMO_APP_ID})
    with start_sync_sandbox(users, companies, management_key=DEMO_MANAGEMENT_KEY,
                            write_key=DEMO_WRITE_KEY) as sandbox, \
            collector.server() as collector_server:
        settings = demo_settings(home, sandbox.moesif_url, sandbox.segment_url,
                                 collector_server.url)
        typer.echo(f"Syncing Moesif ({sandbox.moesif_url}) -> Segment ({sandbox.segment_url})")
        outcome = run_sync(settings, "incremental")
        first = outcome.report.entities
        typer.echo(_wrap(f"First run {outcome.report.run_id} {outcome.report.status}: "
                         + "; ".join(f"{e} {c.fetched} fetched, {c.delivered} delivered, "
                                     f"{c.invalid} invalid" for e, c in first.items())))
        outcome = _drift_and_alert(sandbox, settings, users)
        html_path = home / "reports" / f"{outcome.report.run_id}.html"
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(outcome.report), encoding="utf-8")
        width = min(120, shutil.get_terminal_size((80, 24)).columns)
        typer.echo(render_summary(outcome.report, width=width,
                                  html_path=str(html_path.resolve())).rstrip("\n"))

        typer.echo(f"\nForwarding a generated apim_metrics.log ({log_lines} lines)\n"
                   f"  into the Moesif Collector sandbox ({collector_server.url})")
        with tempfile.TemporaryDirectory() as tmp:
            log_path = Path(tmp) / "apim_metrics.log"
            LogGenerator(seed=7).write(log_path, log_lines)
            forward_code = run_forward(settings, from_log=log_path, from_jsonl=None, listen=None,
                                       wso2_config_path=None, once=True,
                                       stop_event=threading.Event(), out=io.StringIO())
        typer.echo(f"Collector sandbox received {collector.unique_count} unique events "
                   f"(forward exit code {forward_code}).")
    # Each line runs as printed (the demo's state is in its own home).
    typer.echo(f"\nInspect it:\n  export CONNECTOR_HOME={shlex.quote(str(home.resolve()))}\n"
               "  moesif-segment report show latest\n"
               "  moesif-segment report issues latest\n"
               "  moesif-segment forward dead-letters list")
    return int(max(outcome.exit_code, forward_code))
