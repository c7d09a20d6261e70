"""Parse one line of WSO2 API Manager's `apim_metrics.log` (the ELK analytics appender).

Real lines (log4j pattern `%d{HH:mm:ss,SSS} [%X{ip}-%X{host}] [%t] %5p %c{1} %m%n`):

    15:56:07,928 [-] [PassThroughMessageProcessor-18]  INFO ELKCounterMetric apimMetrics: \
apim:response, properties :{"apiName":"PizzaShackAPI",...}

The prefix (time, MDC `[-]` / `[]` / `[ip-host]`, thread, padded level, logger) varies, so
the parser ignores it: it looks for `apimMetrics:`, then `apim:<kind>`, then
`properties` and `:`, and decodes the rest of the line as one JSON object. Only `str.find`
and slicing are used (no regular expression), since this runs for every line of the log.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from connector.forward.errors import (
    BAD_JSON,
    BAD_LINE,
    NOT_AN_OBJECT,
    UNKNOWN_KIND,
    MalformedEvent,
)

MARKER = "apimMetrics:"
KINDS = ("response", "faulty")
_KIND_PREFIX = "apim:"
_PROPERTIES = "properties"
_TRAILING = " \t\r\n"


def is_metrics_line(line: str) -> bool:
    """True for a line the forwarder must account for (the ELK filter keeps exactly these)."""
    return MARKER in line


def parse_metrics_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """`(kind, properties)` for a metrics line, None for any other log line.

    Raises MalformedEvent for a metrics line that cannot be read: no `apim:<kind>` or
    `properties :` part (BAD_LINE), a kind other than response/faulty (UNKNOWN_KIND),
    broken or truncated JSON (BAD_JSON), JSON that is not an object (NOT_AN_OBJECT).
    """
    start = line.find(MARKER)
    if start < 0:
        return None
    kind_at = line.find(_KIND_PREFIX, start + len(MARKER))
    if kind_at < 0:
        raise MalformedEvent(BAD_LINE, "metrics line without 'apim:<kind>'")
    props_at = line.find(_PROPERTIES, kind_at)
    if props_at < 0:
        raise MalformedEvent(BAD_LINE, "metrics line without 'properties :'")
    try:
        kind = _read_kind(line, kind_at + len(_KIND_PREFIX), props_at)
    except MalformedEvent as exc:
        # Its dead letter keeps the event masked (never the raw line) when it is one.
        exc.event = _event_or_none(line, props_at)  # type: ignore[attr-defined]
        raise
    payload = _payload(line, props_at + len(_PROPERTIES))
    return kind, _decode_object(payload)


def _event_or_none(line: str, props_at: int) -> dict[str, Any] | None:
    try:
        return _decode_object(_payload(line, props_at + len(_PROPERTIES)))
    except MalformedEvent:
        return None


def _read_kind(line: str, begin: int, end: int) -> str:
    # The kind runs to the comma (or, tolerantly, to `properties` when the comma is missing).
    comma = line.find(",", begin, end)
    kind = line[begin : comma if comma >= 0 else end].strip()
    if kind not in KINDS:
        # The unknown kind is WSO2's own vocabulary (no user data), so it may be shown.
        shown = kind if len(kind) <= 40 and kind.isidentifier() else "(unreadable)"
        raise MalformedEvent(UNKNOWN_KIND, f"unknown event kind 'apim:{shown}'")
    return kind


def _payload(line: str, after_label: int) -> str:
    colon = line.find(":", after_label)
    if colon < 0 or line[after_label:colon].strip():
        raise MalformedEvent(BAD_LINE, "metrics line without ':' after 'properties'")
    payload = line[colon + 1 :].strip(_TRAILING)
    if not payload:
        raise MalformedEvent(BAD_JSON, "metrics line with no JSON after 'properties :'")
    return payload


def _decode_object(payload: str) -> dict[str, Any]:
    try:
        value = loads_event(payload)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        # orjson's message names a position, never the content.
        raise MalformedEvent(BAD_JSON, f"invalid or truncated JSON ({exc})") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise MalformedEvent(NOT_AN_OBJECT, f"event JSON is a {kind}, not an object")
    return value


def loads_event(data: bytes | str) -> Any:
    """Parse one event's JSON with orjson. A document orjson refuses for an escaped lone
    surrogate (a truncated emoji: valid JSON, not valid Unicode) is parsed by the standard
    library instead, with the broken halves replaced by U+FFFD; that parser is held to
    orjson's rules otherwise: no NaN or Infinity (nor a number that overflows to it), an
    integer beyond 64 bits becomes a float, nesting too deep is refused. So no value
    the encoder cannot write ever reaches the mapper from a line."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        first = exc
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float,
                           parse_int=_int64)
        return _replace_surrogates(value)
    except (ValueError, RecursionError):
        raise first from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _int64(text: str) -> int | float:
    value = int(text)
    if -(1 << 63) <= value < (1 << 64):
        return value
    return _finite_float(text)  # what orjson does with a wider integer


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value
