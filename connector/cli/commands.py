"""The `moesif-segment` command: sync, schedule, report, check, forward, demo, sandbox.

Exit codes (`connector.errors.ExitCode`, decided by `exit_code_for`): 0 all good; 1 some
deliveries failed, the run was interrupted or failed unexpectedly (the next run retries);
2 a configuration, usage or authentication problem, with one line naming the setting or
option (never a key). Every command prints failures as one `error: ...` line on stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from connector.cli.errors import command_boundary, fail
from connector.errors import ExitCode
from connector.ops.signals import stop_on_signals
from connector.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # the sync's modules load only for the commands that run a sync
    from connector.cli.progress import SyncProgress
    from connector.reports.model import RunReport
    from connector.sync.job import SyncOutcome

app = typer.Typer(no_args_is_help=True, add_completion=True,
                  help="Sync Moesif users/companies into Segment; forward WSO2 APIM "
                       "analytics events into Moesif.\n\nExit codes: 0 all good; 1 some "
                       "deliveries failed or the run was interrupted (the next run "
                       "retries); 2 a configuration or usage mistake (one `error:` line). "
                       "Settings come from the environment or ./.env; see .env.example.")
log = logging.getLogger("connector")


class LogFormat(StrEnum):
    text = "text"
    json = "json"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_ONCE_DEADLINE = 600.0  # a cron'd `forward --once` must end before the next one
LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR (any case)."
LOG_FORMAT_HELP = "text (readable lines) or json (one object a line, with the run id)."


def _version(value: bool) -> None:
    if value:
        from connector import __version__

        typer.echo(f"moesif-segment {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """The `moesif-segment` command (its help is the app's)."""


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str, code: ExitCode = ExitCode.CONFIGURATION) -> NoReturn:
    fail(message, code)


def _check_home(settings: Settings) -> None:
    """For the read-only views: CONNECTOR_HOME with a file in its place is exit 2, not a
    status of zeros (a missing home is only "nothing yet")."""
    from connector.state.store import check_home

    check_home(settings.connector_home)


def _ensure_home(settings: Settings) -> None:
    """CONNECTOR_HOME exists or can be created: else one line naming it, exit 2."""
    from connector.state.store import check_home, state_error

    home = settings.connector_home
    check_home(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise state_error(exc, settings.state_path) or ConfigError(
            f"CONNECTOR_HOME ({home}) cannot be created ({exc.strerror or exc}); set "
            "CONNECTOR_HOME to a directory this user can write") from None


def _logging(settings: Settings, fmt: LogFormat, level: str) -> None:
    from connector.ops.logsetup import setup_logging

    try:
        setup_logging(level, fmt.value, settings.secrets())
    except ValueError:
        _fail(f"--log-level: unknown level {level!r} (use DEBUG, INFO, WARNING or ERROR)")
    _note_legacy_home(settings)
    from connector.settings import ENV_FILE_PROBLEMS

    for problem in ENV_FILE_PROBLEMS:
        log.warning("%s", problem)


def _note_legacy_home(settings: Settings) -> None:
    from connector.settings import LEGACY_HOME

    if "connector_home" not in settings.model_fields_set and settings.connector_home == \
            LEGACY_HOME:
        log.info("using the state in ./%s (found in the working directory); set "
                 "CONNECTOR_HOME=%s to keep using it from anywhere", LEGACY_HOME,
                 LEGACY_HOME.resolve())


def _progress_callback(enabled: bool) -> SyncProgress:
    """A rich progress bar on a terminal, plain log lines otherwise (a context manager
    that is also the run's progress callback)."""
    from connector.cli.progress import SyncProgress

    return SyncProgress(enabled=enabled and sys.stderr.isatty())


# Options that sync, schedule and forward share (a fresh OptionInfo for each command).
def _log_format_option() -> Any:
    return typer.Option(LogFormat.text, "--log-format", help=LOG_FORMAT_HELP)


def _log_level_option() -> Any:
    return typer.Option("INFO", "--log-level", help=LOG_LEVEL_HELP,
                        autocompletion=lambda: list(LOG_LEVELS))


def _progress_option() -> Any:
    return typer.Option(True, "--progress/--no-progress",
                        help="A progress bar on stderr when it is a terminal.")


# --- sync ----------------------------------------------------------------------------------
@app.command()
@command_boundary
def sync(
    full: bool = typer.Option(False, "--full", help="Ignore cursors and hashes; resend all."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Fetch, map and report; send nothing, move nothing."),
    log_format: LogFormat = _log_format_option(),
    log_level: str = _log_level_option(),
    progress: bool = _progress_option(),
) -> None:
    """One incremental sync run: Moesif users and companies -> Segment identify/group.

    Settings: MOESIF_MANAGEMENT_API_KEY and SEGMENT_WRITE_KEY (required), MOESIF_API_URL,
    SEGMENT_HOST, CONNECTOR_HOME, MAPPINGS_DIR, MOESIF_*/SEGMENT_*/SYNC_* tuning (see
    .env.example). Exit: 0 all delivered; 1 some deliveries failed or the run was
    interrupted (the next run retries); 2 a configuration mistake.
    """
    from connector.reports.model import Status
    from connector.reports.render import render_summary

    settings = _settings()
    _logging(settings, log_format, log_level)
    if full and dry_run:
        _fail("--full and --dry-run cannot be combined")
    mode = "dry-run" if dry_run else "full" if full else "incremental"
    stop = threading.Event()
    with stop_on_signals(stop, "finishing the page in hand"), \
            _progress_callback(progress and log_format is LogFormat.text) as bar:
        outcome = run_sync_locked(settings, mode, stop, bar)
    report = outcome.report
    if outcome.started:  # a run stopped before it began has only zeros to tell
        log_summary(report, int(outcome.exit_code))
    if outcome.exit_code == ExitCode.CONFIGURATION and report.error:
        _fail(report.error)  # a person must act: one line, not a report of zeros
    typer.echo(render_summary(report, width=_terminal_width()).rstrip("\n"))
    if report.error and report.status == Status.FAILED:
        _fail(report.error, outcome.exit_code)  # a JSON line with --log-format json
    raise typer.Exit(int(outcome.exit_code))


def _terminal_width() -> int:
    """The terminal's width (COLUMNS when set), at most 120: a summary reads best narrow."""
    import shutil

    return min(120, shutil.get_terminal_size((80, 24)).columns)


def run_sync_locked(settings: Settings, mode: str, stop: threading.Event,
                    progress: Any = None) -> SyncOutcome:
    """A sync run under the state store's lease, so it never overlaps a scheduled one.
    A missing key or an unusable state home raises ConfigError before anything runs."""
    from connector.ops.lease import Lease, default_holder_id
    from connector.reports.model import Status
    from connector.state.store import connect_state
    from connector.sync.job import failed_outcome, run_sync

    settings.require("moesif_management_api_key", "segment_write_key")
    _ensure_home(settings)
    conn = connect_state(settings)
    try:
        # The lease renews from its own thread: give it its own connection, so a renewal
        # never lands inside (or is rolled back with) the job's transaction.
        lease_conn = connect_state(settings)
    except BaseException:
        conn.close()
        raise
    lease = Lease(lease_conn, "sync", default_holder_id(), settings.lease_seconds)
    try:
        if not lease.wait_acquire(stop, poll=1.0):
            outcome = failed_outcome(settings, mode, "stopped while waiting for another "
                                     "sync to release the lease", exit_code=ExitCode.FAILED)
            outcome.report.status = Status.INTERRUPTED
            return outcome
        with lease.keep_alive():
            return run_sync(settings, mode, stop, progress, conn=conn)
    finally:
        lease.release()
        lease_conn.close()
        conn.close()


# --- schedule ------------------------------------------------------------------------------
@app.command()
@command_boundary
def schedule(
    once: bool = typer.Option(False, "--once", help="One scheduled-style run, then exit."),
    no_initial_run: bool = typer.Option(False, "--no-initial-run",
                                        help="Wait for the first trigger instead of "
                                             "running at launch."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help="Serve /healthz and /metrics on this port."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host",
                                     help="Address for --metrics-port (0.0.0.0 in a "
                                          "container)."),
    log_format: LogFormat = _log_format_option(),
    log_level: str = _log_level_option(),
    progress: bool = _progress_option(),
) -> None:
    """Run the sync on SYNC_INTERVAL or SYNC_CRON until stopped (SIGTERM/SIGINT).

    Settings: those of `sync`, plus SYNC_INTERVAL or SYNC_CRON and LEASE_SECONDS. Exit: 0
    after a stop (a routine SIGTERM included); with --once, the run's own exit code; 2 a
    configuration mistake.
    """
    from connector.ops.checks import checked_trigger
    from connector.reports.model import Status
    from connector.sync.job import run_sync
    from connector.sync.schedule import run_schedule

    settings = _settings()
    _logging(settings, log_format, log_level)
    try:
        settings.require("moesif_management_api_key", "segment_write_key")
        checked_trigger(settings)  # fail now, with the setting's name, not at a tick
        _ensure_home(settings)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))

    def one_run(stop: threading.Event) -> int:
        # run_schedule holds the lease around this call.
        with _progress_callback(progress and log_format is LogFormat.text) as bar:
            outcome = run_sync(settings, "incremental", stop, bar)
        r = outcome.report
        log_summary(r, int(outcome.exit_code))
        if r.error:
            # A stop asked for is routine; anything else is worth an operator's look.
            level = logging.INFO if r.status == Status.INTERRUPTED else logging.ERROR
            log.log(level, "run %s: %s", r.run_id, r.error)
        return int(outcome.exit_code)

    try:
        code = run_schedule(settings, one_run, once=once, first_run_now=not no_initial_run,
                            metrics_port=metrics_port, metrics_host=metrics_host)
    except ConfigError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


def log_summary(report: RunReport, exit_code: int) -> None:
    """The run's summary as one log line: readable text, and in JSON logs structured
    fields (status, duration, counts per entity and outcome, issues by code)."""
    from connector.ops.logsetup import fields, json_mode, run_context

    # JSON lines keep one line (with the counts as fields); a terminal gets one line per
    # entity, each within 80 columns.
    layout = ("run %s %s: users %s; companies %s" if json_mode() else
              "run %s %s\n  users:     %s\n  companies: %s")
    with run_context(report.run_id):
        log.info(layout, report.run_id, report.status,
                 _brief(report, "users"), _brief(report, "companies"),
                 extra=fields(event="sync_finished", status=str(report.status),
                              mode=str(report.mode), exit_code=exit_code,
                              duration_s=report.duration_s, error=report.error,
                              entities={k: v.model_dump() for k, v in report.entities.items()},
                              issues=dict(report.issue_counts)))


def _brief(report: RunReport, entity: str) -> str:
    from connector.reports.model import EntityCounts

    e = report.entities.get(entity) or EntityCounts()
    return (f"{e.fetched} fetched, {e.delivered} delivered, {e.unchanged} unchanged, "
            f"{e.invalid} invalid, {e.failed} failed")


# --- check ---------------------------------------------------------------------------------
@app.command()
@command_boundary
def check(
    what: str = typer.Argument("all", metavar="[all|sync|forward]",
                               help="What to check: all (what the settings say will run), "
                                    "sync or forward."),
    wso2_config: Path | None = typer.Option(None, "--wso2-config",
                                            help="API Manager's deployment.toml, as given "
                                                 "to `forward`."),
) -> None:
    """Check the settings and peers of what will run; exit 0 only if all pass, else 2.

    sync: the keys, Moesif, Segment, the state directory, the mappings, SYNC_INTERVAL or
    SYNC_CRON. forward: MOESIF_APPLICATION_ID (or deployment.toml's moesifKey), the
    Collector accepting it, apim_events.toml. Unknown connector-like variables in the
    environment or .env are warned about, with the closest known name.
    """
    from connector.ops.checks import Scope, run_scoped_checks

    try:
        scope = Scope(what)
    except ValueError:
        _fail(f"check: unknown target {what!r} (use all, sync or forward)")
    settings = _settings()
    _logging(settings, LogFormat.text, "ERROR")  # the table says it all; no retry chatter
    raise typer.Exit(int(run_scoped_checks(settings, scope, wso2_config)))


# --- demo / sandbox ------------------------------------------------------------------------
@app.command()
@command_boundary
def demo(
    users: int = typer.Option(2000, min=0, help="Users in the sandbox."),
    companies: int = typer.Option(200, min=0, help="Companies in the sandbox."),
    events: int = typer.Option(5000, min=0, help="apim_metrics.log lines to forward."),
) -> None:
    """No keys needed: start the local sandbox, sync into it, forward a log, show reports."""
    from connector.demo import run_demo

    raise typer.Exit(run_demo(users=users, companies=companies, log_lines=events))


@app.command()
@command_boundary
def sandbox(
    users: int = typer.Option(1000, min=0, help="Moesif users in the sandbox."),
    companies: int = typer.Option(100, min=0, help="Moesif companies in the sandbox."),
    seed: int = typer.Option(7, help="Seed of the generated data set."),
    moesif_port: int = typer.Option(0, "--moesif-port", min=0, max=65535,
                                    help="0: a free port."),
    segment_port: int = typer.Option(0, "--segment-port", min=0, max=65535,
                                     help="0: a free port."),
    collector_port: int = typer.Option(0, "--collector-port", min=0, max=65535,
                                       help="0: a free port."),
) -> None:
    """Run the local Moesif Management API, Segment and Moesif Collector sandboxes until
    stopped; prints `export` lines to paste into another shell."""
    from connector.sandbox.serve import main as serve_main

    try:
        serve_main(["--users", str(users), "--companies", str(companies), "--seed", str(seed),
                    "--moesif-port", str(moesif_port), "--segment-port", str(segment_port),
                    "--collector-port", str(collector_port), "--exports"])
    except OSError as exc:
        _fail(f"sandbox: cannot listen ({exc.strerror or exc}); choose other ports "
              "with --moesif-port, --segment-port and --collector-port")


# --- forward -------------------------------------------------------------------------------
forward_app = typer.Typer(help="Forward WSO2 API Manager analytics events into Moesif.",
                          invoke_without_command=True)
app.add_typer(forward_app, name="forward")


@forward_app.callback()
@command_boundary
def forward(
    ctx: typer.Context,
    from_log: Path | None = typer.Option(None, "--from-log",
                                         help="Follow this apim_metrics.log (like tail -F)."),
    from_jsonl: str | None = typer.Option(None, "--from-jsonl",
                                          help="Read JSON lines from a file, or '-' for stdin."),
    listen: str | None = typer.Option(None, "--listen", help="HTTP ingest, e.g. 127.0.0.1:9099"),
    wso2_config: Path | None = typer.Option(None, "--wso2-config",
                                            help="API Manager's deployment.toml."),
    once: bool = typer.Option(False, "--once", help="Drain what is there, deliver, exit."),
    log_format: LogFormat = _log_format_option(),
    log_level: str = _log_level_option(),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help="Serve /healthz and /metrics (backlog, "
                                                 "oldest event age, delivered, "
                                                 "dead-lettered, retried) on this port."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host",
                                     help="Address for --metrics-port (0.0.0.0 in a "
                                          "container)."),
    deadline: float = typer.Option(DEFAULT_ONCE_DEADLINE, "--deadline", min=0,
                                   help="With --once: give up after this many seconds "
                                        "(exit 1, the rest stays spooled for the next run); "
                                        "0 for no deadline."),
    to_nats: str | None = typer.Option(None, "--to-nats",
                                       help="Publish --from-log's events to JetStream."),
    subject: str | None = typer.Option(None, "--subject", help="e.g. apim.analytics.<node>"),
    from_nats: str | None = typer.Option(None, "--from-nats",
                                         help="Pull events from JetStream (shared consumer)."),
    stream: str = typer.Option("APIM_ANALYTICS", "--stream"),
    durable: str = typer.Option("moesif", "--durable"),
) -> None:
    """Forward events: --from-log, --from-jsonl or --listen (see `forward status`).

    Exit codes: 0 everything read was delivered or dead-lettered; 1 stopped early (a
    signal, --deadline, an outage), the backlog kept; 2 a configuration mistake.
    """
    if ctx.invoked_subcommand is not None:
        return
    from connector.forward.pipeline import run_forward

    settings = _settings()
    _remember_url_secrets(to_nats, from_nats)
    _logging(settings, log_format, log_level)
    if not (from_log or from_jsonl or listen or to_nats or from_nats):
        _fail("say where events come from: --from-log, --from-jsonl, --listen or "
              "--from-nats")
    _ensure_home(settings)
    # --metrics-port and --deadline hold for every source, the JetStream ones included
    # (the bridge keeps its counters and dead letters in the same state file).
    server = None
    if metrics_port is not None:
        from connector.ops.forward_metrics import ForwardMetrics
        from connector.ops.metrics import serve_metrics

        server = serve_metrics(ForwardMetrics(settings), metrics_port, metrics_host)
        log.info("serving /healthz and /metrics on %s", server.url)
    stop, expired = threading.Event(), threading.Event()
    timer = _deadline_timer(deadline, stop, expired) if once else None
    try:
        if to_nats or from_nats:
            from connector.forward.nats_bridge import run_nats

            code = run_nats(settings, from_log=from_log, to_nats=to_nats, subject=subject,
                            from_nats=from_nats, stream=stream, durable=durable,
                            wso2_config_path=wso2_config, once=once, stop_event=stop,
                            out=_RedactingStream(sys.stderr))
        else:
            # run_forward installs the one signal helper itself (also called without the
            # CLI).
            code = run_forward(settings, from_log=from_log, from_jsonl=from_jsonl,
                               listen=listen, wso2_config_path=wso2_config, once=once,
                               stop_event=stop)
    finally:
        if timer is not None:
            timer.cancel()
        if server is not None:
            server.stop()
    if expired.is_set():
        _fail(f"forward --once: --deadline {deadline:g} s passed before everything was "
              "delivered; the rest stays spooled for the next run", ExitCode.FAILED)
    raise typer.Exit(code)


def _remember_url_secrets(*urls: str | None) -> None:
    """A URL option's password (nats://user:pass@host) is a secret like a key: scrubbed
    from logs and from the last line."""
    from connector.common.redaction import remember_secrets, url_secrets

    for url in urls:
        remember_secrets(url_secrets(url))


class _RedactingStream:
    """A text stream for code that prints its own lines (the JetStream bridge's summary
    and errors): every remembered secret scrubbed, and with --log-format json each line
    becomes a JSON log line (nothing plain on stderr then)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        from connector.common.redaction import redact, remembered_secrets
        from connector.ops.logsetup import json_mode

        if not json_mode():
            return self.stream.write(redact(text, remembered_secrets()))
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in filter(None, lines):
            level = logging.ERROR if line.startswith("error:") else logging.INFO
            log.log(level, "%s", line)  # the handler's filter scrubs the secrets
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _deadline_timer(seconds: float, stop: threading.Event,
                    expired: threading.Event) -> threading.Timer | None:
    if seconds <= 0:
        return None

    def expire() -> None:
        expired.set()
        stop.set()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


@forward_app.command("status")
@command_boundary
def forward_status_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    nats_url: str | None = typer.Option(None, "--nats", help="Show this JetStream consumer."),
    stream: str = typer.Option("APIM_ANALYTICS", "--stream"),
    durable: str = typer.Option("moesif", "--durable"),
) -> None:
    """Backlog, delivered and dead-lettered events, per-source offsets."""
    from connector.common.jsonutil import dumps
    from connector.forward.pipeline import forward_status

    settings = _settings()
    if nats_url:
        from connector.forward.nats_bridge import nats_status

        _remember_url_secrets(nats_url)
        typer.echo(dumps(nats_status(nats_url, stream, durable)).decode())
        return
    _check_home(settings)
    status = forward_status(settings)
    if json_out:
        typer.echo(dumps(status).decode())
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    summary = Table(title="forward status", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    oldest = status.get("oldest_age_seconds")
    summary.add_row("backlog (events in the spool)", f"{status.get('backlog', 0):,}")
    summary.add_row("oldest unsent event", "-" if oldest is None else f"{oldest:.1f} s")
    for name, value in (status.get("counters") or {}).items():
        summary.add_row(Text(name), f"{value:,}")
    console.print(summary)
    reasons = (status.get("dead_letters") or {}).get("by_reason") or {}
    if reasons:
        table = Table(title="dead letters by reason")
        table.add_column("reason")
        table.add_column("events", justify="right")
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(Text(reason), f"{count:,}")
        console.print(table)
    sources = status.get("sources") or {}
    if sources:
        table = Table(title="sources and their saved offsets")
        table.add_column("source", overflow="fold")
        table.add_column("offset", justify="right")
        table.add_column("updated")
        for key, info in sources.items():
            table.add_row(Text(key), f"{info.get('offset', 0):,}",
                          Text(str(info.get("updated_at", ""))))
        console.print(table)
    state_file = status.get("state_file")
    console.print(Text(f"state file: {state_file}" if state_file else
                       f"state file: none yet in {settings.connector_home}"))


dead_letters_app = typer.Typer(help="Inspect and replay the forwarder's dead letters.",
                               no_args_is_help=True)
forward_app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("list")
@command_boundary
def dead_letters_list(
    reason: str | None = typer.Option(None, "--reason", "-r",
                                      help="Only this reason code, e.g. BAD_JSON."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Newest first, at most this."),
    json_out: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
) -> None:
    """The newest dead letters: id, reason, where the event came from, why."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from connector.common.jsonutil import dumps
    from connector.forward.dead_letters import list_letters

    settings = _settings()
    _check_home(settings)
    letters = list_letters(settings, reason, limit)
    if json_out:
        for letter in letters:
            typer.echo(dumps(letter).decode())
        return
    if not letters:
        typer.echo("no dead letters" + (f" with reason {reason.upper()}" if reason else ""))
        return
    table = Table(box=None, pad_edge=False)
    for name, kwargs in (("id", {"justify": "right"}), ("reason", {"no_wrap": True}),
                         ("source / position", {"overflow": "fold"}),
                         ("detail", {"overflow": "fold", "ratio": 1})):
        table.add_column(name, **kwargs)  # type: ignore[arg-type]
    for letter in letters:
        table.add_row(str(letter["id"]), Text(letter["reason_code"]),
                      Text(f"{letter['source']} {letter['position']}"), Text(letter["detail"]))
    Console(highlight=False).print(table)


@dead_letters_app.command("show")
@command_boundary
def dead_letters_show(letter_id: int = typer.Argument(..., help="A dead letter's id.")) -> None:
    """One dead letter with its stored, masked content (JSON)."""
    import orjson

    from connector.forward.dead_letters import get_letter

    settings = _settings()
    _check_home(settings)
    letter = get_letter(settings, letter_id)
    if letter is None:
        _fail(f"no dead letter with id {letter_id} (see `moesif-segment forward dead-letters "
              "list`)")
    typer.echo(orjson.dumps(letter, option=orjson.OPT_INDENT_2, default=str).decode())


@dead_letters_app.command("replay")
@command_boundary
def dead_letters_replay(
    letter_ids: list[int] = typer.Argument(None, help="Dead-letter ids (or use --reason)."),
    reason: str | None = typer.Option(None, "--reason", "-r",
                                      help="Replay every dead letter of this reason code."),
    wso2_config: Path | None = typer.Option(None, "--wso2-config",
                                            help="API Manager's deployment.toml, as given "
                                                 "to `forward`."),
) -> None:
    """Spool dead letters again after a mapping or configuration fix (the forwarder
    delivers them). Exit 0 when all were spooled, 1 when some still fail."""
    from connector.forward.dead_letters import replay

    if not letter_ids and not reason:
        _fail("say which dead letters: their ids, or --reason CODE")
    result = replay(_settings(), list(letter_ids or []), reason, wso2_config)
    typer.echo(f"spooled again: {len(result.spooled)}; still failing: "
               f"{len(result.still_failing)}; not replayable (kept only as a fingerprint): "
               f"{len(result.not_replayable)}")
    for letter_id, why in result.still_failing.items():
        typer.echo(f"  {letter_id}: {why}")
    if result.spooled:
        typer.echo("they are delivered by the running forwarder or the next `forward` run")
    raise typer.Exit(int(ExitCode.FAILED if result.still_failing or result.not_replayable
                         else ExitCode.OK))


def _add_report_app() -> None:
    from connector.reports.cli import report_app

    app.add_typer(report_app, name="report", help="List, show and diff mapping reports.")


_add_report_app()


def _add_alerts_app() -> None:
    from connector.cli.alerts import alerts_app

    app.add_typer(alerts_app, name="alerts", help="Open alerts; test the alert webhook.")


_add_alerts_app()


def main() -> None:
    """The console script and `python -m connector`. A usage mistake (unknown option or
    command, a value out of range) is one `error: ...` line and exit 2, like every other
    configuration problem, instead of click's five-line box."""
    from connector.cli.errors import usage_exception_base

    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:  # outside a run (a run's own handler stops it cleanly)
        sys.exit(128 + 2)
    except typer.Abort:
        sys.exit(int(ExitCode.FAILED))
    except usage_exception_base() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `moesif-segment`: the help
            app()
            return
        sys.exit(_usage_error(exc))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Exception) -> int:
    import re

    from connector.settings import plain_bound

    ctx = getattr(exc, "ctx", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    # "Invalid value for '--limit' / '-n': Input should be ..." -> "--limit: must be ..."
    found = re.match(r"Invalid value for '([^']+)'(?: / '[^']+')*: (.*)", message, re.S)
    if found:
        message = f"{found.group(1)}: {plain_bound(found.group(2))}"
    where = ""
    if ctx is not None:
        root = ctx.find_root().command_path
        where = ctx.command_path[len(root):].strip()
    try:
        fail(f"{where}: {message} (see --help)" if where else f"{message} (see --help)")
    except typer.Exit as done:
        return int(done.exit_code)
    return int(ExitCode.CONFIGURATION)  # pragma: no cover - fail always exits
