"""Declarative mappings (`mappings/*.toml`): load, validate, apply, count coverage.

A mapping file holds sections (`[[identify]]`, `[[group]]`, `[[company_object]]`), each
an ordered list of field rules:

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

A `from` entry is a dotted path into the record (`metadata.email`), a path into a joined
document (`@company.metadata.name`, `@metrics`), or a computed source:
`{join = ["first_name", "last_name"], sep = " "}` or
`{seconds_between = ["first_seen_time", "created"]}`.

Missing values are omitted, never invented and never sent as null.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.settings import ConfigError
from connector.timeutil import iso_utc, parse_timestamp

MISSING: Any = object()
TYPES = ("string", "int", "float", "bool", "datetime", "object", "any")
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
        parts = [str(v).strip() for g in getters
                 if (v := g(record, joins)) is not MISSING and isinstance(v, str | int)]
        parts = [p for p in parts if p]
        return sep.join(parts) if parts else MISSING

    return get


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
def convert(value: Any, type_name: str) -> tuple[Any, bool]:
    """Return (converted value, whether it changed form); raise ConversionProblem."""
    if type_name == "any":
        return value, False
    if type_name == "string":
        if isinstance(value, str):
            return value, False
        if isinstance(value, bool | int | float):
            return str(value).lower() if isinstance(value, bool) else str(value), True
        raise ConversionProblem("BAD_VALUE", f"expected text, got {type(value).__name__}")
    if type_name == "datetime":
        try:
            text = iso_utc(value)
        except (ValueError, OverflowError, OSError):
            raise ConversionProblem("BAD_TIMESTAMP", f"not a timestamp: {str(value)[:60]!r}")\
                from None
        return text, text != value
    if type_name == "int":
        if isinstance(value, bool):
            raise ConversionProblem("BAD_VALUE", "expected an integer, got a boolean")
        if isinstance(value, int):
            return value, False
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConversionProblem("BAD_VALUE", f"not an integer: {str(value)[:60]!r}")\
                from None
        if number != int(number):
            raise ConversionProblem("BAD_VALUE", f"not an integer: {value!r}")
        return int(number), True
    if type_name == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value, False
        try:
            return float(value), True
        except (TypeError, ValueError):
            raise ConversionProblem("BAD_VALUE", f"not a number: {str(value)[:60]!r}")\
                from None
    if type_name == "bool":
        if isinstance(value, bool):
            return value, False
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", True
        raise ConversionProblem("BAD_VALUE", f"not a boolean: {str(value)[:60]!r}")
    if type_name == "object":
        if isinstance(value, dict):
            return value, False
        raise ConversionProblem("BAD_VALUE", f"expected an object, got {type(value).__name__}")
    raise AssertionError(type_name)


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


class Coverage:
    """Per target field: present / missing / converted / trimmed counts.

    Counted as small integer event ids (one per field and slot, see
    `MappingSet.event_id`) in a Counter: `update()` with a record's whole list runs in C
    and hashes ints, which matters at thousands of records per second.
    """

    SLOTS = ("present", "missing", "converted", "trimmed")

    def __init__(self, event_names: list[tuple[str, int]] | None = None) -> None:
        self.event_names = event_names if event_names is not None else []
        self.counts: Counter[int] = Counter()

    def add(self, event: int) -> None:
        self.counts[event] += 1

    def add_all(self, events: list[int]) -> None:
        self.counts.update(events)

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
        prefix = prefix or section
        out = Applied({}, [], [], [])
        self._apply_into(section, record, joins, prefix, out, out.message, cache)
        return out

    def _apply_sub(self, rule: FieldRule, raw: dict[str, Any], joins: dict[str, Any],
                   key: str, out: Applied, cache: dict[Any, Any] | None) -> dict[str, Any]:
        if cache is None:
            sub: dict[str, Any] = {}
            self._apply_into(rule.submapping, raw, joins, key, out, sub, None)
            return sub
        identity = _identity(raw)
        cache_key = (rule.submapping, key, identity)
        hit = cache.get(cache_key)
        if hit is None:
            part = Applied({}, [], [], [])
            self._apply_into(rule.submapping, raw, joins, key, part, part.message, None)
            # An id()-keyed entry keeps its object alive, so the id cannot be reused.
            keep = raw if isinstance(identity, int) else None
            hit = cache[cache_key] = (part.message, part.fields, keep)
            out.issues.extend(part.issues)
        out.fields.extend(hit[1])
        return hit[0]

    def _apply_into(self, section: str, record: dict[str, Any], joins: dict[str, Any],
                    prefix: str, out: Applied, message: dict[str, Any],
                    cache: dict[Any, Any] | None = None) -> None:
        for rule in self.sections[section]:
            key, present_id, missing_id, converted_id = self._rule_events(rule, prefix)
            value, converted = MISSING, False
            for getter in rule.sources:
                raw = getter(record, joins)
                if raw is MISSING:
                    continue
                if rule.submapping:
                    if not isinstance(raw, dict):
                        out.issues.append(("BAD_VALUE", f"{rule.target}: expected an object"))
                        continue
                    sub = self._apply_sub(rule, raw, joins, key, out, cache)
                    value = sub if sub else MISSING
                    break
                try:
                    value, converted = convert(raw, rule.type)
                    break
                except ConversionProblem as problem:
                    out.issues.append((problem.code, f"{rule.target}: {problem.detail}"))
            if value is MISSING and rule.default is not MISSING:
                value, converted = rule.default, True
            if value is MISSING:
                out.fields.append(missing_id)
                if rule.required:
                    out.missing_required.append(rule.target)
                continue
            _set_path(message, rule.path, value)
            out.fields.append(present_id)
            if converted:
                out.fields.append(converted_id)

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
                    elif isinstance(spec, dict):
                        for p in spec.get("join") or spec.get("seconds_between") or []:
                            paths.add(p)
        return paths


def _identity(doc: dict[str, Any]) -> Any:
    """A record's identity and version, or the object itself when it has none."""
    rid = doc.get("company_id") or doc.get("user_id")
    version = doc.get("modified_time")
    if rid is not None and version is not None:
        return (rid, version)
    return id(doc)


def _set_path(message: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = message
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


# --- loading --------------------------------------------------------------------------------
def _fail(file: Path, where: str, reason: str) -> ConfigError:
    return ConfigError(f"mapping file {file}: {where}: {reason}")


def _compile_source(file: Path, where: str, spec: Any) -> Getter:
    if isinstance(spec, str):
        if not spec or spec.startswith(".") or spec.endswith(".") or ".." in spec:
            raise _fail(file, where, f"bad source path {spec!r}")
        return _path_getter(spec)
    if isinstance(spec, dict):
        if "join" in spec and set(spec) <= {"join", "sep"}:
            paths = spec["join"]
            if not isinstance(paths, list) or not paths or not all(
                    isinstance(p, str) and p for p in paths):
                raise _fail(file, where, "join needs a list of source paths")
            return _join_getter(paths, str(spec.get("sep", " ")))
        if set(spec) == {"seconds_between"}:
            pair = spec["seconds_between"]
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(p, str) and p for p in pair)):
                raise _fail(file, where, "seconds_between needs [later, earlier] paths")
            return _seconds_between_getter(pair[0], pair[1])
    raise _fail(file, where, f"unknown source {spec!r} (use a path, join or seconds_between)")


def _compile_rule(file: Path, section: str, index: int, entry: Any) -> FieldRule:
    where = f"[[{section}]] entry {index + 1}"
    if not isinstance(entry, dict):
        raise _fail(file, where, "must be a table")
    target = entry.get("target")
    if not isinstance(target, str) or not target or ".." in target:
        raise _fail(file, where, "needs a non-empty string `target`")
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
    if type_name not in TYPES:
        raise _fail(file, where, f"unknown type {type_name!r}; use one of {', '.join(TYPES)}")
    submapping = entry.get("mapping")
    if submapping is not None and (type_name != "object" or submapping not in SECTIONS):
        raise _fail(file, where, "`mapping` needs type = \"object\" and a known section")
    for flag in ("personal", "trimmable", "volatile", "required"):
        if not isinstance(entry.get(flag, False), bool):
            raise _fail(file, where, f"`{flag}` must be true or false")
    return FieldRule(
        target=target,
        path=tuple(target.split(".")),
        sources=[_compile_source(file, where, s) for s in sources],
        source_specs=list(sources),
        type=type_name,
        personal=entry.get("personal", False),
        trimmable=entry.get("trimmable", False),
        volatile=entry.get("volatile", False),
        required=entry.get("required", False),
        default=entry.get("default", MISSING),
        submapping=submapping,
    )


def load_mapping_file(file: Path) -> dict[str, list[FieldRule]]:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"mapping file {file}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"mapping file {file}: not valid TOML: {exc}") from None
    sections: dict[str, list[FieldRule]] = {}
    for key, value in data.items():
        if key == "mapping":
            continue
        if key not in SECTIONS:
            raise _fail(file, f"[{key}]", f"unknown section; expected one of {SECTIONS}")
        if not isinstance(value, list):
            raise _fail(file, f"[{key}]", "must be an array of tables ([[...]])")
        sections[key] = [_compile_rule(file, key, i, e) for i, e in enumerate(value)]
    return sections


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
    sections: dict[str, list[FieldRule]] = {}
    paths: list[Path] = []
    digest = hashlib.sha256()
    for name in files:
        path = directory / name
        loaded = load_mapping_file(path)
        digest.update(path.read_bytes())
        for section, rules in loaded.items():
            if section in sections:
                raise _fail(path, f"[[{section}]]", "section defined in more than one file")
            sections[section] = rules
        paths.append(path)
    for section in ("identify", "group", "company_object"):
        if section not in sections:
            raise ConfigError(f"mappings in {directory}: section [[{section}]] is missing")
    for section, rules in sections.items():
        for rule in rules:
            if rule.submapping and rule.submapping not in sections:
                raise ConfigError(f"mappings in {directory}: [[{section}]] target "
                                  f"{rule.target!r} uses unknown mapping {rule.submapping!r}")
    return MappingSet(sections, digest.hexdigest()[:12], paths)
