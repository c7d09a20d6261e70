"""One sync run: Moesif users and companies that changed -> Segment identify and group.

The run reads as its stages: `source` (pages from Moesif, joined) -> `users` (map, diff)
-> `shaping` (Segment messages within 32 KB) -> `delivery` (send, then commit to the
state) -> `companies` (their hashes and members' re-sends); `samples` feeds the report.

Page by page: fetch (with the page's companies and 24-hour metrics joined, prefetched in
a background thread) -> map -> diff against stored hashes -> shape and size-guard ->
send -> commit hashes, failures and the cursor in one transaction. Every fetched record
ends as delivered, unchanged, invalid (with a reason code) or failed (retried next run).
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from connector.common.redaction import redact
from connector.common.timeutil import parse_timestamp, to_iso
from connector.errors import ConnectorError, ExitCode, Interrupted, exit_code_for
from connector.mapping import Coverage, MappingSet, load_mappings
from connector.moesif.management import MoesifManagementClient, QueryLimiter
from connector.reports.model import ENTITIES, Mode, RunReport, Status
from connector.reports.model import ReportBuilder as Report  # the builder SyncRun fills in
from connector.reports.store import new_run_id
from connector.schema_drift import Inventory, mapped_paths
from connector.segment.sink import DeliveryResult, SegmentSink
from connector.settings import Settings
from connector.state.store import connect_state, state_error, state_errors
from connector.sync.companies import CompanyStage
from connector.sync.delivery import DeliveryStage
from connector.sync.mapper import RecordMapper
from connector.sync.mapworker import MapProcess
from connector.sync.prefetch import Prefetcher
from connector.sync.records import Candidate, Joined, Progress, _id_text
from connector.sync.samples import SampleStage
from connector.sync.shaping import ShapeStage
from connector.sync.source import SourceStage
from connector.sync.state import CompanyCache, PageCommit, SyncState
from connector.sync.users import UserStage

# Users pages handed to the map process before the run waits for the oldest: it maps the
# next page while the run finishes this one (two measured no faster, and hold a page more).
MAP_AHEAD = 1

log = logging.getLogger(__name__)



@dataclass
class SyncOutcome:
    exit_code: int  # an ExitCode
    report: RunReport
    started: bool = True  # False: stopped before fetching anything (its counts are zeros)


class SyncRun(SourceStage, UserStage, ShapeStage, SampleStage, DeliveryStage, CompanyStage):
    """One run: the stages of the data's way, one module each (source, users, shaping,
    samples, delivery, companies), held together by the run's state and its order."""

    def __init__(self, settings: Settings, mode: str, conn: sqlite3.Connection,
                 mappings: MappingSet, stop_event: threading.Event | None = None,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.mode = mode
        self.dry_run = mode == "dry-run"
        self.full = mode == "full"
        self.stop_event = stop_event or threading.Event()
        self.progress = progress or (lambda *a, **k: None)
        self.mappings = mappings
        self.state = SyncState(conn, max_attempts=settings.sync_max_attempts)
        self.report = Report(new_run_id(), mode, f"{mappings.version}", settings)
        self.report.coverage = Coverage(mappings.event_names)
        self.moesif = MoesifManagementClient(
            settings.moesif_api_url, settings.moesif_management_api_key,  # type: ignore[arg-type]
            timeout=settings.moesif_timeout_seconds, max_retries=settings.moesif_max_retries,
            limiter=QueryLimiter(settings.moesif_queries_per_minute,
                                 stop_event=self.stop_event),
            stop_event=self.stop_event)
        # Issue 12 item 3: companies come first, into the state store; users pages join
        # their companies from there (see load_companies and resolve_companies).
        self.company_cache = CompanyCache(conn)
        self.loaded_companies: set[str] = set()  # changed since the cursor, this run
        self.companies_cursor: str | None = None  # where the companies pass ended
        self.idless_companies: list[dict[str, Any]] = []  # reported by resolve_companies
        self.absent_companies: set[str] = set()  # ids Moesif did not find this run
        self.sink = SegmentSink(
            settings.segment_write_key, settings.segment_host,  # type: ignore[arg-type]
            batch_messages=settings.segment_batch_messages,
            batch_bytes=settings.segment_batch_bytes,
            timeout=settings.segment_timeout_seconds, max_retries=settings.segment_max_retries,
            max_failed_batches=settings.segment_max_failed_batches,
            refused_before=self._failed_before().__contains__)
        self.mapper = RecordMapper(mappings, self.sink, settings.sync_send_group_calls)
        self._map_process: MapProcess | None = None  # see UserStage._map_process_for
        self._map_process_tried = False
        self.personal = mappings.personal_sources()
        # Issue 9: source fields seen this run (bounded walk per record), for schema drift.
        self.inventory = Inventory()
        self.mapped_sources = mapped_paths(mappings)
        self.drift_stop = settings.schema_drift_policy == "stop"
        # Users that failed or were invalid in this run (few, normally): a changed
        # company's members are not re-sent or re-reported in the same run. Users that
        # were delivered need no entry: their stored hash already says "unchanged".
        self.settled: dict[str, str] = {}
        self._clean_samples = 0
        self._issues_seen = 0
        self._sampled_codes: set[str] = set()
        self.all_users_pass = False
        self.joined_companies: set[str] = set()  # ids an all-users pass joined
        # company -> failure code of its members this run (DELIVERY_FAILED wins)
        self.failed_companies: dict[str, str] = {}
        # Companies some member of which carried them to Segment in this run (a message
        # sent, or a member unchanged since it was sent): a company none of whose members
        # could be sent was never delivered, whatever its members' count.
        self.companies_reached: set[str] = set()
        self.metrics_unavailable = False
        self.map_cache: dict[Any, Any] = {}
        # company id -> {version key: fingerprint of the document} of the company versions
        # its members were mapped with in this run (a company written mid-run is seen
        # with two): see process_companies. Fingerprints, not documents: this lives for
        # the whole run, one entry per company.
        self.member_versions: dict[str, dict[Any, bytes | None]] = {}
        self.companies_seen: set[str] = set()
        self.mapping_failures: set[str] = set()  # ids kept as failures by _mapping_failed
        # Text repairs the Moesif client made while decoding (invalid UTF-8 and the like).
        self.decode_problems: deque[str] = deque(maxlen=1000)
        self.moesif.on_decode_problem = self.decode_problems.append  # type: ignore[attr-defined]
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-send")
        # Pages handed to the sender and not committed yet, oldest first.
        self._pending: deque[tuple[Future[DeliveryResult], str, list[Candidate], str | None,
                                   dict[str, str]]] = deque()
        self._sending_stopped: ConnectorError | None = None  # set by the sender thread

    # --- the run --------------------------------------------------------------------------
    def run(self) -> SyncOutcome:
        started = self.report.started
        try:
            # Companies first (kept in the state store), then users joining them from
            # there, then the companies again by id to settle their hashes and re-send
            # members that carried an older version (ENTITIES keeps the report's order).
            steps: list[tuple[str, Callable[[], None]]] = [
                ("companies", lambda: self.load_companies(until=started)),
                ("users", lambda: self.sync_entity("users", until=started)),
                ("companies", self.resolve_companies),
            ]
            for entity, step in steps:
                if self.stop_event.is_set():
                    break
                step()
                self.flush_pending()
                if step is not steps[0][1]:
                    self.retry_failures(entity)
                    self.flush_pending()
        except Interrupted:
            # A stop cut a wait short: commit what was confirmed, end as a stopped run.
            self._commit_in_flight()
        except ConnectorError as exc:
            # Configuration (exit 2), an outage that ended the run early or a Moesif failure
            # (exit 1): what Segment confirmed is committed, the rest waits for the next run
            # without an attempt counted (records are only marked failed page by page).
            self._commit_in_flight()
            return SyncOutcome(int(exit_code_for(exc)), self.report.finish("failed", str(exc)))
        finally:
            self._sender.shutdown(wait=True)
        failed = any(self.report.entities[e]["failed"] for e in ENTITIES)
        stopped = self.stop_event.is_set()
        status = "partial" if failed or stopped else "success"
        error = "stopped by signal before the end; the next run continues" if stopped else None
        return SyncOutcome(1 if failed else 0, self.report.finish(status, error))

    def _failed_before(self) -> frozenset[tuple[str, str]]:
        """Records still being retried after an earlier failure (read once, at start)."""
        pending = self.state.pending_failures("users", failed_before="9999")
        return frozenset(("users", f.id) for f in pending)

    def _since(self, entity: str) -> datetime | None:
        if self.full:
            return None
        cursor = self.state.cursor(entity)
        if cursor is None:
            return None
        try:
            position = parse_timestamp(cursor)
        except ValueError:
            position = None
        if position is None or position > self.report.started:
            # A cursor past this run's start (stored from a record's future modified_time
            # by an earlier version, or the clock went back) is no position: searching
            # from it would skip every change before it. Start over; the stored hashes
            # keep unchanged records from being sent again.
            log.warning("the %s cursor (%s) is after this run's start; syncing every %s "
                        "(unchanged ones are not sent again)", entity, cursor[:40], entity)
            if not self.dry_run:
                self.state.forget_cursor(entity)
            return None
        return position - timedelta(seconds=self.settings.moesif_lookback_seconds)

    def sync_entity(self, entity: str, until: datetime) -> None:
        since = self._since(entity)
        pages = self.moesif.iter_modified(entity, since=since, until=until,
                                          page_size=self.settings.moesif_page_size)
        joined = self._joined(pages) if entity == "users" else self._plain(pages)
        # A users pass over *every* user joins every user's current company: companies
        # found then at the same version need no member re-send afterwards.
        self.all_users_pass = entity == "users" and since is None
        prefetch = Prefetcher(joined, depth=2)
        ahead: deque[Joined] = deque()  # users pages handed to the map process
        try:
            waited = time.perf_counter()
            for page in prefetch:
                self.report.phases["fetch"] += time.perf_counter() - waited
                self.progress("total", entity=entity, total=page.total)
                if entity == "users":
                    handed = self._map_process_ready(page)
                    # The map process reads the companies' texts: no need to read them here.
                    self._join_companies(page, texts_only=handed)
                    ahead.append(page)
                    # A page handed to the map process is mapped there while this process
                    # finishes the page before it; pages are always finished in order.
                    keep = MAP_AHEAD if handed and self._map_process_for(page) else 0
                    while len(ahead) > keep:
                        done = ahead.popleft()
                        self.process_users(done, cursor=done.cursor)
                else:
                    self.process_companies(page.docs, cursor=page.cursor)
                if self.stop_event.is_set():
                    log.info("stop requested: %s page finished and saved", entity)
                    ahead.clear()  # not committed: the next run fetches it again
                    break
                waited = time.perf_counter()
            while ahead:
                page = ahead.popleft()
                self.process_users(page, cursor=page.cursor)
        finally:
            prefetch.close()
            self._close_map_process()

    # --- companies first (issue 12 item 3) ------------------------------------------------


    # --- failures from earlier runs ---------------------------------------------------------
    def retry_failures(self, entity: str) -> None:
        """Records whose delivery failed before are retried whatever the cursor says."""
        if self.stop_event.is_set():
            return
        if entity == "companies":
            self._recheck_companies_changed_mid_run()
        pending = [f for f in self.state.pending_failures(
            entity, failed_before=self.report.started.isoformat(timespec="microseconds"))
            if f.id not in self.settled]
        if not pending:
            return
        attempts = {f.id: f.attempts for f in pending}
        found: set[str] = set()
        id_field = "user_id" if entity == "users" else "company_id"
        for page in self.moesif.fetch_by_ids(entity, list(attempts),
                                             page_size=self.settings.moesif_page_size):
            found.update(rid for d in page.sources if (rid := _id_text(d.get(id_field))))
            if entity == "users":
                self.process_users(self._join(page.sources), cursor=None)
            else:
                self.process_companies(page.sources, cursor=None,
                                       problems=self._drain_decode_problems())
        # A failed record that is now invalid (e.g. OVERSIZE) waits for a change in Moesif,
        # reported; it no longer counts as pending.
        invalid_now = [rid for rid in attempts if self.settled.get(rid) == "invalid"
                       and rid not in self.mapping_failures]
        if invalid_now and not self.dry_run:
            self.state.commit_page(PageCommit(entity, {}, invalid_now, []))
        gone = [rid for rid in attempts if rid not in found]
        if gone and not self.dry_run:
            self.state.commit_page(PageCommit(entity, {}, gone, []))
            for rid in gone:
                self.report.issue(entity, rid, "GONE",
                                  "failed earlier and no longer exists in Moesif; dropped")


def failed_outcome(settings: Settings, mode: str, error: str, exit_code: int) -> SyncOutcome:
    """The outcome of a run that could not start: a report that says why."""
    report = Report(new_run_id(), mode, "-", settings).finish(Status.FAILED, error)
    return SyncOutcome(exit_code, report, started=False)


def _run_to_the_end(run: SyncRun, stop_event: threading.Event,
                    settings: Settings) -> SyncOutcome:
    """`run.run()`, but whatever happens it ends with a report: an exception escaping the
    run (a bug, a failure nobody classified) becomes a `failed` report and its exit code,
    and a run a signal stopped is `interrupted` (exit 1), since it did not finish."""
    try:
        outcome = run.run()
    except Exception as exc:
        # A full disk or a damaged state file mid-run is the state home's problem (exit 2).
        exc = state_error(exc, settings.state_path) or exc
        text = str(exc) if isinstance(exc, ConnectorError) else f"{type(exc).__name__}: {exc}"
        error = redact(text, settings.secrets())
        log.error("sync run %s failed: %s", run.report.run_id, error)
        log.debug("where the run failed", exc_info=True)
        return SyncOutcome(exit_code_for(exc), run.report.finish(Status.FAILED, error))
    report = outcome.report
    if report.error:
        report.error = redact(report.error, settings.secrets())
    if stop_event.is_set() and report.status in (Status.SUCCESS, Status.PARTIAL):
        report.status = Status.INTERRUPTED
        return SyncOutcome(ExitCode.FAILED, report)
    return outcome


def _schema_and_alerts(settings: Settings, conn: sqlite3.Connection, run: SyncRun,
                       report: RunReport) -> None:
    """Issue 9: the report's schema section (and the inventory kept for the next run),
    then the sync alert rules. Neither may fail the run: a problem is logged."""
    from connector import alerts, schema_drift

    try:
        report.schema_section = schema_drift.compare(
            conn, run.inventory, run.mapped_sources,
            min_records=settings.schema_drift_min_records,
            policy=settings.schema_drift_policy)
        if not run.dry_run:
            schema_drift.save(conn, run.inventory, report.run_id)
        if schema_drift.is_drift(report.schema_section):
            log.warning("schema drift in run %s: %d added, %d type changed, %d vanished",
                        report.run_id, len(report.schema_section["added"]),
                        len(report.schema_section["type_changed"]),
                        len(report.schema_section["vanished"]))
    except sqlite3.Error as exc:
        log.warning("schema drift not recorded: %s", exc)
    alerts.after_sync(settings, conn, report)


def _deliver_alerts(settings: Settings, conn: sqlite3.Connection) -> None:
    """Webhook delivery after the report is saved, bounded by ALERT_WEBHOOK_MAX_SECONDS."""
    from connector import alerts

    alerts.deliver_pending(settings, conn)


def run_sync(settings: Settings, mode: str = "incremental",
             stop_event: threading.Event | None = None, progress: Progress | None = None,
             conn: sqlite3.Connection | None = None) -> SyncOutcome:
    """One run, with its report stored, whatever ends it. Configuration problems come
    back as exit code 2, with a report that says why (not stored: the run never began)."""
    from connector.ops.logsetup import run_context
    from connector.reports.store import ReportStore

    if mode not in tuple(Mode):
        raise ValueError(f"unknown mode {mode!r}")
    stop_event = stop_event or threading.Event()
    own_conn = conn is None
    try:
        settings.require("moesif_management_api_key", "segment_write_key")
        mappings = load_mappings(settings.mappings_dir)
        conn = conn or connect_state(settings)
        store = ReportStore(conn)
        run = SyncRun(settings, mode, conn, mappings, stop_event, progress)
    except ConnectorError as exc:
        if own_conn and conn is not None:
            conn.close()
        return failed_outcome(settings, mode, str(exc), exit_code=exit_code_for(exc))
    # Records are acyclic JSON trees freed by reference counting; the cyclic collector's
    # frequent passes over millions of young objects cost a third of the mapping time.
    gc_threshold = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    # The sender and prefetch threads wait on sockets, then on the GIL: at the default
    # 5 ms switch interval each hand-back behind the mapping thread costs up to 5 ms, and a
    # batch needs several; 1 ms measured 5% faster end to end.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        store.start(run.report.run_id, to_iso(run.report.started), mode)
        with run_context(run.report.run_id):
            log.info("sync run %s started (%s)", run.report.run_id, mode)
            outcome = _run_to_the_end(run, stop_event, settings)
            log.info("sync run %s finished: %s", run.report.run_id, outcome.report.status)
        with state_errors(settings.state_path):
            _schema_and_alerts(settings, conn, run, outcome.report)
            store.save(outcome.report)
            store.prune(settings.report_keep_runs)
        _deliver_alerts(settings, conn)
        return outcome
    finally:
        gc.set_threshold(*gc_threshold)
        sys.setswitchinterval(switch_interval)
        if own_conn and conn is not None:
            conn.close()
