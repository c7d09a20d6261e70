"""One way to wait and retry, for every HTTP client of the connector.

- `parse_retry_after`: the `Retry-After` header in both forms (delta-seconds and
  HTTP-date), clamped to [floor, cap]. The floor (about a second) means `Retry-After: 0`,
  a negative value or a date in the past never turns into a tight loop; the cap means a
  server asking for hours is probed again sooner.
- `jitter_delay`: the one jitter formula, exponential with "equal jitter": uniform in
  [d/2, d], d = base * 2^(n-1) capped. Keeping half the delay means a fleet never
  hammers a recovering server with near-zero waits; the random half spreads it out.
- `Backoff`: the one set of knobs (base, cap, Retry-After floor and cap), a tenacity wait.
- `build_retrying`: the one tenacity wiring. Build it ONCE per client: tenacity keeps its
  per-call state thread-local, and a new `Retrying` per call forms a reference cycle that
  keeps the response (and the batch) alive until the cyclic GC runs, which the sync job
  deliberately runs rarely.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception

from connector.errors import DestinationUnavailable, RetryableError

RETRY_AFTER_FLOOR = 1.0
RETRY_AFTER_CAP = 300.0
_DELTA_SECONDS = re.compile(r"-?\d{1,30}(?:\.\d{0,30})?", re.ASCII)

Wait = Callable[[RetryCallState], float]


def parse_retry_after(value: str | None, now: float | None = None, *,
                      floor: float = RETRY_AFTER_FLOOR,
                      cap: float = RETRY_AFTER_CAP) -> float | None:
    """Seconds to wait from a `Retry-After` value, within [floor, cap]; None when the
    header is absent or unreadable (the caller then uses its own backoff). Never raises."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return _clamp(float(text), floor, cap)
    try:
        moment = parsedate_to_datetime(text)
        current = time.time() if now is None else now
        return _clamp(moment.timestamp() - current, floor, cap)
    except Exception:  # noqa: BLE001 - any unreadable date is "no header", never a crash
        return None


def _clamp(seconds: float, floor: float, cap: float) -> float:
    if math.isnan(seconds):
        return floor
    return min(max(seconds, floor), max(cap, floor))


def jitter_delay(attempt: int, base: float, cap: float) -> float:
    """Equal jitter: uniform in [d/2, d], d = min(cap, base * 2^(attempt-1))."""
    exponent = min(max(attempt, 1) - 1, 60)
    delay = min(cap, base * (2 ** exponent))
    return random.uniform(delay / 2, delay)


def retry_after_of(state: RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    return getattr(exc, "retry_after", None) if exc is not None else None


@dataclass(frozen=True)
class Backoff:
    """The test knobs of every client: exponential base and cap, Retry-After bounds."""

    base: float = 0.5
    cap: float = 30.0
    retry_after_floor: float = RETRY_AFTER_FLOOR
    retry_after_cap: float = RETRY_AFTER_CAP

    def __call__(self, state: RetryCallState) -> float:
        """A tenacity wait: the server's Retry-After when it gave one, else jitter."""
        asked = retry_after_of(state)
        if asked is not None:
            return _clamp(asked, self.retry_after_floor, self.retry_after_cap)
        return self.jitter(state.attempt_number)

    def jitter(self, attempt: int) -> float:
        return jitter_delay(attempt, self.base, self.cap)

    def parse(self, value: str | None) -> float | None:
        return parse_retry_after(value, floor=self.retry_after_floor, cap=self.retry_after_cap)


def is_retryable(exc: BaseException) -> bool:
    """One attempt failed in a way waiting can fix. `DestinationUnavailable` is the verdict
    *after* retrying, so it is never retried again."""
    return isinstance(exc, RetryableError) and not isinstance(exc, DestinationUnavailable)


def build_retrying(*, wait: Wait, stop: Callable[[RetryCallState], bool],
                   before_sleep: Callable[[RetryCallState], None] | None = None,
                   sleep: Callable[[float], Any] | None = None,
                   api: str = "http") -> Retrying:
    """The one tenacity wiring: retry `RetryableError`s, re-raise the last one. Every
    retry is counted under `api` and the HTTP status (`retry_counts`, for metrics)."""
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep

    def counted(state: RetryCallState) -> None:
        _count_retry(api, state)
        if before_sleep is not None:
            before_sleep(state)

    return Retrying(retry=retry_if_exception(is_retryable), wait=wait, stop=stop,
                    before_sleep=counted, reraise=True, **kwargs)


_retry_counts: dict[tuple[str, str], int] = {}
_retry_lock = threading.Lock()


def _count_retry(api: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    status = getattr(exc, "status", None)
    key = (api, str(status) if status else "none")  # "none": a timeout or connection error
    with _retry_lock:
        _retry_counts[key] = _retry_counts.get(key, 0) + 1


def retry_counts() -> dict[tuple[str, str], int]:
    """Retries so far in this process by (api, HTTP status or "none"); 429s included."""
    with _retry_lock:
        return dict(_retry_counts)


def attempts_made(retrying: Retrying) -> int:
    """Attempts of the current thread's last call (tenacity's thread-local statistics)."""
    return int(retrying.statistics.get("attempt_number", 1))
