"""The scheduler: triggers, no overlap, lease, crashes, --once, SIGTERM mid-run.

Runs use a small fake `run_once_fn` with the real Lease and a real state file; the test
synchronises on events (and on log lines, through a handler that sets an event).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connector.ops.lease import Lease
from connector.ops.metrics import Metrics
from connector.reports.store import ReportStore, new_run_id
from connector.settings import ConfigError, load_settings
from connector.state.store import connect
from connector.sync.schedule import build_trigger, parse_interval, run_schedule, schedule_period

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("SYNC_INTERVAL", "SYNC_CRON", "CONNECTOR_HOME", "LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def settings_for(tmp_path, **values):
    return load_settings(connector_home=tmp_path / "home", _env_file=None, **values)


@contextlib.contextmanager
def watch(logger_name: str, text: str):
    """An event set when a line containing `text` is logged by `logger_name`."""
    seen = threading.Event()
    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if text in record.getMessage():
                seen.set()

    logger = logging.getLogger(logger_name)
    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    seen.lines = lines  # type: ignore[attr-defined]
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def start(target, *args, **kwargs) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(target(*args, **kwargs)),
                              daemon=True)
    thread.start()
    return thread, result


def lease_holder(settings) -> dict | None:
    conn = connect(settings.state_path)
    try:
        return Lease(conn, holder="probe").holder_info()
    finally:
        conn.close()


def save_report(settings, status: str = "success") -> str:
    conn = connect(settings.state_path)
    run_id = new_run_id()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    ReportStore(conn).save({"run_id": run_id, "started_at": now, "finished_at": now,
                            "status": status, "mode": "incremental", "duration_s": 0.5,
                            "entities": {"users": {"fetched": 3, "delivered": 3}}})
    conn.close()
    return run_id


# --------------------------------------------------------------------------- triggers

@pytest.mark.parametrize("text, seconds", [
    ("15m", 900), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("900", 900), (" 2D ", 172800),
    ("1h0m5s", 3605), (60, 60),
])
def test_parse_interval(text, seconds):
    assert parse_interval(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "abc", "15x", "1m30", "0", "0m", "-5", "m", "1.5h", "²",
                                  "\u0663m", "1h\u0663\u0660m"])
def test_parse_interval_refuses_nonsense(text):
    with pytest.raises(ValueError, match="interval"):
        parse_interval(text)


def test_interval_trigger_and_default(tmp_path):
    trigger = build_trigger(settings_for(tmp_path, sync_interval="90s"))
    assert isinstance(trigger, IntervalTrigger) and trigger.interval == timedelta(seconds=90)
    default = build_trigger(settings_for(tmp_path))
    assert isinstance(default, IntervalTrigger)
    assert schedule_period(default) == timedelta(minutes=15)


def test_cron_trigger_fires_on_utc_quarter_hours(tmp_path):
    trigger = build_trigger(settings_for(tmp_path, sync_cron="*/15 * * * *"))
    assert isinstance(trigger, CronTrigger)
    start_at = datetime(2026, 11, 22, 5, 31, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, start_at)
    assert first == datetime(2026, 11, 22, 5, 45, tzinfo=UTC)
    assert schedule_period(trigger) == timedelta(minutes=15)
    weekdays = build_trigger(settings_for(tmp_path, sync_cron="0 5 * * 1-5"))
    assert schedule_period(weekdays) == timedelta(days=3)  # over the weekend


def test_schedule_setting_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="SYNC_INTERVAL and SYNC_CRON"):
        build_trigger(settings_for(tmp_path, sync_interval="15m", sync_cron="*/15 * * * *"))
    with pytest.raises(ConfigError, match="SYNC_INTERVAL"):
        build_trigger(settings_for(tmp_path, sync_interval="often"))
    with pytest.raises(ConfigError, match="SYNC_CRON"):
        build_trigger(settings_for(tmp_path, sync_cron="99 * * * *"))
    with pytest.raises(ConfigError, match="SYNC_CRON"):
        build_trigger(settings_for(tmp_path, sync_cron="every day"))


# --------------------------------------------------------------------------- scheduling

class OverrunningRun:
    """Run 0 blocks until released (past several 1 s ticks); later runs return at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.events: list[tuple[str, int]] = []
        self.started = [threading.Event() for _ in range(20)]
        self.release = threading.Event()

    def __call__(self, stop: threading.Event) -> int:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            n = sum(1 for kind, _ in self.events if kind == "start")
            self.events.append(("start", n))
        self.started[min(n, 19)].set()
        try:
            if n == 0:
                assert self.release.wait(15)
        finally:
            with self.lock:
                self.active -= 1
                self.events.append(("end", n))
        return 0


def test_a_run_that_overruns_delays_the_next_instead_of_stacking(tmp_path):
    settings = settings_for(tmp_path, sync_interval="1s")
    fake, stop = OverrunningRun(), threading.Event()
    with watch("connector.sync.schedule", "still going at its next scheduled time") as overran:
        thread, result = start(run_schedule, settings, fake, stop_event=stop, lease_poll=0.05)
        assert fake.started[0].wait(10)
        assert overran.wait(10)  # a tick fell inside run 0 ...
        assert fake.events == [("start", 0)]  # ... and nothing was stacked on it
        assert lease_holder(settings) is not None
        fake.release.set()
        assert fake.started[1].wait(10)  # the delayed run follows promptly
    stop.set()
    thread.join(20)
    assert result == [0]
    assert fake.events.index(("end", 0)) < fake.events.index(("start", 1))
    assert fake.max_active == 1
    assert lease_holder(settings) is None  # released on the way out


def test_a_crashing_run_is_logged_and_the_schedule_goes_on(tmp_path):
    settings = settings_for(tmp_path, sync_interval="1s")
    metrics, stop, recovered = Metrics(), threading.Event(), threading.Event()
    calls: list[int] = []

    def run_once(_stop: threading.Event) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom: moesif unreachable")
        save_report(settings)
        recovered.set()
        return 0

    with watch("connector.sync.schedule", "sync run crashed: RuntimeError: boom") as crashed:
        thread, result = start(run_schedule, settings, run_once, stop_event=stop,
                               metrics=metrics, lease_poll=0.05)
        assert crashed.wait(10)
        assert recovered.wait(10)
    stop.set()
    thread.join(20)
    assert result == [0]
    text = metrics.exposition().decode()
    assert 'moesif_segment_runs_total{status="failed"} 1.0' in text
    assert 'moesif_segment_runs_total{status="success"} 1.0' in text
    assert 'moesif_segment_records_total{entity="users",outcome="delivered"} 3.0' in text
    assert metrics.health()[0] == 200


def test_once_waits_for_another_schedulers_lease(tmp_path):
    settings = settings_for(tmp_path, sync_interval="15m")
    conn = connect(settings.state_path)
    other = Lease(conn, holder="other-host:1:abcd", ttl_seconds=60)
    assert other.acquire()
    ran, holders = threading.Event(), []

    def run_once(_stop: threading.Event) -> int:
        holders.append(lease_holder(settings)["holder"])
        ran.set()
        return 1

    with watch("connector.lease", "(holder other-host:1:abcd, expires") as waiting:
        thread, result = start(run_schedule, settings, run_once, once=True, lease_poll=0.05)
        assert waiting.wait(10)
        assert not ran.is_set()
        assert "holds the lease; waiting" in waiting.lines[-1]  # type: ignore[attr-defined]
        other.release()
        thread.join(20)
    assert result == [1]  # --once returns the run's own exit code
    assert holders and holders[0] != "other-host:1:abcd"
    assert lease_holder(settings) is None
    conn.close()


def test_once_maps_crashes_and_config_errors_to_exit_codes(tmp_path):
    settings = settings_for(tmp_path)

    def crash(_stop: threading.Event) -> int:
        raise ValueError("unexpected")

    def bad_key(_stop: threading.Event) -> int:
        raise ConfigError("MOESIF_MANAGEMENT_API_KEY was refused (401)")

    assert run_schedule(settings, crash, once=True) == 1
    assert run_schedule(settings, bad_key, once=True) == 2
    assert lease_holder(settings) is None


def test_once_stopped_before_running_does_not_run(tmp_path):
    stop = threading.Event()
    stop.set()
    calls: list[int] = []
    assert run_schedule(settings_for(tmp_path), lambda s: calls.append(1) or 0, once=True,
                        stop_event=stop) == 0
    assert calls == []


def test_once_stopped_mid_run_exits_0_unless_a_person_must_act(tmp_path):
    settings = settings_for(tmp_path)

    def interrupted(code: int):
        def run(stop: threading.Event) -> int:
            stop.set()  # what SIGTERM does mid-run; the run reports `interrupted`, exit 1
            return code
        return run

    assert run_schedule(settings, interrupted(1), once=True) == 0
    assert run_schedule(settings, interrupted(2), once=True) == 2


def test_first_run_can_wait_for_the_trigger(tmp_path):
    settings = settings_for(tmp_path, sync_interval="1h")
    stop, calls = threading.Event(), []
    with watch("connector.sync.schedule", "scheduler started: every 1:00:00") as started:
        thread, result = start(run_schedule, settings, lambda s: calls.append(1) or 0,
                               first_run_now=False, stop_event=stop)
        assert started.wait(10)
    stop.set()
    thread.join(20)
    assert result == [0] and calls == []


def test_metrics_port_serves_while_scheduling(tmp_path):
    import requests

    settings = settings_for(tmp_path, sync_interval="1h")
    stop, done = threading.Event(), threading.Event()

    def run_once(_stop: threading.Event) -> int:
        save_report(settings, status="failed")
        done.set()
        return 1

    with watch("connector.sync.schedule", "serving /healthz and /metrics on ") as serving:
        thread, result = start(run_schedule, settings, run_once, stop_event=stop,
                               metrics_port=0)
        assert serving.wait(10) and done.wait(10)
        url = serving.lines[0].rsplit(" ", 1)[1]  # type: ignore[attr-defined]
        deadline_ok = False
        for _ in range(100):  # the run's metrics land just after run_once returns
            health = requests.get(url + "/healthz", timeout=5)
            if health.status_code == 503:
                deadline_ok = True
                break
            threading.Event().wait(0.05)
        assert deadline_ok and health.json()["last_run_status"] == "failed"
        assert health.json()["stale_after_s"] == 3 * 3600
    stop.set()
    thread.join(20)
    assert result == [0]


# --------------------------------------------------------------------------- SIGTERM

CHILD = r"""
import sys
from connector.ops.logsetup import setup_logging
from connector.reports.store import ReportStore
from connector.settings import load_settings
from connector.state.store import Transaction, connect
from connector.sync.schedule import run_schedule

setup_logging("INFO", "text")
settings = load_settings(connector_home=sys.argv[1], sync_interval="1h", _env_file=None)

def run_once(stop):
    conn = connect(settings.state_path)
    conn.execute("CREATE TABLE IF NOT EXISTS pages (n INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE IF NOT EXISTS cursor (id INTEGER PRIMARY KEY, n INTEGER)")
    n = 0
    while True:
        n += 1
        print(f"page {n} in hand", flush=True)
        if n == 3:
            stop.wait(30)  # a slow page: the signal arrives while it is in hand
        with Transaction(conn):  # the page and the cursor move together
            conn.execute("INSERT INTO pages VALUES (?)", (n,))
            conn.execute("INSERT INTO cursor VALUES (1, ?) "
                         "ON CONFLICT(id) DO UPDATE SET n = excluded.n", (n,))
        if stop.is_set():
            break
    ReportStore(conn).save({"run_id": "sigterm-run", "started_at": "2026-11-22T05:30:00.000Z",
                            "finished_at": "2026-11-22T05:30:01.000Z", "status": "success",
                            "mode": "incremental", "pages": n})
    conn.close()
    print("saved", flush=True)
    return 0

sys.exit(run_schedule(settings, run_once))
"""


def test_sigterm_mid_run_finishes_the_page_and_exits_zero(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(home)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln.strip()) for ln in proc.stdout],
                     daemon=True).start()
    try:
        while (line := lines.get(timeout=20)) != "page 3 in hand":
            assert line.startswith("page ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert lines.get(timeout=5) == "saved"
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert "SIGTERM received: finishing the page in hand" in stderr
    assert "scheduler stopped" in stderr
    conn = connect(home / "state.sqlite3")
    pages = [n for (n,) in conn.execute("SELECT n FROM pages ORDER BY n")]
    assert pages == [1, 2, 3]
    assert conn.execute("SELECT n FROM cursor").fetchone() == (3,)
    assert ReportStore(conn).get("latest")["pages"] == 3
    assert Lease(conn, holder="probe").holder_info() is None
    conn.close()
