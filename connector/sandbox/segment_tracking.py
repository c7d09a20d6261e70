"""A local Segment Tracking API (`/v1/batch` and the single-message endpoints).

Limits as Segment documents them, measured the way `segment-analytics-python` measures:

- request body over 500 KB (500 * 1024 bytes; checked on the raw body and again after
  gunzip) -> 400 `payload_too_large`;
- any message whose `len(json.dumps(msg).encode())` (stdlib json, `ensure_ascii=True`, so a
  non-ASCII character costs 6 bytes or more) is over 32 KB (32 * 1024) -> 400 for the whole
  batch (`message_too_large`);
- over 2,500 messages -> 200, the first 2,500 kept, the rest silently dropped (counted in
  `dropped_over_limit`; the dropped ones are not validated either).

Deliberately stricter than Segment: real Segment answers 200 to a wrong or missing write
key (a 200 means "accepted", not "valid"); this sandbox answers 401 `invalid_write_key`, so a
misconfigured key fails loudly in tests instead of vanishing. It also validates each kept
message (type, userId/anonymousId, groupId, messageId length, timestamp, traits) and
rejects the whole batch with 400 `invalid_message` and a reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from connector.common.timeutil import parse_timestamp
from connector.sandbox.httpbase import JsonHandler, SandboxServer

MAX_BATCH_BYTES = 500 * 1024
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_MESSAGES = 2_500
MAX_MESSAGE_ID_CHARS = 100
MESSAGE_TYPES = frozenset({"identify", "group", "track", "page", "screen", "alias"})
SINGLE_PATHS = {f"/v1/{t}": t for t in MESSAGE_TYPES}

Response = tuple[int, Any, dict[str, str]]


class Rejected(Exception):
    """A request the sandbox refuses; carries the HTTP status and Segment-style error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_PASS = 0  # a "fault" that lets requests through: how `inject(..., after=n)` waits


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: str | None
    html: bool = False  # answer with a proxy-style HTML page instead of Segment's JSON


@dataclass
class _Delay:
    seconds: float
    remaining: int


def library_size(message: Any) -> int:
    """`len(json.dumps(message).encode())`: the size `segment-analytics-python` checks."""
    return len(json.dumps(message).encode())


def oversize(message: Any) -> int | None:
    """The library size of `message` if it is over 32 KB, else None; fast for small ones.

    orjson's compact UTF-8 length L bounds the library size: a separator byte becomes two
    (`", "`, `": "`), a 2-byte UTF-8 character a 6-byte `\\uXXXX` escape, a 4-byte one two
    escapes (12 bytes), so 3 * L; except DEL (0x7f), which orjson writes as one byte and
    `ensure_ascii` escapes to six, so 6 * L when one is present (a C-speed scan). The slow
    exact measurement only runs for messages that could be near the limit.
    """
    data = orjson.dumps(message)
    factor = 6 if b"\x7f" in data else 3
    if len(data) * factor <= MAX_MESSAGE_BYTES:
        return None
    size = library_size(message)
    return size if size > MAX_MESSAGE_BYTES else None


def _gunzip(raw: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, MAX_BATCH_BYTES + 1)
    except zlib.error as exc:
        raise Rejected(400, "invalid_request", f"bad gzip body: {exc}") from None
    if len(body) > MAX_BATCH_BYTES or inflater.unconsumed_tail:
        raise Rejected(400, "payload_too_large",
                       f"request body over {MAX_BATCH_BYTES} bytes after gunzip")
    return body


def _has_id(value: Any) -> bool:
    return value is not None and value != ""


def _check_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)  # fast path: what the library sends
        return True
    except ValueError:
        pass
    try:
        parse_timestamp(value)  # e.g. 7 fractional digits
    except ValueError:
        return False
    return True


def validate_message(msg: Any, index: int) -> str | None:
    """The reason `msg` is invalid, or None."""
    where = f"batch[{index}]"
    if not isinstance(msg, dict):
        return f"{where}: a message must be an object"
    kind = msg.get("type")
    if kind not in MESSAGE_TYPES:
        return f"{where}: type must be one of {sorted(MESSAGE_TYPES)}, got {kind!r}"
    if not (_has_id(msg.get("userId")) or _has_id(msg.get("anonymousId"))):
        return f"{where}: userId or anonymousId is required"
    if kind == "group" and not _has_id(msg.get("groupId")):
        return f"{where}: a group message needs groupId"
    mid = msg.get("messageId")
    if mid is not None and (not isinstance(mid, str) or len(mid) > MAX_MESSAGE_ID_CHARS):
        return f"{where}: messageId must be a string of at most {MAX_MESSAGE_ID_CHARS} chars"
    if "timestamp" in msg and msg["timestamp"] is not None and \
            not _check_timestamp(msg["timestamp"]):
        return f"{where}: timestamp must be ISO 8601, got {msg['timestamp']!r}"
    if "traits" in msg and msg["traits"] is not None and not isinstance(msg["traits"], dict):
        return f"{where}: traits must be an object"
    return None


class SegmentSandbox:
    """Accepts Tracking API batches, enforces the limits, records what arrived."""

    def __init__(self, write_keys: set[str] | str, record_messages: bool = True) -> None:
        keys = {write_keys} if isinstance(write_keys, str) else set(write_keys)
        self._write_keys = [k.encode() for k in keys]
        self.record_messages = record_messages
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self.reset()

    def server(self, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
        """A (not yet started) server; use it as a context manager or call `.start()`."""
        self._closing.clear()
        return _ReleasingServer(SegmentHandler, self, host, port)

    def reset(self) -> None:
        """Forget every message, counter and pending fault."""
        with self._lock:
            self.messages: list[dict[str, Any]] = []
            self.by_message_id: dict[str, dict[str, Any]] = {}
            self._seen_ids: set[str] = set()
            self.duplicates = 0
            self.batches = 0
            self.rejected = 0
            self.unauthorized = 0
            self.received_count = 0
            self.dropped_over_limit = 0
            self.faults_served = 0
            self.by_type: Counter[str] = Counter()
            self.rejections: Counter[str] = Counter()
            self.requests = 0  # every non-admin request, answered however
            self._refused_users: frozenset[str] = frozenset()
            self._crashing_users: frozenset[str] = frozenset()
            self._faults.clear()
            self._delays.clear()

    # fault injection
    def inject(self, status: int, count: int = 1, retry_after: str | None = None,
               html: bool = False, after: int = 0) -> None:
        """The next `count` requests get `status` (with Retry-After and X-RateLimit-Reset
        when `retry_after` is given; as a proxy's HTML page when `html`), once `after`
        requests went through normally. A faulted batch is not recorded."""
        if count <= 0:
            return  # nothing to inject (a count of 0 must not fault one request)
        with self._lock:
            if after > 0:
                self._faults.append(_Fault(_PASS, after, None))
            self._faults.append(_Fault(status, count, retry_after, html))

    def refuse_users(self, user_ids: set[str] | frozenset[str]) -> None:
        """Refuse (400, like an invalid message) every batch holding a message of one of
        these users: splitting must isolate exactly them."""
        with self._lock:
            self._refused_users = frozenset(user_ids)

    def crash_on_users(self, user_ids: set[str] | frozenset[str]) -> None:
        """Answer 500 (a server error, as if the message broke Segment's processing) to
        every batch holding a message of one of these users, every time: a poison message
        for the server, not a refusal."""
        with self._lock:
            self._crashing_users = frozenset(user_ids)

    def inject_delay(self, seconds: float, count: int = 1) -> None:
        """Process the next `count` requests, but hold their responses for `seconds`
        (a client timeout then retries a batch that did arrive: duplicates follow)."""
        if count <= 0:
            return
        with self._lock:
            self._delays.append(_Delay(seconds, count))

    def release(self) -> None:
        self._closing.set()

    # observation
    @property
    def unique_message_ids(self) -> int:
        with self._lock:
            return len(self._seen_ids)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"batches": self.batches, "received_count": self.received_count,
                    "unique_message_ids": len(self._seen_ids), "duplicates": self.duplicates,
                    "rejected": self.rejected, "unauthorized": self.unauthorized,
                    "dropped_over_limit": self.dropped_over_limit,
                    "faults_served": self.faults_served, "by_type": dict(self.by_type),
                    "rejections": dict(self.rejections), "requests": self.requests,
                    "recorded_messages": len(self.messages)}

    def wait_for(self, received: int, timeout: float = 10.0) -> bool:
        """Block until `received_count >= received` (True) or `timeout` passes (False)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.received_count >= received, timeout)

    # request handling
    def handle(self, path: str, headers: Any, raw: bytes) -> Response:
        """Everything but the socket: returns (status, payload, headers)."""
        if path.startswith("/_sandbox/"):
            return self._admin(path, raw)
        with self._lock:
            self.requests += 1
        try:
            return self._accept(path, headers, raw)
        except Rejected as exc:
            with self._lock:
                if exc.status == 401:
                    self.unauthorized += 1
                elif exc.status < 500 and exc.status != 429:
                    self.rejected += 1
                    self.rejections[exc.code] += 1
            return exc.status, {"code": exc.code, "message": exc.message}, {}

    def _accept(self, path: str, headers: Any, raw: bytes) -> Response:
        single = SINGLE_PATHS.get(path)
        if path != "/v1/batch" and single is None:
            raise Rejected(404, "not_found", f"no such endpoint: {path}")
        if len(raw) > MAX_BATCH_BYTES:
            raise Rejected(400, "payload_too_large", f"request body over {MAX_BATCH_BYTES} bytes")
        body = _gunzip(raw) if headers.get("Content-Encoding", "").lower() == "gzip" else raw
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejected(400, "invalid_json", f"body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise Rejected(400, "invalid_request", "body must be a JSON object")
        self._authenticate(headers.get("Authorization"), payload.get("writeKey"))
        fault = self._take_fault()
        if fault is not None:
            return fault
        batch = self._batch_of(payload, single)
        kept = batch[:MAX_BATCH_MESSAGES]
        for index, msg in enumerate(kept):
            reason = validate_message(msg, index)
            if reason is not None:
                raise Rejected(400, "invalid_message", reason)
            if isinstance(msg, dict) and msg.get("userId") in self._crashing_users:
                raise Rejected(500, "internal", "internal server error (crash_on_users)")
            if isinstance(msg, dict) and msg.get("userId") in self._refused_users:
                raise Rejected(400, "invalid_message",
                               f"batch[{index}] refused by the sandbox (refuse_users)")
            size = oversize(msg)
            if size is not None:
                raise Rejected(400, "message_too_large",
                               f"batch[{index}] is {size} bytes as JSON, over "
                               f"{MAX_MESSAGE_BYTES}")
        self._record(kept, len(batch) - len(kept))
        return 200, {"success": True}, {}

    def _authenticate(self, header: str | None, body_key: Any) -> None:
        candidates: list[bytes] = []
        if header and header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True)
                candidates.append(decoded.partition(b":")[0])
            except (binascii.Error, ValueError):
                pass
        if isinstance(body_key, str) and body_key:
            candidates.append(body_key.encode())
        if not candidates:
            raise Rejected(401, "invalid_write_key", "no write key (Basic auth or writeKey)")
        for candidate in candidates:
            if any(hmac.compare_digest(candidate, key) for key in self._write_keys):
                return
        raise Rejected(401, "invalid_write_key", "unknown write key")

    @staticmethod
    def _batch_of(payload: dict[str, Any], single: str | None) -> list[Any]:
        if single is not None:
            msg = {k: v for k, v in payload.items() if k not in ("writeKey", "sentAt")}
            if msg.setdefault("type", single) != single:
                raise Rejected(400, "invalid_message",
                               f"type {msg['type']!r} sent to /v1/{single}")
            return [msg]
        batch = payload.get("batch")
        if not isinstance(batch, list):
            raise Rejected(400, "invalid_request", "batch must be a list")
        return batch

    def _take_fault(self) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.pop(0)
            if fault.status == _PASS:
                return None
            self.faults_served += 1
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
            try:
                reset = int(time.time() + float(fault.retry_after))
            except ValueError:
                reset = int(time.time())
            headers["X-RateLimit-Reset"] = str(reset)
        if fault.html:
            headers["Content-Type"] = "text/html; charset=utf-8"
            page = (f"<html><head><title>{fault.status} Error</title></head><body><h1>"
                    f"{fault.status} Error</h1><p>The proxy could not serve this request."
                    f"</p></body></html>")
            return fault.status, page.encode(), headers
        code = "rate_limited" if fault.status == 429 else "injected_fault"
        return fault.status, {"code": code, "message": "injected by the sandbox"}, headers

    def _record(self, kept: list[dict[str, Any]], dropped: int) -> None:
        with self._lock:
            self.batches += 1
            self.received_count += len(kept)
            self.dropped_over_limit += dropped
            seen, by_id, record = self._seen_ids, self.by_message_id, self.record_messages
            for msg in kept:
                self.by_type[msg["type"]] += 1
                mid = msg.get("messageId")
                if mid is not None:
                    if mid in seen:
                        self.duplicates += 1
                    else:
                        seen.add(mid)
                    if record:
                        by_id[mid] = msg
            if record:
                self.messages.extend(kept)
            self._arrived.notify_all()

    def take_delay(self) -> float:
        with self._lock:
            if not self._delays:
                return 0.0
            delay = self._delays[0]
            delay.remaining -= 1
            if delay.remaining <= 0:
                self._delays.pop(0)
            return delay.seconds

    def wait_delay(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(seconds)

    # admin (no auth; only the sandbox has these)
    def _admin(self, path: str, raw: bytes) -> Response:
        if path == "/_sandbox/stats":
            return 200, self.stats(), {}
        if path == "/_sandbox/reset":
            self.reset()
            return 200, {"ok": True}, {}
        if path == "/_sandbox/fault":
            try:
                body = orjson.loads(raw) if raw else {}
                if body.get("delay_seconds") is not None:
                    self.inject_delay(float(body["delay_seconds"]), int(body.get("count", 1)))
                if body.get("status") is not None:
                    retry_after = body.get("retry_after")
                    self.inject(int(body["status"]), int(body.get("count", 1)),
                                None if retry_after is None else str(retry_after),
                                html=bool(body.get("html", False)),
                                after=int(body.get("after", 0)))
                if body.get("refuse_users") is not None:
                    self.refuse_users({str(u) for u in body["refuse_users"]})
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                return 400, {"code": "invalid_request", "message": str(exc)}, {}
            return 200, {"ok": True}, {}
        return 404, {"code": "not_found", "message": f"no such sandbox endpoint: {path}"}, {}


class SegmentHandler(JsonHandler):
    def handle(self) -> None:
        # The client went away (killed, or its timeout fired): nobody to answer, no traceback.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()

    def _raw_body(self) -> bytes:
        length = self.raw_length()
        return self.rfile.read(length) if length else b""

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        app: SegmentSandbox = self.app
        path = self.path.split("?", 1)[0]
        status, payload, headers = app.handle(path, self.headers, self._raw_body())
        if not path.startswith("/_sandbox/"):
            app.wait_delay(app.take_delay())
        try:
            if isinstance(payload, bytes) and "Content-Type" in headers:
                self._send_page(status, payload, headers)
            else:
                self.send_json(status, payload, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_page(self, status: int, page: bytes, headers: dict[str, str]) -> None:
        """A non-JSON answer (a proxy's error page) with its own Content-Type."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        app: SegmentSandbox = self.app
        path = self.path.split("?", 1)[0]
        if path == "/_sandbox/stats":
            self.send_json(200, app.stats())
        else:
            self.send_json(404, {"code": "not_found", "message": f"no such endpoint: {path}"})


class _ReleasingServer(SandboxServer):
    """Releases held responses before shutting down, so `stop()` never waits on a delay."""

    def stop(self) -> None:
        self.httpd.app.release()  # type: ignore[attr-defined]
        super().stop()


def make_auth_header(write_key: str) -> dict[str, str]:
    """The header `segment-analytics-python` sends: Basic with the key and no password."""
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    return {"Authorization": f"Basic {token}"}

