"""Deliver identify/group messages to Segment with every library trap closed.

We let `segment.analytics.Client(send=False)` shape each message (it returns the finished
message instead of queueing it) and post our own size-accounted batches with the
library's `request.post`, retried by tenacity. Measured on this machine (README) this is
faster than the library's consumer thread, and it makes confirmation synchronous: a
message is delivered when the `/v1/batch` request that carried it returned 2xx. There is
no queue to overflow (trap 1), sizes are measured the way the library measures them
before anything is handed over (trap 2), no `on_error`/`flush()` race (traps 3, 5, 7),
retries keep batch order (trap 4), and messages are plain JSON types (trap 6).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests
from pydantic import SecretStr
from segment.analytics import Client
from segment.analytics.request import APIError
from segment.analytics.request import post as segment_post
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

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


@dataclass(slots=True)
class OutMessage:
    """One shaped message plus what we need to account for it."""

    message: dict[str, Any]
    size: int
    record_key: tuple[str, str]  # (entity, id) of the record it belongs to


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

    # --- shaping ------------------------------------------------------------------------
    def shape(self, kind: str, body: dict[str, Any], timestamp: datetime | None,
              message_id: str) -> dict[str, Any]:
        """The finished message as the library would send it (raises on > 32 KB)."""
        if kind == "identify":
            ok, msg = self._shaper.identify(
                user_id=body.get("userId"), traits=body.get("traits") or {},
                context=body.get("context") or {}, timestamp=timestamp, message_id=message_id)
        elif kind == "group":
            ok, msg = self._shaper.group(
                user_id=body.get("userId"), group_id=body.get("groupId"),
                traits=body.get("traits") or {}, context=body.get("context") or {},
                timestamp=timestamp, message_id=message_id)
        else:
            raise ValueError(f"unsupported message type {kind!r}")
        if not ok:  # never happens with send=False, but a False must never be ignored
            raise RuntimeError("the Segment library refused the message")
        return msg

    # --- sending --------------------------------------------------------------------------
    def batches(self, messages: Iterable[OutMessage]) -> Iterable[list[OutMessage]]:
        batch: list[OutMessage] = []
        size = BATCH_OVERHEAD_BYTES
        for out in messages:
            if batch and (len(batch) >= self.batch_messages
                          or size + out.size + 2 > self.batch_bytes):
                yield batch
                batch, size = [], BATCH_OVERHEAD_BYTES
            batch.append(out)
            size += out.size + 2  # ", " between items
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
            self._post_with_retries([o.message for o in batch], result)
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

    def _post_with_retries(self, batch: list[dict[str, Any]], result: DeliveryResult) -> None:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                return exc.retry_after
            exp = min(self.backoff_cap, self.backoff_base * 2 ** (state.attempt_number - 1))
            return random.uniform(self.backoff_base / 2, max(self.backoff_base, exp))

        def before_sleep(state: RetryCallState) -> None:
            result.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning("Segment batch of %d failed (%s); retry %d of %d", len(batch), exc,
                        state.attempt_number, self.max_retries)

        retrying = Retrying(retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
                            wait=wait, stop=stop_after_attempt(self.max_retries + 1),
                            before_sleep=before_sleep, reraise=True)
        retrying(self._post_once, batch)

    def _post_once(self, batch: list[dict[str, Any]]) -> None:
        try:
            segment_post(self._write_key.get_secret_value(), host=self.host, gzip=self.gzip,
                         timeout=self.timeout, batch=batch)
        except APIError as exc:
            status = int(exc.status) if str(exc.status).isdigit() else 0
            if status in (401, 403):
                raise SegmentAuthError(
                    f"Segment answered {status}: the write key was refused; "
                    "check SEGMENT_WRITE_KEY") from None
            if status in RETRY_STATUSES or status >= 500:
                retry_after = _retry_after(exc.response)
                raise _Retryable(f"Segment answered {status}", retry_after) from None
            raise _Rejected(status, str(exc.message)[:300]) from None
        except requests.RequestException as exc:
            raise _Retryable(f"{type(exc).__name__} posting to Segment") from None


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
