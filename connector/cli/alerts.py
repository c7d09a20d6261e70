"""`moesif-segment alerts list | test`.

`list`: the open alerts (raised, not resolved) and the alert events not delivered yet.
`test`: one signed `alert.test` event to every ALERT_WEBHOOK_URL; exit 0 only if every
receiver answered 2xx (1 otherwise; 2 when no receiver is configured).
"""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from connector.cli.errors import command_boundary, fail
from connector.errors import ExitCode
from connector.settings import load_settings
from connector.state.store import check_home, connect

alerts_app = typer.Typer(help="Open alerts, and a test of the alert webhook.",
                         no_args_is_help=True, add_completion=False)


@alerts_app.command("list")
@command_boundary
def list_alerts() -> None:
    """Open alerts, and alert events whose delivery failed."""
    from connector.alerts.state import AlertStore

    settings = load_settings()
    check_home(settings.connector_home)
    console = Console(highlight=False)  # the terminal's width (COLUMNS), 80 when piped
    if not settings.state_path.exists():
        console.print("no open alerts (no state file yet)")
        return
    conn = connect(settings.state_path)
    try:
        store = AlertStore(conn)
        opened, undelivered = store.open_alerts(), store.undelivered()
    finally:
        conn.close()
    if not opened:
        console.print("no open alerts")
    else:
        table = Table(title="Open alerts", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("since", "severity", "source", "rule", "alert id", "message"):
            table.add_column(name, overflow="fold" if name == "message" else None)
        for a in opened:
            table.add_row(*(Text(str(v)) for v in (a.raised_at, a.severity, a.source,
                                                    a.rule, a.alert_id, a.message)))
        console.print(table)
    if undelivered:
        table = Table(title="Alert events not delivered", box=box.SIMPLE_HEAD,
                      title_justify="left")
        for name in ("at", "event", "rule", "passes", "error"):
            table.add_column(name, overflow="fold" if name == "error" else None)
        for u in undelivered:
            table.add_row(*(Text(str(v)) for v in (u["at"], u["event"], u["rule"],
                                                    u["passes"],
                                                    u["error"] or "not tried yet")))
        console.print(table)


@alerts_app.command("test")
@command_boundary
def test_alert() -> None:
    """Send a signed test event; exit 0 only if every receiver answered 2xx."""
    from connector.alerts import send_test
    from connector.alerts.webhook import webhook_urls

    settings = load_settings()
    urls = webhook_urls(settings)
    if not urls:
        fail("ALERT_WEBHOOK_URL is not set: no receiver to test", ExitCode.CONFIGURATION)
    results = send_test(settings)
    for r in results:
        host = urls[r.url_index].split("//", 1)[-1].split("/", 1)[0]
        verdict = f"HTTP {r.status}" if r.ok else (r.error or f"HTTP {r.status}")
        verdict = verdict.removeprefix(f"{host}: ")  # the line starts with the host
        typer.echo(f"{host}: {'ok' if r.ok else 'FAILED'} ({verdict}, {r.attempts} "
                   f"attempt(s))")
    if not settings.alert_webhook_secret:  # its own line: each fits 80 columns
        typer.echo("note: unsigned, ALERT_WEBHOOK_SECRET is not set")
    raise typer.Exit(int(ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILED))
