"""A local Moesif Collector: the documented contract, injectable failures, and a record.

Contract enforced (see ../shared/reference/moesif-api.md): `X-Moesif-Application-Id`
must be known (401); bodies over 50 MB (compressed or not) get 413, an event over 1 MB
or missing a required field gets 400 naming the event index and the reason; events
older than 30 days get 400; success is 201 with an empty body. A 400 rejects the whole
batch (nothing recorded), which is what makes a client split it.

Moesif de-duplicates on `transaction_id`; the record keeps a receipt count per id so
tests can check "exactly once by transaction id" (`unique_count`, `duplicate_count`).

Run alone (for benchmarks, in its own process so it never competes for our GIL):
`python -m connector.sandbox.moesif_collector --app-id X [--no-record] [--port 0]`
prints `{"collector_url": ...}` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from connector.common.timeutil import parse_timestamp
from connector.sandbox.httpbase import JsonHandler, SandboxServer

MAX_BODY_BYTES = 50_000_000
MAX_EVENT_BYTES = 1_000_000
MAX_REPORTED_ERRORS = 100
DIRECTIONS = frozenset({"Incoming", "Outgoing", "Internal"})
OUTAGE_MODES = ("503", "close")
_READ_CHUNK = 1 << 20

# (status or None to drop the connection, JSON payload, extra headers)
_Reply = tuple[int | None, Any, dict[str, str] | None]


class EventInvalid(ValueError):
    """One event breaks the contract; the message is the reason Moesif would give."""


@dataclass
class _Fault:
    status: int
    retry_after: str | None
    html: bool = False  # a proxy-style HTML page instead of the Collector's answer


class MoesifCollectorSandbox:
    """The Collector's state: accounts, validation options, faults and what was received."""

    def __init__(
        self,
        application_ids: set[str] | str,
        record_events: bool = True,
        reject_older_than_days: int | None = 30,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        latency: float = 0.0,
    ) -> None:
        ids = {application_ids} if isinstance(application_ids, str) else set(application_ids)
        self.application_ids = frozenset(ids)
        self.record_events = record_events
        self.reject_older_than_days = reject_older_than_days
        # Seconds every event request is held before it is answered: the round trip to a
        # Collector across the internet, which loopback does not have (benchmarks).
        self.latency = latency
        self.max_body_bytes = max_body_bytes
        self.max_event_bytes = max_event_bytes
        # One condition guards all state; waiters (`wait_for`) are woken on every request.
        self._cond = threading.Condition()
        self._delay_cancel = threading.Event()
        self._reset_faults()
        self._reset_record()

    # --- lifecycle ---

    def server(self, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
        return SandboxServer(CollectorHandler, self, host=host, port=port)

    def reset(self) -> None:
        """Forget what was received and clear every fault."""
        with self._cond:
            self._reset_record()
            self._reset_faults()
            self._cond.notify_all()

    def _reset_record(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.by_transaction_id: dict[str, int] = {}
        self.no_transaction_id_count = 0
        self.received_count = 0
        self.batches = 0
        self.rejected_batches = 0
        self.requests = 0
        self.status_counts: Counter[int] = Counter()
        self.connections_dropped = 0
        self.gzip_requests = 0
        self.user_agents: set[str] = set()
        self.last_rejection: dict[str, Any] | None = None

    def _reset_faults(self) -> None:
        self._injected: list[_Fault] = []
        self._delays: list[float] = []
        self._outage_on = False
        self._outage_deadline: float | None = None
        self._outage_mode = "503"
        self._rejected_ids: frozenset[str] = frozenset()
        self._delay_cancel.set()  # wakes any request held in an injected delay
        self._delay_cancel = threading.Event()

    # --- fault injection (thread-safe) ---

    def inject(self, status: int, count: int = 1, retry_after: float | str | None = None,
               html: bool = False) -> None:
        """Answer the next `count` event requests with `status` (and `Retry-After`), as a
        proxy's HTML page when `html`."""
        value = None if retry_after is None else (
            retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        )
        with self._cond:
            self._injected.extend(_Fault(status, value, html) for _ in range(count))

    def outage(self, on: bool, mode: str = "503") -> None:
        """While on, refuse event requests: `503`, or `close` the connection unanswered."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode must be one of {OUTAGE_MODES}")
        with self._cond:
            self._outage_on, self._outage_deadline, self._outage_mode = on, None, mode

    def outage_until(self, deadline: float, mode: str = "503") -> None:
        """An outage that ends by itself at `deadline` (a `time.monotonic()` value)."""
        self.outage(False, mode)
        with self._cond:
            self._outage_deadline = deadline

    def outage_for(self, seconds: float, mode: str = "503") -> None:
        self.outage_until(time.monotonic() + seconds, mode)

    def in_outage(self) -> bool:
        with self._cond:
            return self._outage_active()

    def outage_mode(self) -> str | None:
        """`"503"` or `"close"` while an outage is on, else None."""
        with self._cond:
            return self._outage_mode if self._outage_active() else None

    def inject_delay(self, seconds: float, count: int = 1) -> None:
        """Hold the next `count` event requests for `seconds` before answering."""
        with self._cond:
            self._delays.extend(seconds for _ in range(count))

    def reject_transaction_ids(self, ids: set[str]) -> None:
        """Any batch holding one of these transaction ids gets a 400 naming it."""
        with self._cond:
            self._rejected_ids = frozenset(ids)

    # --- observation ---

    @property
    def unique_count(self) -> int:
        """Events Moesif would keep: distinct transaction ids plus events without one."""
        with self._cond:
            return len(self.by_transaction_id) + self.no_transaction_id_count

    @property
    def duplicate_count(self) -> int:
        with self._cond:
            return self.received_count - len(self.by_transaction_id) - self.no_transaction_id_count

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "received_count": self.received_count,
                "unique_count": len(self.by_transaction_id) + self.no_transaction_id_count,
                "duplicate_count": self.received_count - len(self.by_transaction_id)
                - self.no_transaction_id_count,
                "batches": self.batches,
                "rejected_batches": self.rejected_batches,
                "requests": self.requests,
                "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
                "connections_dropped": self.connections_dropped,
                "gzip_requests": self.gzip_requests,
                "outage": self._outage_active(),
                "pending_faults": len(self._injected),
            }

    def wait_for(self, predicate: Callable[[MoesifCollectorSandbox], bool],
                 timeout: float) -> bool:
        """Block until `predicate(self)` holds (checked after every request) or timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    # --- request handling (called by the handler) ---

    def authorised(self, application_id: str | None) -> bool:
        return application_id is not None and application_id in self.application_ids

    def take_fault(self) -> tuple[str, Any]:
        """What to do with the next event request: ('ok'|'close'|'status'|'delay', arg)."""
        with self._cond:
            if self._outage_active():
                if self._outage_mode == "close":
                    return "close", None
                return "status", _Fault(503, None)
            if self._delays:
                return "delay", (self._delays.pop(0), self._delay_cancel)
            if self._injected:
                return "status", self._injected.pop(0)
            return "ok", None

    def count_request(self, status: int | None, gzip_used: bool, user_agent: str | None) -> None:
        with self._cond:
            self.requests += 1
            if status is None:
                self.connections_dropped += 1
            else:
                self.status_counts[status] += 1
            if gzip_used:
                self.gzip_requests += 1
            if user_agent and len(self.user_agents) < 100:
                self.user_agents.add(user_agent)
            self._cond.notify_all()

    def validate(self, events: list[Any], body_size: int) -> list[dict[str, Any]]:
        """Every broken event of the batch, as `{"index", "reason"[, "transaction_id"]}`."""
        errors: list[dict[str, Any]] = []
        oldest = self._oldest_allowed()
        check_size = body_size > self.max_event_bytes  # no event can be bigger than the body
        rejected = self._rejected_ids
        for index, event in enumerate(events):
            try:
                _validate_event(event, oldest)
                if check_size and len(orjson.dumps(event)) > self.max_event_bytes:
                    raise EventInvalid(f"event exceeds {self.max_event_bytes} bytes")
                if rejected and event.get("transaction_id") in rejected:
                    raise EventInvalid("transaction_id rejected by the sandbox rule")
            except EventInvalid as exc:
                error: dict[str, Any] = {"index": index, "reason": str(exc)}
                if isinstance(event, dict) and isinstance(event.get("transaction_id"), str):
                    error["transaction_id"] = event["transaction_id"]
                errors.append(error)
                if len(errors) >= MAX_REPORTED_ERRORS:
                    break
        return errors

    def record(self, events: list[dict[str, Any]]) -> None:
        with self._cond:
            self.batches += 1
            self.received_count += len(events)
            counts = self.by_transaction_id
            for event in events:
                txid = event.get("transaction_id")
                if txid is None:
                    self.no_transaction_id_count += 1
                else:
                    counts[txid] = counts.get(txid, 0) + 1
            if self.record_events:
                self.events.extend(events)

    def record_rejection(self, status: int, answer: dict[str, Any]) -> None:
        with self._cond:
            self.rejected_batches += 1
            self.last_rejection = {"status": status, **answer}

    def _outage_active(self) -> bool:
        if self._outage_on:
            return True
        return self._outage_deadline is not None and time.monotonic() < self._outage_deadline

    def _oldest_allowed(self) -> datetime | None:
        if self.reject_older_than_days is None:
            return None
        return datetime.now(UTC) - timedelta(days=self.reject_older_than_days)


def _validate_event(event: Any, oldest: datetime | None) -> None:
    if not isinstance(event, dict):
        raise EventInvalid("event must be a JSON object")
    request = event.get("request")
    if not isinstance(request, dict):
        raise EventInvalid("request object is required")
    request_time = _require_time(request, "request")
    for field in ("uri", "verb"):
        value = request.get(field)
        if not isinstance(value, str) or not value:
            raise EventInvalid(f"request.{field} is required")
    if not isinstance(request.get("headers"), dict):
        raise EventInvalid("request.headers must be an object (may be {})")
    response = event.get("response")
    if response is not None:
        if not isinstance(response, dict):
            raise EventInvalid("response must be an object")
        status = response.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise EventInvalid("response.status must be an integer")
        _require_time(response, "response")
        headers = response.get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise EventInvalid("response.headers must be an object")
    _validate_top_level(event)
    if oldest is not None and request_time < oldest:
        raise EventInvalid("request.time is older than 30 days")


def _validate_top_level(event: dict[str, Any]) -> None:
    txid = event.get("transaction_id")
    if txid is not None and (not isinstance(txid, str) or len(txid) != 36 or txid.count("-") != 4):
        raise EventInvalid("transaction_id must be a 36-character UUID")
    direction = event.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise EventInvalid("direction must be Incoming, Outgoing or Internal")
    weight = event.get("weight")
    if weight is not None and (not isinstance(weight, int) or isinstance(weight, bool)
                               or weight < 1):
        raise EventInvalid("weight must be an integer >= 1")
    metadata = event.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise EventInvalid("metadata must be an object")


def _require_time(part: dict[str, Any], name: str) -> datetime:
    value = part.get("time")
    if not isinstance(value, str):
        raise EventInvalid(f"{name}.time is required (ISO 8601)")
    try:
        return parse_timestamp(value)
    except ValueError:
        raise EventInvalid(f"{name}.time is not ISO 8601: {value[:40]!r}") from None


class CollectorHandler(JsonHandler):
    app: MoesifCollectorSandbox

    # --- routing ---

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/_sandbox/stats":
            self.send_json(200, self.app.stats())
        elif path == "/v1/config":
            self._get_config()
        else:
            self.send_json(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path.startswith("/_sandbox/"):
            self._admin(path)
        elif path in ("/v1/events/batch", "/v1/events"):
            self._post_events(batch=path.endswith("/batch"))
        else:
            self._drain()
            self.send_json(404, {"error": f"no route {path}"})

    # --- Collector endpoints ---

    def _post_events(self, batch: bool) -> None:
        raw = self._drain()
        gzip_used = self.headers.get("Content-Encoding", "").lower() == "gzip"
        status, payload, headers = self._answer_events(raw, gzip_used, batch)
        # Counted before answering: a client (or test) that saw the answer sees the count.
        self.app.count_request(status, gzip_used, self.headers.get("User-Agent"))
        if status is None:
            self.close_connection = True  # the line "drops": no answer at all
        elif isinstance(payload, bytes) and headers and "Content-Type" in headers:
            self.send_response(status)  # a non-JSON page (a proxy's)
            self.send_header("Content-Type", headers["Content-Type"])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        elif status == 201:
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_json(status, payload, headers)

    def _answer_events(self, raw: bytes | None, gzip_used: bool, batch: bool) -> _Reply:
        """The answer to one event request; status None means drop the connection."""
        if self.app.latency > 0:
            time.sleep(self.app.latency)  # simulated network round trip (--latency)
        action, arg = self.app.take_fault()
        if action == "close":
            return None, None, None
        if action == "delay":
            seconds, cancel = arg
            cancel.wait(seconds)
        elif action == "status":
            headers = {"Retry-After": arg.retry_after} if arg.retry_after else None
            if arg.html:
                page = f"<html><body><h1>{arg.status}</h1><p>Proxy error page</p></body></html>"
                return arg.status, page.encode(), {"Content-Type": "text/html"}
            return arg.status, {"error": "injected by the sandbox"}, headers
        if not self.app.authorised(self.headers.get("X-Moesif-Application-Id")):
            return 401, {"error": "Unauthorized: unknown application id"}, None
        return self._accept(raw, gzip_used, batch)

    def _accept(self, raw: bytes | None, gzip_used: bool, batch: bool) -> _Reply:
        app = self.app
        if raw is None or len(raw) > app.max_body_bytes:
            return self._reject(413, f"body exceeds {app.max_body_bytes} bytes")
        body = raw
        if gzip_used:
            try:
                body = _gunzip(raw, app.max_body_bytes)
            except (OSError, EOFError, zlib.error):
                return self._reject(400, "body is not valid gzip")
            if body is None:
                return self._reject(413, f"body exceeds {app.max_body_bytes} bytes uncompressed")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._reject(400, f"body is not valid JSON: {exc}")
        if batch and not isinstance(parsed, list):
            return self._reject(400, "/v1/events/batch expects a JSON array of events")
        events = parsed if batch else [parsed]
        errors = app.validate(events, len(body))
        if errors:
            return self._reject(400, "invalid events", errors)
        app.record(events)
        return 201, None, None

    def _reject(self, status: int, message: str,
                errors: list[dict[str, Any]] | None = None) -> _Reply:
        answer: dict[str, Any] = {"message": message}
        if errors:
            answer["errors"] = errors
        self.app.record_rejection(status, answer)
        return status, answer, None

    def _get_config(self) -> None:
        # An outage covers the whole Collector; injected statuses are for event posts only.
        mode = self.app.outage_mode()
        if mode == "close":
            self.close_connection = True
            return
        if mode == "503":
            self.send_json(503, {"error": "sandbox outage"})
            return
        if not self.app.authorised(self.headers.get("X-Moesif-Application-Id")):
            self.send_json(401, {"error": "Unauthorized: unknown application id"})
            return
        config = {"sample_rate": 100, "user_sample_rate": {}, "company_sample_rate": {},
                  "regex_config": []}
        self.send_json(200, config, {"X-Moesif-Config-ETag": "sandbox-1"})

    # --- admin ---

    def _admin(self, path: str) -> None:
        raw = self._drain()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            self.send_json(400, {"error": "invalid JSON"})
            return
        if not isinstance(body, dict):
            body = {}
        app = self.app
        if path == "/_sandbox/reset":
            app.reset()
        elif path == "/_sandbox/outage":
            app.outage(bool(body.get("on")), str(body.get("mode", "503")))
        elif path == "/_sandbox/inject":
            app.inject(int(body.get("status", 503)), int(body.get("count", 1)),
                       body.get("retry_after"), html=bool(body.get("html", False)))
        else:
            self.send_json(404, {"error": f"no route {path}"})
            return
        self.send_json(200, app.stats())

    def _drain(self) -> bytes | None:
        """Read the whole request body (so the connection stays usable); None if too big.

        An oversized body is still read to its end and thrown away: answering before the
        client finished sending would reset the connection, which a client retries as a
        network error instead of seeing the 413.
        """
        length = self.raw_length()
        if length <= self.app.max_body_bytes:
            return self.rfile.read(length) if length else b""
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(_READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
        return None


def _gunzip(data: bytes, limit: int) -> bytes | None:
    """Decompress, stopping past `limit` bytes (a gzip bomb must not exhaust memory)."""
    decompressor = zlib.decompressobj(wbits=31)
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit:
        return None
    if not decompressor.eof:
        raise EOFError("truncated gzip stream")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the sandbox Moesif Collector.")
    parser.add_argument("--app-id", action="append", required=True,
                        help="an accepted X-Moesif-Application-Id (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-record", action="store_true",
                        help="keep counts only, not the events (for long benchmarks)")
    parser.add_argument("--accept-old", action="store_true",
                        help="accept events older than 30 days")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="hold every event request this long (a remote round trip)")
    args = parser.parse_args(argv)
    app = MoesifCollectorSandbox(set(args.app_id), record_events=not args.no_record,
                                 reject_older_than_days=None if args.accept_old else 30,
                                 latency=max(0.0, args.latency))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with app.server(args.host, args.port) as server:
        sys.stdout.write(orjson.dumps({"collector_url": server.url}).decode() + "\n")
        sys.stdout.flush()
        stop.wait()
    sys.stdout.write(orjson.dumps({"stats": app.stats()}).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
