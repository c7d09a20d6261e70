"""The two WSO2 API Manager analytics events: `apim_event_response` and `apim_event_faulty`.

Every field of the seed's two tables is declared with the seed's type. Beyond the tables:

* `requestTimestamp` is the one required field (a Moesif event cannot exist without a
  time). The seed types it as an ISO string on responses and a Long on faults, while real
  fault logs carry ISO strings: both forms are accepted on both events and the original
  value is kept (the parsed time is cached on the model).
* Unknown keys are kept (`extra="allow"`): a newer gateway's fields must reach Moesif.
* Values the gateway nests under `properties` (see the reference page) are lifted to the
  top level when the top level lacks them; `properties` itself is kept unchanged.
* Numbers stay numbers (an int stays an int, a float a float; a numeric string becomes a
  number), booleans stay booleans; a boolean is no number (pydantic would read `true`
  as 1). A value of the wrong kind is a BAD_TYPE error naming the field, never echoing
  the value (events are not masked yet at this point).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

from connector.common.timeutil import TimestampOutOfRange, parse_timestamp
from connector.forward.errors import (
    BAD_TYPE,
    BAD_VALUE,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    UNKNOWN_KIND,
    MalformedEvent,
)

EventKind = Literal["response", "faulty"]
KINDS: tuple[str, ...] = ("response", "faulty")



def _not_a_boolean(value: Any) -> Any:
    # pydantic's lax mode reads True as 1: a status code or latency of `true` is a
    # reporter's bug to refuse (BAD_TYPE), not a number to send.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Int = Annotated[int, BeforeValidator(_not_a_boolean)]
Number = Annotated[int | float, BeforeValidator(_not_a_boolean)]

# properties.<key> -> top-level field, used when the top level does not have the field.
LIFTED_FROM_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("apiContext", "apiContext"),
    ("userName", "userName"),
    ("requestSize", "requestSize"),
    ("responseSize", "responseSize"),
    ("responseContentType", "responseContentType"),
    ("commonName", "commonName"),
    ("isEgress", "isEgress"),
    ("subtype", "subType"),
    ("subType", "subType"),
    ("requestHeaders", "requestHeaders"),
    ("responseHeaders", "responseHeaders"),
)
# properties.<group>.<key> -> top-level <key> (AI APIs).
LIFTED_FROM_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aiMetadata", ("vendorName", "vendorVersion", "model")),
    ("aiTokenUsage", ("promptTokens", "completionTokens", "totalTokens", "hour")),
)
_LIFT_KEYS = frozenset([s for s, _ in LIFTED_FROM_PROPERTIES] + [g for g, _ in LIFTED_FROM_GROUPS])


class _ApimEventBase(BaseModel):
    """Fields both events carry (the common part of the seed's tables, plus the
    `properties`-borne and AI fields that either event may hold)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), frozen=False)

    apiCreator: str | None = None
    apiCreatorTenantDomain: str | None = None
    apiId: str | None = None
    apiMethod: str | None = None
    apiName: str | None = None
    apiResourceTemplate: str | None = None
    apiType: str | None = None
    apiVersion: str | None = None
    apiContext: str | None = None
    applicationId: str | None = None
    applicationName: str | None = None
    applicationOwner: str | None = None
    backendLatency: Number | None = None
    correlationId: str | None = None
    destination: str | None = None
    eventType: str | None = None
    gatewayType: str | None = None
    keyType: str | None = None
    userName: str | None = None
    proxyResponseCode: Int | None = None
    regionId: str | None = None
    requestMediationLatency: Number | None = None
    requestTimestamp: str | StrictInt | StrictFloat
    responseCacheHit: bool | None = None
    responseLatency: Number | None = None
    responseMediationLatency: Number | None = None
    targetResponseCode: Int | None = None
    userAgent: str | None = None
    userIp: str | None = None
    # ELK mode replaces the raw user agent by browser family (userAgent) + OS (platform).
    platform: str | None = None
    commonName: str | None = None
    responseContentType: str | None = None
    subType: str | None = None
    isEgress: bool | None = None
    requestSize: Number | None = None
    responseSize: Number | None = None
    requestHeaders: dict[str, Any] | None = None
    responseHeaders: dict[str, Any] | None = None
    # AI APIs (top level, or lifted from properties.aiMetadata / properties.aiTokenUsage).
    vendorName: str | None = None
    vendorVersion: str | None = None
    model: str | None = None
    promptTokens: Number | None = None
    completionTokens: Number | None = None
    totalTokens: Number | None = None
    # The seed says String; an hour number is kept as a number rather than rejected.
    hour: str | Int | None = None
    properties: dict[str, Any] | None = None

    _request_time: datetime = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _lift_properties(cls, data: Any) -> Any:
        return lift_properties(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _parse_time(self) -> _ApimEventBase:
        self._request_time = request_time_of(self.requestTimestamp)
        return self

    @property
    def request_time(self) -> datetime:
        """requestTimestamp as an aware UTC datetime (parsed once, at validation)."""
        return self._request_time

    def to_dict(self) -> dict[str, Any]:
        """The fields the event actually carried (plus lifted ones), extras included."""
        return self.model_dump(exclude_unset=True)


class ApimResponseEvent(_ApimEventBase):
    """`apim_event_response`: a request the gateway processed (backend errors included)."""

    KIND: ClassVar[str] = "response"


class ApimFaultyEvent(_ApimEventBase):
    """`apim_event_faulty`: a failed or throttled invocation."""

    errorCode: Int | None = None
    errorMessage: str | None = None
    errorType: str | None = None

    KIND: ClassVar[str] = "faulty"


ApimEvent = ApimResponseEvent | ApimFaultyEvent

_MODELS: dict[str, type[_ApimEventBase]] = {
    "response": ApimResponseEvent,
    "faulty": ApimFaultyEvent,
}


def request_time_of(value: Any) -> datetime:
    """requestTimestamp (ISO 8601 string or epoch ms/s number) as an aware datetime."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(_TIME_PROBLEM)
    try:
        return _parse_time(value)
    except _OutOfRange:
        raise ValueError(_RANGE_PROBLEM) from None
    except (ValueError, OverflowError, OSError):
        # No value in the text: the event is not masked yet.
        raise ValueError(_TIME_PROBLEM) from None


class _OutOfRange(Exception):
    """A valid timestamp that leaves the datetime range once in UTC."""


# What WSO2 writes (`Instant.toString()` at milliseconds): read by `fromisoformat` as it is.
_WSO2_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def _parse_utc(value: str | int | float) -> datetime:
    if type(value) is str and _WSO2_TIME.fullmatch(value):
        # UTC already: no offset to apply, no range to leave. An impossible date (month
        # 13) falls through to the lenient parser, which words the error.
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    try:
        when = parse_timestamp(value)
    except TimestampOutOfRange:
        raise _OutOfRange from None
    try:
        # In UTC now: a time-zone shift past year 1 or 9999 must fail here, on this
        # event, not later while encoding it.
        return when.astimezone(UTC)
    except OverflowError:
        raise _OutOfRange from None


# A busy gateway logs many events per millisecond: the same timestamp text parses once.
# (bool is excluded above, so the cache never confuses True with 1.)
_parse_time = lru_cache(maxsize=4096)(_parse_utc)


_TIME_PROBLEM = "field 'requestTimestamp': not an ISO 8601 timestamp nor epoch milliseconds"
_RANGE_PROBLEM = "field 'requestTimestamp': out of the datetime range once in UTC"


def lift_properties(data: dict[str, Any]) -> dict[str, Any]:
    """Fill missing top-level fields from `properties` (values of the field's declared
    type only); returns `data` itself when nothing needs lifting, else a shallow copy
    (the input is never mutated)."""
    props = data.get("properties")
    if not isinstance(props, dict) or not props or props.keys().isdisjoint(_LIFT_KEYS):
        return data  # nothing to lift: decided in C, the common case
    out: dict[str, Any] | None = None
    for source, target in LIFTED_FROM_PROPERTIES:
        if source not in props:
            continue
        value = props.get(source)
        if value is not None and data.get(target) is None and _liftable(target, value):
            if out is None:
                out = dict(data)
            if out.get(target) is None:
                out[target] = value
    for group_name, keys in LIFTED_FROM_GROUPS:
        group = props.get(group_name)
        if not isinstance(group, dict):
            continue
        for key in keys:
            value = group.get(key)
            if value is not None and data.get(key) is None and _liftable(key, value):
                if out is None:
                    out = dict(data)
                out[key] = value
    return data if out is None else out


def _liftable(field: str, value: Any) -> bool:
    # A value of another type stays only in `properties` (kept, not lifted) rather than
    # making the whole event invalid.
    return type(value) in _ACCEPTED_TYPES["response"][field]


def infer_kind(raw: dict[str, Any]) -> str:
    """A fault event is the one that says what went wrong."""
    if raw.get("errorType") is not None or raw.get("errorCode") is not None:
        return "faulty"
    return "response"


def validate_event(raw: Any, kind: str | None = None) -> ApimEvent:
    """Validate one event map into its model. `kind` is "response" or "faulty"; None
    infers it (errorType/errorCode present -> faulty).

    Raises MalformedEvent: NOT_AN_OBJECT, UNKNOWN_KIND, MISSING_FIELD (requestTimestamp
    absent or null) or BAD_TYPE (a field of the wrong type; the detail names the field).
    """
    kind = _check(raw, kind)
    try:
        return _MODELS[kind].model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise _as_malformed(exc) from None


def validate_event_dict(raw: Any, kind: str | None = None) -> tuple[str, dict[str, Any], datetime]:
    """The hot-path twin of validate_event: `(kind, event dict, request time)`.

    Same rules and errors, same resulting values as `validate_event(...).to_dict()`, but
    an event whose values already have the declared JSON types (the normal case) skips
    the model: only a type check per key and the lifting from `properties` run. Anything
    else goes through pydantic, which coerces or rejects it. The returned dict may share
    nested objects with `raw`: treat both as read-only.
    """
    kind = _check(raw, kind)
    data = lift_properties(raw)
    if _types_accepted(kind, data):
        try:
            return kind, data, request_time_of(data["requestTimestamp"])
        except ValueError as exc:
            code = BAD_VALUE if str(exc) == _RANGE_PROBLEM else BAD_TYPE
            raise MalformedEvent(code, str(exc)) from None
    event = validate_event(raw, kind)
    return kind, event.to_dict(), event.request_time


# (kind, keys, their value types) -> whether every value has its field's declared type.
# A gateway writes the same shapes over and over: the check becomes two tuples built in C
# and one look-up, instead of a Python loop over some 35 fields.
_SHAPES: dict[tuple[Any, ...], bool] = {}
_MAX_SHAPES = 4096


def _types_accepted(kind: str, data: dict[str, Any]) -> bool:
    shape = (kind, tuple(data), tuple(map(type, data.values())))
    known = _SHAPES.get(shape)
    if known is None:
        accepted = _ACCEPTED_TYPES[kind]
        known = True
        for key, value in data.items():
            types = accepted.get(key)
            if types is not None and type(value) not in types:
                known = False
                break
        if len(_SHAPES) >= _MAX_SHAPES:  # bounded: odd inputs cannot grow it
            _SHAPES.clear()
        _SHAPES[shape] = known
    return known


def _check(raw: Any, kind: str | None) -> str:
    if not isinstance(raw, dict):
        raise MalformedEvent(NOT_AN_OBJECT, f"event is a {type(raw).__name__}, not an object")
    if kind is None:
        kind = infer_kind(raw)
    elif kind not in _MODELS:
        raise MalformedEvent(UNKNOWN_KIND, "event kind must be 'response' or 'faulty'")
    if raw.get("requestTimestamp") is None:
        raise MalformedEvent(MISSING_FIELD, "field 'requestTimestamp' is missing or null")
    return kind


def _python_types(annotation: Any) -> frozenset[type]:
    """The exact Python types a JSON value may already have to pass a field unchanged."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _python_types(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return frozenset().union(*(_python_types(arg) for arg in get_args(annotation)))
    if origin is dict:
        return frozenset({dict})
    if annotation is type(None):
        return frozenset({type(None)})
    if annotation in (str, int, float, bool):
        return frozenset({annotation})
    raise TypeError(f"no fast type check for {annotation!r}")  # a new field type: add it


_ACCEPTED_TYPES: dict[str, dict[str, frozenset[type]]] = {
    kind: {name: _python_types(field.annotation) for name, field in model.model_fields.items()}
    for kind, model in _MODELS.items()
}


def _as_malformed(exc: ValidationError) -> MalformedEvent:
    problems = exc.errors(include_url=False, include_input=False, include_context=False)
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"][:1])
    if first["type"] == "missing":
        return MalformedEvent(MISSING_FIELD, f"field '{field}' is missing")
    if field == "requestTimestamp":
        if _RANGE_PROBLEM in first["msg"]:
            return MalformedEvent(BAD_VALUE, _RANGE_PROBLEM)
        return MalformedEvent(BAD_TYPE, _TIME_PROBLEM)
    message = first["msg"].removeprefix("Value error, ")
    # A union reports one problem per member: count fields, not problems.
    others = {p["loc"][0] for p in problems if p["loc"]} - {field}
    more = f" (and {len(others)} more field(s))" if others else ""
    prefix = f"field '{field}': " if field else ""
    return MalformedEvent(BAD_TYPE, f"{prefix}{message}{more}")
