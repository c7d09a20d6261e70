"""Run the sync path's sandbox peers (Moesif Management API + Segment Tracking API).

    python -m connector.sandbox.serve --users 1000 --companies 100

prints one JSON line, `{"moesif_api_url": ..., "segment_host": ..., "pid": ...}`, then
serves until SIGTERM or SIGINT. With `--exports` (what `moesif-segment sandbox` uses) it
also serves the Moesif Collector and prints ready-to-paste `export` lines instead. Ports
are free ones unless given (`--moesif-port`, `--segment-port`, `--collector-port`).
In-process users (tests, the demo, benchmarks) call `start_sync_sandbox(...)` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from connector.sandbox.dataset import Dataset
from connector.sandbox.httpbase import SandboxServer
from connector.sandbox.moesif_management import MoesifManagementSandbox
from connector.sandbox.segment_tracking import SegmentSandbox

DEFAULT_MANAGEMENT_KEY = "sandbox-management-key"
DEFAULT_WRITE_KEY = "sandbox-write-key"
DEFAULT_APPLICATION_ID = "sandbox-application-id"


@dataclass
class SyncSandbox:
    """Both peers running on loopback; `stop()` (or leaving the `with`) shuts them down."""

    dataset: Dataset
    moesif: MoesifManagementSandbox
    segment: SegmentSandbox
    moesif_server: SandboxServer
    segment_server: SandboxServer

    @property
    def moesif_url(self) -> str:
        return self.moesif_server.url

    @property
    def segment_url(self) -> str:
        return self.segment_server.url

    def stop(self) -> None:
        self.moesif_server.stop()
        self.segment_server.stop()

    def __enter__(self) -> SyncSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sync_sandbox(users: int, companies: int, seed: int = 7,
                       management_key: str = DEFAULT_MANAGEMENT_KEY,
                       write_key: str = DEFAULT_WRITE_KEY, special_records: bool = True,
                       record_messages: bool = True, host: str = "127.0.0.1",
                       moesif_port: int = 0, segment_port: int = 0) -> SyncSandbox:
    """Build the dataset and start both servers (on free ports unless given)."""
    dataset = Dataset(users, companies, seed=seed, special_records=special_records)
    moesif = MoesifManagementSandbox(dataset, management_key)
    segment = SegmentSandbox(write_key, record_messages=record_messages)
    moesif_server = moesif.server(host, moesif_port).start()
    try:
        segment_server = segment.server(host, segment_port).start()
    except Exception:
        moesif_server.stop()
        raise
    return SyncSandbox(dataset, moesif, segment, moesif_server, segment_server)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m connector.sandbox.serve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-special", action="store_true",
                        help="leave out the special (invalid / oversize) records")
    parser.add_argument("--management-key", default=DEFAULT_MANAGEMENT_KEY)
    parser.add_argument("--write-key", default=DEFAULT_WRITE_KEY)
    parser.add_argument("--no-record", action="store_true",
                        help="count Segment messages without keeping them (benchmarks)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--moesif-port", type=int, default=0)
    parser.add_argument("--segment-port", type=int, default=0)
    parser.add_argument("--collector-port", type=int, default=0)
    parser.add_argument("--application-id", default=DEFAULT_APPLICATION_ID)
    parser.add_argument("--exports", action="store_true",
                        help="also serve the Moesif Collector; print `export` lines")
    return parser.parse_args(argv)


def export_lines(sandbox: SyncSandbox, collector_url: str, args: argparse.Namespace) -> str:
    """Shell lines that point the connector at the sandbox (its keys are sandbox keys)."""
    values = {
        "MOESIF_API_URL": sandbox.moesif_url,
        "MOESIF_MANAGEMENT_API_KEY": args.management_key,
        "SEGMENT_HOST": sandbox.segment_url,
        "SEGMENT_WRITE_KEY": args.write_key,
        "MOESIF_COLLECTOR_URL": collector_url,
        "MOESIF_APPLICATION_ID": args.application_id,
    }
    lines = ["# the local sandbox: Moesif Management API, Segment Tracking API and Moesif "
             "Collector", "# paste into another shell, then: moesif-segment check && "
             "moesif-segment sync"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    lines.append("# Ctrl-C here stops the sandbox")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # This process only builds and parses acyclic JSON-like documents, page after page:
    # the default cyclic-GC threshold (700 allocations) runs a collection every few
    # documents. Reference counting frees them either way.
    gc.set_threshold(100_000, 50, 50)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(start_sync_sandbox(
            args.users, args.companies, seed=args.seed, management_key=args.management_key,
            write_key=args.write_key, special_records=not args.no_special,
            record_messages=not args.no_record, host=args.host, moesif_port=args.moesif_port,
            segment_port=args.segment_port))
        if args.exports:
            from connector.sandbox.moesif_collector import MoesifCollectorSandbox

            collector = MoesifCollectorSandbox({args.application_id}, record_events=False)
            server = stack.enter_context(collector.server(args.host, args.collector_port))
            sys.stdout.write(export_lines(sandbox, server.url, args))
        else:
            line = {"moesif_api_url": sandbox.moesif_url, "segment_host": sandbox.segment_url,
                    "pid": os.getpid()}
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
