"""`moesif-segment report list | show | diff`: read the runs kept in the state file.

Mounted by the main CLI with `app.add_typer(report_app, name="report")`.
Exit status: 0 on success; 2 for a usage or settings mistake (an unknown or ambiguous run
id, no runs yet, an unusable state home); 1 when the run asked for is still running.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from connector.cli.errors import command_boundary, fail
from connector.errors import ExitCode
from connector.ops.lease import describe_holder
from connector.reports.model import EntityCounts, RunReport, Status
from connector.reports.render import (
    diff_reports,
    render_diff_text,
    render_html,
    render_json,
    render_text,
)
from connector.reports.store import AmbiguousRunId, ReportStore
from connector.settings import ConfigError, Settings, load_settings
from connector.state.store import check_home, connect_state, state_location

report_app = typer.Typer(help="Inspect the mapping reports of past runs.",
                         no_args_is_help=True, add_completion=False)

MAIN_ENTITIES = ("users", "companies")


class ShowFormat(StrEnum):
    text = "text"
    json = "json"
    html = "html"


class DiffFormat(StrEnum):
    text = "text"
    json = "json"


@contextlib.contextmanager
def _open_store() -> Iterator[tuple[Settings, ReportStore | None]]:
    """Settings and the report store (None when no state file exists yet)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    if not settings.state_url:
        check_home(settings.connector_home)
        if not settings.state_path.exists():
            yield settings, None
            return
    conn = connect_state(settings)
    try:
        yield settings, ReportStore(conn)
    finally:
        conn.close()


def _load(store: ReportStore | None, settings: Settings, run_id: str) -> RunReport:
    """A finished (or interrupted) run's report, or one line on stderr and its exit code."""
    if store is None:
        _fail(f"no runs recorded yet (no state at {state_location(settings)})")
    try:
        report = store.get(run_id)
    except AmbiguousRunId as exc:
        _fail(f"{exc}; give more characters of the run id")
    if report is None:
        what = "no finished run yet" if run_id == "latest" else f"no run with id {run_id!r}"
        _fail(f"{what} in {settings.connector_home} (see `moesif-segment report list`)")
    if report.status == Status.RUNNING:
        _fail(f"run {report.run_id} is still running; its report is saved when it ends",
              ExitCode.FAILED)
    return report


def _fail(message: str, code: ExitCode = ExitCode.CONFIGURATION) -> NoReturn:
    fail(message, code)


def _stdout_console() -> Console:
    # The terminal's width (or COLUMNS when piped; rich's default of 80 otherwise).
    return Console(highlight=False)


def _short_time(value: Any) -> str:
    text = str(value or "")
    return text[:19].replace("T", " ") if text else "–"


def _duration(value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _triple(counts: EntityCounts | None) -> str:
    if counts is None:
        return "–"
    return f"{counts.fetched:,}/{counts.delivered:,}/{counts.failed:,}"


@report_app.command("list")
@command_boundary
def list_runs(limit: int = typer.Option(20, "--limit", "-n", min=1,
                                        help="How many runs to show, newest first.")) -> None:
    """A table of recent runs, newest first."""
    with _open_store() as (settings, store):
        runs = store.list(limit) if store is not None else []
        holder = describe_holder(store.conn) if store is not None else None
    if holder is not None:
        typer.echo(holder)
    if not runs:
        typer.echo(f"no runs recorded yet in {state_location(settings)}")
        return
    extra = sorted({e for run in runs for e in run.entities} - set(MAIN_ENTITIES))
    console = _stdout_console()
    if console.width >= WIDE_LIST:
        console.print(_wide_list(runs, extra))
    else:
        _stacked_list(console, runs, extra)


WIDE_LIST = 130  # below this, `report list` stacks each run's counts under its line
_STATUS_STYLES = {Status.SUCCESS: "green", Status.PARTIAL: "yellow", Status.FAILED: "bold red",
                  Status.INTERRUPTED: "magenta", Status.RUNNING: "cyan"}


def _status_text(status: Any) -> Text:
    return Text(str(status), style=_STATUS_STYLES.get(status, ""))


def _wide_list(runs: list[Any], extra: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, caption="counts: fetched/delivered/failed")
    table.add_column("run id", no_wrap=True)
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("duration", justify="right")
    table.add_column("mode")
    table.add_column("status")
    for entity in (*MAIN_ENTITIES, *extra):
        table.add_column(f"{entity} f/d/fail", justify="right", no_wrap=True)
    for run in runs:
        table.add_row(Text(run.run_id), _short_time(run.started_at),
                      _duration(run.duration_s), Text(str(run.mode or "–")),
                      _status_text(run.status),
                      *(_triple(run.entities.get(e)) for e in (*MAIN_ENTITIES, *extra)))
    return table


def _stacked_list(console: Console, runs: list[Any], extra: list[str]) -> None:
    """Two lines a run: id, status, mode, duration; then its counts (fits 80 columns)."""
    id_width = max(len("run id"), *(len(run.run_id) for run in runs))
    console.print(Text(f"{'run id':<{id_width}}  {'status':<11} {'mode':<11} {'duration':>9}",
                       style="bold"), no_wrap=True, crop=True)
    for run in runs:
        line = Text(f"{run.run_id:<{id_width}}  ")
        line.append(f"{str(run.status):<11}", style=_STATUS_STYLES.get(run.status, ""))
        line.append(f" {str(run.mode or '–'):<11} {_duration(run.duration_s):>9}")
        console.print(line, no_wrap=True, crop=True)
        counts = [f"{e} {_triple(run.entities.get(e))}" for e in (*MAIN_ENTITIES, *extra)
                  if e in run.entities or e in MAIN_ENTITIES]
        console.print(Text("  " + "  ".join(counts), style="dim"))
    console.print(Text("counts: fetched/delivered/failed", style="dim"))


def _safe_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


@report_app.command("show")
@command_boundary
def show(
    run_id: str = typer.Argument("latest", help="A run id, a unique prefix of one, or latest."),
    fmt: ShowFormat = typer.Option(ShowFormat.text, "--format", "-f", help="text, json or html."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """One run's report: a text summary, the stored JSON, or a self-contained HTML page."""
    with _open_store() as (settings, store):
        report = _load(store, settings, run_id)
    if fmt is ShowFormat.json:
        content = render_json(report)
    elif fmt is ShowFormat.html:
        content = render_html(report)
        if output is None:
            name = _safe_name(report.run_id or run_id)
            output = settings.connector_home / "reports" / f"{name}.html"
    else:
        color = output is None and sys.stdout.isatty()
        content = render_text(report, width=_stdout_console().width, color=color)
    if output is None:
        typer.echo(content.rstrip("\n"))
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(content if content.endswith("\n") else content + "\n", encoding="utf-8")
    typer.echo(str(output))


@report_app.command("diff")
@command_boundary
def diff(
    run_a: str = typer.Argument(..., help="The earlier run (id, prefix, or latest)."),
    run_b: str = typer.Argument(..., help="The later run (id, prefix, or latest)."),
    fmt: DiffFormat = typer.Option(DiffFormat.text, "--format", "-f", help="text or json."),
) -> None:
    """What moved between two runs: counts, field coverage, issue codes, status."""
    with _open_store() as (settings, store):
        a = _load(store, settings, run_a)
        b = _load(store, settings, run_b)
    result = diff_reports(a, b)
    if fmt is DiffFormat.json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        color = sys.stdout.isatty()
        typer.echo(render_diff_text(result, width=_stdout_console().width, color=color)
                   .rstrip("\n"))


@report_app.command("issues")
@command_boundary
def issues(
    run_id: str = typer.Argument("latest", help="A run id, a unique prefix of one, or latest."),
    code: list[str] = typer.Option([], "--code", "-c",
                                   help="Only this issue code (repeat for more), "
                                        "e.g. --code REJECTED."),
    entity: str | None = typer.Option(None, "--entity", "-e",
                                      help="Only this entity: users or companies."),
    limit: int = typer.Option(100, "--limit", "-n", min=1, help="Show at most this many."),
    json_out: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
) -> None:
    """A run's issues with their detail, filtered by code and entity."""
    with _open_store() as (settings, store):
        report = _load(store, settings, run_id)
    codes = {c.upper() for c in code}
    picked = [i for i in report.issues
              if (not codes or str(i.code) in codes) and (entity is None or i.entity == entity)]
    if json_out:
        for issue in picked[:limit]:
            typer.echo(orjson.dumps(issue.model_dump(mode="json")).decode())
        return
    console = _stdout_console()
    if not picked:
        console.print(Text(f"no issues in run {report.run_id} match"
                           if codes or entity else f"no issues in run {report.run_id}"))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("entity", no_wrap=True)
    table.add_column("id", overflow="fold")
    table.add_column("code", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1)
    table.add_column("tries", justify="right", no_wrap=True)
    for issue in picked[:limit]:
        table.add_row(Text(issue.entity), Text(str(issue.id or "–")), Text(str(issue.code)),
                      Text(issue.detail), "" if issue.attempts is None else str(issue.attempts))
    console.print(table)
    shown = min(limit, len(picked))
    note = f"{shown:,} of {len(picked):,} matching issues"
    if report.issues_truncated:
        note += " (the run kept only its first issues; counts by code are in `report show`)"
    console.print(Text(note, style="dim"))
