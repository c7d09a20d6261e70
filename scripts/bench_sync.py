#!/usr/bin/env python3
"""Benchmark the sync path end to end (not a test).

    python scripts/bench_sync.py                 # 100,000 users, 10,000 companies
    python scripts/bench_sync.py --users 1000000 # the 1M-user variant
    python scripts/bench_sync.py --repeat 3      # 3 (full sync, baseline) pairs, median

Starts the sandbox (Moesif Management + Segment) in its own process, then, each in a
separate process:
  1. a full `moesif-segment sync --full` (identify + group calls, diffing, state, report);
  2. a no-change incremental re-run (cost should follow what changed, not the user base);
  3. a naive baseline sending the same messages: page with `requests`, same mapping,
     segment-analytics-python's Client at its defaults (consumer thread), no diffing, no
     state.
Prints users/s, messages/s, peak RSS and CPU seconds (the run with its map process, and
the sandbox beside it) of each, and the ratio to the baseline, and the
Moesif queries per 1,000 users of each connector run, counted by the sandbox (the full sync
with the 24-hour metrics enrichment on, and again, in a fresh state home, with
SYNC_USER_METRICS=false; `--skip-metrics-off` leaves that run out). The full sync maps in
its map process (SYNC_MAP_PROCESS=auto from 10,000 users); `--map-process off` measures
it without, and the map process's own peak RSS is printed beside the run's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
MGMT_KEY = "bench-management-key"
WRITE_KEY = "bench-write-key"


def start_sandbox(users: int, companies: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.sandbox.serve", "--users", str(users),
         "--companies", str(companies), "--no-special", "--no-record",
         "--management-key", MGMT_KEY, "--write-key", WRITE_KEY],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    return proc, json.loads(line)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def watch_children(pid: int, peaks: dict[int, float], done: threading.Event) -> None:
    """Sample the RSS of `pid`'s child processes (the sync's map process) every 50 ms:
    the kernel's peak of the waited process does not count a child it did not wait for."""
    while not done.wait(0.05):
        for child in _children(pid):
            peaks[child] = max(peaks.get(child, 0.0), _rss_mb(child))


CHILD_PEAKS: dict[int, float] = {}
SANDBOX_PID: int | None = None
LAST_CPU: dict[str, float] = {}  # CPU seconds of the last timed child and of the sandbox


def _proc_cpu(pid: int | None) -> float:
    """utime + stime of a process from /proc (0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_line(seconds: float, what: str) -> str:
    """Where the CPU went during the last timed child: on 2 cores the sandbox competes."""
    child, sandbox = LAST_CPU.get("child", 0.0), LAST_CPU.get("sandbox", 0.0)
    return (f"  CPU: {what} {child:.1f} s, sandbox "
            f"{sandbox:.1f} s -> {(child + sandbox) / seconds:.2f} of {os.cpu_count()} "
            f"cores busy")


def timed_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a child process; return (seconds, peak RSS in MB, stdout). The peak RSS of its
    own children (sampled) is left in CHILD_PEAKS."""
    CHILD_PEAKS.clear()
    sandbox0 = _proc_cpu(SANDBOX_PID)
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        done = threading.Event()
        watcher = threading.Thread(target=watch_children, args=(proc.pid, CHILD_PEAKS, done),
                                   daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        # wait4's usage counts the child and the children it waited for (the map process).
        LAST_CPU.update(child=usage.ru_utime + usage.ru_stime,
                        sandbox=_proc_cpu(SANDBOX_PID) - sandbox0)
        done.set()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode not in (0,):
        print(f"  ! {' '.join(cmd[-3:])} exited {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024, text


def moesif_queries(urls: dict) -> int:
    """Management API requests the Moesif sandbox answered so far (its own counter)."""
    stats = requests.get(urls["moesif_api_url"] + "/_sandbox/stats", timeout=10).json()
    return int(stats.get("counters", {}).get("requests", 0))


def per_1000(queries: int, users: int) -> str:
    return f"{queries:,} Moesif queries, {queries * 1000 / max(users, 1):.2f} per 1,000 users"


def segment_stats(urls: dict) -> dict:
    return requests.get(urls["segment_host"] + "/_sandbox/stats", timeout=10).json()


def reset_segment(urls: dict) -> None:
    requests.post(urls["segment_host"] + "/_sandbox/reset", timeout=10)


def baseline_worker() -> None:
    """The naive way: same pages and messages, library defaults, no state, no diffing."""
    from segment.analytics import Client

    from connector.common.timeutil import parse_timestamp
    from connector.mapping import load_mappings

    moesif, host = os.environ["MOESIF_API_URL"], os.environ["SEGMENT_HOST"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {MGMT_KEY}"
    mappings = load_mappings(ROOT / "mappings")
    client = Client(write_key=WRITE_KEY, host=host)
    body = {"size": 1000, "sort": [{"modified_time": {"order": "asc"}},
                                   {"user_id.raw": {"order": "asc"}}]}
    sent = refused = 0
    while True:
        hits = session.post(f"{moesif}/v1/search/~/search/users", json=body).json()["hits"]["hits"]
        if not hits:
            break
        docs = [h["_source"] for h in hits]
        cids = sorted({d["company_id"] for d in docs if d.get("company_id")})
        companies = {}
        if cids:
            q = {"size": len(cids), "query": {"bool": {"filter": [
                {"terms": {"company_id.raw": cids}}]}}}
            for h in session.post(f"{moesif}/v1/search/~/search/companies",
                                  json=q).json()["hits"]["hits"]:
                companies[h["_source"]["company_id"]] = h["_source"]
        uids = [d["user_id"] for d in docs if d.get("user_id")]
        q = {"size": len(uids), "query": {"bool": {"filter": [{"terms": {"user_id.raw": uids}}]}}}
        metrics = {h["_source"]["user_id"]: h["_source"].get("metrics") for h in session.post(
            f"{moesif}/v1/search/~/search/usermetrics/users?from=-24h&to=now",
            json=q).json()["hits"]["hits"]}
        for doc in docs:
            company = companies.get(doc.get("company_id"))
            msg = mappings.apply("identify", doc, {"@company": company,
                                                   "@metrics": metrics.get(doc["user_id"])}).message
            ts = parse_timestamp(msg.pop("timestamp"))
            ok, _ = client.identify(msg["userId"], msg.get("traits"), msg.get("context"), ts)
            sent += 1
            refused += not ok  # queue full: the library drops it (trap 1)
            if company:
                g = mappings.apply("group", company, {}).message
                g.pop("timestamp", None)
                ok, _ = client.group(doc["user_id"], g["groupId"], g.get("traits"), timestamp=ts)
                sent += 1
                refused += not ok
        if len(hits) < 1000:
            break
        body["search_after"] = hits[-1]["sort"]
    client.flush()
    print(json.dumps({"messages": sent, "dropped_queue_full": refused}))


def repeat_pairs(args: argparse.Namespace, env: dict[str, str], urls: dict, cli: list[str],
                 ratios: list[float]) -> None:
    """More (full sync, baseline) pairs, each run right after the other so both see the
    same machine; the median of the pairs' ratios is the figure to quote."""
    for n in range(2, args.repeat + 1):
        reset_segment(urls)
        fresh = dict(env, CONNECTOR_HOME=tempfile.mkdtemp(prefix=f"bench-sync-{n}-"))
        ours, _, _ = timed_child(cli + ["sync", "--full", "--no-progress"], fresh)
        reset_segment(urls)
        base, _, _ = timed_child([sys.executable, __file__, "--baseline-worker"], env)
        ratios.append(base / ours)
        print(f"pair {n}: full sync {ours:6.2f} s ({args.users / ours:,.0f} users/s), "
              f"baseline {base:6.2f} s, ratio {base / ours:.2f}x")
    print(f"ratio over {len(ratios)} pairs: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


def main() -> None:
    if "--baseline-worker" in sys.argv:
        baseline_worker()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-metrics-off", action="store_true")
    parser.add_argument("--map-process", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure N (full sync, baseline) pairs in turn and print the "
                             "median ratio: on a shared machine speed drifts within minutes")
    args = parser.parse_args()

    print(f"seeding sandbox: {args.users:,} users, {args.companies:,} companies ...")
    sandbox, urls = start_sandbox(args.users, args.companies)
    global SANDBOX_PID
    SANDBOX_PID = sandbox.pid
    home = tempfile.mkdtemp(prefix="bench-sync-")
    env = dict(os.environ, MOESIF_API_URL=urls["moesif_api_url"],
               SEGMENT_HOST=urls["segment_host"], MOESIF_MANAGEMENT_API_KEY=MGMT_KEY,
               SEGMENT_WRITE_KEY=WRITE_KEY, CONNECTOR_HOME=home, MOESIF_PAGE_SIZE="1000",
               SYNC_MAP_PROCESS=args.map_process)
    cli = [sys.executable, "-m", "connector"]
    try:
        q0 = moesif_queries(urls)
        secs, rss, _ = timed_child(cli + ["sync", "--full", "--no-progress"], env)
        queries = moesif_queries(urls) - q0
        stats = segment_stats(urls)
        ours = args.users / secs
        print(f"  connector delivered {stats.get('received_count', 0):,} messages "
              f"({stats.get('unique_message_ids', stats.get('received_count', 0)):,} unique)")
        print(f"connector full sync : {secs:7.2f} s  {ours:9,.0f} users/s  "
              f"{stats.get('received_count', 0) / secs:9,.0f} messages/s  peak RSS {rss:6.1f} MB")
        print(f"  metrics on : {per_1000(queries, args.users)}")
        print(cpu_line(secs, "run and map process"))
        if CHILD_PEAKS:
            print(f"  map process peak RSS (sampled): {max(CHILD_PEAKS.values()):.1f} MB")
        reset_segment(urls)
        q0 = moesif_queries(urls)
        secs2, rss2, _ = timed_child(cli + ["sync", "--no-progress"], env)
        queries2 = moesif_queries(urls) - q0
        stats2 = segment_stats(urls)
        print(f"no-change re-run    : {secs2:7.2f} s  sent {stats2.get('received_count', 0)} "
              f"messages  peak RSS {rss2:6.1f} MB  ({secs / max(secs2, 1e-9):.0f}x faster "
              f"than the full run), {queries2:,} Moesif queries")
        if not args.skip_metrics_off:
            reset_segment(urls)
            env_off = dict(env, CONNECTOR_HOME=tempfile.mkdtemp(prefix="bench-sync-off-"),
                           SYNC_USER_METRICS="false")
            q0 = moesif_queries(urls)
            secs4, _, _ = timed_child(cli + ["sync", "--full", "--no-progress"], env_off)
            queries4 = moesif_queries(urls) - q0
            print(f"full sync, metrics off: {secs4:7.2f} s  {args.users / secs4:9,.0f} users/s")
            print(f"  metrics off: {per_1000(queries4, args.users)}")
        if not args.skip_baseline:
            reset_segment(urls)
            secs3, rss3, out = timed_child([sys.executable, __file__, "--baseline-worker"], env)
            stats3 = segment_stats(urls)
            worker = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            base = args.users / secs3
            print(f"naive baseline      : {secs3:7.2f} s  {base:9,.0f} users/s  "
                  f"{stats3.get('received_count', 0) / secs3:9,.0f} messages/s  "
                  f"peak RSS {rss3:6.1f} MB")
            print(cpu_line(secs3, "baseline"))
            print(f"  baseline delivered {stats3.get('received_count', 0):,} of "
                  f"{worker.get('messages', 0):,} messages; the library dropped "
                  f"{worker.get('dropped_queue_full', 0):,} on a full queue, silently")
            print(f"ratio connector / baseline: {ours / base:.2f}x")
            if args.repeat > 1:
                repeat_pairs(args, env, urls, cli, [secs3 / secs])
    finally:
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    main()
