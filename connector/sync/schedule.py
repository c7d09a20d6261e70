"""Run the sync on a schedule (APScheduler 3.x), one run at a time, across processes too.

- One run at a time in this process: `max_instances=1`, misfires coalesced. A run that
  outlasts its interval makes APScheduler skip the tick(s) that fell inside it; we then
  start one catch-up run as soon as it ends, so an overrun delays the next run instead of
  stacking runs or silently dropping one.
- One run at a time across processes sharing the state store (CONNECTOR_HOME, or one
  STATE_URL for replicas on several hosts): the first run takes the `sync` lease (waiting,
  as a `standby`, while another scheduler holds it); the `leader` then keeps it, renewed,
  across runs until it stops, when it hands it over at once. A leader that dies is
  replaced when its lease expires (LEASE_SECONDS; at once on the same host). Page commits
  are fenced with the lease's token (`connector.ops.lease`).
- SIGTERM/SIGINT set the stop event (`connector.ops.signals`): the run in hand finishes its
  page, flushes and saves its state (its report says `interrupted`); then the scheduler
  shuts down and we return 0, also with `--once`: a stop asked for is not a failure. A
  second signal exits at once (state is crash-safe by design, so that loses no record).
- An exception escaping one run is logged with its reason; the schedule goes on.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connector.errors import ConnectorError, ExitCode, exit_code_for
from connector.ops.lease import Lease
from connector.ops.metrics import Metrics, serve_metrics
from connector.ops.signals import stop_on_signals
from connector.reports.store import ReportStore
from connector.settings import ConfigError, Settings
from connector.state.store import connect_state, db_errors

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = timedelta(minutes=15)
JOB_ID = "sync"

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_INTERVAL = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)

RunOnce = Callable[[threading.Event], int]


def parse_interval(text: str | int) -> timedelta:
    """`"15m"`, `"90s"`, `"1h"`, `"1h30m"`, `"2d"` or plain seconds (`"900"`)."""
    raw = str(text).strip().lower()
    if raw.isascii() and raw.isdigit():  # not '²' nor another script's digits
        seconds = int(raw)
    else:
        match = _INTERVAL.fullmatch(raw)
        if not raw or match is None:
            raise ValueError(f"not an interval: {text!r} (use e.g. 90s, 15m, 1h, 1h30m, "
                             "or a number of seconds)")
        seconds = sum(int(v) * f for v, f in zip(match.groups(), _UNITS.values(), strict=True)
                      if v)
    if seconds <= 0:
        raise ValueError(f"interval must be positive: {text!r}")
    return timedelta(seconds=seconds)


def build_trigger(settings: Settings) -> BaseTrigger:
    """An interval trigger (SYNC_INTERVAL, default 15m) or a UTC cron trigger (SYNC_CRON)."""
    interval = (settings.sync_interval or "").strip()
    cron = (settings.sync_cron or "").strip()
    if interval and cron:
        raise ConfigError("set only one of SYNC_INTERVAL and SYNC_CRON, not both")
    if cron:
        try:
            return CronTrigger.from_crontab(cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"SYNC_CRON is not a valid crontab expression: {exc}") from None
    try:
        every = parse_interval(interval) if interval else DEFAULT_INTERVAL
    except ValueError as exc:
        raise ConfigError(f"SYNC_INTERVAL: {exc}") from None
    return IntervalTrigger(seconds=int(every.total_seconds()), timezone=UTC)


def schedule_period(trigger: BaseTrigger) -> timedelta:
    """The longest gap between fires (over the next few), for grace and staleness."""
    if isinstance(trigger, IntervalTrigger):
        return trigger.interval
    now = datetime.now(UTC)
    fires: list[datetime] = []
    previous: datetime | None = None
    for _ in range(8):
        nxt = trigger.get_next_fire_time(previous, previous or now)
        if nxt is None:
            break
        fires.append(nxt)
        previous = nxt
    gaps = [b - a for a, b in zip(fires, fires[1:], strict=False)]
    return max(gaps) if gaps else DEFAULT_INTERVAL


def describe_trigger(trigger: BaseTrigger) -> str:
    if isinstance(trigger, IntervalTrigger):
        return f"every {trigger.interval}"
    return f"on cron {trigger} (UTC)"


class _Runner:
    """One lease-guarded run, plus the bookkeeping around it (metrics, overruns)."""

    def __init__(self, settings: Settings, run_once_fn: RunOnce, stop_event: threading.Event,
                 metrics: Metrics | None, lease_poll: float) -> None:
        self.settings = settings
        self.run_once_fn = run_once_fn
        self.stop_event = stop_event
        self.metrics = metrics
        self.lease_poll = lease_poll
        # Separate connections: the lease's renewal thread must not share the reports'.
        self.lease_conn = connect_state(settings)
        try:
            self.reports_conn = connect_state(settings)
            self.lease = Lease(self.lease_conn, "sync", ttl_seconds=settings.lease_seconds)
            self.reports = ReportStore(self.reports_conn)
        except BaseException:
            self.lease_conn.close()
            raise
        self.in_run = threading.Event()
        self.overran = threading.Event()
        if metrics is not None:  # a restart must not look stale to an alert
            metrics.restore(self.reports.list(20))
        self._closed = threading.Event()
        self._renewer: threading.Thread | None = None
        self.role = "standby"  # until the lease is ours
        if metrics is not None:
            metrics.role = self.role

    def _set_role(self, role: str) -> None:
        """`leader` or `standby`, for the log and `/healthz`."""
        if role == self.role:
            return
        self.role = role
        if self.metrics is not None:
            self.metrics.role = role
        if role == "leader":
            log.info("this scheduler leads (sync lease token %s)", self.lease.token)
        else:
            log.info("this scheduler is a standby (another one holds the sync lease)")

    def close(self) -> None:
        """Hand the lease over at once (a waiting scheduler takes it at its next poll)."""
        self._closed.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        with contextlib.suppress(*db_errors()):
            if self.lease.release():
                log.info("released the sync lease (token %s)", self.lease.token)
        self.lease_conn.close()
        self.reports_conn.close()

    def _keep_leading(self) -> None:
        """The leader keeps its lease between runs, so the standbys stay standbys."""
        interval = max(1.0, self.lease.ttl_seconds / 3)
        while not self._closed.wait(interval):
            try:
                if self.role == "leader" and not self.lease.renew():
                    log.warning("the sync lease was taken over by another scheduler")
                    self._set_role("standby")
            except db_errors() as exc:
                log.warning("could not renew the sync lease: %s", exc)

    def run_guarded(self) -> int | None:
        """Wait for the lease (or extend ours), run once. None when stopped before."""
        if self.stop_event.is_set():
            return None
        if not self.lease.wait_acquire(self.stop_event, poll=self.lease_poll,
                                       on_wait=lambda _info: self._set_role("standby")):
            log.info("stopping before the run: the lease was not free")
            return None
        self._set_role("leader")
        if self._renewer is None:
            self._renewer = threading.Thread(target=self._keep_leading, daemon=True,
                                             name="lease-leader")
            self._renewer.start()
        return self._run_with_lease()

    def _run_with_lease(self) -> int:
        before = self.reports.latest_run_id()
        started = time.monotonic()
        self.in_run.set()
        if self.metrics is not None:
            self.metrics.run_started()
        try:
            with self.lease.keep_alive():
                code = int(self.run_once_fn(self.stop_event))
        except ConnectorError as exc:
            log.error("sync run stopped: %s", exc)
            self._observe(before, crash=str(exc), duration=time.monotonic() - started)
            return int(exit_code_for(exc))
        except Exception as exc:
            log.error("sync run crashed: %s: %s", type(exc).__name__, exc)
            log.debug("where the run crashed", exc_info=True)
            self._observe(before, crash=f"{type(exc).__name__}: {exc}",
                          duration=time.monotonic() - started)
            return int(exit_code_for(exc))
        finally:
            self.in_run.clear()
            if self.metrics is not None:
                self.metrics.run_ended()
        log.info("sync run finished with exit code %d in %.1f s", code,
                 time.monotonic() - started)
        self._observe(before)
        return code

    def _observe(self, before: str | None, crash: str | None = None,
                 duration: float | None = None) -> None:
        if self.metrics is None:
            return
        latest = self.reports.latest_run_id()
        if latest is not None and latest != before:
            report = self.reports.get(latest)
            if report is not None:
                self.metrics.observe_report(report)
                return
        if crash is not None:
            self.metrics.observe_crash(crash, duration)

    def scheduled_run(self) -> None:
        """The scheduler's job: one run, plus one catch-up run per overrun.

        The catch-up runs inside the same job execution, so `max_instances=1` still holds
        and no scheduler API is called from a job thread (APScheduler's shutdown holds the
        job store lock while it waits for running jobs: calling back into it deadlocks).
        """
        while True:
            self.overran.clear()
            code = self.run_guarded()
            if code is None or self.stop_event.is_set() or not self.overran.is_set():
                return
            log.info("starting the run that was due while the last one was still going")


def run_schedule(settings: Settings, run_once_fn: RunOnce, *, once: bool = False,
                 first_run_now: bool = True, stop_event: threading.Event | None = None,
                 metrics: Metrics | None = None, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", lease_poll: float = 1.0) -> int:
    """Run `run_once_fn(stop_event) -> exit code` on the configured schedule until stopped.

    `once=True`: a single lease-guarded run, returning its exit code. Otherwise returns 0
    after a stop (signal or `stop_event`). Raises ConfigError for a bad schedule setting.
    """
    trigger = build_trigger(settings)
    period = schedule_period(trigger)
    stop_event = stop_event or threading.Event()
    if metrics is None and metrics_port is not None:
        metrics = Metrics(stale_after_seconds=3 * period.total_seconds())
    server = serve_metrics(metrics, metrics_port, metrics_host) if (
        metrics is not None and metrics_port is not None) else None
    if server is not None:
        log.info("serving /healthz and /metrics on %s", server.url)
    runner = _Runner(settings, run_once_fn, stop_event, metrics, lease_poll)
    try:
        with stop_on_signals(stop_event, "finishing the page in hand"):
            if once:
                return _once_exit_code(runner.run_guarded(), stop_event)
            _run_scheduler(runner, trigger, period, first_run_now)
            return int(ExitCode.OK)
    finally:
        runner.close()
        if server is not None:
            server.stop()


def _once_exit_code(code: int | None, stop_event: threading.Event) -> int:
    """A stopped `--once` run exits 0 like a stopped scheduler, unless a person must act."""
    if code is None or (stop_event.is_set() and code != ExitCode.CONFIGURATION):
        return int(ExitCode.OK)
    return code


STALE_CHECK_SECONDS = 60.0


def _stale_between_runs(runner: _Runner, due: float) -> float:
    """Issue 9: the `stale` alert rule, checked between runs (not during one: a run that
    succeeds resolves it). Returns when it is due next."""
    now = time.monotonic()
    if now < due or runner.in_run.is_set():
        return due
    from connector.alerts import check_stale

    conn = connect_state(runner.settings)
    try:
        check_stale(runner.settings, conn)
    finally:
        conn.close()
    return now + STALE_CHECK_SECONDS


def _run_scheduler(runner: _Runner, trigger: BaseTrigger, period: timedelta,
                   first_run_now: bool) -> None:
    scheduler = BackgroundScheduler(timezone=UTC,
                                    executors={"default": ThreadPoolExecutor(max_workers=1)})
    grace = max(1, int(period.total_seconds() / 2))
    extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if first_run_now else {}
    scheduler.add_job(runner.scheduled_run, trigger, id=JOB_ID, name="moesif-segment sync",
                      max_instances=1, coalesce=True, misfire_grace_time=grace, **extra)

    def on_event(event: JobEvent) -> None:
        # Pure bookkeeping: never call back into the scheduler from here (see scheduled_run).
        if event.code == EVENT_JOB_MAX_INSTANCES:
            # Only an overrun of the run itself earns a catch-up run; ticks missed while
            # waiting for another scheduler's lease are covered by the run that follows.
            if runner.in_run.is_set() and not runner.overran.is_set():
                runner.overran.set()
                log.warning("the run is still going at its next scheduled time; "
                            "the next run starts as soon as it ends")
            return
        if not runner.stop_event.is_set():
            upcoming = trigger.get_next_fire_time(None, datetime.now(UTC))
            if upcoming is not None:
                log.info("next run at %s", upcoming.strftime("%Y-%m-%d %H:%M:%S UTC"))

    scheduler.add_listener(on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_EXECUTED
                           | EVENT_JOB_ERROR)
    scheduler.start()
    log.info("scheduler started: %s%s; lease holder %s", describe_trigger(trigger),
             ", first run now" if first_run_now else "", runner.lease.holder)
    try:
        # A timed wait keeps the main thread responsive to signals on every platform.
        next_stale = 0.0
        while not runner.stop_event.wait(1.0):
            next_stale = _stale_between_runs(runner, next_stale)
    finally:
        log.info("stopping the scheduler (waiting for the run in hand to finish)")
        scheduler.shutdown(wait=True)
        log.info("scheduler stopped")
