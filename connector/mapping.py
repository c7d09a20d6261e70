"""The one mapping language of the connector: load, validate, compile, apply, count coverage.

Every mapping file (`mappings/users.toml` and `mappings/companies.toml` for the sync,
`mappings/apim_events.toml` for the forwarder) is read by `load_mapping_document`, one
loader and one validator; each path compiles the parsed rules once, at load, into plain
Python (the sync here, the forwarder in connector/forward/moesif_event.py).

A file holds optional file-level tables and rule sections. The sections a reader knows
(`[[identify]]`, `[[group]]`, `[[company_object]]` for the sync, `[[event]]` for the
forwarder) are ordered lists of field rules:

    [mapping]                              # the file's name and version (free-form)
    name = "users"
    version = "1"

    [[identify]]
    target = "traits.email"               # where the value goes in the message
    from = ["email", "metadata.email"]    # fallback chain, first present value wins
    type = "string"                       # string|int|float|bool|datetime|object|any
    personal = true                       # masked in report samples
    trimmable = true                      # may be dropped to fit Segment's 32 KB limit
    volatile = true                       # left out of the change hash
    required = true                       # a record without it is invalid (MISSING_ID)
    default = "x"                         # used when no source has a value
    mapping = "company_object"            # type object: apply that section to the value
    description = "free text"

A `from` entry is one of:

    "metadata.email"                                  a dotted path into the record
    "@company.metadata.name", "@metrics"              a path into a joined document
    {join = ["first_name", "last_name"], sep = " "}   the present texts, joined
    {seconds_between = ["first_seen_time", "created"]}  whole seconds, later - earlier
    {template = "{apiContext}{apiResourceTemplate}"}  text from literal pieces and
                                                      {paths}; every path must have a
                                                      text or integer value, and a "/"
                                                      is not doubled where pieces meet
    {value = "Incoming"}                              a constant

A reader declares which keys its file-level tables may hold; the forwarder's are

    [options]
    unknown_values = ["", "N/A"]          # values that count as missing
    strip_suffix = "@carbon.super"        # cut from these fields before masking
    strip_suffix_fields = ["userName"]

    [metadata]
    exclude = ["requestHeaders"]          # event fields kept out of the Moesif metadata
    kind_key = "eventKind"                # the metadata key of the event kind

    [[event]]
    target = "request.uri"                # a Moesif field (moesif_event.py lists them)
    from = ["gatewayUrl", {template = "{apiContext}{apiResourceTemplate}"}]
    default = "/"

and a reader may refuse rule keys that mean nothing to it (the Moesif field fixes an
event rule's type; masking there is [apim.analytics.mask], not `personal`).

Missing values are omitted, never invented and never sent as null. Every load error is
a ConfigError naming the file, the entry (with its line) and the reason.

Each sync section is compiled once, when the MappingSet is built, into one generated
Python function per coverage prefix (see `_SectionCompiler`): the rule list is not
interpreted per record. tests/test_mapping_engine_equivalence.py checks both paths'
engines against the interpreters they replaced (tests/legacy_mapping.py,
tests/legacy_moesif_event.py), record by record.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.common.jsonutil import fix_text, text_ok
from connector.common.timeutil import iso_utc, parse_timestamp
from connector.settings import ConfigError

MISSING: Any = object()
TYPES = ("string", "int", "float", "bool", "datetime", "object", "any")
FREE_FORM = ("object", "any")
# Integers JSON encoders and Segment's destinations agree on: signed 64-bit.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
# Free-form values keep at most this many levels (orjson writes 254 in all; the message
# adds a few around them). A deeper subtree is dropped and reported.
MAX_DEPTH = 64
JOINS = ("@company", "@metrics")
RULE_KEYS = {"target", "from", "type", "personal", "trimmable", "volatile", "required",
             "default", "mapping", "description"}
SECTIONS = ("identify", "group", "company_object")


class ConversionProblem(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# --- sources ------------------------------------------------------------------------------
Getter = Callable[[dict[str, Any], dict[str, Any]], Any]


def _is_present(value: Any) -> bool:
    return value is not None and value != "" and value != {} and value != []


def _path_getter(spec: str) -> Getter:
    root = None
    parts = spec.split(".")
    if parts[0].startswith("@"):
        root = parts[0]
        parts = parts[1:]

    def get(record: dict[str, Any], joins: dict[str, Any]) -> Any:
        value: Any = joins.get(root) if root else record
        for part in parts:
            if not isinstance(value, dict):
                return MISSING
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        return value if _is_present(value) else MISSING

    return get


def _join_getter(paths: list[str], sep: str) -> Getter:
    getters = [_path_getter(p) for p in paths]

    def get(record: dict[str, Any], joins: dict[str, Any]) -> Any:
        parts = [text for g in getters if (text := _join_part(g(record, joins)))]
        return sep.join(parts) if parts else MISSING

    return get


def _join_part(value: Any) -> str:
    """A value's text for a `join` source ('' to leave it out): text and integers only."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
        return str(value)
    return ""


def _template_getter(pieces: tuple[str | tuple[str], ...]) -> Getter:
    """Text built from literal pieces and (1-tuple) source paths: every path must have a
    text or integer value; a "/" is not doubled where two pieces meet."""
    parts: list[str | Getter] = [p if isinstance(p, str) else _path_getter(p[0])
                                 for p in pieces]

    def get(record: dict[str, Any], joins: dict[str, Any]) -> Any:
        text = ""
        for part in parts:
            value = part if isinstance(part, str) else _template_part(part(record, joins))
            if not value:
                return MISSING
            if value.startswith("/") and text.endswith("/"):
                value = value[1:]
            text += value
        return text

    return get


def _template_part(value: Any) -> str:
    """A value's text inside a template ('' when it has none): text as it is, integers."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
        return str(value)
    return ""


def _value_getter(value: Any) -> Getter:
    def get(record: dict[str, Any], joins: dict[str, Any]) -> Any:
        return value

    return get


def template_pieces(text: str) -> tuple[str | tuple[str], ...]:
    """Split `"/{apiContext}{a.b}"` into literal text and 1-tuples of source paths.
    Raises ValueError naming the problem (the loader adds file and entry)."""
    pieces: list[str | tuple[str]] = []
    rest = text
    while rest:
        opening, closing = rest.find("{"), rest.find("}")
        if opening < 0 and closing < 0:
            pieces.append(rest)
            break
        if opening < 0 or closing < opening or "{" in rest[opening + 1 : closing]:
            raise ValueError("has an unbalanced '{' or '}'")
        if opening:
            pieces.append(rest[:opening])
        pieces.append((rest[opening + 1 : closing].strip(),))
        rest = rest[closing + 1 :]
    if not any(isinstance(p, tuple) for p in pieces):
        raise ValueError("has no {placeholder}; use {value = ...} for a constant")
    return tuple(pieces)


def source_paths(spec: Any) -> list[str]:
    """The source paths one `from` entry reads (none for a constant)."""
    if isinstance(spec, str):
        return [spec]
    if not isinstance(spec, dict):
        return []
    if "template" in spec:
        return [p[0] for p in template_pieces(spec["template"]) if isinstance(p, tuple)]
    return list(spec.get("join") or spec.get("seconds_between") or [])


def _seconds_between_getter(later: str, earlier: str) -> Getter:
    get_later, get_earlier = _path_getter(later), _path_getter(earlier)

    def get(record: dict[str, Any], joins: dict[str, Any]) -> Any:
        a, b = get_later(record, joins), get_earlier(record, joins)
        if a is MISSING or b is MISSING:
            return MISSING
        try:
            seconds = int((parse_timestamp(a) - parse_timestamp(b)).total_seconds())
        except ValueError:
            return MISSING
        return seconds if seconds >= 0 else MISSING

    return get


# --- conversions --------------------------------------------------------------------------
def _show(value: Any) -> str:
    """A short, always printable description of a value (never raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, dict | list):
        return f"a{'n object' if isinstance(value, dict) else ' list'} of {len(value)}"
    try:
        return repr(value)[:60]
    except Exception:  # noqa: BLE001 - a description must never fail
        return type(value).__name__


def _to_string(value: Any) -> tuple[Any, bool]:
    if type(value) is str and value.isascii():  # the common case first
        return value, False
    if isinstance(value, str):
        if text_ok(value):
            return value, False
        raise ConversionProblem("BAD_VALUE", "text with a lone surrogate")
    if isinstance(value, bool):
        return str(value).lower(), True
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return str(value), True
        raise ConversionProblem("BAD_VALUE", f"not a 64-bit integer: {_show(value)}")
    if isinstance(value, float):
        if math.isfinite(value):
            return str(value), True
        raise ConversionProblem("BAD_VALUE", f"not a finite number: {value!r}")
    raise ConversionProblem("BAD_VALUE", f"expected text, got {type(value).__name__}")


def _to_int(value: Any) -> tuple[Any, bool]:
    if isinstance(value, bool):
        raise ConversionProblem("BAD_VALUE", "expected an integer, got a boolean")
    changed = True
    if isinstance(value, int):
        number, changed = value, False
    elif isinstance(value, float):
        number = _integral(value, value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)  # exact, also for digit strings past a double's precision
        except ValueError:
            try:
                number = _integral(float(text), value)
            except ValueError:
                raise ConversionProblem("BAD_VALUE", f"not an integer: {_show(value)}") \
                    from None
    else:
        raise ConversionProblem("BAD_VALUE", f"expected an integer, got {type(value).__name__}")
    if not INT_MIN <= number <= INT_MAX:
        raise ConversionProblem("BAD_VALUE", f"outside the 64-bit integer range: {_show(value)}")
    return number, changed


def _integral(number: float, original: Any) -> int:
    if not math.isfinite(number):
        raise ConversionProblem("BAD_VALUE", f"not a finite number: {_show(original)}")
    if not number.is_integer():
        raise ConversionProblem("BAD_VALUE", f"not an integer: {_show(original)}")
    return int(number)


def _to_float(value: Any) -> tuple[Any, bool]:
    if isinstance(value, bool):
        raise ConversionProblem("BAD_VALUE", "expected a number, got a boolean")
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return value, False
        number: Any = value
    elif isinstance(value, float):
        if math.isfinite(value):
            return value, False
        raise ConversionProblem("BAD_VALUE", f"not a finite number: {value!r}")
    elif isinstance(value, str):
        number = value.strip()
    else:
        raise ConversionProblem("BAD_VALUE", f"expected a number, got {type(value).__name__}")
    try:
        result = float(number)
    except (ValueError, OverflowError):
        raise ConversionProblem("BAD_VALUE", f"not a number: {_show(value)}") from None
    if not math.isfinite(result):
        raise ConversionProblem("BAD_VALUE", f"not a finite number: {_show(value)}")
    return result, True


def _to_any(value: Any) -> tuple[Any, bool]:
    return value, False


def _to_datetime(value: Any) -> tuple[Any, bool]:
    try:
        text = iso_utc(value)
    except ValueError:
        raise ConversionProblem("BAD_TIMESTAMP", f"not a timestamp: {_show(value)}") from None
    return text, text != value


def _to_bool(value: Any) -> tuple[Any, bool]:
    if isinstance(value, bool):
        return value, False
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true", True
    raise ConversionProblem("BAD_VALUE", f"not a boolean: {_show(value)}")


def _to_object(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict):
        return value, False
    raise ConversionProblem("BAD_VALUE", f"expected an object, got {type(value).__name__}")


Converter = Callable[[Any], tuple[Any, bool]]
CONVERTERS: dict[str, Converter] = {
    "string": _to_string, "int": _to_int, "float": _to_float, "bool": _to_bool,
    "datetime": _to_datetime, "object": _to_object, "any": _to_any,
}


def convert(value: Any, type_name: str) -> tuple[Any, bool]:
    """Return (converted value, whether it changed form); raise ConversionProblem.

    Every value that comes back is one JSON encoders write as is: finite numbers,
    64-bit integers, text without lone surrogates. Free-form values (`object`, `any`)
    are type-checked here and cleaned by `sanitise`.
    """
    return CONVERTERS[type_name](value)


# --- free-form values ----------------------------------------------------------------------
def encodable(value: Any, depth: int = 0) -> bool:
    """Whether JSON encoders write `value` as is: cheap type checks, no encoding.

    This runs for every free-form value of every record, so leaves are checked inline
    (a call per leaf would double the cost) on exact types; anything unusual (even a
    subclass) answers False and takes the slow, exact `sanitise`.
    """
    kind = type(value)
    if kind is dict:
        for key in value:
            if type(key) is not str or not (key.isascii() or text_ok(key)):
                return False
        items: Any = value.values()
    elif kind is list:
        items = value
    else:
        return _leaf_ok(value)
    if depth >= MAX_DEPTH:
        return False
    for item in items:
        kind = type(item)
        if kind is str:
            if not item.isascii() and not text_ok(item):
                return False
        elif kind is dict or kind is list:
            if not encodable(item, depth + 1):
                return False
        elif kind is int:
            if not INT_MIN <= item <= INT_MAX:
                return False
        elif kind is float:
            if item - item != 0.0:  # NaN and both infinities
                return False
        elif item is not None and kind is not bool:
            return False
    return True


def _leaf_ok(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return value.isascii() or text_ok(value)
    if kind is int:
        return INT_MIN <= value <= INT_MAX
    if kind is float:
        return value - value == 0.0
    return value is None or kind is bool


def sanitise(value: Any, path: str) -> tuple[Any, list[tuple[str, str]]]:
    """A copy of `value` without what JSON cannot carry, and (path, reason) per removal.

    Non-finite numbers, integers past 64 bits, non-text keys and subtrees deeper than
    MAX_DEPTH are dropped; text with lone surrogates is repaired (U+FFFD) and reported.
    Returns MISSING when nothing is left of `value` itself.
    """
    problems: list[tuple[str, str]] = []
    return _sanitise(value, path, 0, problems), problems


def _sanitise(value: Any, path: str, depth: int, problems: list[tuple[str, str]]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if text_ok(value):
            return str(value)
        problems.append((path, "text with a lone surrogate (replaced with U+FFFD)"))
        return fix_text(value)
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return int(value)
        problems.append((path, f"not a 64-bit integer: {_show(value)} (left out)"))
        return MISSING
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        problems.append((path, f"not a finite number: {value!r} (left out)"))
        return MISSING
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        problems.append((path, f"nested deeper than {MAX_DEPTH} levels (left out)"))
        return MISSING
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((path, f"a key that is not text: {_show(key)} (left out)"))
                continue
            name = key if text_ok(key) else fix_text(key)
            cleaned = _sanitise(item, _child(path, name), depth + 1, problems)
            if cleaned is not MISSING:
                out[name] = cleaned
        return out
    if isinstance(value, list | tuple):
        items = []
        for i, item in enumerate(value):
            cleaned = _sanitise(item, f"{path}[{i}]", depth + 1, problems)
            if cleaned is not MISSING:
                items.append(cleaned)
        return items
    problems.append((path, f"{type(value).__name__} is not a JSON value (left out)"))
    return MISSING


def _child(path: str, key: str) -> str:
    shown = key if len(key) <= 40 else key[:40] + "..."
    return f"{path}.{shown}" if path else shown


# --- rules ----------------------------------------------------------------------------------
@dataclass(slots=True)
class FieldRule:
    target: str
    path: tuple[str, ...]
    sources: list[Getter]
    source_specs: list[Any]
    type: str
    personal: bool = False
    trimmable: bool = False
    volatile: bool = False
    required: bool = False
    default: Any = MISSING
    submapping: str | None = None
    # per coverage prefix: (coverage key, event ids for present, missing, converted)
    events: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    converter: Converter = field(init=False)
    free: bool = field(init=False)  # a free-form type: values are checked for JSON

    def __post_init__(self) -> None:
        self.converter = CONVERTERS[self.type]
        self.free = self.type in FREE_FORM


class Coverage:
    """Per target field: present / missing / converted / trimmed counts.

    Counted as small integer event ids (one per field and slot, see
    `MappingSet.event_id`). A record's whole list is counted as one key: records repeat a
    few lists, so that is one dict increment per record instead of one per field (the
    per-field counts are expanded only when read, at the end of the run).
    """

    SLOTS = ("present", "missing", "converted", "trimmed")

    def __init__(self, event_names: list[tuple[str, int]] | None = None) -> None:
        self.event_names = event_names if event_names is not None else []
        self._lists: dict[tuple[int, ...], int] = {}

    def add(self, event: int) -> None:
        self.add_all((event,))

    def add_all(self, events: Sequence[int]) -> None:
        key = events if type(events) is tuple else tuple(events)
        lists = self._lists
        lists[key] = lists.get(key, 0) + 1

    @property
    def counts(self) -> Counter[int]:
        """Event id -> records."""
        counts: Counter[int] = Counter()
        for events, n in self._lists.items():
            for event in events:
                counts[event] += n
        return counts

    def as_dict(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for event, n in self.counts.items():
            key, slot = self.event_names[event]
            row = table.setdefault(key, dict.fromkeys(self.SLOTS, 0))
            row[self.SLOTS[slot]] += n
        return dict(sorted(table.items()))


PRESENT, MISSING_SLOT, CONVERTED, TRIMMED = 0, 1, 2, 3


@dataclass(slots=True)
class Applied:
    message: dict[str, Any]
    issues: list[tuple[str, str]]
    missing_required: list[str]
    fields: list[int]  # coverage event ids (MappingSet.event_id), counted on accept


class MappingSet:
    """All mapping sections, loaded from one directory and validated up front."""

    def __init__(self, sections: dict[str, list[FieldRule]], version: str,
                 files: list[Path]) -> None:
        self.sections = sections
        self.version = version
        self.files = files
        self.event_names: list[tuple[str, int]] = []
        self._event_ids: dict[tuple[str, int], int] = {}
        self._functions: dict[tuple[str, str], Callable[..., None]] = {}
        for section in sections:  # compiled once, at load (sub-mappings too)
            self._compile_tree(section, section)

    def event_id(self, key: str, slot: int) -> int:
        """A small int for (coverage key, slot), assigned on first use."""
        found = self._event_ids.get((key, slot))
        if found is None:
            found = self._event_ids[(key, slot)] = len(self.event_names)
            self.event_names.append((key, slot))
        return found

    def field_events(self, applied: Applied) -> list[tuple[str, int]]:
        """An Applied's coverage events as (key, slot) pairs, for people and tests."""
        return [self.event_names[e] for e in applied.fields]

    def _rule_events(self, rule: FieldRule, prefix: str) -> tuple[str, int, int, int]:
        events = rule.events.get(prefix)
        if events is None:
            key = f"{prefix}.{rule.target}"
            events = rule.events[prefix] = (key, self.event_id(key, PRESENT),
                                            self.event_id(key, MISSING_SLOT),
                                            self.event_id(key, CONVERTED))
        return events

    def rules(self, section: str) -> list[FieldRule]:
        return self.sections.get(section, [])

    def apply(self, section: str, record: dict[str, Any], joins: dict[str, Any],
              prefix: str | None = None, cache: dict[Any, Any] | None = None) -> Applied:
        """Map `record` through `section`.

        `cache` (optional, owned by the caller, e.g. one per page) remembers sub-mapping
        results per source object, so a company shared by many users is mapped once; its
        problems are then reported once, not once per user.
        """
        out = Applied({}, [], [], [])
        self._compiled(section, prefix or section)(record, joins, out, out.message, cache)
        return out

    def _compile_tree(self, section: str, prefix: str) -> None:
        self._compiled(section, prefix)
        for rule in self.sections.get(section, []):  # no cycles: checked before
            if rule.submapping:
                self._compile_tree(rule.submapping, f"{prefix}.{rule.target}")

    def _compiled(self, section: str, prefix: str) -> Callable[..., None]:
        """The section's compiled function for this coverage prefix (built on first use)."""
        fn = self._functions.get((section, prefix))
        if fn is None:
            fn = self._functions[(section, prefix)] = _compile_section(self, section, prefix)
        return fn

    def _apply_sub(self, rule: FieldRule, raw: dict[str, Any], joins: dict[str, Any],
                   key: str, out: Applied, cache: dict[Any, Any] | None) -> dict[str, Any]:
        sub = self._compiled(rule.submapping, key)  # type: ignore[arg-type]
        if cache is None:
            part = Applied({}, [], out.missing_required, out.fields)
            sub(raw, joins, part, part.message, None)
            out.issues.extend((code, f"{rule.target}.{detail}") for code, detail in part.issues)
            return part.message
        identity = _identity(raw)
        cache_key = (rule.submapping, key, identity)
        hit = cache.get(cache_key)
        if hit is None:
            part = Applied({}, [], [], [])
            sub(raw, joins, part, part.message, None)
            # An id()-keyed entry keeps its object alive, so the id cannot be reused.
            keep = raw if isinstance(identity, int) else None
            hit = cache[cache_key] = (part.message, part.fields, keep)
            out.issues.extend((code, f"{rule.target}.{detail}") for code, detail in part.issues)
        out.fields.extend(hit[1])
        return hit[0]

    def _apply_into(self, section: str, record: dict[str, Any], joins: dict[str, Any],
                    prefix: str, out: Applied, message: dict[str, Any],
                    cache: dict[Any, Any] | None = None) -> None:
        self._compiled(section, prefix)(record, joins, out, message, cache)

    def trimmable_paths(self, section: str) -> list[tuple[str, tuple[str, ...]]]:
        """(coverage key suffix, message path) of every field that may be dropped to fit."""
        found: list[tuple[str, tuple[str, ...]]] = []
        for rule in self.sections.get(section, []):
            if rule.trimmable:
                found.append((rule.target, rule.path))
            if rule.submapping:
                for sub_target, sub_path in self.trimmable_paths(rule.submapping):
                    found.append((f"{rule.target}.{sub_target}", rule.path + sub_path))
        return found

    def volatile_paths(self, section: str) -> list[tuple[str, ...]]:
        return [r.path for r in self.sections.get(section, []) if r.volatile]

    def personal_sources(self) -> set[str]:
        """Source paths (without joins) holding personal data, for masking report samples."""
        paths: set[str] = set()
        for rules in self.sections.values():
            for rule in rules:
                if not rule.personal:
                    continue
                for spec in rule.source_specs:
                    if isinstance(spec, str):
                        paths.add(spec.split("@company.")[-1])
                    else:
                        paths.update(source_paths(spec))
        return paths


def _clean_free(target: str, value: Any, out: Applied) -> Any:
    """A free-form value without what JSON cannot carry (each removal reported), or
    MISSING when nothing usable is left."""
    cleaned, problems = sanitise(value, target)
    out.issues.extend(("BAD_VALUE", f"{path}: {why}") for path, why in problems)
    return MISSING if cleaned is MISSING or not _is_present(cleaned) else cleaned


def _identity(doc: dict[str, Any]) -> Any:
    """A record's identity and version, or the object itself when it has none."""
    rid = doc.get("company_id") or doc.get("user_id")
    version = doc.get("modified_time")
    if isinstance(rid, str | int) and isinstance(version, str | int | float):
        return (rid, version)
    return id(doc)


def _set_path(message: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = message
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


# --- the compiler -----------------------------------------------------------------------------
# Each section is compiled, per coverage prefix, into one Python function by generating its
# source and `compile()`-ing it: every rule becomes straight-line code with its paths
# resolved to chained dict look-ups (shared parents looked up once per record), its
# converter bound by name, the common text case inlined, and its coverage ids, target
# names and message nesting fixed at compile time. The behaviour is the rule-list
# interpreter's, exactly (tests/test_mapping_engine_equivalence.py holds the old one).

# `_is_present`, with the plain JSON types decided by one type look-up: empty text,
# objects and lists are absent, numbers and booleans present; anything else asks
# `_is_present` itself.
_ABSENT_TEST = ("raw is None or (type(raw) in EMPTYABLE and not raw) or "
                "(type(raw) not in PLAIN and not _is_present(raw))")


# Per type: when a value is returned unchanged by its converter (checked inline).
_FAST_PATHS = {
    "string": "type(raw) is str and raw.isascii()",
    "object": "type(raw) is dict",
    "int": "type(raw) is int and INT_MIN <= raw <= INT_MAX",
    "float": "(type(raw) is int and INT_MIN <= raw <= INT_MAX) or "
             "(type(raw) is float and raw - raw == 0.0)",
    "bool": "type(raw) is bool",
}


class _SectionCompiler:
    def __init__(self, mappings: MappingSet, section: str, prefix: str) -> None:
        self.mappings = mappings
        self.section = section
        self.prefix = prefix
        self.ns: dict[str, Any] = {
            "MISSING": MISSING, "ConversionProblem": ConversionProblem,
            "encodable": encodable, "_clean_free": _clean_free, "isinstance": isinstance,
            "dict": dict, "str": str, "type": type, "_is_present": _is_present,
            "EMPTYABLE": frozenset({str, dict, list}), "INT_MIN": INT_MIN, "INT_MAX": INT_MAX,
            "PLAIN": frozenset({str, dict, list, int, float, bool}),
        }
        self.nodes: dict[tuple[str, ...], str] = {}  # path of a parent -> local variable
        self.head: list[str] = []
        self.body: list[str] = []
        self.containers: dict[tuple[str, ...], str] = {}  # message sub-object -> local

    def const(self, value: Any, hint: str) -> str:
        name = f"{hint}{len(self.ns)}"
        self.ns[name] = value
        return name

    def node(self, path: tuple[str, ...]) -> str:
        """A local holding the dict at `path` (root first: 'rec' or '@join'), else None."""
        found = self.nodes.get(path)
        if found is not None:
            return found
        name = f"n{len(self.nodes)}"
        if len(path) == 1:
            base = "rec" if path[0] == "rec" else f"joins.get({path[0]!r})"
            self.head.append(f"{name} = {base}")
        else:
            parent = self.node(path[:-1])
            self.head.append(f"{name} = {parent}.get({path[-1]!r}) if {parent} is not None "
                             "else None")
        self.head.append(f"if not isinstance({name}, dict): {name} = None")
        self.nodes[path] = name
        return name

    def source(self, spec: Any, getter: Getter, out: list[str], ind: str) -> None:
        """Code that sets `raw` to the source's value or MISSING."""
        if not isinstance(spec, str):
            out.append(f"{ind}raw = {self.const(getter, 'g')}(rec, joins)")
            return
        parts = spec.split(".")
        root = parts[0] if parts[0].startswith("@") else "rec"
        if root != "rec":
            parts = parts[1:]
        # An absent key reads as None: both are "no value".
        if not parts:  # a whole joined document
            out.append(f"{ind}raw = joins.get({root!r})")
        else:
            parent = self.node((root, *parts[:-1]))
            out.append(f"{ind}raw = {parent}.get({parts[-1]!r}) if {parent} is not None "
                       "else None")
        out.append(f"{ind}if {_ABSENT_TEST}: raw = MISSING")

    def convert(self, rule: FieldRule, index: int, out: list[str], ind: str) -> None:
        """Code run when `raw` is present: sets `val`/`ch` or leaves val MISSING."""
        target = self.const(rule.target, "t")
        if rule.submapping:
            out.append(f"{ind}if not isinstance(raw, dict):")
            out.append(f"{ind}    issues.append(('BAD_VALUE', {target} + ': expected an "
                       "object'))")
            out.append(f"{ind}else:")
            out.append(f"{ind}    sub = sub_{index}(raw, joins, out, cache)")
            out.append(f"{ind}    val = sub if sub else MISSING")
            out.append(f"{ind}    done = True")
            return
        conv = self.const(rule.converter, "c")
        inner = ind
        if rule.type == "any":
            out.append(f"{ind}val, ch = raw, False")
        else:
            fast = _FAST_PATHS.get(rule.type)
            if fast:  # the common case without a call
                out.append(f"{ind}if {fast}:")
                out.append(f"{ind}    val, ch = raw, False")
                out.append(f"{ind}else:")
                inner = ind + "    "
            out.append(f"{inner}try:")
            out.append(f"{inner}    val, ch = {conv}(raw)")
            out.append(f"{inner}except ConversionProblem as problem:")
            out.append(f"{inner}    issues.append((problem.code, {target} + ': ' + "
                       "problem.detail))")
        if rule.free:
            out.append(f"{ind}if val is not MISSING and not encodable(val):")
            out.append(f"{ind}    val, ch = _clean_free({target}, val, out), True")

    def rule(self, rule: FieldRule, index: int) -> None:
        _, present, missing, converted = self.mappings._rule_events(rule, self.prefix)
        b = self.body
        b.append(f"# {rule.target}")
        b.append("val = MISSING; ch = False; done = False")
        if rule.submapping:
            self.ns[f"sub_{index}"] = _sub_applier(self.mappings, rule,
                                                   f"{self.prefix}.{rule.target}")
        for number, (spec, getter) in enumerate(zip(rule.source_specs, rule.sources,
                                                    strict=True)):
            ind = "" if number == 0 else "    "
            if number:
                b.append("if val is MISSING and not done:")
            self.source(spec, getter, b, ind)
            b.append(f"{ind}if raw is not MISSING:")
            self.convert(rule, index, b, ind + "    ")
        if rule.default is not MISSING:
            b.append(f"if val is MISSING: val, ch = {self.const(rule.default, 'd')}, True")
        b.append("if val is MISSING:")
        b.append(f"    fields.append({missing})")
        if rule.required:
            b.append(f"    out.missing_required.append({rule.target!r})")
        b.append("else:")
        b.append(f"    {self.container(rule.path[:-1])}[{rule.path[-1]!r}] = val")
        b.append(f"    fields.append({present})")
        b.append(f"    if ch: fields.append({converted})")

    def container(self, path: tuple[str, ...]) -> str:
        """A local for the message's sub-object at `path`, made sure of (created where the
        interpreter's `setdefault` created it, so keys keep their order) by lines added to
        the current rule's `else:` block."""
        if not path:
            return "message"
        parent = self.container(path[:-1])
        name = self.containers.get(path)
        if name is None:
            name = self.containers[path] = f"m{len(self.containers)}"
            self.head.append(f"{name} = None")
        self.body.append(f"    if {name} is None: {name} = {parent}.setdefault("
                         f"{path[-1]!r}, {{}})")
        return name

    def build(self) -> Callable[..., None]:
        for index, rule in enumerate(self.mappings.sections[self.section]):
            self.rule(rule, index)
        lines = ["def apply(rec, joins, out, message, cache):",
                 "    issues = out.issues; fields = out.fields"]
        lines += [f"    {line}" for line in self.head + self.body]
        source = "\n".join(lines) + "\n"
        code = compile(source, f"<mapping [[{self.section}]] as {self.prefix}>", "exec")
        exec(code, self.ns)  # noqa: S102 - our own generated code, from checked rules
        fn = self.ns["apply"]
        fn.source = source
        return fn


def _sub_applier(mappings: MappingSet, rule: FieldRule, key: str) -> Callable[..., Any]:
    def apply_sub(raw: dict[str, Any], joins: dict[str, Any], out: Applied,
                  cache: dict[Any, Any] | None) -> dict[str, Any]:
        return mappings._apply_sub(rule, raw, joins, key, out, cache)
    return apply_sub


def _compile_section(mappings: MappingSet, section: str, prefix: str) -> Callable[..., None]:
    return _SectionCompiler(mappings, section, prefix).build()


# --- loading --------------------------------------------------------------------------------
# The top-level fields of a message body the Segment sink reads, and what each must be.
# Anything else at the top level would be silently dropped, so it is refused at load.
BODY_FIELDS: dict[str, dict[str, str]] = {
    "identify": {"userId": "id", "timestamp": "datetime", "traits": "object",
                 "context": "object"},
    "group": {"groupId": "id", "timestamp": "datetime", "traits": "object", "context": "object"},
}
REQUIRED_IDS = {"identify": "userId", "group": "groupId"}
RESERVED_TARGETS = {("context", "library"): "is set by the Segment library"}


def _fail(file: Path, where: str, reason: str) -> ConfigError:
    return ConfigError(f"mapping file {file}: {where}: {reason}")


def _check_path(file: Path, where: str, spec: Any, what: str = "source path") -> str:
    if not isinstance(spec, str) or not spec or any(not p for p in spec.split(".")):
        raise _fail(file, where, f"bad {what} {spec!r}")
    if spec.startswith("@") and spec.split(".")[0] not in JOINS:
        raise _fail(file, where, f"unknown joined document in {spec!r}; use one of "
                                 f"{', '.join(JOINS)}")
    return spec


def _compile_source(file: Path, where: str, spec: Any) -> Getter:
    if isinstance(spec, str):
        return _path_getter(_check_path(file, where, spec))
    if isinstance(spec, dict):
        if "join" in spec and set(spec) <= {"join", "sep"}:
            paths = spec["join"]
            if not isinstance(paths, list) or not paths or not all(
                    isinstance(p, str) and p for p in paths):
                raise _fail(file, where, "join needs a list of source paths")
            if not isinstance(spec.get("sep", " "), str):
                raise _fail(file, where, "join's `sep` must be a string")
            return _join_getter([_check_path(file, where, p) for p in paths],
                                spec.get("sep", " "))
        if set(spec) == {"seconds_between"}:
            pair = spec["seconds_between"]
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(p, str) and p for p in pair)):
                raise _fail(file, where, "seconds_between needs [later, earlier] paths")
            later, earlier = (_check_path(file, where, p) for p in pair)
            return _seconds_between_getter(later, earlier)
        if set(spec) == {"template"}:
            if not isinstance(spec["template"], str):
                raise _fail(file, where, "template must be a string such as "
                                         "\"{apiContext}{apiResourceTemplate}\"")
            try:
                pieces = template_pieces(spec["template"])
            except ValueError as exc:
                raise _fail(file, where, f"template {spec['template']!r} {exc}") from None
            for piece in pieces:
                if isinstance(piece, tuple):
                    _check_path(file, where, piece[0], "template placeholder")
            return _template_getter(pieces)
        if set(spec) == {"value"}:
            value = spec["value"]
            if not encodable(value) or not _is_present(value):
                raise _fail(file, where, f"value {_show(value)} is not a JSON value that "
                                         "can be sent")
            return _value_getter(value)
    raise _fail(file, where, f"unknown source {_show(spec)} (use a path, join, "
                             "seconds_between, template or value)")


def _check_target(file: Path, where: str, section: str, path: tuple[str, ...],
                  type_name: str) -> None:
    """A target must land where the message has room for it, with a value that fits."""
    reason = RESERVED_TARGETS.get(path[:2]) if section in BODY_FIELDS else None
    if reason:
        raise _fail(file, where, f"{'.'.join(path[:2])} {reason}")
    fields = BODY_FIELDS.get(section)
    if fields is None:
        return
    kind = fields.get(path[0])
    if kind is None:
        raise _fail(file, where, f"{path[0]!r} is not a field of a Segment {section} message "
                                 f"(use {', '.join(fields)}; custom fields go under traits.)")
    if kind == "object" and len(path) == 1:
        raise _fail(file, where, f"{path[0]!r} is the message's own object and cannot be "
                                 f"replaced; map fields into {path[0]}.<name>")
    if kind != "object" and len(path) > 1:
        raise _fail(file, where, f"{path[0]!r} is a single value, not an object: "
                                 f"{'.'.join(path)} is not a place in the message")
    if kind == "id" and type_name != "string":
        raise _fail(file, where, f"{path[0]!r} is an id: it needs type = \"string\"")
    if kind == "datetime" and type_name != "datetime":
        raise _fail(file, where, f"{path[0]!r} needs type = \"datetime\"")


def _compile_default(file: Path, where: str, type_name: str, default: Any) -> Any:
    """The default converted to its type at load, so a run never meets a bad one."""
    try:
        value, _ = convert(default, type_name)
    except ConversionProblem as problem:
        raise _fail(file, where, f"`default` does not fit type {type_name!r}: "
                                 f"{problem.detail}") from None
    if not encodable(value) or not _is_present(value):
        raise _fail(file, where, f"`default` {_show(default)} is not a JSON value "
                                 "that can be sent (no dates, NaN, infinities or empty values)")
    return value


def entry_line(lines: list[str], section: str, index: int) -> int | None:
    """The line (1-based) of the `index`-th `[[section]]` header, when the text is known."""
    seen = 0
    for number, line in enumerate(lines, start=1):
        if line.split("#")[0].strip().replace(" ", "") == f"[[{section}]]":
            if seen == index:
                return number
            seen += 1
    return None


def _compile_rule(file: Path, section: str, index: int, entry: Any,
                  sections: tuple[str, ...] = SECTIONS, lines: list[str] | None = None
                  ) -> FieldRule:
    line = entry_line(lines, section, index) if lines else None
    where = f"[[{section}]] entry {index + 1}" + (f" (line {line})" if line else "")
    if not isinstance(entry, dict):
        raise _fail(file, where, "must be a table")
    target = entry.get("target")
    if not isinstance(target, str) or not target or any(not p for p in target.split(".")):
        raise _fail(file, where, "needs a non-empty string `target` (dotted names, no empty "
                                 "part)")
    where = f"{where} (target {target!r})"
    unknown = set(entry) - RULE_KEYS
    if unknown:
        raise _fail(file, where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(RULE_KEYS)}")
    sources = entry.get("from")
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not sources:
        raise _fail(file, where, "needs `from`: a source path or a list of them")
    type_name = entry.get("type", "any")
    if not isinstance(type_name, str) or type_name not in TYPES:
        raise _fail(file, where, f"unknown type {_show(type_name)}; use one of {', '.join(TYPES)}")
    submapping = entry.get("mapping")
    if submapping is not None and (type_name != "object" or submapping not in sections):
        raise _fail(file, where, "`mapping` needs type = \"object\" and a known section")
    for flag in ("personal", "trimmable", "volatile", "required"):
        if not isinstance(entry.get(flag, False), bool):
            raise _fail(file, where, f"`{flag}` must be true or false")
    if not isinstance(entry.get("description", ""), str):
        raise _fail(file, where, "`description` must be a string")
    getters = [_compile_source(file, where, s) for s in sources]
    path = tuple(target.split("."))
    _check_target(file, where, section, path, type_name)
    default = MISSING
    if "default" in entry:
        default = _compile_default(file, where, type_name, entry["default"])
    return FieldRule(
        target=target,
        path=path,
        sources=getters,
        source_specs=list(sources),
        type=type_name,
        personal=entry.get("personal", False),
        trimmable=entry.get("trimmable", False),
        volatile=entry.get("volatile", False),
        required=entry.get("required", False),
        default=default,
        submapping=submapping,
    )


def _check_overlaps(file: Path, section: str, rules: list[FieldRule]) -> None:
    """No target may be another's prefix: a value would be written through or over it."""
    seen: dict[tuple[str, ...], int] = {}
    for index, rule in enumerate(rules):
        if rule.path in seen:
            raise _fail(file, f"[[{section}]] entry {index + 1} (target {rule.target!r})",
                        f"the same target as entry {seen[rule.path] + 1}")
        seen[rule.path] = index
    for index, rule in enumerate(rules):
        for cut in range(1, len(rule.path)):
            other = seen.get(rule.path[:cut])
            if other is not None:
                raise _fail(file, f"[[{section}]] entry {index + 1} (target {rule.target!r})",
                            f"entry {other + 1} (target {'.'.join(rule.path[:cut])!r}) "
                            "already puts a value there; a target cannot be inside another")


@dataclass(frozen=True, slots=True)
class MappingDocument:
    """One parsed, validated mapping file: its rule sections and its file-level tables
    (`[mapping]` name/version, `[options]`, `[metadata]`), whose keys the reader allows."""

    file: Path
    sections: dict[str, list[FieldRule]]
    header: dict[str, Any]
    options: dict[str, Any]
    metadata: dict[str, Any]
    lines: list[str] = field(default_factory=list)  # the text, for line numbers in errors


FILE_TABLES = ("mapping", "options", "metadata")


def compile_mapping_document(file: Path, data: Any, sections: tuple[str, ...] = SECTIONS,
                             options: tuple[str, ...] = (),
                             metadata: tuple[str, ...] = (),
                             lines: list[str] | None = None) -> MappingDocument:
    """Check one parsed mapping file whole: rule sections (`[[name]]`, one of `sections`)
    and file-level tables, each with only the keys its reader knows. With the file's
    `lines`, an entry's errors give its line."""
    if not isinstance(data, dict):
        raise ConfigError(f"mapping file {file}: must be a TOML document")
    compiled: dict[str, list[FieldRule]] = {}
    tables: dict[str, dict[str, Any]] = {name: {} for name in FILE_TABLES}
    allowed = {"options": options, "metadata": metadata}
    for key, value in data.items():
        if key in FILE_TABLES:
            if not isinstance(value, dict):
                raise _fail(file, f"[{key}]", "must be a table")
            for entry in value:
                if key in allowed and entry not in allowed[key]:
                    raise _fail(file, f"[{key}] {entry!r}", "unknown entry; expected one of "
                                f"{', '.join(allowed[key]) or 'nothing'}")
            tables[key] = value
            continue
        if key not in sections:
            raise _fail(file, f"[{key}]", f"unknown section; expected one of {sections}")
        if not isinstance(value, list):
            raise _fail(file, f"[{key}]", "must be an array of tables ([[...]])")
        compiled[key] = [_compile_rule(file, key, i, e, sections, lines)
                         for i, e in enumerate(value)]
        _check_overlaps(file, key, compiled[key])
    return MappingDocument(file, compiled, tables["mapping"], tables["options"],
                           tables["metadata"], lines or [])


def compile_mapping_data(file: Path, data: Any) -> dict[str, list[FieldRule]]:
    """The sections of one parsed sync mapping file, each checked whole."""
    return compile_mapping_document(file, data).sections


def read_mapping_toml(file: Path) -> tuple[Any, list[str]]:
    """A mapping file's TOML and its lines; every problem is a ConfigError naming the
    file."""
    try:
        text = Path(file).read_text(encoding="utf-8")
        return tomllib.loads(text), text.splitlines()
    except OSError as exc:
        raise ConfigError(f"mapping file {file}: cannot read it "
                          f"({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"mapping file {file}: not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"mapping file {file}: not valid TOML: {exc}") from None


def load_mapping_document(file: Path, sections: tuple[str, ...] = SECTIONS,
                          options: tuple[str, ...] = (),
                          metadata: tuple[str, ...] = ()) -> MappingDocument:
    """The one loader of mapping files, for the sync's and the forwarder's alike."""
    data, lines = read_mapping_toml(file)
    return compile_mapping_document(file, data, sections, options, metadata, lines)


def load_mapping_file(file: Path) -> dict[str, list[FieldRule]]:
    return load_mapping_document(file).sections


def default_mappings_dir() -> Path:
    """The mappings shipped with the package (wheel), else the repository's top level."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "mappings", package_dir.parent / "mappings"):
        if (candidate / "users.toml").is_file():
            return candidate
    raise ConfigError(f"no mappings directory found next to {package_dir}; set MAPPINGS_DIR")


def load_mappings(directory: Path | None = None,
                  files: tuple[str, ...] = ("users.toml", "companies.toml")) -> MappingSet:
    directory = Path(directory) if directory else default_mappings_dir()
    loaded: list[tuple[Path, dict[str, list[FieldRule]]]] = []
    digest = hashlib.sha256()
    for name in files:
        path = directory / name
        loaded.append((path, load_mapping_file(path)))
        digest.update(path.read_bytes())
    return build_mapping_set(loaded, directory, digest.hexdigest()[:12])


def build_mapping_set(loaded: list[tuple[Path, dict[str, list[FieldRule]]]], directory: Path,
                      version: str) -> MappingSet:
    """Join the files' sections and check what spans them: every section present once,
    every `mapping` known and none that ends up applying itself."""
    sections: dict[str, list[FieldRule]] = {}
    for path, file_sections in loaded:
        for section, rules in file_sections.items():
            if section in sections:
                raise _fail(path, f"[[{section}]]", "section defined in more than one file")
            sections[section] = rules
    for section in ("identify", "group", "company_object"):
        if section not in sections:
            raise ConfigError(f"mappings in {directory}: section [[{section}]] is missing")
    for section, rules in sections.items():
        for rule in rules:
            if rule.submapping and rule.submapping not in sections:
                raise ConfigError(f"mappings in {directory}: [[{section}]] target "
                                  f"{rule.target!r} uses unknown mapping {rule.submapping!r}")
    for section in sections:
        _check_no_cycle(directory, sections, section, ())
    for section, id_target in REQUIRED_IDS.items():
        if not any(r.target == id_target and r.required for r in sections[section]):
            raise ConfigError(f"mappings in {directory}: [[{section}]] needs a `{id_target}` "
                              "entry with required = true (Segment refuses a "
                              f"{section} call without it)")
    return MappingSet(sections, version, [path for path, _ in loaded])


def _check_no_cycle(directory: Path, sections: dict[str, list[FieldRule]], section: str,
                    chain: tuple[str, ...]) -> None:
    if section in chain:
        raise ConfigError(f"mappings in {directory}: [[{chain[0]}]] applies itself through "
                          f"`mapping` ({' -> '.join((*chain, section))})")
    for rule in sections.get(section, []):
        if rule.submapping:
            _check_no_cycle(directory, sections, rule.submapping, (*chain, section))
