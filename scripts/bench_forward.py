#!/usr/bin/env python3
"""Benchmark the forward path end to end (not a test).

    python scripts/bench_forward.py                  # 200,000 log records, 10 s phases
    python scripts/bench_forward.py --lines 50000 --duration 5 --skip-baseline
    python scripts/bench_forward.py --repeat 3 --skip-ingest --skip-latency  # median ratio

Everything runs on 127.0.0.1 and every child has a time limit. Phases:
  1. generate a realistic `apim_metrics.log` (LogGenerator) in a temp dir and start the
     Collector sandbox in its own process (`--no-record`: counts only);
  2. `moesif-segment forward --from-log <file> --once` in a separate process with a fresh
     CONNECTOR_HOME: wall time, events/s (events the Collector received), peak RSS
     (`os.wait4` of the forwarder, and a psutil sample of the whole process tree, since
     its parse workers are separate processes), exit code 0, every valid event delivered;
  3. a baseline in a separate process doing what WSO2's reporter does: read the file,
     parse each metrics line and map it with the same EventMapper, post batches of 50
     synchronously with `requests` (stdlib `json`, no gzip, no spool); ratio to it
     (`--repeat N`: N pairs in turn, median ratio; `--collector-latency MS`: both again,
     on `--remote-lines` records, against a Collector that answers after MS milliseconds,
     as Moesif across the internet does);
  4. HTTP ingest: `forward --listen` in a separate process, a paced keep-alive client at
     500 requests/s (one event each) for `--duration` s; time to 202, then SIGTERM;
  5. line-to-Moesif latency: `forward --from-log` following a file this process appends
     to at 2,000 events/s for `--duration` s; the Collector runs in this process so each
     transaction id is timestamped on arrival, and mapped back to its line's write time.
  6. (with --nats URL) JetStream: the log published to a fresh stream, then drained to the
     Collector by one forwarder, and by two sharing one durable consumer; events/s, ratio;
Prints the figures beside the issue's targets; a missed target does not fail the run,
a broken run (non-zero exit, lost events) does (exit status 1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
APP_ID = "bench-application-id"
INGEST_TOKEN = "bench-ingest-token"
BASELINE_BATCH = 50
CHILD_TIMEOUT = 600.0       # no child runs longer than this (killed, reported)
STOP_TIMEOUT = 60.0         # a SIGTERMed forwarder must exit within this
DELIVERY_TIMEOUT = 60.0     # after the load stops, the Collector must have everything by then

# Targets from issue 4 (printed beside the measurements, never enforced).
TARGET_RATIO, GOAL_RATIO = 1.5, 2.0
TARGET_RSS_MB = 200.0
TARGET_INGEST_P99_MS = 5.0
TARGET_LATENCY_P99_S = 2.0

_REPORT_LINE = re.compile(r"backlog=(?P<backlog>\d+) exit=(?P<exit>\d+)$", re.MULTILINE)


# --- small helpers -----------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(home: Path, collector_url: str, **extra: str) -> dict[str, str]:
    """The forwarder's environment: only our own keys, a fresh CONNECTOR_HOME, loopback."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MOESIF_", "FORWARD_", "CONNECTOR_"))}
    env.update(MOESIF_APPLICATION_ID=APP_ID, MOESIF_COLLECTOR_URL=collector_url,
               CONNECTOR_HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    return env


def make_mapper() -> Any:
    """The EventMapper the forwarder builds from a default configuration (no
    deployment.toml): same masking, same mapping file, so both sides send the same events."""
    from connector.forward.config import resolve_config
    from connector.forward.moesif_event import EventMapper
    from connector.settings import Settings

    config = resolve_config(Settings(moesif_application_id=APP_ID))
    return EventMapper(config.send_headers, config.mask, set(config.unknown_company_values))


def forwarder_report(stderr: str) -> dict[str, int]:
    """The counters the forwarder prints at exit: `forward: read=...` lines, wrapped to 80
    columns, the last ending in `backlog=N exit=C`."""
    matches = list(_REPORT_LINE.finditer(stderr))
    if not matches:
        return {}
    last = matches[-1]
    start = stderr.rfind("forward: read=", 0, last.end())
    text = " ".join(line.removeprefix("forward: ")
                    for line in stderr[start:last.start()].splitlines())
    out = {name: int(value) for name, value in (part.split("=", 1) for part in text.split())}
    out["backlog"] = int(last["backlog"])
    return out


class TreeRss:
    """Samples the summed RSS of a process and its descendants (the forwarder's parse
    workers are spawned processes; `wait4` reports only the largest single process)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.peak_bytes = 0       # summed RSS: shared pages (interpreter, libraries) counted
        self.peak_pss_bytes = 0   # summed PSS: shared pages split between the processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid, interval), daemon=True)
        self._thread.start()

    def _run(self, pid: int, interval: float) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while not self._stop.wait(interval):
            rss = pss = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        full = proc.memory_full_info()
                    except psutil.Error:
                        continue
                    rss += full.rss
                    pss += getattr(full, "pss", full.rss)
            except psutil.Error:
                return
            self.peak_bytes = max(self.peak_bytes, rss)
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)

    def stop(self) -> tuple[float, float]:
        """(peak summed RSS, peak summed PSS) in MB."""
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_bytes / 2**20, self.peak_pss_bytes / 2**20


@dataclass
class ChildResult:
    seconds: float
    exit_code: int
    maxrss_mb: float        # os.wait4: largest process of the tree
    tree_peak_mb: float     # psutil samples: the whole tree at once (RSS summed)
    tree_pss_mb: float      # the same with PSS (shared pages counted once)
    cpu_seconds: float      # user + system, the child and the workers it reaped
    stdout: str
    stderr: str
    timed_out: bool = False


class Child:
    """A child process with its output in temp files, a watchdog and RSS accounting."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        # Closed in wait(), once the child is gone and its output read.
        self.out = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.out, stderr=self.err)
        self.rss = TreeRss(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.returncode is None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = CHILD_TIMEOUT) -> ChildResult:
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            self.proc.kill()

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            watchdog.cancel()
        elapsed = time.perf_counter() - self.t0
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        tree, tree_pss = self.rss.stop()
        texts = []
        for handle in (self.out, self.err):
            handle.seek(0)
            texts.append(handle.read())
            handle.close()
        return ChildResult(elapsed, self.proc.returncode, usage.ru_maxrss / 1024,
                           tree, tree_pss, usage.ru_utime + usage.ru_stime, texts[0], texts[1],
                           timed_out.is_set())

    def kill_if_running(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


# --- the Collector sandbox in its own process ---------------------------------------------
class CollectorProcess:
    def __init__(self, cwd: Path, latency: float = 0.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connector.sandbox.moesif_collector", "--app-id", APP_ID,
             "--no-record", "--latency", str(latency)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout=30)
        if not ready or not ready[0].strip():
            self.stop()
            raise RuntimeError("the Collector sandbox did not start within 30 s")
        self.url = json.loads(ready[0])["collector_url"]
        self.session = requests.Session()

    def cpu_seconds(self) -> float:
        """CPU the Collector used so far: on 2 cores it competes with what is measured."""
        try:
            times = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def stats(self) -> dict[str, Any]:
        return self.session.get(self.url + "/_sandbox/stats", timeout=10).json()

    def reset(self) -> None:
        self.session.post(self.url + "/_sandbox/reset", timeout=10).raise_for_status()

    def wait_unique(self, count: int, timeout: float) -> dict[str, Any]:
        """Poll the stats until `count` unique events arrived (or the deadline)."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["unique_count"] < count and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.stats()
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# --- phase 2: forward --once ---------------------------------------------------------------
@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print(f"  ! CHECK FAILED: {what}")


def cpu_line(result: ChildResult, collector_cpu: float, bench_cpu: float) -> str:
    busy = result.cpu_seconds + collector_cpu + bench_cpu
    return (f"  CPU: measured process(es) {result.cpu_seconds:.1f} s, Collector sandbox "
            f"{collector_cpu:.1f} s, bench {bench_cpu:.1f} s -> {busy / result.seconds:.2f} of "
            f"{os.cpu_count()} cores busy")


def bench_cpu() -> float:
    times = os.times()
    return times.user + times.system


def run_once(work: Path, log_path: Path, expected: int, collector: CollectorProcess,
             res: Results, home_name: str = "home-once") -> None:
    collector.reset()
    cpu0, own0 = collector.cpu_seconds(), bench_cpu()
    home = work / home_name  # a fresh state: an earlier run's offsets would skip the file
    env = child_env(home, collector.url)
    print("forward --once ...", flush=True)
    child = Child([sys.executable, "-m", "connector", "forward", "--from-log", str(log_path),
                   "--once"], env, work)
    result = child.wait()
    collector_cpu, own_cpu = collector.cpu_seconds() - cpu0, bench_cpu() - own0
    stats = collector.stats()
    counters = forwarder_report(result.stderr)
    delivered = stats["unique_count"]
    rate = delivered / result.seconds
    print(f"  exit {result.exit_code}; collector received {stats['received_count']:,} events, "
          f"{delivered:,} unique ({stats['duplicate_count']:,} duplicates) of {expected:,} "
          f"valid events in the log; {stats['batches']:,} batches")
    if counters:
        print("  forwarder counters: " + " ".join(f"{k}={v:,}" for k, v in counters.items()))
    print(f"  {result.seconds:.2f} s  {rate:,.0f} events/s  peak RSS {result.maxrss_mb:.1f} MB "
          f"(largest process, wait4); process tree sampled: RSS sum {result.tree_peak_mb:.1f} MB,"
          f" PSS sum {result.tree_pss_mb:.1f} MB")
    print(cpu_line(result, collector_cpu, own_cpu))
    res.check(not result.timed_out, f"forward --once exceeded {CHILD_TIMEOUT:.0f} s")
    res.check(result.exit_code == 0, f"forward --once exited {result.exit_code}")
    res.check(delivered == expected,
              f"forward --once delivered {delivered:,} unique events, expected {expected:,}")
    if result.exit_code != 0:
        print("  stderr tail:\n    " + "\n    ".join(result.stderr.strip().splitlines()[-10:]))
    res.figures.update(once_seconds=result.seconds, once_rate=rate, once_delivered=delivered,
                       once_expected=expected, once_exit=result.exit_code,
                       once_received=stats["received_count"],
                       once_maxrss_mb=result.maxrss_mb, once_tree_mb=result.tree_peak_mb,
                       once_tree_pss_mb=result.tree_pss_mb,
                       once_dead_lettered=counters.get("dead_lettered"))


# --- phase 3: the WSO2-reporter-like baseline ---------------------------------------------
def baseline_worker() -> None:
    """Parse, map, post batches of 50 synchronously: stdlib json, no gzip, no spool.
    A refused batch is logged and dropped, as WSO2's reporter does."""
    from connector.forward.errors import MalformedEvent
    from connector.forward.logline import parse_metrics_line

    log_path = os.environ["BENCH_LOG"]
    url = os.environ["MOESIF_COLLECTOR_URL"].rstrip("/") + "/v1/events/batch"
    mapper = make_mapper()
    session = requests.Session()
    session.headers.update({"Content-Type": "application/json",
                            "X-Moesif-Application-Id": os.environ["MOESIF_APPLICATION_ID"]})
    sent = malformed = failed = 0
    batch: list[dict[str, Any]] = []

    def post() -> None:
        nonlocal sent, failed
        answer = session.post(url, data=json.dumps(batch), timeout=30)
        if answer.status_code == 201:
            sent += len(batch)
        else:
            failed += len(batch)
        batch.clear()

    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                parsed = parse_metrics_line(line)
                if parsed is None:
                    continue
                kind, raw = parsed
                batch.append(mapper.process(raw, kind))
            except MalformedEvent:
                malformed += 1
                continue
            if len(batch) >= BASELINE_BATCH:
                post()
    if batch:
        post()
    print(json.dumps({"sent": sent, "malformed": malformed, "failed": failed}))


def run_baseline(work: Path, log_path: Path, expected: int, collector: CollectorProcess,
                 res: Results) -> None:
    collector.reset()
    cpu0, own0 = collector.cpu_seconds(), bench_cpu()
    env = child_env(work / "home-baseline", collector.url, BENCH_LOG=str(log_path))
    print(f"baseline (parse, map, stdlib json, batches of {BASELINE_BATCH}, synchronous) ...",
          flush=True)
    child = Child([sys.executable, str(Path(__file__).resolve()), "--baseline-worker"], env, work)
    result = child.wait()
    collector_cpu, own_cpu = collector.cpu_seconds() - cpu0, bench_cpu() - own0
    stats = collector.stats()
    worker = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    delivered = stats["unique_count"]
    rate = delivered / result.seconds
    print(f"  exit {result.exit_code}; collector received {delivered:,} of {expected:,} "
          f"({worker.get('malformed', '?')} malformed lines skipped, "
          f"{worker.get('failed', '?')} events in refused batches)")
    print(f"  {result.seconds:.2f} s  {rate:,.0f} events/s  peak RSS {result.maxrss_mb:.1f} MB")
    print(cpu_line(result, collector_cpu, own_cpu))
    res.check(result.exit_code == 0 and not result.timed_out,
              f"baseline exited {result.exit_code}")
    res.figures.update(base_seconds=result.seconds, base_rate=rate, base_delivered=delivered,
                       base_maxrss_mb=result.maxrss_mb)
    if res.figures.get("once_rate"):
        ratio = res.figures["once_rate"] / rate
        res.figures["ratio"] = ratio
        print(f"  ratio connector / baseline: {ratio:.2f}x")


def repeat_pairs(work: Path, log_path: Path, expected: int, collector: CollectorProcess,
                 res: Results, repeat: int) -> None:
    """More (forward --once, baseline) pairs, each run right after the other so both see
    the same machine; the median of the pairs' ratios becomes the figure quoted."""
    ratios = [res.figures["ratio"]] if "ratio" in res.figures else []
    for n in range(2, repeat + 1):
        print(f"pair {n} of {repeat}:")
        res.figures.pop("ratio", None)
        run_once(work, log_path, expected, collector, res, home_name=f"home-once-{n}")
        run_baseline(work, log_path, expected, collector, res)
        if "ratio" in res.figures:
            ratios.append(res.figures["ratio"])
    if len(ratios) > 1:
        res.figures["ratio"] = statistics.median(ratios)
        res.figures["ratios"] = ratios
        print(f"  ratio over {len(ratios)} pairs: median {res.figures['ratio']:.2f}x "
              f"({', '.join(f'{r:.2f}' for r in ratios)})")


def run_remote(work: Path, latency_ms: float, lines: int, res: Results) -> None:
    """forward --once and the baseline again, against a Collector that holds every request
    `latency_ms` (the round trip to Moesif across the internet, which loopback lacks)."""
    from connector.sandbox.apim_log import LogGenerator

    log_path = work / "remote" / "apim_metrics.log"
    log_path.parent.mkdir()
    stats = LogGenerator(seed=11).write(log_path, lines)
    print(f"remote Collector ({latency_ms:.0f} ms a request), {stats.events:,} valid events:")
    remote = Results()
    collector = CollectorProcess(work, latency=latency_ms / 1000)
    try:
        run_once(work, log_path, stats.events, collector, remote, home_name="home-remote")
        run_baseline(work, log_path, stats.events, collector, remote)
    finally:
        collector.stop()
    res.failures.extend(remote.failures)
    if "ratio" in remote.figures:
        res.figures.update(remote_ms=latency_ms, remote_ratio=remote.figures["ratio"],
                           remote_rate=remote.figures["once_rate"],
                           remote_base_rate=remote.figures["base_rate"])


# --- phase 4: HTTP ingest ------------------------------------------------------------------
def wait_healthy(port: int, child: Child, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.alive():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def ingest_bodies(count: int) -> list[bytes]:
    """`count` distinct valid WSO2 events (raw maps, as a custom reporter would post)."""
    from connector.sandbox.apim_log import FAULTY, RESPONSE, LogGenerator

    generator = LogGenerator(seed=4242)
    bodies: list[bytes] = []
    index = 0
    while len(bodies) < count:
        kind, event = generator.event(index)
        index += 1
        if kind in (RESPONSE, FAULTY):
            bodies.append(orjson.dumps(event))
    return bodies


def paced_posts(port: int, bodies: list[bytes], rate: float) -> dict[str, Any]:
    """POST each body at its scheduled time (t0 + i/rate) on one keep-alive connection.
    Returns send->202 latencies, schedule->202 latencies and the statuses."""
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    service: list[float] = []
    scheduled: list[float] = []
    statuses: dict[int, int] = {}
    late = 0
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.001:
            late += 1
        sent = time.perf_counter()
        conn.request("POST", "/v1/events", body, headers)
        answer = conn.getresponse()
        answer.read()
        done = time.perf_counter()
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        if answer.status == 202:
            service.append(done - sent)
            scheduled.append(done - due)
        if answer.will_close:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    elapsed = time.perf_counter() - t0
    conn.close()
    return {"service": service, "scheduled": scheduled, "statuses": statuses, "late": late,
            "elapsed": elapsed}


def run_ingest(work: Path, collector: CollectorProcess, duration: float, rate: float,
               res: Results) -> None:
    collector.reset()
    port = free_port()
    env = child_env(work / "home-ingest", collector.url, FORWARD_INGEST_TOKEN=INGEST_TOKEN)
    print(f"HTTP ingest: {rate:.0f} requests/s for {duration:.0f} s, one event each ...",
          flush=True)
    warmup = 50
    bodies = ingest_bodies(warmup + int(rate * duration))
    child = Child([sys.executable, "-m", "connector", "forward", "--listen",
                   f"127.0.0.1:{port}"], env, work)
    try:
        if not wait_healthy(port, child):
            child.terminate()
            result = child.wait(STOP_TIMEOUT)
            res.check(False, f"forward --listen never became healthy (exit {result.exit_code})")
            print("  stderr tail:\n    " + "\n    ".join(result.stderr.splitlines()[-10:]))
            return
        # A few requests first: the server's first handler thread, the first commit.
        paced_posts(port, bodies[:warmup], rate)
        run = paced_posts(port, bodies[warmup:], rate)
        stats = collector.wait_unique(len(bodies), DELIVERY_TIMEOUT)
        child.terminate()
        result = child.wait(STOP_TIMEOUT)
    finally:
        child.kill_if_running()
    service_ms = [s * 1000 for s in run["service"]]
    scheduled_ms = [s * 1000 for s in run["scheduled"]]
    accepted = run["statuses"].get(202, 0)
    achieved = (len(bodies) - warmup) / run["elapsed"]
    print(f"  {accepted:,} of {len(bodies) - warmup:,} requests answered 202 "
          f"(statuses {run['statuses']}); achieved {achieved:,.0f} requests/s; "
          f"{run['late']} sent more than 1 ms late")
    if service_ms:
        p50, p99 = percentile(service_ms, 50), percentile(service_ms, 99)
        sp99 = percentile(scheduled_ms, 99)
        print(f"  time to 202: p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {max(service_ms):.2f} ms "
              f"(from the scheduled send time: p99 {sp99:.2f} ms)")
        res.figures.update(ingest_p50_ms=p50, ingest_p99_ms=p99, ingest_sched_p99_ms=sp99)
    print(f"  collector received {stats['unique_count']:,} of {len(bodies):,} events; "
          f"SIGTERM -> exit {result.exit_code}; peak RSS {result.maxrss_mb:.1f} MB")
    res.figures.update(ingest_rate=achieved, ingest_exit=result.exit_code,
                       ingest_delivered=stats["unique_count"], ingest_sent=len(bodies))
    res.check(accepted == len(bodies) - warmup, "some ingest requests were not answered 202")
    res.check(stats["unique_count"] == len(bodies),
              f"ingest: collector has {stats['unique_count']:,} of {len(bodies):,} events")
    res.check(result.exit_code == 0, f"forward --listen exited {result.exit_code} on SIGTERM")


# --- phase 5: line-to-Moesif latency --------------------------------------------------------
def make_timed_collector() -> Any:
    """The Collector sandbox, in this process, stamping each transaction id on arrival.
    `record` is what the handler calls for a batch it accepts (just before the 201)."""
    from connector.sandbox.moesif_collector import MoesifCollectorSandbox

    class TimedCollector(MoesifCollectorSandbox):
        def __init__(self) -> None:
            self.arrivals: dict[str, float] = {}
            # record_events off: only the arrival times are needed, not the events.
            super().__init__(APP_ID, record_events=False)

        def record(self, events: list[dict[str, Any]]) -> None:
            now = time.perf_counter()
            arrivals = self.arrivals
            for event in events:
                txid = event.get("transaction_id")
                if txid is not None and txid not in arrivals:
                    arrivals[txid] = now
            super().record(events)

    return TimedCollector()


def latency_records(count_events: int) -> list[tuple[bytes, str | None]]:
    """(log text, transaction id or None) for records holding `count_events` valid events.
    The id is computed by the forwarder's own parser and mapper (uuid5 of kind and
    correlationId), so it matches what reaches the Collector."""
    from connector.forward.errors import MalformedEvent
    from connector.forward.logline import parse_metrics_line
    from connector.sandbox.apim_log import LogGenerator

    generator = LogGenerator(seed=2024)
    mapper = make_mapper()
    records: list[tuple[bytes, str | None]] = []
    events = 0
    seen: set[str] = set()
    for text in generator.lines(10 * count_events + 100):
        txid = None
        first = text.split("\n", 1)[0]
        try:
            parsed = parse_metrics_line(first)
            if parsed is not None:
                txid = mapper.process(parsed[1], parsed[0])["transaction_id"]
        except MalformedEvent:
            txid = None
        if txid is not None:
            if txid in seen:
                raise RuntimeError("generator repeated a correlationId")
            seen.add(txid)
            events += 1
        records.append((text.encode(), txid))
        if events >= count_events:
            break
    return records


def split_after_events(records: list[tuple[bytes, str | None]],
                       count: int) -> tuple[list[tuple[bytes, str | None]],
                                            list[tuple[bytes, str | None]]]:
    """The records up to and including the `count`-th event, and the rest."""
    seen = 0
    for index, (_, txid) in enumerate(records):
        seen += txid is not None
        if seen >= count:
            return records[: index + 1], records[index + 1 :]
    return records, []


def paced_append(fd: int, records: list[tuple[bytes, str | None]],
                 rate: float) -> tuple[dict[str, float], float]:
    """Append records so that event k is written at t0 + k/rate (other lines go with the
    next event). Returns each transaction id's write time and the elapsed time."""
    written: dict[str, float] = {}
    t0 = time.perf_counter()
    i = events = 0
    while i < len(records):
        due_events = int((time.perf_counter() - t0) * rate) + 1
        chunk: list[bytes] = []
        txids: list[str] = []
        while i < len(records) and events < due_events:
            text, txid = records[i]
            chunk.append(text)
            i += 1
            if txid is not None:
                txids.append(txid)
                events += 1
        if chunk:
            os.write(fd, b"".join(chunk))
            now = time.perf_counter()
            for txid in txids:
                written[txid] = now
        delay = t0 + events / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return written, time.perf_counter() - t0


def run_latency(work: Path, duration: float, rate: float, res: Results) -> None:
    print(f"line-to-Moesif: appending {rate:.0f} events/s for {duration:.0f} s to a followed "
          "log ...", flush=True)
    collector = make_timed_collector()
    warmup_events = 20
    records = latency_records(warmup_events + int(rate * duration))
    warmup, timed = split_after_events(records, warmup_events)
    log_path = work / "growing" / "apim_metrics.log"
    log_path.parent.mkdir()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    server = collector.server().start()
    child = None
    try:
        env = child_env(work / "home-latency", server.url)
        child = Child([sys.executable, "-m", "connector", "forward", "--from-log",
                       str(log_path)], env, work)
        # Wait until the forwarder is up and delivering: a few events end to end first.
        os.write(fd, b"".join(text for text, _ in warmup))
        warm_ids = {txid for _, txid in warmup if txid}
        if not collector.wait_for(lambda c: warm_ids <= c.arrivals.keys(), timeout=60):
            res.check(False, "latency: the forwarder did not deliver the warm-up events in 60 s")
            return
        written, elapsed = paced_append(fd, timed, rate)
        wanted = set(written)
        collector.wait_for(lambda c: wanted <= c.arrivals.keys(), timeout=DELIVERY_TIMEOUT)
        child.terminate()
        result = child.wait(STOP_TIMEOUT)
    finally:
        os.close(fd)
        if child is not None:
            child.kill_if_running()
        server.stop()
    arrivals = collector.arrivals
    latencies = [arrivals[t] - w for t, w in written.items() if t in arrivals]
    missing = len(written) - len(latencies)
    achieved = len(written) / elapsed
    stats = collector.stats()
    print(f"  wrote {len(written):,} events in {elapsed:.2f} s ({achieved:,.0f} events/s); "
          f"collector received {len(latencies):,} of them ({missing} missing, "
          f"{stats['duplicate_count']} duplicates, {stats['batches']} batches)")
    if latencies:
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"  write -> Collector: p50 {p50 * 1000:.0f} ms  p99 {p99 * 1000:.0f} ms  "
              f"max {max(latencies) * 1000:.0f} ms")
        res.figures.update(latency_p50_s=p50, latency_p99_s=p99)
    print(f"  SIGTERM -> exit {result.exit_code}; peak RSS {result.maxrss_mb:.1f} MB")
    res.figures.update(latency_rate=achieved, latency_exit=result.exit_code,
                       latency_missing=missing)
    res.check(missing == 0, f"latency: {missing} written events never reached the collector")
    res.check(result.exit_code == 0, f"forward --from-log exited {result.exit_code} on SIGTERM")


# --- summary -------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary(res: Results, args: argparse.Namespace, log_stats: Any) -> None:
    f = res.figures
    print("\n=== bench_forward summary ===")
    print(f"command : {shlex.join(['python', 'scripts/bench_forward.py', *sys.argv[1:]])}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine : {os.cpu_count()} cores, Python {sys.version.split()[0]}, loopback Collector "
          f"sandbox; load average at start {args.load_at_start}, at end {load} (other work on "
          "the machine skews the figures)")
    print(f"log     : {log_stats.records:,} records, {log_stats.physical_lines:,} lines, "
          f"{log_stats.events:,} valid events ({log_stats.malformed:,} malformed, "
          f"{log_stats.noise:,} other log lines)")
    if "once_rate" in f:
        print(f"forward --once  : {f['once_seconds']:.2f} s, {f['once_rate']:,.0f} events/s, "
              f"delivered {f['once_delivered']:,}/{f['once_expected']:,}, exit {f['once_exit']}")
        print(f"peak RSS        : {f['once_maxrss_mb']:.1f} MB largest process (wait4)   "
              f"target < {TARGET_RSS_MB:.0f} MB: {verdict(f['once_maxrss_mb'] < TARGET_RSS_MB)}")
        print(f"  process tree  : RSS sum {f['once_tree_mb']:.1f} MB, PSS sum "
              f"{f['once_tree_pss_mb']:.1f} MB (forwarder + spawned parse workers, sampled "
              f"every 0.2 s)   < {TARGET_RSS_MB:.0f} MB: "
              f"{verdict(f['once_tree_pss_mb'] < TARGET_RSS_MB)} (PSS)")
    if "base_rate" in f:
        print(f"baseline        : {f['base_seconds']:.2f} s, {f['base_rate']:,.0f} events/s "
              f"(parse + same mapping, stdlib json, {BASELINE_BATCH}/batch, synchronous)")
    if "remote_ratio" in f:
        print(f"remote ({f['remote_ms']:.0f} ms): forward --once {f['remote_rate']:,.0f} "
              f"events/s, baseline {f['remote_base_rate']:,.0f} events/s, ratio "
              f"{f['remote_ratio']:.1f}x")
    if "ratio" in f:
        pairs = f" (median of {len(f['ratios'])} pairs)" if "ratios" in f else ""
        print(f"ratio           : {f['ratio']:.2f}x{pairs}   target >= {TARGET_RATIO}x: "
              f"{verdict(f['ratio'] >= TARGET_RATIO)}; goal {GOAL_RATIO}x: "
              f"{verdict(f['ratio'] >= GOAL_RATIO)}")
    if "ingest_p99_ms" in f:
        print(f"ingest ack      : p50 {f['ingest_p50_ms']:.2f} ms, p99 {f['ingest_p99_ms']:.2f} ms "
              f"at {f['ingest_rate']:,.0f} req/s (p99 from schedule "
              f"{f['ingest_sched_p99_ms']:.2f} ms)   target p99 < {TARGET_INGEST_P99_MS:.0f} ms: "
              f"{verdict(f['ingest_p99_ms'] < TARGET_INGEST_P99_MS)}; "
              f"delivered {f['ingest_delivered']:,}/{f['ingest_sent']:,}, "
              f"SIGTERM exit {f['ingest_exit']}")
    if "latency_p99_s" in f:
        print(f"line-to-Moesif  : p50 {f['latency_p50_s'] * 1000:.0f} ms, p99 "
              f"{f['latency_p99_s'] * 1000:.0f} ms at {f['latency_rate']:,.0f} events/s   "
              f"target p99 < {TARGET_LATENCY_P99_S:.0f} s: "
              f"{verdict(f['latency_p99_s'] < TARGET_LATENCY_P99_S)}; "
              f"missing {f['latency_missing']}, SIGTERM exit {f['latency_exit']}")
    if res.failures:
        print(f"checks          : {len(res.failures)} FAILED: " + "; ".join(res.failures))
    else:
        print("checks          : all passed (exit codes 0, every valid event delivered)")


# --- phase 6: JetStream (issue 11) ----------------------------------------------------------
def run_jetstream(work: Path, log_path: Path, expected: int, collector: CollectorProcess,
                  nats_url: str, res: Results) -> None:
    """Publish the log to a fresh stream, then drain it to the Collector through one
    forwarder and through two forwarders sharing one durable consumer; events/s, ratio."""
    import asyncio
    import secrets

    suffix = secrets.token_hex(4)
    stream, subject = f"BENCH_{suffix}", f"bench{suffix}.apim.node1"
    print(f"JetStream at {nats_url}: publish ...", flush=True)
    env = child_env(work / "home-js-gw", collector.url)
    pub = Child([sys.executable, "-m", "connector", "forward", "--from-log", str(log_path),
                 "--to-nats", nats_url, "--subject", subject, "--stream", stream, "--once"],
                env, work).wait()
    res.check(pub.exit_code == 0, f"publish to JetStream exited {pub.exit_code}")
    print(f"  published {expected:,} events in {pub.seconds:.2f} s "
          f"({expected / pub.seconds:,.0f} events/s)")
    rates: dict[int, float] = {}
    try:
        for n in (1, 2):
            collector.reset()
            children = [Child([sys.executable, "-m", "connector", "forward", "--from-nats",
                               nats_url, "--stream", stream, "--durable", f"bench{n}",
                               "--once"], child_env(work / f"home-js-{n}-{i}", collector.url),
                              work) for i in range(n)]
            t0 = time.perf_counter()
            results = [c.wait() for c in children]
            seconds = time.perf_counter() - t0
            unique = collector.stats()["unique_count"]
            rates[n] = unique / seconds
            print(f"  {n} forwarder(s) on one consumer: {unique:,} events in {seconds:.2f} s "
                  f"-> {rates[n]:,.0f} events/s")
            res.check(all(r.exit_code == 0 for r in results),
                      f"{n} JetStream forwarder(s) exited non-zero")
            res.check(unique == expected, f"{n} JetStream forwarder(s) delivered {unique:,} "
                                          f"unique events, expected {expected:,}")
    finally:
        async def drop() -> None:
            import nats

            nc = await nats.connect(nats_url)
            try:
                await nc.jetstream().delete_stream(stream)
            finally:
                await nc.close()
        asyncio.run(drop())
    if rates.get(1):
        print(f"  two forwarders / one: {rates.get(2, 0) / rates[1]:.2f}x "
              f"(on {os.cpu_count()} cores, the Collector sandbox and NATS included)")
    res.figures.update(js_publish_rate=expected / pub.seconds, js_one_rate=rates.get(1),
                       js_two_rate=rates.get(2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000,
                        help="log records to generate for forward --once and the baseline")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load in the ingest and latency phases")
    parser.add_argument("--ingest-rate", type=float, default=500.0, help="requests/s")
    parser.add_argument("--latency-rate", type=float, default=2000.0,
                        help="events/s appended to the followed log")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure N (forward --once, baseline) pairs in turn; the ratio "
                             "quoted is their median (a shared machine drifts within minutes)")
    parser.add_argument("--collector-latency", type=float, default=0.0, metavar="MS",
                        help="also measure forward --once and the baseline against a "
                             "Collector that answers after MS milliseconds (e.g. 50)")
    parser.add_argument("--remote-lines", type=int, default=20_000,
                        help="log records for the --collector-latency phase")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--nats", default=os.environ.get("TEST_NATS_URL", ""),
                        help="JetStream phase against this NATS (e.g. nats://127.0.0.1:4222)")
    return parser.parse_args()


def main() -> int:
    if "--baseline-worker" in sys.argv:
        baseline_worker()
        return 0
    args = parse_args()
    args.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    from connector.sandbox.apim_log import LogGenerator

    res = Results()
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        work = Path(tmp)
        log_path = work / "once" / "apim_metrics.log"
        log_path.parent.mkdir()
        t0 = time.perf_counter()
        log_stats = LogGenerator(seed=7).write(log_path, args.lines)
        print(f"generated {log_stats.records:,} records ({log_stats.events:,} valid events, "
              f"{log_path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        collector = CollectorProcess(work)
        try:
            run_once(work, log_path, log_stats.events, collector, res)
            if not args.skip_baseline:
                run_baseline(work, log_path, log_stats.events, collector, res)
                repeat_pairs(work, log_path, log_stats.events, collector, res, args.repeat)
            if args.collector_latency > 0 and not args.skip_baseline:
                run_remote(work, args.collector_latency, args.remote_lines, res)
            if not args.skip_ingest:
                run_ingest(work, collector, args.duration, args.ingest_rate, res)
            if args.nats:
                run_jetstream(work, log_path, log_stats.events, collector, args.nats, res)
        finally:
            collector.stop()
        if not args.skip_latency:
            run_latency(work, args.duration, args.latency_rate, res)
        summary(res, args, log_stats)
    return 1 if res.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
