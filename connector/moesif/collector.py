"""Moesif Collector API client: post batches of API events, retry until Moesif has them.

`POST <base>/v1/events/batch`, a gzip'd JSON array, header `X-Moesif-Application-Id`;
Moesif answers 201. What we retry and what we do not is a small table (`COLLECTOR_POLICY`,
built with connector.http like the other two clients):

| answer                          | what happens                                           |
| ------------------------------- | ------------------------------------------------------ |
| 2xx                             | delivered (non-201 logged at debug)                    |
| 408, 429, 5xx, connection error | retried with backoff + jitter, honouring `Retry-After` |
| 400 and other 4xx               | `BatchRejected`: the caller splits the batch           |
| 401, 402, 403                   | `CollectorAuthError`: a configuration error            |
| 3xx, 404, 405, an HTML page     | `CollectorEndpointError`: the base URL is wrong        |
| an unusable URL (no scheme...)  | `CollectorConfigError` at once, never retried          |

By default a retryable failure is retried for as long as the process lives: WSO2's own
reporter drops events while Moesif is unreachable, and this one must not. A
`stop_event` (set on SIGTERM) cuts a backoff wait short with `DeliveryInterrupted`.
The application id goes on the wire and nowhere else: not in reprs, logs or exceptions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests
from pydantic import SecretStr
from tenacity import RetryCallState

from connector import __version__
from connector.common import jsonutil
from connector.common.compression import DEFAULT_LEVEL, check_level, gzip_body
from connector.common.redaction import redact
from connector.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    DestinationUnavailable,
    EndpointError,
    Interrupted,
    RefusedError,
    RetryableError,
)
from connector.http.policy import COMMON_STATUSES, Action, HttpPolicy, Rule, short_reason
from connector.http.retry import (
    RETRY_AFTER_CAP,
    attempts_made,
    build_retrying,
    jitter_delay,
)
from connector.http.retry import parse_retry_after as _parse_retry_after

log = logging.getLogger(__name__)

BATCH_PATH = "/v1/events/batch"
CONFIG_PATH = "/v1/config"
# ISA-L's level 1 (connector.common.compression): as small as zlib's level 1, 4x faster.
DEFAULT_COMPRESSLEVEL = DEFAULT_LEVEL
# A server may ask for any Retry-After; past this we would rather probe again.
DEFAULT_RETRY_AFTER_MAX = RETRY_AFTER_CAP
USER_AGENT = f"moesif-segment-connector/{__version__}"
_BODY_EXCERPT = 2000

RetryHook = Callable[[int, str], None]
WaitStrategy = Callable[[RetryCallState], float]


class CollectorError(ConnectorError):
    """Base of every error this client raises."""


class BatchRejected(RefusedError, CollectorError):
    """Moesif refused the batch as such (400 or another 4xx): retrying will not help."""

    def __init__(self, status: int, body_text: str) -> None:
        super().__init__(f"Moesif Collector rejected the batch (HTTP {status}): {body_text}",
                         status, body_text)
        self.body_text = body_text


class CollectorConfigError(ConfigError, CollectorError):
    """The configuration is wrong (id refused, URL wrong): no batch can succeed."""


class CollectorAuthError(AuthError, CollectorConfigError):
    def __init__(self, status: int) -> None:
        reason = "inactive subscription" if status == 402 else "application id refused"
        super().__init__(
            f"Moesif Collector refused the application id (HTTP {status}, {reason}): "
            "check MOESIF_APPLICATION_ID (WSO2's moesifKey)", status
        )


class CollectorEndpointError(EndpointError, CollectorConfigError):
    def __init__(self, status: int, url: str, excerpt: str = "") -> None:
        answer = f" (answer: {excerpt})" if excerpt else ""
        super().__init__(
            f"Moesif Collector answered HTTP {status} at {url}: check MOESIF_COLLECTOR_URL"
            f"{answer}", status
        )


class DeliveryInterrupted(Interrupted, CollectorError):
    """The stop event was set while waiting to retry: the batch was not confirmed."""


class DeliveryFailed(DestinationUnavailable, CollectorError):
    """`max_attempts` ran out on retryable failures (only when not retrying forever)."""

    def __init__(self, attempts: int, reason: str) -> None:
        super().__init__(f"Moesif Collector: gave up after {attempts} attempts ({reason})")
        self.attempts = attempts
        self.reason = reason


class _Retryable(RetryableError):
    """Internal: one failed attempt worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(reason, status, retry_after)
        self.reason = reason


_RETRY = Rule(Action.RETRY, "HTTP {status}")
_NOT_HERE = Rule(Action.CONFIG, "")
_KEY = Rule(Action.AUTH, "")

# The Collector's table. 400 and other 4xx are refusals of the batch (the forwarder
# splits it and dead-letters the events at fault); 3xx/404/405 are a wrong
# MOESIF_COLLECTOR_URL, and so is an HTML page with a 2xx or 4xx status: the Collector
# answers JSON or nothing, so such a page comes from a proxy or a web server at the wrong
# address (dead-lettering every event as refused, or taking a portal's 200 for a
# delivery, would lose them).
COLLECTOR_POLICY = HttpPolicy(
    api="Moesif Collector", url_setting="MOESIF_COLLECTOR_URL",
    key_setting="MOESIF_APPLICATION_ID",
    statuses={**{k: _RETRY if rule.action is Action.RETRY else _NOT_HERE
                 for k, rule in COMMON_STATUSES.items()},
              401: _KEY, 402: _KEY, 403: _KEY, 404: _NOT_HERE, 405: _NOT_HERE},
    families={2: Rule(Action.SUCCESS), 3: _NOT_HERE, 4: Rule(Action.REFUSE, ""),
              5: _RETRY},
)


def encode_batch(encoded_events: Iterable[bytes]) -> bytes:
    """A JSON array from already-encoded events, without parsing them again."""
    return b"[" + b",".join(encoded_events) + b"]"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), within
    [1 s, 300 s]: the one parser of connector.http.retry, kept importable here."""
    return _parse_retry_after(value, now)


def backoff(initial: float = 0.5, maximum: float = 30.0) -> WaitStrategy:
    """The common equal-jitter backoff (connector.http.retry.jitter_delay) as a wait."""

    def wait(state: RetryCallState) -> float:
        return jitter_delay(state.attempt_number, initial, maximum)

    return wait


class CollectorClient:
    """Posts event batches to the Moesif Collector. One instance per sending thread."""

    def __init__(
        self,
        base_url: str,
        application_id: SecretStr,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        *,
        retry_forever: bool = True,
        max_attempts: int | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        wait: WaitStrategy | None = None,
        retry_after_max: float = DEFAULT_RETRY_AFTER_MAX,
        stop_event: threading.Event | None = None,
        on_retry: RetryHook | None = None,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
    ) -> None:
        if not isinstance(application_id, SecretStr):
            raise TypeError("application_id must be a SecretStr")
        if not application_id.get_secret_value():
            raise CollectorConfigError("MOESIF_APPLICATION_ID is empty")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.batch_url = self.base_url + BATCH_PATH
        self._application_id = application_id
        self.timeout = timeout
        self._own_session = session is None
        self.session = session or requests.Session()
        self.retry_forever = retry_forever
        # Not retrying forever without a bound means a small default bound.
        self.max_attempts = max_attempts if max_attempts or retry_forever else 5
        self.wait = wait or backoff(backoff_initial, backoff_max)
        self.retry_after_max = retry_after_max
        self.stop_event = stop_event
        self.on_retry = on_retry
        self.compresslevel = check_level(compresslevel)  # refused here, not per batch
        # One Retrying for the client's life: tenacity keeps per-call state thread-local,
        # and so do we for what differs per call (attempt limit, stop event).
        self._call = threading.local()
        self._retrying = build_retrying(wait=self._wait_for, stop=self._stop,
                                        before_sleep=self._before_sleep, sleep=self._sleep,
                                        api="moesif_collector")

    def __repr__(self) -> str:
        return f"CollectorClient(base_url={self.base_url!r}, application_id=SecretStr('**'))"

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public API ---

    def post_batch(
        self,
        events: list[dict[str, Any]] | list[bytes] | bytes,
        *,
        stop_event: threading.Event | None = None,
    ) -> None:
        """Deliver one batch; returns only once Moesif confirmed it.

        `events` is a list of event dicts, a list of encoded events, or the encoded JSON
        array itself. Raises BatchRejected, CollectorConfigError, DeliveryInterrupted or
        (only with `max_attempts`) DeliveryFailed.
        """
        if isinstance(events, list) and not events:
            return
        body = gzip_body(self._encode(events), self.compresslevel)
        headers = self._headers()
        headers["Content-Encoding"] = "gzip"
        self._with_retries(lambda: self._attempt_post(body, headers), stop_event)

    def check(self, *, max_attempts: int | None = 3,
              stop_event: threading.Event | None = None) -> dict[str, Any]:
        """Verify the id and URL with `GET /v1/config` (sends no event); returns the config.

        Bounded by default: a `check` command must answer, not wait for Moesif forever.
        """
        return self._with_retries(self._attempt_config, stop_event, max_attempts)

    # --- one attempt ---

    def _encode(self, events: list[dict[str, Any]] | list[bytes] | bytes) -> bytes:
        if isinstance(events, bytes | bytearray | memoryview):
            return bytes(events)
        if events and isinstance(events[0], bytes | bytearray):
            return encode_batch(events)  # type: ignore[arg-type]
        return jsonutil.dumps(events)

    def _headers(self) -> dict[str, str]:
        return {
            "X-Moesif-Application-Id": self._application_id.get_secret_value(),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _attempt_post(self, body: bytes, headers: dict[str, str]) -> None:
        response = self._send("POST", self.batch_url, body, headers)
        self._classify(response, self.batch_url)
        if response.status_code != 201:
            log.debug("Moesif Collector accepted a batch with HTTP %s", response.status_code)

    def _attempt_config(self) -> dict[str, Any]:
        url = self.base_url + CONFIG_PATH
        response = self._send("GET", url, None, self._headers())
        self._classify(response, url)
        try:
            config = jsonutil.loads(response.content) if response.content else {}
        except ValueError:
            return {}
        return config if isinstance(config, dict) else {}

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> requests.Response:
        try:
            # No redirects: requests would carry our custom id header to any new host.
            return self.session.request(
                method, url, data=body, headers=headers, timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            verdict = COLLECTOR_POLICY.judge_exception(exc, url)
            if verdict.action is Action.CONFIG:
                # Retrying forever would hide a typo in the setting: stop at once.
                raise CollectorConfigError(
                    f"MOESIF_COLLECTOR_URL is not a usable URL ({type(exc).__name__}): it "
                    "needs a scheme (http or https) and a host") from None
            kind = "timeout" if isinstance(exc, requests.Timeout) else "connection error"
            raise _Retryable(f"{kind} ({short_reason(exc)})") from None

    def _classify(self, response: requests.Response, url: str) -> None:
        verdict = COLLECTOR_POLICY.judge(response, url, [self._application_id.get_secret_value()],
                                         _parse_retry_after)
        status = response.status_code
        if verdict.action is Action.SUCCESS:
            return
        if verdict.action is Action.RETRY:
            retry_after = verdict.retry_after
            suffix = f", Retry-After {retry_after:g}s" if retry_after is not None else ""
            raise _Retryable(f"HTTP {status}{suffix}", retry_after, status)
        if verdict.action is Action.AUTH:
            raise CollectorAuthError(status)
        if verdict.action is Action.CONFIG:
            raise CollectorEndpointError(status, url, verdict.excerpt)
        raise BatchRejected(status, self._excerpt(response))

    def _excerpt(self, response: requests.Response) -> str:
        text = response.content[:_BODY_EXCERPT].decode("utf-8", "replace")
        # A server that echoes request headers must not leak the id through us.
        return redact(text, [self._application_id.get_secret_value()])

    # --- retry loop ---

    def _with_retries(self, attempt: Callable[[], Any], stop_event: threading.Event | None,
                      max_attempts: int | None = None) -> Any:
        self._call.stop_event = stop_event or self.stop_event
        self._call.limit = max_attempts or self.max_attempts
        try:
            return self._retrying(attempt)
        except _Retryable as exc:
            raise DeliveryFailed(attempts_made(self._retrying), exc.reason) from None

    def _stop(self, state: RetryCallState) -> bool:
        limit = getattr(self._call, "limit", None)
        return bool(limit) and state.attempt_number >= limit

    def _sleep(self, seconds: float) -> None:
        stop_event = getattr(self._call, "stop_event", None)
        if stop_event is None:
            time.sleep(seconds)
        elif stop_event.wait(seconds):
            raise DeliveryInterrupted("stopped while waiting to retry a Moesif batch")

    def _wait_for(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return min(error.retry_after, self.retry_after_max)
        return self.wait(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = error.reason if isinstance(error, _Retryable) else repr(error)
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "Moesif Collector attempt %d failed (%s); retrying in %.2fs",
            state.attempt_number, reason, delay,
        )
        if self.on_retry is not None:
            self.on_retry(state.attempt_number, reason)
