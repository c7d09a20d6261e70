"""Deliver identify/group messages to Segment with every library trap closed.

We let `segment.analytics.Client(send=False)` shape each message (it returns the finished
message instead of queueing it) and post our own size-accounted batches, in the body
and with the auth the library's `request.post` uses, retried by tenacity. Each message
is encoded once (orjson, compact UTF-8); the 500 KB batch limit is checked on the bytes
sent, the 32 KB message limit the way the library counts (`json.dumps`, ASCII escapes).
Measured on this machine (README) this is faster than the library's consumer thread,
and it makes confirmation synchronous: a message is delivered when the `/v1/batch`
request that carried it returned 2xx. There is no queue to overflow (trap 1), sizes
are measured the way the library measures them before anything is sent (trap 2), no
`on_error`/`flush()` race (traps 3, 5, 7), retries keep batch order (trap 4), and
messages are plain JSON types (trap 6).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import requests
from pydantic import SecretStr
from segment.analytics import Client
from segment.analytics.version import VERSION as LIBRARY_VERSION
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from connector import __version__

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
BATCH_OVERHEAD_BYTES = 200  # {"batch": [...], "sentAt": ..., "writeKey": ...}
RETRY_STATUSES = frozenset({408, 410, 429, 460, 500, 502, 503, 504})


def json_size(message: dict[str, Any]) -> int:
    """Size as the library and Segment count it: stdlib json, ensure_ascii=True."""
    return len(json.dumps(message))


class SegmentAuthError(Exception):
    """Segment refused the write key (401/403)."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_ASCII = bytes(range(128))


def library_size_bound(encoded: bytes) -> int:
    """An upper bound of `json_size(msg)` from the message's compact UTF-8 encoding.

    The library counts `json.dumps(msg)`: ", " and ": " separators (one byte more than
    compact, bounded by the count of ',' and ':' bytes), and every non-ASCII character
    as a \\uXXXX escape (at most 2 extra bytes per UTF-8 byte), DEL as \\u007f. All
    counted in C, so only messages near the limit need the exact (slower) measure.
    """
    non_ascii = len(encoded.translate(None, _ASCII))  # bytes >= 0x80
    # json.dumps writes exponents as `e-07`/`e+20` where orjson writes `e-7`/`e20`.
    return (len(encoded) + encoded.count(b",") + encoded.count(b":")
            + 2 * non_ascii + 5 * encoded.count(b"\x7f")
            + encoded.count(b"e") + encoded.count(b"E"))


@dataclass(slots=True)
class OutMessage:
    """One shaped message, encoded once: the bytes counted for a batch are the bytes sent."""

    message: dict[str, Any]
    encoded: bytes       # compact UTF-8 JSON (orjson), as posted
    library_size: int    # size as the library and Segment's 32 KB rule count it (bound)
    record_key: tuple[str, str]  # (entity, id) of the record it belongs to

    @property
    def size(self) -> int:
        return len(self.encoded)

    @classmethod
    def of(cls, message: dict[str, Any], record_key: tuple[str, str]) -> OutMessage:
        encoded = orjson.dumps(message)
        bound = library_size_bound(encoded)
        if bound > MAX_MESSAGE_BYTES:  # near the limit: measure exactly
            bound = json_size(message)
        return cls(message, encoded, bound, record_key)


@dataclass
class DeliveryResult:
    delivered: set[str] = field(default_factory=set)           # messageIds
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # messageId -> (code, why)
    batches: int = 0
    retries: int = 0


class SegmentSink:
    def __init__(
        self,
        write_key: SecretStr,
        host: str,
        *,
        batch_messages: int = 500,
        batch_bytes: int = 475_000,
        timeout: float = 15.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        gzip: bool = False,
    ) -> None:
        self._write_key = write_key
        self.host = host.rstrip("/")
        self.batch_messages = min(batch_messages, MAX_BATCH_MESSAGES)
        self.batch_bytes = min(batch_bytes, MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.gzip = gzip
        # send=False: the client shapes and validates messages and hands them back.
        self._shaper = Client(write_key=write_key.get_secret_value(), host=self.host,
                              send=False, sync_mode=False)
        # One Retrying for the sink's life (per-call state is thread-local): a new one per
        # batch forms a reference cycle that keeps the batch alive until a GC pass.
        self._retrying = Retrying(retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
                                  wait=self._wait, stop=stop_after_attempt(max_retries + 1),
                                  before_sleep=self._before_sleep, reraise=True)
        self._session = requests.Session()
        basic = base64.b64encode(f"{write_key.get_secret_value()}:".encode()).decode()
        self._headers = {"Content-Type": "application/json",
                         "User-Agent": f"moesif-segment-connector/{__version__} "
                                       f"analytics-python/{LIBRARY_VERSION}",
                         "Authorization": f"Basic {basic}"}

    # --- shaping ------------------------------------------------------------------------
    def shape(self, kind: str, body: dict[str, Any], timestamp: datetime | None,
              message_id: str) -> dict[str, Any]:
        """The finished message as the library would send it.

        The library builds and validates the envelope (type, ids, timestamp, messageId,
        context.library). Our traits and context are plain JSON values already (they come
        from parsed JSON through the mapping's converters), so the library's recursive
        `clean()` would be a costly no-op on them: they are attached after it ran.
        """
        if kind == "identify":
            ok, msg = self._shaper.identify(
                user_id=body.get("userId"), timestamp=timestamp, message_id=message_id)
        elif kind == "group":
            ok, msg = self._shaper.group(
                user_id=body.get("userId"), group_id=body.get("groupId"),
                timestamp=timestamp, message_id=message_id)
        else:
            raise ValueError(f"unsupported message type {kind!r}")
        if not ok:  # never happens with send=False, but a False must never be ignored
            raise RuntimeError("the Segment library refused the message")
        msg["traits"] = body.get("traits") or {}
        context = body.get("context")
        if context:
            msg["context"] = {**context, "library": msg["context"]["library"]}
        return msg

    # --- sending --------------------------------------------------------------------------
    def batches(self, messages: Iterable[OutMessage]) -> Iterable[list[OutMessage]]:
        batch: list[OutMessage] = []
        size = BATCH_OVERHEAD_BYTES
        for out in messages:
            if batch and (len(batch) >= self.batch_messages
                          or size + out.size + 1 > self.batch_bytes):
                yield batch
                batch, size = [], BATCH_OVERHEAD_BYTES
            batch.append(out)
            size += out.size + 1  # "," between items
        if batch:
            yield batch

    def send(self, messages: list[OutMessage],
             on_batch: Callable[[int], None] | None = None) -> DeliveryResult:
        result = DeliveryResult()
        for batch in self.batches(messages):
            self._send_isolating(batch, result)
            if on_batch:
                on_batch(len(batch))
        return result

    def _send_isolating(self, batch: list[OutMessage], result: DeliveryResult) -> None:
        """Send a batch; on a 400, split it to isolate the message(s) Segment rejects."""
        try:
            self._post_with_retries([o.encoded for o in batch], result)
        except _Rejected as exc:
            if len(batch) == 1:
                mid = batch[0].message["messageId"]
                result.failed[mid] = ("REJECTED", f"Segment answered {exc.status}: {exc.detail}")
                return
            half = len(batch) // 2
            self._send_isolating(batch[:half], result)
            self._send_isolating(batch[half:], result)
            return
        except _Retryable as exc:
            for out in batch:
                result.failed[out.message["messageId"]] = ("DELIVERY_FAILED", str(exc))
            return
        result.batches += 1
        result.delivered.update(o.message["messageId"] for o in batch)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        exp = min(self.backoff_cap, self.backoff_base * 2 ** (state.attempt_number - 1))
        return random.uniform(self.backoff_base / 2, max(self.backoff_base, exp))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("Segment batch failed (%s); retry %d of %d", exc, state.attempt_number,
                    self.max_retries)

    def _post_with_retries(self, batch: list[bytes], result: DeliveryResult) -> None:
        try:
            self._retrying(self._post_once, batch)
        finally:
            result.retries += self._retrying.statistics.get("attempt_number", 1) - 1

    def _post_once(self, batch: list[bytes]) -> None:
        """POST one `/v1/batch` the way the library's `request.post` does (same body,
        Basic auth, writeKey in the body), but from the already-encoded messages."""
        sent_at = datetime.now(UTC).isoformat()
        body = b"".join((b'{"batch":[', b",".join(batch), b'],"sentAt":',
                         orjson.dumps(sent_at), b',"writeKey":',
                         orjson.dumps(self._write_key.get_secret_value()), b"}"))
        headers = dict(self._headers)
        if self.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            res = self._session.post(f"{self.host}/v1/batch", data=body, headers=headers,
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            raise _Retryable(f"{type(exc).__name__} posting to Segment") from None
        status = res.status_code
        if 200 <= status < 300:
            return
        if status in (401, 403):
            raise SegmentAuthError(
                f"Segment answered {status}: the write key was refused; "
                "check SEGMENT_WRITE_KEY")
        if status in RETRY_STATUSES or status >= 500:
            raise _Retryable(f"Segment answered {status}", _retry_after(res))
        raise _Rejected(status, res.text[:300])


def _retry_after(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return None
