"""Moesif's mixed timestamp shapes in, ISO 8601 UTC out.

Seen in Moesif's own examples: `2023-07-27T21:52:58.0990000Z` (7 fractional digits),
`2023-07-27T21:55:19.464` (no zone: UTC), and plain `...Z`. Epoch numbers (s or ms) are
accepted too.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_FRACTION = re.compile(r"(\.\d+)")


def parse_timestamp(value: object) -> datetime:
    """Parse leniently into an aware UTC datetime; raise ValueError (and only ValueError)
    for anything that is not a timestamp or lies outside what `datetime` can hold, so one
    record's odd value (`NaN`, `1e300`, a year-1 date with an offset) is that record's
    problem and never an unexpected OverflowError or OSError."""
    try:
        parsed = _parse(value)
    except ValueError:
        raise
    except (OverflowError, OSError, TypeError, ArithmeticError):
        raise ValueError(f"not a timestamp: {_show(value)}") from None
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, OSError, ArithmeticError):
        # A valid timestamp whose time-zone shift leaves year 1..9999 in UTC.
        raise TimestampOutOfRange(f"out of range in UTC: {_show(value)}") from None


class TimestampOutOfRange(ValueError):
    """A well-formed timestamp that `datetime` cannot hold once in UTC (a BAD_VALUE, not
    a BAD_TYPE, for the forwarder)."""


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"an integer of {len(f'{value:x}') * 4} bits" if abs(value) > 10**30 \
            else repr(value)
    return repr(value)[:60]


def _parse(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > 1e11 else value
        return datetime.fromtimestamp(seconds, tz=UTC)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a timestamp: {_show(value)}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python accepts at most 6 fractional digits: cut (not round) the rest.
    text = _FRACTION.sub(lambda m: m.group(1)[:7], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a timestamp: {value[:60]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_iso(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`."""
    utc = value.astimezone(UTC)
    # Formatted by hand: strftime("%Y") does not pad years before 1000 on glibc.
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
            f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z")


# ASCII digits only: `\d` would also pass another script's digits into the output.
_COMMON = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?[Zz]?", re.ASCII)
_common = _COMMON.fullmatch


def iso_utc(value: object) -> str:
    """`to_iso(parse_timestamp(value))`, with a fast path for Moesif's UTC shapes.

    The three shapes Moesif writes are all UTC, so they are rewritten by slicing (after
    `fromisoformat` has validated the date and time) instead of a datetime round trip;
    this runs for every timestamp of every record, so the match has no groups: the
    shape fixes where the parts are.
    """
    if isinstance(value, str) and _common(value):
        base = value[:19]
        try:
            datetime.fromisoformat(base)
        except ValueError:
            raise ValueError(f"not a timestamp: {value[:60]!r}") from None
        fraction = value[20:].rstrip("Zz") if value[19:20] == "." else ""
        return f"{base}.{(fraction + '000')[:3]}Z"
    return to_iso(parse_timestamp(value))


def parse_own_iso(text: str) -> datetime:
    """`parse_timestamp` for text in `to_iso`'s own form (which `fromisoformat` reads as
    it is, `Z` included), without the lenient parser's work; anything else goes through
    `parse_timestamp`, so the answer is always the same."""
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return parse_timestamp(text)
    return parsed if parsed.tzinfo is UTC else parse_timestamp(text)


def utcnow() -> datetime:
    return datetime.now(UTC)
