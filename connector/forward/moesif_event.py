"""Turn a WSO2 analytics event into a Moesif Collector event, as mappings/apim_events.toml says.

Order of work for one event (`EventMapper.to_moesif` / `EventMapper.process`):

1. (process only) validate against the models in apim.py;
2. strip the tenant suffix (`@carbon.super`) from the user name: BEFORE masking, so
   `john@example.com@carbon.super` under EMAIL becomes `*****@example.com`;
3. read the transaction key (correlationId) and the request time, which are not personal
   (without a correlationId the transaction id is a keyed hash of the unmasked event);
4. mask (`[apim.analytics.mask]`) everything else: every Moesif field and the metadata
   are built from the masked event, captured headers are masked by their own lists;
5. map.

The mapping file is read and checked by connector.mapping.load_mapping_document (the
one mapping language, shared with the sync) and compiled once, at construction, into
plain closures and generated functions; applying it is
a handful of dict look-ups per field.

Decisions the file documents (and a user may change there): `request.uri` falls back
from a gateway URL to apiContext + apiResourceTemplate, apiContext, `/` + apiName and
finally `/`; `request.verb` falls back to GET; `response.headers` carry `Content-Type`
from responseContentType when no captured headers are sent; an event without a valid
HTTP status gets no `response` (Moesif's "timeout" shape) rather than an invented one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from connector.common.jsonutil import dumps_sorted
from connector.common.timeutil import to_iso
from connector.forward.apim import (
    ApimFaultyEvent,
    ApimResponseEvent,
    infer_kind,
    lift_properties,
    request_time_of,
)
from connector.forward.apim import validate_event_dict as _validate
from connector.forward.errors import (
    BAD_TYPE,
    BAD_VALUE,
    MISSING_FIELD,
    UNKNOWN_KIND,
    MalformedEvent,
)
from connector.forward.masking import MaskConfig, Masker
from connector.mapping import (
    MISSING,
    FieldRule,
    entry_line,
    load_mapping_document,
    template_pieces,
)
from connector.settings import ConfigError

MAPPING_FILE = "apim_events.toml"
# Fixed namespace of this project's transaction ids: uuid5(NAMESPACE_URL,
# "urn:moesif-segment-connector:forward:apim-events"). Never change it: replays after an
# upgrade must produce the same ids for Moesif to de-duplicate them.
TRANSACTION_NAMESPACE = uuid.UUID("2ce2b504-1ea6-5605-89a8-7d765a473964")
DIRECTIONS = ("Incoming", "Outgoing", "Internal")
KINDS = ("response", "faulty")

_MISSING: Any = object()
Getter = Callable[[dict[str, Any]], Any]
Converter = Callable[[Any], Any]
_PATH_PART = re.compile(r"^[A-Za-z0-9_\-$@]+$")


def default_mapping_path() -> Path:
    """The shipped mapping: inside the installed package (the wheel copies `mappings/`
    there), else the source tree's top-level `mappings/`."""
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "mappings", package.parent / "mappings"):
        if (folder / MAPPING_FILE).is_file():
            return folder / MAPPING_FILE
    return package.parent / "mappings" / MAPPING_FILE


# --- converters: event value -> Moesif value, or _MISSING to try the next candidate ---


def _to_time(value: Any) -> Any:
    try:
        return request_time_of(value)
    except ValueError:
        return _MISSING


def _to_text(value: Any) -> Any:
    if type(value) is str:
        return value
    if type(value) in (int, float):
        return str(value)
    return _MISSING


def _to_verb(value: Any) -> Any:
    if type(value) is not str or not value.strip():
        return _MISSING
    return value.strip().upper()


def _to_status(value: Any) -> Any:
    numeric_text = type(value) is str and value.strip().isascii() and value.strip().isdigit()
    if numeric_text or (type(value) is float and value.is_integer()):
        value = int(value)
    return value if type(value) is int and 100 <= value <= 599 else _MISSING


# A latency beyond a year (in ms) is no latency: it would put response.time past any
# sensible date (and `1e20` or infinity past the datetime range).
MAX_LATENCY_MS = 366 * 24 * 3600 * 1000


def _to_latency(value: Any) -> Any:
    if type(value) not in (int, float) or not 0 <= value <= MAX_LATENCY_MS:
        return _MISSING  # also NaN: no comparison holds for it
    return value


def _to_headers(value: Any) -> Any:
    return value if type(value) is dict else _MISSING


def _to_direction(value: Any) -> Any:
    return value if value in DIRECTIONS else _MISSING


def _to_weight(value: Any) -> Any:
    return value if type(value) is int and value >= 1 else _MISSING


# (section, entry) -> (converter, required)
FIELDS: dict[tuple[str, str], tuple[Converter, bool]] = {
    ("request", "time"): (_to_time, True),
    ("request", "uri"): (_to_text, True),
    ("request", "verb"): (_to_verb, True),
    ("request", "api_version"): (_to_text, False),
    ("request", "ip_address"): (_to_text, False),
    ("request", "captured_headers"): (_to_headers, False),
    ("response", "status"): (_to_status, False),
    ("response", "latency_ms"): (_to_latency, False),
    ("response", "captured_headers"): (_to_headers, False),
    ("event", "user_id"): (_to_text, False),
    ("event", "company_id"): (_to_text, False),
    ("event", "transaction_key"): (_to_text, False),
    ("event", "direction"): (_to_direction, False),
    ("event", "weight"): (_to_weight, False),
}


class _Rule:
    """One Moesif field: its candidates (getters) and the converter that checks them,
    fused into one `resolve(data)` closure (the hot path: one call per field)."""

    __slots__ = ("getters", "convert", "resolve")

    def __init__(self, getters: tuple[Getter, ...], convert: Converter) -> None:
        self.getters = getters
        self.convert = convert
        self.resolve: Callable[[dict[str, Any]], Any] = _resolver(getters, convert)


def _resolver(getters: tuple[Getter, ...], convert: Converter) -> Callable[[dict[str, Any]], Any]:
    """One generated function for the whole candidate list: field candidates become
    inline dict look-ups, the text converter is inlined, constants are checked at load."""
    ns: dict[str, Any] = {"_MISSING": _MISSING, "convert": convert, "type": type,
                          "str": str, "dict": dict}
    lines = ["def resolve(data):"]
    for number, get in enumerate(getters):
        constant = getattr(get, "constant", _MISSING)
        if constant is not _MISSING:
            value = convert(constant)  # checked at load: never _MISSING here
            ns[f"k{number}"] = value
            lines.append(f"    return k{number}")
            break  # a constant always answers: later candidates are never reached
        path = getattr(get, "path", None)
        if path is None:  # a template: its own closure builds the text
            ns[f"g{number}"] = get
            lines.append(f"    v = g{number}(data)")
        else:
            unknown = get.unknown  # type: ignore[attr-defined]
            ns[f"u{number}"] = unknown
            lines.append("    v = data")
            for part in path:
                lines.append(f"    v = v.get({part!r}) if type(v) is dict else None")
            blank = " or v.isspace()" if "" in unknown else ""  # as _field does
            lines.append(f"    if v is None or (type(v) is str and (v in u{number}{blank})): "
                         "v = _MISSING")
        lines.append("    if v is not _MISSING:")
        if convert is _to_text:
            lines.append("        if type(v) is str: return v")
        lines.append("        v = convert(v)")
        lines.append("        if v is not _MISSING: return v")
    else:
        lines.append("    return _MISSING")
    exec(compile("\n".join(lines) + "\n", "<event mapping rule>", "exec"), ns)  # noqa: S102
    return ns["resolve"]


_NO_RULE = _Rule((), _to_text)


@dataclass(frozen=True, slots=True)
class EventMapping:
    """The compiled mapping file."""

    source: Path
    rules: dict[tuple[str, str], _Rule]
    request_derived: tuple[tuple[str, _Rule], ...]
    response_derived: tuple[tuple[str, _Rule], ...]
    strip_suffix: str
    strip_fields: tuple[tuple[str, ...], ...]
    exclude: dict[str, Any]  # key -> None (drop) or a nested exclude dict
    kind_key: str
    time_is_request_timestamp: bool

    def rule(self, section: str, name: str) -> _Rule:
        return self.rules.get((section, name), _NO_RULE)


def load_mapping(path: str | Path | None = None) -> EventMapping:
    """Read and compile a mapping file; every problem is a ConfigError naming the file,
    the entry (and its line when it can be found) and the reason."""
    return _MappingLoader(Path(path) if path else default_mapping_path()).load()


# Target in the mapping file -> FIELDS key; `<section>.headers.<Name>` is a derived header.
_TARGETS = {(name if section == "event" else f"{section}.{name}"): (section, name)
            for section, name in FIELDS}
_DERIVED = ("request.headers.", "response.headers.")
_OPTIONS = ("unknown_values", "strip_suffix", "strip_suffix_fields")
_METADATA = ("exclude", "kind_key")
# Rule keys of the shared language that mean nothing for a Moesif event (the Moesif field
# fixes the type; personal data is handled by [apim.analytics.mask]).
_SYNC_ONLY = ("type", "personal", "trimmable", "volatile", "required", "mapping")


class _MappingLoader:
    """Compile the event mapping from the shared loader's parsed rules
    (connector.mapping.load_mapping_document: one language, one validator)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def load(self) -> EventMapping:
        document = load_mapping_document(self.path, sections=("event",), options=_OPTIONS,
                                         metadata=_METADATA)
        self.lines = document.lines
        version = document.header.get("version", "1")
        if str(version) != "1":
            self.fail("[mapping] 'version'", "unsupported mapping version (this code reads 1)")
        options, metadata = document.options, document.metadata
        unknown = frozenset(self.strings(options, "options", "unknown_values", ["", "N/A"]))
        rules, request_derived, response_derived = self.rules(document.sections, unknown)
        kind_key = metadata.get("kind_key", "eventKind")
        if not isinstance(kind_key, str) or not kind_key:
            self.fail("[metadata] 'kind_key'", "must be a non-empty string")
        suffix = options.get("strip_suffix", "")
        if not isinstance(suffix, str):
            self.fail("[options] 'strip_suffix'", "must be a string")
        time_getters = rules[("request", "time")].getters
        return EventMapping(
            source=self.path,
            rules=rules,
            request_derived=request_derived,
            response_derived=response_derived,
            strip_suffix=suffix.lower(),
            strip_fields=tuple(
                self.path_of("[options] 'strip_suffix_fields'", text)
                for text in self.strings(options, "options", "strip_suffix_fields", [])
            ),
            exclude=self.exclude(metadata),
            kind_key=kind_key,
            time_is_request_timestamp=getattr(time_getters[0], "path", None)
            == ("requestTimestamp",),
        )

    # --- pieces ---

    def rules(
        self, sections: dict[str, list[FieldRule]], unknown: frozenset[str]
    ) -> tuple[dict[tuple[str, str], _Rule], tuple[tuple[str, _Rule], ...],
               tuple[tuple[str, _Rule], ...]]:
        rules: dict[tuple[str, str], _Rule] = {}
        derived: dict[str, list[tuple[str, _Rule]]] = {"request": [], "response": []}
        for number, field_rule in enumerate(sections.get("event", []), start=1):
            line = entry_line(self.lines, "event", number - 1)
            at = f" (line {line})" if line else ""
            where = f"[[event]] entry {number}{at} (target {field_rule.target!r})"
            self.check_keys(where, field_rule)
            target = field_rule.target
            if target.startswith(_DERIVED) and len(field_rule.path) == 3:
                section, _, header = field_rule.path
                derived[section].append((header, self.rule(where, field_rule, _to_text,
                                                           unknown)))
                continue
            key = _TARGETS.get(target)
            if key is None:
                self.fail(where, "unknown Moesif field; expected one of "
                                 f"{sorted(_TARGETS)} or <request|response>.headers.<Name>")
            rules[key] = self.rule(where, field_rule, FIELDS[key][0], unknown)
        for key, (_, required) in FIELDS.items():
            if required and key not in rules:
                name = key[1] if key[0] == "event" else ".".join(key)
                self.fail(f"[[event]] target {name!r}",
                          "is required (Moesif rejects events without it)")
        return rules, tuple(derived["request"]), tuple(derived["response"])

    def check_keys(self, where: str, rule: FieldRule) -> None:
        used = [key for key in _SYNC_ONLY if getattr(rule, "submapping" if key == "mapping"
                                                     else key) not in (False, None, "any")]
        if used:
            self.fail(where, f"{', '.join(used)} has no meaning for a Moesif event field")

    def rule(self, where: str, field_rule: FieldRule, convert: Converter,
             unknown: frozenset[str]) -> _Rule:
        specs = list(field_rule.source_specs)
        if field_rule.default is not MISSING:
            specs.append({"value": field_rule.default})
        getters = []
        for number, spec in enumerate(specs, start=1):
            getter = self.candidate(where, number, spec, unknown)
            constant = getattr(getter, "constant", _MISSING)
            if constant is not _MISSING and convert(constant) is _MISSING:
                self.fail(where, f"source {number} is not a valid value for this field")
            getters.append(getter)
        return _Rule(tuple(getters), convert)

    def candidate(self, where: str, number: int, spec: Any, unknown: frozenset[str]) -> Getter:
        if isinstance(spec, str):
            return _field(self.path_of(where, spec, number), unknown)
        if "value" in spec:
            return _constant(spec["value"])
        if "template" not in spec:
            self.fail(where, f"source {number}: only paths, templates and values are "
                             "available to events (no join or seconds_between)")
        parts = tuple(piece if isinstance(piece, str) else
                      self.path_of(where, piece[0], number)
                      for piece in template_pieces(spec["template"]))
        if len(parts) == 1 and isinstance(parts[0], tuple):
            return _field(parts[0], unknown)
        return _template(parts, unknown)

    def path_of(self, where: str, text: str, number: int | None = None) -> tuple[str, ...]:
        path = tuple(text.strip().split("."))
        if text.startswith("@") or not all(_PATH_PART.match(part) for part in path):
            which = f"source {number}" if number else "a path"
            self.fail(where, f"{which} names no valid event field (use field or a.b; "
                             "events have no joined documents)")
        return path

    def exclude(self, metadata: dict[str, Any]) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for text in self.strings(metadata, "metadata", "exclude", []):
            *parents, leaf = self.path_of("[metadata] 'exclude'", text)
            node = tree
            for part in parents:
                child = node.setdefault(part, {})
                if child is None:
                    break  # the whole parent is excluded already
                node = child
            else:
                node[leaf] = None
        return tree

    def strings(self, table: dict[str, Any], where: str, key: str, default: list[str]) -> list[str]:
        value = table.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(f"[{where}] {key!r}", "must be a list of strings")
        return value

    def fail(self, where: str, reason: str) -> NoReturn:
        raise ConfigError(f"mapping file {self.path}: {where}: {reason}")


# --- candidate getters (closures: the hot path) ---


def _constant(value: Any) -> Getter:
    def get(_: dict[str, Any]) -> Any:
        return value

    get.constant = value  # type: ignore[attr-defined]
    return get


def _field(path: tuple[str, ...], unknown: frozenset[str]) -> Getter:
    # A blank value (only whitespace) is as unknown as the empty string when "" is an
    # unknown value: else every event whose correlationId is " " would share one
    # transaction id, and Moesif would keep only one of them.
    blank = "" in unknown
    if len(path) == 1:
        key = path[0]

        def get(data: dict[str, Any]) -> Any:
            value = data.get(key)
            if value is None or (type(value) is str
                                 and (value in unknown or (blank and value.isspace()))):
                return _MISSING
            return value

    else:

        def get(data: dict[str, Any]) -> Any:
            value: Any = data
            for part in path:
                if type(value) is not dict:
                    return _MISSING
                value = value.get(part)
            if value is None or (type(value) is str
                                 and (value in unknown or (blank and value.isspace()))):
                return _MISSING
            return value

    get.path = path  # type: ignore[attr-defined]
    get.unknown = unknown  # type: ignore[attr-defined]
    return get


def _template(parts: tuple[str | tuple[str, ...], ...], unknown: frozenset[str]) -> Getter:
    pieces: list[str | Getter] = [p if isinstance(p, str) else _field(p, unknown) for p in parts]

    def get(data: dict[str, Any]) -> Any:
        text = ""
        for piece in pieces:
            if type(piece) is str:
                value = piece
            else:
                value = piece(data)  # type: ignore[operator]
                if value is _MISSING or type(value) not in (str, int, float):
                    return _MISSING
                value = str(value)
            # Joining "/ctx/" and "/path" must not give "/ctx//path".
            if value.startswith("/") and text.endswith("/"):
                value = value[1:]
            text += value
        return text

    return get


# --- the mapper ---


class EventMapper:
    """Validated (unmasked) WSO2 event -> masked Moesif Collector event."""

    def __init__(
        self,
        send_headers: bool,
        mask: MaskConfig,
        unknown_company_values: Iterable[str] = frozenset({"UNKNOWN"}),
        mapping_path: Path | None = None,
        transaction_secret: bytes | None = None,
    ) -> None:
        self.send_headers = send_headers
        self.mask = mask
        # A plain object (no pydantic attribute access per event); without send_headers
        # it also drops captured headers found anywhere in the event.
        self._masker = (mask.masker if send_headers else
                        Masker(mask.rules, mask.request_headers, mask.response_headers,
                               drop_headers=True))
        # The key of content-derived transaction ids (the installation's secret; a
        # random one when none is given, e.g. in a test).
        self._txid_key = transaction_secret or os.urandom(32)
        if isinstance(unknown_company_values, str):  # "UNKNOWN,N/A" as settings hold it
            unknown_company_values = unknown_company_values.split(",")
        self.unknown_companies = frozenset(
            v.strip().upper() for v in unknown_company_values if v.strip()
        )
        self.mapping = load_mapping(mapping_path)
        m = self.mapping
        self._time = m.rule("request", "time")
        self._uri = m.rule("request", "uri")
        self._verb = m.rule("request", "verb")
        self._api_version = m.rule("request", "api_version")
        self._ip = m.rule("request", "ip_address")
        self._request_captured = m.rule("request", "captured_headers")
        self._status = m.rule("response", "status")
        self._latency = m.rule("response", "latency_ms")
        self._response_captured = m.rule("response", "captured_headers")
        self._user = m.rule("event", "user_id")
        self._company = m.rule("event", "company_id")
        self._transaction = m.rule("event", "transaction_key")
        self._direction = m.rule("event", "direction")
        self._weight = m.rule("event", "weight")

    def process(self, raw: Any, kind: str | None = None) -> dict[str, Any]:
        """Validate, strip the tenant suffix, mask and map one raw event map.
        Raises MalformedEvent for an invalid event."""
        kind, data, when = _validate(raw, kind)
        if not self.mapping.time_is_request_timestamp:
            return self._build(data, kind, None)
        text = data.get("requestTimestamp")
        # Already in the sent form (what WSO2 writes): the text is its own ISO rendering.
        same = text if type(text) is str and _CANONICAL_TIME.fullmatch(text) else None
        return self._build(data, kind, when, time_text=same)

    def to_moesif(
        self,
        event: ApimResponseEvent | ApimFaultyEvent | dict[str, Any],
        kind: str | None = None,
        *,
        already_masked: bool = False,
    ) -> dict[str, Any]:
        """Map a validated event (model, or dict from `validate_event_dict`).

        The event must NOT be masked yet: this strips the tenant suffix, masks (masking is
        not idempotent: an IPv4 masked twice is masked whole) and maps. Pass
        `already_masked=True` for an event masked by the same configuration.
        """
        when = None
        if isinstance(event, ApimResponseEvent | ApimFaultyEvent):
            kind = kind or event.KIND
            when = event.request_time if self.mapping.time_is_request_timestamp else None
            data = event.to_dict()
        elif isinstance(event, dict):
            data = lift_properties(event)  # a no-op for validate_event_dict's output
        else:
            raise MalformedEvent(BAD_TYPE, f"event is a {type(event).__name__}, not an event")
        if kind is None:
            kind = infer_kind(data)
        if kind not in KINDS:
            raise MalformedEvent(UNKNOWN_KIND, "event kind must be 'response' or 'faulty'")
        return self._build(data, kind, when, already_masked=already_masked)

    # --- internals ---

    def _build(
        self,
        data: dict[str, Any],
        kind: str,
        when: datetime | None,
        *,
        already_masked: bool = False,
        time_text: str | None = None,
    ) -> dict[str, Any]:
        plain = self._strip_suffix(data)
        if when is None:
            when = self._time.resolve(plain)
            if when is _MISSING:
                raise MalformedEvent(MISSING_FIELD, "no usable value for request.time")
        key = self._transaction.resolve(plain)
        masked = plain if already_masked else self._masker.apply(plain)

        request: dict[str, Any] = {
            "time": time_text or _iso(when),
            "uri": self._required(self._uri, masked, "request.uri"),
            "verb": self._required(self._verb, masked, "request.verb"),
            "headers": self._headers(
                plain,
                masked,
                self._request_captured,
                self.mapping.request_derived,
                None if already_masked else self._masker.mask_request_headers,
            ),
        }
        _set(request, "api_version", self._api_version.resolve(masked))
        _set(request, "ip_address", self._ip.resolve(masked))
        moesif: dict[str, Any] = {"request": request}

        status = self._status.resolve(masked)
        if status is not _MISSING:
            latency = self._latency.resolve(masked)
            if latency is _MISSING or not latency:
                response_time = request["time"]
            else:
                response_time = _response_time(when, latency, time_text)
            moesif["response"] = {
                "time": response_time,
                "status": status,
                "headers": self._headers(
                    plain,
                    masked,
                    self._response_captured,
                    self.mapping.response_derived,
                    None if already_masked else self._masker.mask_response_headers,
                ),
            }
        _set(moesif, "user_id", self._user.resolve(masked))
        company = self._company.resolve(masked)
        if company is not _MISSING and company.strip().upper() not in self.unknown_companies:
            moesif["company_id"] = company
        moesif["transaction_id"] = _transaction_id(kind, key, plain, self._txid_key)
        _set(moesif, "direction", self._direction.resolve(masked))
        _set(moesif, "weight", self._weight.resolve(masked))
        moesif["metadata"] = self._metadata(masked, kind)
        return moesif

    def _strip_suffix(self, data: dict[str, Any]) -> dict[str, Any]:
        suffix = self.mapping.strip_suffix
        if not suffix:
            return data
        for path in self.mapping.strip_fields:
            data = _strip_at(data, path, suffix)
        return data

    def _headers(
        self,
        plain: dict[str, Any],
        masked: dict[str, Any],
        captured_rule: _Rule,
        derived: tuple[tuple[str, _Rule], ...],
        mask_headers: Callable[[dict[str, Any]], dict[str, Any]] | None,
    ) -> dict[str, Any]:
        headers: dict[str, Any] = {}
        if self.send_headers:
            # Read from the unmasked event and masked here by the header lists, so a
            # captured-headers source the masking walk does not know is masked too.
            captured = captured_rule.resolve(plain)
            if captured is not _MISSING:
                headers = dict(mask_headers(captured) if mask_headers else captured)
        if derived:
            present = {name.lower() for name in headers} if headers else ()
            for name, rule in derived:
                if name.lower() not in present:
                    _set(headers, name, rule.resolve(masked))
        return headers

    def _metadata(self, masked: dict[str, Any], kind: str) -> dict[str, Any]:
        metadata = _without(masked, self.mapping.exclude)
        if metadata is masked:
            metadata = dict(masked)
        metadata[self.mapping.kind_key] = kind
        return metadata

    @staticmethod
    def _required(rule: _Rule, data: dict[str, Any], name: str) -> Any:
        value = rule.resolve(data)
        if value is _MISSING:
            raise MalformedEvent(MISSING_FIELD, f"no usable value for {name}")
        return value


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not _MISSING:
        target[key] = value


def _strip_at(data: dict[str, Any], path: tuple[str, ...], suffix: str) -> dict[str, Any]:
    """Copy-on-write: `data` with the string at `path` lost its (case-insensitive) suffix."""
    head = path[0]
    value = data.get(head)
    if len(path) == 1:
        if type(value) is str and value.lower().endswith(suffix):
            out = dict(data)
            out[head] = value[: -len(suffix)]
            return out
        return data
    if type(value) is not dict:
        return data
    new = _strip_at(value, path[1:], suffix)
    if new is value:
        return data
    out = dict(data)
    out[head] = new
    return out


def _without(data: dict[str, Any], exclude: dict[str, Any]) -> dict[str, Any]:
    """Copy-on-write: `data` minus the excluded keys / nested paths."""
    out: dict[str, Any] | None = None
    for key, nested in exclude.items():
        if key not in data:
            continue
        if nested is None:
            if out is None:
                out = dict(data)
            del out[key]
            continue
        value = data[key]
        if type(value) is dict:
            new = _without(value, nested)
            if new is not value:
                if out is None:
                    out = dict(data)
                out[key] = new
    return data if out is None else out


def _response_time(when: datetime, latency: float, text: str | None = None) -> str:
    """`_iso(when + latency ms)`. With `text`, `when` in `_iso`'s own form (what WSO2
    writes) and a whole number of milliseconds, the sum is written from the text: a
    datetime sum and its formatting cost a tenth of an event's mapping."""
    if text is not None and type(latency) is int and 0 < latency < _LATENCY_FAST_MAX:
        total = int(text[20:23]) + latency
        if total < 1000:
            return f"{text[:20]}{total:03d}Z"
        try:
            return f"{_seconds_later(text[:19], total // 1000)}.{total % 1000:03d}Z"
        except OverflowError:
            pass  # past year 9999: worded below
    try:
        return _iso(when + timedelta(milliseconds=latency))
    except OverflowError:  # e.g. a request at 9999-12-31: no value in the message
        raise MalformedEvent(BAD_VALUE, "response.time (request time + response.latency_ms) "
                                        "is out of the datetime range") from None


# Latencies past a day take the datetime path (and its out-of-range error) below.
_LATENCY_FAST_MAX = 86_400_000


@lru_cache(maxsize=4096)
def _seconds_later(second: str, seconds: int) -> str:
    """'YYYY-MM-DDTHH:MM:SS' moved on by `seconds`, in the same form."""
    return (datetime.fromisoformat(second) + timedelta(seconds=seconds)).isoformat()


def _transaction_id(kind: str, key: Any, plain: dict[str, Any], secret: bytes) -> str:
    """uuid5 of "<kind>:<correlationId>"; without one, a keyed hash of the UNMASKED event.

    Masked content is not enough (two users' requests at the same millisecond mask
    alike and Moesif keeps one); the raw content must not be guessable back from the id
    (a plain hash of an IP plus a timestamp is brute-forced in seconds): so a keyed
    BLAKE2b under the installation's secret, which never leaves the state file."""
    if key is not _MISSING:
        return uuid5(f"{kind}:{key}")
    try:
        content = dumps_sorted(plain)
    except TypeError:  # e.g. an integer beyond 64 bits: fall back to the stdlib encoder
        content = json.dumps(plain, sort_keys=True, separators=(",", ":"),
                             default=str).encode()
    digest = bytearray(hashlib.blake2b(kind.encode() + b":" + content, key=secret,
                                       digest_size=16).digest())
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8 (RFC 9562: custom)
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return _uuid_text(digest.hex())


_NAMESPACE_BYTES = TRANSACTION_NAMESPACE.bytes


def uuid5(name: str) -> str:
    """`str(uuid.uuid5(TRANSACTION_NAMESPACE, name))`, three times faster (no UUID object)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return _uuid_text(digest.hex())


def _uuid_text(x: str) -> str:
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# `_iso`'s own output shape: a request time written so needs no formatting.
_CANONICAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


@lru_cache(maxsize=4096)
def _iso(when: datetime) -> str:
    """timeutil.to_iso's format (ms, `Z`), faster for the already-UTC common case."""
    if when.tzinfo is not UTC:
        return to_iso(when)
    return when.isoformat(timespec="milliseconds")[:-6] + "Z"
