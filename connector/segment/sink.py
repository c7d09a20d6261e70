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
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import requests
from pydantic import SecretStr
from segment.analytics import Client
from segment.analytics.version import VERSION as LIBRARY_VERSION
from tenacity import RetryCallState, stop_after_attempt

from connector import __version__
from connector.common.compression import gzip_body
from connector.common.redaction import redact
from connector.errors import (
    AuthError,
    ConfigError,
    DestinationUnavailable,
    EndpointError,
    RefusedError,
    RetryableError,
)
from connector.http.policy import (
    COMMON_STATUSES,
    RETRY_TEMPLATE,
    Action,
    HttpPolicy,
    Rule,
    display_url,
)
from connector.http.retry import Backoff, attempts_made, build_retrying

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
BATCH_OVERHEAD_BYTES = 200  # {"batch": [...], "sentAt": ..., "writeKey": ...}
# Consecutive batches that may fail on retryable errors before the run stops early.
DEFAULT_MAX_FAILED_BATCHES = 3
# A refused batch of more than this many messages is probed with single messages spread
# over it: if every probe is refused alike, the mapping (not a record) is at fault.
UNIFORM_REFUSAL_MIN_BATCH = 4
PROBES = 5
# Splitting a batch that failed with 500: requests allowed per level of the split (two
# halves of each of a few failing parts), plus a few for the first probes and the
# messages sent alone.
SPLIT_REQUESTS_PER_LEVEL = 6
SPLIT_EXTRA_REQUESTS = 8
SPLIT_ALONE = 4  # messages sent alone (with their retries) per failing batch at most
BATCH_PATH = "/v1/batch"


def json_size(message: dict[str, Any]) -> int:
    """Size as the library and Segment count it: stdlib json, ensure_ascii=True."""
    return len(json.dumps(message))


class SegmentAuthError(AuthError):
    """Segment refused the write key (401/403)."""


_REFUSED = Rule(Action.REFUSE, "Segment refused the batch ({status}): {excerpt}")
_KEY_REFUSED = Rule(Action.AUTH, "Segment answered {status}: the write key was refused; "
                                 "check {key_setting}")
_RETRY = Rule(Action.RETRY, RETRY_TEMPLATE)

# Segment's table (../shared/reference/segment-api.md). 410 and 460 are retried: Segment's
# own library retries 408/410/429/460 (trap 4), 460 being what Segment's load balancer
# answers when a client timed out mid-request and 410 what its edge answers while a node
# drains; both are Segment's servers saying "not now", which waiting fixes. Only 400 and
# 413 are refusals of the content (splitting isolates the messages at fault); every other
# 4xx (404, 405, ...) and any redirect means SEGMENT_HOST is not the Tracking API.
SEGMENT_POLICY = HttpPolicy(
    api="Segment", url_setting="SEGMENT_HOST", key_setting="SEGMENT_WRITE_KEY",
    statuses={**COMMON_STATUSES, 410: _RETRY, 460: _RETRY, 400: _REFUSED, 413: _REFUSED,
              401: _KEY_REFUSED, 403: _KEY_REFUSED},
    errors={Action.AUTH: lambda v: SegmentAuthError(v.message, v.status)},
)


def _server_error(exc: RetryableError) -> bool:
    """A 500 Internal Server Error: what a message that breaks the server's processing
    gets. Not 502/503/504 (a gateway or the service saying it is down or overloaded),
    a timeout, a dropped connection or a 429: those are outages whatever was sent."""
    return exc.status == 500


def partial_result(exc: BaseException) -> DeliveryResult | None:
    """What Segment confirmed in a `send` that then stopped with `exc`."""
    result = getattr(exc, "partial", None)
    return result if isinstance(result, DeliveryResult) else None


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


# No byte of the compact encoding counts for more than this in `library_size_bound` (DEL
# becomes \u007f), so a message under this size fits the 32 KB rule without counting.
_MOST_PER_BYTE = 6
_SURE_TO_FIT = MAX_MESSAGE_BYTES // _MOST_PER_BYTE


class OutMessage:
    """One shaped message, encoded once: the bytes counted for a batch are the bytes sent.

    `kind` and `message_id` are what delivery looks at; the message itself is kept as it
    was shaped, or (when it was shaped in another process and only its bytes came back)
    read back from the bytes the first time somebody asks (a report sample)."""

    __slots__ = ("_message", "encoded", "library_size", "record_key", "kind", "message_id")

    def __init__(self, message: dict[str, Any] | None, encoded: bytes, library_size: int,
                 record_key: tuple[str, str], kind: str | None = None,
                 message_id: str | None = None) -> None:
        self._message = message
        self.encoded = encoded            # compact UTF-8 JSON (orjson), as posted
        # an upper bound of the size the library and Segment's 32 KB rule count (exact
        # only near the limit)
        self.library_size = library_size
        self.record_key = record_key      # (entity, id) of the record it belongs to
        shaped = message or {}
        self.kind: str = kind if kind is not None else shaped.get("type", "")
        self.message_id: str = message_id if message_id is not None else \
            shaped.get("messageId", "")

    @property
    def message(self) -> dict[str, Any]:
        if self._message is None:
            self._message = orjson.loads(self.encoded)
        return self._message

    @property
    def size(self) -> int:
        return len(self.encoded)

    @classmethod
    def of(cls, message: dict[str, Any], record_key: tuple[str, str]) -> OutMessage:
        encoded = orjson.dumps(message)
        if len(encoded) <= _SURE_TO_FIT:  # most messages: nothing to count
            return cls(message, encoded, len(encoded) * _MOST_PER_BYTE, record_key)
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
    requests: int = 0


class SegmentSink:
    def __init__(
        self,
        write_key: SecretStr,
        host: str,
        *,
        batch_messages: int = 500,
        batch_bytes: int = 475_000,
        timeout: float = 15.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        gzip: bool = False,
        max_failed_batches: int = DEFAULT_MAX_FAILED_BATCHES,
        backoff: Backoff | None = None,
        refused_before: Callable[[tuple[str, str]], bool] | None = None,
    ) -> None:
        self._write_key = write_key
        self.host = host.rstrip("/")
        self.batch_messages = min(batch_messages, MAX_BATCH_MESSAGES)
        self.batch_bytes = min(batch_bytes, MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES)
        self.timeout = timeout
        self.max_retries = max_retries
        # Retry-After is capped like the backoff: retries of a few batches must end a run
        # within about a minute in an outage (the next run retries), not after 5 minutes
        # per attempt of a server-directed wait.
        self.backoff = backoff or Backoff(base=backoff_base, cap=backoff_cap,
                                          retry_after_cap=max(backoff_cap, 1.0))
        self.gzip = gzip
        self.max_failed_batches = max(1, max_failed_batches)
        self._failed_streak = 0  # batches in a row whose retries all failed
        # Whether SEGMENT_HOST ever answered (any HTTP status): until it has, a connection
        # refused on every attempt means nothing listens there (a wrong host or port).
        self._answered = False
        # Whether the last request Segment answered went through (2xx): a batch failing
        # with 500 right after one is more likely a message Segment fails on than an
        # outage, and is split to find it.
        self._last_ok = False
        self._split_budget = 0
        self._alone_budget = 0
        # Records that failed in an earlier run (e.g. a retry pass): their being refused
        # again is their own refusal, not evidence against the mapping.
        self.refused_before = refused_before or (lambda _key: False)
        self.url = f"{self.host}{BATCH_PATH}"
        # The address as messages show it: no user info or query, and no key even if
        # one was pasted into SEGMENT_HOST's path.
        self._where = redact(display_url(self.url), [write_key.get_secret_value()])
        # send=False: the client shapes and validates messages and hands them back.
        self._shaper = Client(write_key=write_key.get_secret_value(), host=self.host,
                              send=False, sync_mode=False)
        self._templates: dict[tuple[str, tuple[type, ...]], dict[str, Any]] = {}
        # One Retrying for the sink's life (per-call state is thread-local): a new one per
        # batch forms a reference cycle that keeps the batch alive until a GC pass.
        self._retrying = build_retrying(wait=self.backoff,
                                        stop=stop_after_attempt(max_retries + 1),
                                        before_sleep=self._before_sleep, api="segment")
        self._session = requests.Session()
        basic = base64.b64encode(f"{write_key.get_secret_value()}:".encode()).decode()
        self._headers = {"Content-Type": "application/json",
                         "User-Agent": f"moesif-segment-connector/{__version__} "
                                       f"analytics-python/{LIBRARY_VERSION}",
                         "Authorization": f"Basic {basic}"}

    # --- shaping ------------------------------------------------------------------------
    def shape(self, kind: str, body: dict[str, Any], timestamp: datetime | None,
              message_id: str) -> dict[str, Any]:
        """The finished message as the library would send it, without its per-call cost.

        The library stays the authority on the envelope: it shapes one message per kind
        (and per id type) once, and that message is the template (key order, `integrations`,
        `anonymousId`, `context.library`). The values it would format for each message are
        formatted here exactly as `Client._enqueue` does for the types we pass: an aware
        `timestamp` as `isoformat(timespec="milliseconds")` (guess_timezone leaves aware
        datetimes alone), `userId` through `stringify_id` (an int becomes text), `groupId`
        and `messageId` as given (clean() keeps text and ints). Anything else (no
        timestamp: the library stamps "now"; a naive one: the library guesses its zone; an
        id of another type) goes through the library itself. `shape_with_library` is the
        reference, and tests compare both byte for byte over the sandbox data set.
        """
        template = self._template(kind, body, timestamp)
        if template is None:
            return self.shape_with_library(kind, body, timestamp, message_id)
        msg = dict(template)
        msg["timestamp"] = timestamp.isoformat(timespec="milliseconds")  # type: ignore[union-attr]
        user_id = body.get("userId")
        msg["userId"] = user_id if type(user_id) is str else str(user_id)
        if kind == "group":
            msg["groupId"] = body.get("groupId")
        msg["messageId"] = message_id
        msg["traits"] = body.get("traits") or {}
        library = template["context"]["library"]
        context = body.get("context")
        msg["context"] = {**context, "library": dict(library)} if context else \
            {"library": dict(library)}
        return msg

    def _template(self, kind: str, body: dict[str, Any],
                  timestamp: datetime | None) -> dict[str, Any] | None:
        """The library's envelope for this kind and these id types (None: not a case the
        template reproduces exactly; the library shapes that message itself)."""
        if timestamp is None or timestamp.tzinfo is None:
            return None
        if kind == "identify":
            types: tuple[type, ...] = (type(body.get("userId")),)
        elif kind == "group":
            types = (type(body.get("userId")), type(body.get("groupId")))
        else:
            return None
        for t in types:
            if t is not str and t is not int:
                return None
        if not body.get("userId"):
            return None  # the library's `require` refuses it: let it say so
        key = (kind, types)
        template = self._templates.get(key)
        if template is None:
            sample = {"userId": types[0](1), "groupId": types[-1](1)}
            template = self.shape_with_library(kind, sample, timestamp, "m")
            self._templates[key] = template
        return template

    def shape_with_library(self, kind: str, body: dict[str, Any], timestamp: datetime | None,
                           message_id: str) -> dict[str, Any]:
        """The message as the library shapes it, call by call (the reference).

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
        """Send every batch. A misconfiguration (EndpointError, SegmentAuthError) or an
        outage (DestinationUnavailable) stops the send; the exception then carries what
        Segment confirmed before (`partial_result(exc)`), so the caller can commit it."""
        result = DeliveryResult()
        try:
            for batch in self.batches(messages):
                self._send_isolating(batch, result)
                if on_batch:
                    on_batch(len(batch))
        except (ConfigError, DestinationUnavailable) as exc:
            exc.partial = result  # type: ignore[attr-defined]
            raise
        return result

    def _send_isolating(self, batch: list[OutMessage], result: DeliveryResult,
                        whole: bool = True) -> None:
        """Send a batch; on a refusal (400/413), split it to isolate the refused messages.
        `whole`: the batch as built, not a half of a refused one."""
        try:
            self._post_with_retries([o.encoded for o in batch], result)
        except RefusedError as exc:
            self._failed_streak = 0  # Segment answered: it is up
            self._isolate(batch, exc, result, whole)
            return
        except RetryableError as exc:  # every retry failed
            if _server_error(exc) and self._split_failing(batch, exc, result):
                if self._last_ok:
                    self._failed_streak = 0  # part of it went through: Segment is up
            else:
                self._last_ok = False
                self._batch_failed(batch, exc, result)
            return
        self._failed_streak = 0
        self._last_ok = True
        result.batches += 1
        result.delivered.update(o.message_id for o in batch)

    def _split_failing(self, batch: list[OutMessage], exc: RetryableError,
                       result: DeliveryResult) -> bool:
        """A batch Segment answered 500 to on every attempt: an outage, or messages its
        servers fail on, which would take their batch-mates down with them run after run
        (DELIVERY_FAILED is retried forever, and failed records are retried together).

        Segment counts as up when a part of this batch goes through (each half, then the
        first and the last message, sent once), or when the request before this batch
        did. Then the failing parts are split on, down to the messages at fault, each
        sent alone with its retries and, still failing, REJECTED (counted toward
        SYNC_MAX_ATTEMPTS, then GAVE_UP). The split is bounded (requests per level,
        messages sent alone): what it does not reach stays DELIVERY_FAILED. Returns
        whether Segment answered anything but 500 meanwhile; False: an outage as far as
        can be told (the caller fails what is left of the batch and counts it toward
        DestinationUnavailable)."""
        self._split_budget = SPLIT_EXTRA_REQUESTS + SPLIT_REQUESTS_PER_LEVEL * len(
            batch).bit_length()
        self._alone_budget = SPLIT_ALONE
        delivered_before = len(result.delivered)
        refused_before = sum(1 for code, _ in result.failed.values() if code == "REJECTED")
        up = self._last_ok
        failing: list[tuple[list[OutMessage], RetryableError]] = [(batch, exc)]
        if len(batch) > 1:
            failing = self._halves(batch, result)
            if len(failing) == 2 and not up and len(batch) > 2:
                # Neither half got through: probe the first and the last message alone.
                ends = self._halves([batch[0]], result, alone=True) + \
                    self._halves([batch[-1]], result, alone=True)
                if len(ends) == 2:
                    return False  # nothing got through: an outage
                failing = [*ends, (batch[1:-1], exc)]
            elif len(failing) == 2 and not up:
                return False
        elif not up:
            return False
        self._settle(failing, result)
        answered = len(result.delivered) > delivered_before or sum(
            1 for code, _ in result.failed.values() if code == "REJECTED") > refused_before
        self._last_ok = len(result.delivered) > delivered_before
        if not self._last_ok:
            # Only the request before said Segment was up: if this was an outage starting,
            # the next failing batch takes the strict path (and counts toward it).
            self._failed_streak += 1
        return answered

    def _halves(self, batch: list[OutMessage], result: DeliveryResult, alone: bool = False
                ) -> list[tuple[list[OutMessage], RetryableError]]:
        """Send each half of `batch` once (`alone`: the batch itself, once); return the
        parts that failed on a retryable error."""
        parts = [batch] if alone else [batch[:len(batch) // 2], batch[len(batch) // 2:]]
        failing: list[tuple[list[OutMessage], RetryableError]] = []
        for part in parts:
            if not part:
                continue
            try:
                self._post_counted([o.encoded for o in part], result)
            except RefusedError as refused:
                self._isolate(part, refused, result, whole=False)
                continue
            except RetryableError as again:
                failing.append((part, again))
                continue
            result.batches += 1
            result.delivered.update(o.message_id for o in part)
        return failing

    def _settle(self, failing: list[tuple[list[OutMessage], RetryableError]],
                result: DeliveryResult) -> None:
        """Split failing parts (Segment is up) down to the messages at fault, within the
        split's request budget."""
        todo = list(failing)
        while todo:
            part, again = todo.pop()
            if not part:
                continue
            if not _server_error(again) or self._split_budget <= 0:
                for out in part:  # a timeout, a dropped connection, or no budget left
                    result.failed[out.message_id] = ("DELIVERY_FAILED", str(again))
            elif len(part) == 1 and self._alone_budget > 0:
                self._alone_budget -= 1
                self._alone(part[0], result)
            elif len(part) == 1:
                result.failed[part[0].message_id] = ("DELIVERY_FAILED", str(again))
            else:
                self._split_budget -= 2
                todo.extend(self._halves(part, result))

    def _alone(self, out: OutMessage, result: DeliveryResult) -> None:
        """One message whose batch failed with 500 while Segment was up: sent alone with
        every retry. Still 500: its own failure, a refusal that counts toward
        SYNC_MAX_ATTEMPTS (then GAVE_UP), not a forever-retried outage."""
        try:
            self._post_with_retries([out.encoded], result)
        except RefusedError as exc:
            self._reject(out, exc, result)
            return
        except RetryableError as exc:
            if _server_error(exc):
                result.failed[out.message_id] = (
                    "REJECTED", f"Segment answered {exc.status} to this message alone on "
                                f"every attempt while it accepted others")
            else:
                result.failed[out.message_id] = ("DELIVERY_FAILED", str(exc))
            return
        result.batches += 1
        result.delivered.add(out.message_id)

    def _post_counted(self, batch: list[bytes], result: DeliveryResult) -> None:
        """One attempt, no retries (a split's probe)."""
        result.requests += 1
        self._post_once(batch)

    def _batch_failed(self, batch: list[OutMessage], exc: RetryableError,
                      result: DeliveryResult) -> None:
        if not self._answered and getattr(exc, "refused_connection", False):
            # Not one answer from this address, only refused connections: a setting to
            # fix, not a batch (or records) to mark failed.
            raise SEGMENT_POLICY.nothing_listens(self._where, self.max_retries) from None
        self._failed_streak += 1
        if self._failed_streak >= self.max_failed_batches:
            raise DestinationUnavailable(
                f"Segment unavailable: {self._failed_streak} batches in a row failed after "
                f"{self.max_retries} retries each (last: {exc}); the rest is kept for the "
                f"next run (check SEGMENT_HOST or Segment's status)", exc.status) from None
        for out in batch:
            result.failed[out.message_id] = ("DELIVERY_FAILED", str(exc))

    def _isolate(self, batch: list[OutMessage], exc: RefusedError, result: DeliveryResult,
                 whole: bool) -> None:
        if len(batch) == 1:
            self._reject(batch[0], exc, result)
            return
        # Only a whole batch is probed: a refused half of a batch whose other messages were
        # accepted says nothing against the mapping.
        if whole and len(batch) > UNIFORM_REFUSAL_MIN_BATCH:
            batch = self._probe(batch, exc, result)
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            if part:
                self._send_isolating(part, result, whole=False)

    def _probe(self, batch: list[OutMessage], first: RefusedError,
               result: DeliveryResult) -> list[OutMessage]:
        """Send a few single messages spread over a refused batch; return the rest.

        If every probe is refused alike (and none of them is a record that failed in an
        earlier run, e.g. in a retry pass), the refusal is the mapping's, not a record's:
        splitting on would cost ~2 requests per message and mark every record REJECTED
        (and in time GAVE_UP), so the send stops with an EndpointError naming the mapping.
        """
        n = len(batch)
        picks = sorted({round(i * (n - 1) / (PROBES - 1)) for i in range(PROBES)})
        statuses: list[int | None] = []
        for i in picks:
            try:
                self._post_with_retries([batch[i].encoded], result)
            except RefusedError as exc:
                statuses.append(exc.status)
                self._reject(batch[i], exc, result)
                continue
            except RetryableError as exc:
                self._batch_failed([batch[i]], exc, result)
                continue
            result.batches += 1
            result.delivered.add(batch[i].message_id)
        fresh = not any(self.refused_before(batch[i].record_key) for i in picks)
        if fresh and len(statuses) == len(picks) and set(statuses) == {first.status}:
            raise EndpointError(
                f"Segment refused every message of a batch of {n} alike ({first.status}: "
                f"{first.detail}): the mapping produces messages Segment refuses; check the "
                f"mapping files (MAPPINGS_DIR) and SEGMENT_HOST", first.status)
        chosen = set(picks)
        return [o for j, o in enumerate(batch) if j not in chosen]

    @staticmethod
    def _reject(out: OutMessage, exc: RefusedError, result: DeliveryResult) -> None:
        result.failed[out.message_id] = (
            "REJECTED", f"Segment answered {exc.status}: {exc.detail}")

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("Segment batch failed (%s); retry %d of %d", exc, state.attempt_number,
                    self.max_retries)

    def _post_with_retries(self, batch: list[bytes], result: DeliveryResult) -> None:
        try:
            self._retrying(self._post_once, batch)
        finally:
            made = attempts_made(self._retrying)
            result.retries += made - 1
            result.requests += made

    def _post_once(self, batch: list[bytes]) -> None:
        """POST one `/v1/batch` the way the library's `request.post` does (same body,
        Basic auth, writeKey in the body), but from the already-encoded messages."""
        sent_at = datetime.now(UTC).isoformat()
        key = self._write_key.get_secret_value()
        body = b"".join((b'{"batch":[', b",".join(batch), b'],"sentAt":',
                         orjson.dumps(sent_at), b',"writeKey":', orjson.dumps(key), b"}"))
        headers = dict(self._headers)
        if self.gzip:
            body = gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        where = self._where
        try:
            # No redirects: requests would re-send a POST as a GET; a redirect means the
            # setting is not the API's address (CONFIG in the table).
            res = self._session.post(self.url, data=body, headers=headers,
                                     timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise SEGMENT_POLICY.request_error(exc, where) from None
        self._answered = True
        SEGMENT_POLICY.check(res, where, [key], self.backoff.parse)
