"""The one Retry-After parser, the one jitter formula and the one tenacity wiring."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.errors import DestinationUnavailable, RetryableError
from connector.http.retry import (
    RETRY_AFTER_CAP,
    RETRY_AFTER_FLOOR,
    Backoff,
    build_retrying,
    is_retryable,
    jitter_delay,
    parse_retry_after,
)
from connector.moesif.management import BackoffPolicy, seconds_to_next_minute
from connector.segment.sink import DEFAULT_MAX_FAILED_BATCHES, SegmentSink
from connector.settings import Settings


@pytest.mark.parametrize(("value", "expected"), [
    ("7", 7.0), (" 1.5 ", 1.5), ("120", 120.0),
    ("0", RETRY_AFTER_FLOOR), ("-5", RETRY_AFTER_FLOOR), ("0.0001", RETRY_AFTER_FLOOR),
    ("86400", RETRY_AFTER_CAP), ("9" * 40, None),  # too many digits to be a delta
    ("Mon, 01 Jan 1990 00:00:00 GMT", RETRY_AFTER_FLOOR),  # in the past
    ("soon", None), ("", None), (None, None), ("   ", None), ("1e3", None), ("nan", None),
    ("inf", None), ("1_000", None), ("\u0663", None), ("\uff17", None),  # not ASCII digits
])
def test_named_values(value, expected):
    assert parse_retry_after(value) == expected


def test_http_date_in_the_future():
    now = time.time()
    in_five = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=5),
                              usegmt=True)
    assert parse_retry_after(in_five, now=now) == pytest.approx(5.0, abs=1.0)
    far = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(days=3), usegmt=True)
    assert parse_retry_after(far, now=now) == RETRY_AFTER_CAP


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.from_regex(r"\s*-?\d{1,12}(\.\d{0,6})?\s*"),
                 st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
                 .map(lambda d: format_datetime(d.replace(tzinfo=UTC), usegmt=True))))
def test_any_header_never_raises_and_stays_within_bounds(value):
    seconds = parse_retry_after(value)
    assert seconds is None or RETRY_AFTER_FLOOR <= seconds <= RETRY_AFTER_CAP


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.floats(0.001, 5), st.floats(5, 600))
def test_floor_and_cap_are_knobs(value, floor, cap):
    seconds = parse_retry_after(value, floor=floor, cap=cap)
    assert seconds is None or floor <= seconds <= cap


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-5, max_value=10_000), st.floats(0.001, 10), st.floats(0.01, 60))
def test_jitter_is_equal_jitter_within_the_cap(attempt, base, cap):
    delay = jitter_delay(attempt, base, cap)
    full = min(cap, base * 2 ** (max(attempt, 1) - 1)) if attempt < 60 else cap
    assert full / 2 <= delay <= full + 1e-9


class _State:
    """The two things a tenacity wait reads from its RetryCallState."""

    def __init__(self, exc: BaseException, attempt: int = 1) -> None:
        self.attempt_number = attempt
        self.outcome = self
        self._exc = exc

    def exception(self) -> BaseException:
        return self._exc


def test_backoff_honours_retry_after_within_bounds():
    wait = Backoff(base=0.01, cap=0.02, retry_after_floor=1.0, retry_after_cap=5.0)
    assert wait(_State(RetryableError("x", 503, retry_after=0.0))) == 1.0  # floor
    assert wait(_State(RetryableError("x", 503, retry_after=60.0))) == 5.0  # cap
    assert 0.005 <= wait(_State(RetryableError("x", 503))) <= 0.01


def test_moesif_429_without_retry_after_waits_no_later_than_the_minute():
    wait = BackoffPolicy(base=100.0, cap=100.0)
    assert wait(_State(RetryableError("x", 429), 5)) <= seconds_to_next_minute() + 0.5
    assert wait(_State(RetryableError("x", 429, retry_after=3.0))) == 3.0


def test_destination_unavailable_is_never_retried_again():
    assert is_retryable(RetryableError("x"))
    assert not is_retryable(DestinationUnavailable("x"))
    calls = []

    def fail() -> None:
        calls.append(1)
        raise DestinationUnavailable("down")

    retrying = build_retrying(wait=lambda _s: 0.0, stop=lambda s: s.attempt_number >= 5)
    with pytest.raises(DestinationUnavailable):
        retrying(fail)
    assert len(calls) == 1


def test_default_outage_ends_a_run_within_a_minute():
    """Item 4: with default settings, SEGMENT_MAX_FAILED_BATCHES batches retried in full
    (every wait at its maximum) fit in about a minute."""
    defaults = Settings(_env_file=None)
    backoff = SegmentSink(SecretStr("k" * 10), "http://127.0.0.1:9").backoff  # its defaults
    worst_per_batch = sum(min(backoff.cap, backoff.base * 2 ** i)
                          for i in range(defaults.segment_max_retries))
    batches = defaults.segment_max_failed_batches
    assert batches == DEFAULT_MAX_FAILED_BATCHES == 3
    assert worst_per_batch * batches <= 60.0
