"""Schema drift: which source fields a sync run saw in Moesif records, compared with the
fields earlier runs saw.

Each run keeps an `Inventory`: (entity, dotted path, JSON type) -> records, built by a
bounded walk of every record (`metadata` keys included; at most `MAX_DEPTH` levels,
`MAX_KEYS_PER_OBJECT` keys per object, `MAX_SHAPES` object shapes and `MAX_PATHS`
distinct paths per run, so a record
with 10,000 metadata keys cannot blow it up). A `null` value counts as absent: the mapping
treats it so. Arrays are typed `array` and not walked into.

After the run `compare` reads what earlier runs saw (table `schema_fields`) and reports:

- **added**: a path never seen before (in any type);
- **type_changed**: a path seen with a type it never had;
- **vanished**: a path the mapping reads, present in at least `VANISHED_SHARE` of the
  records of some earlier run, absent from every record of a run that saw at least
  `SCHEMA_DRIFT_MIN_RECORDS` records of that entity (a run that hit the path bound does
  not judge). A vanished mapped field is **breaking**.

The first run of an entity sets its baseline and reports no drift. Values never leave
the walk: only paths, types and counts are kept, so no personal value reaches a report.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from connector.errors import ConnectorError, FailureKind
from connector.mapping import MappingSet
from connector.state.store import Transaction, ensure_schema

MAX_DEPTH = 4
MAX_KEYS_PER_OBJECT = 200
MAX_PATHS = 2000
MAX_SHAPES = 5000  # distinct object shapes per run
VANISHED_SHARE = 0.5
POLICIES = ("report", "alert", "stop")

DDL = (
    """CREATE TABLE IF NOT EXISTS schema_fields (
        entity TEXT NOT NULL, path TEXT NOT NULL, type TEXT NOT NULL,
        first_run_id TEXT, last_run_id TEXT, runs INTEGER NOT NULL DEFAULT 0,
        max_share REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (entity, path, type))""",
)

_TYPES: dict[type, str] = {str: "string", int: "number", float: "number", bool: "boolean",
                           dict: "object", list: "array"}


class SchemaDriftStopped(ConnectorError):
    """SCHEMA_DRIFT_POLICY=stop and a mapped field vanished: nothing is sent (exit 1)."""

    kind = FailureKind.REFUSED


class Inventory:
    """Per-run counts of (entity, path, type); cheap enough for the sync's hot path.

    A record is not walked field by field: each object in it is counted by its *shape*
    (its key tuple and value-type tuple, built at C speed), one dict increment per object.
    Records repeat a few shapes, so the (entity, path, type) counts are expanded from the
    shapes only when asked for (`counts`), at the end of the run or per page for `stop`.
    """

    __slots__ = ("shapes", "records", "truncated", "_counts")

    def __init__(self) -> None:
        # (entity, prefix, keys, types) -> [objects of that shape, its (key, child prefix)
        # for the objects inside it]
        self.shapes: dict[tuple[str, str, tuple[str, ...], tuple[type, ...]], list[Any]] = {}
        self.records: dict[str, int] = {}
        self.truncated: set[str] = set()
        self._counts: dict[tuple[str, str, str], int] | None = None

    def add(self, entity: str, doc: Any) -> None:
        if not isinstance(doc, dict):
            return
        self.records[entity] = self.records.get(entity, 0) + 1
        self._counts = None
        self._shape(entity, "", doc, 1)

    def _shape(self, entity: str, prefix: str, node: dict[str, Any], depth: int) -> None:
        keys = tuple(node)
        if len(keys) > MAX_KEYS_PER_OBJECT:
            self.truncated.add(entity)
            keys = keys[:MAX_KEYS_PER_OBJECT]
            types = tuple(type(node[k]) for k in keys)
        else:
            types = tuple(map(type, node.values()))
        shape = (entity, prefix, keys, types)
        entry = self.shapes.get(shape)
        if entry is None:
            if len(self.shapes) >= MAX_SHAPES:
                self.truncated.add(entity)
                return
            kids = [(k, f"{prefix}{k}.") for k, t in zip(keys, types, strict=True)
                    if t is dict] if depth < MAX_DEPTH else []
            entry = self.shapes[shape] = [0, kids]
        entry[0] += 1
        for key, child in entry[1]:
            self._shape(entity, child, node[key], depth + 1)

    @property
    def counts(self) -> dict[tuple[str, str, str], int]:
        """(entity, path, type) -> records, at most MAX_PATHS entries (`null` is absent)."""
        if self._counts is not None:
            return self._counts
        counts: dict[tuple[str, str, str], int] = {}
        for (entity, prefix, keys, types), (n, _) in self.shapes.items():
            for key, kind in zip(keys, types, strict=True):
                if kind is type(None):
                    continue
                slot = (entity, prefix + key, _TYPES.get(kind, "other"))
                if slot in counts:
                    counts[slot] += n
                elif len(counts) < MAX_PATHS:
                    counts[slot] = n
                else:
                    self.truncated.add(entity)
        self._counts = counts
        return counts

    def present(self, entity: str) -> dict[str, dict[str, int]]:
        """path -> {type: records} for one entity."""
        out: dict[str, dict[str, int]] = {}
        for (ent, path, kind), n in self.counts.items():
            if ent == entity:
                out.setdefault(path, {})[kind] = n
        return out


def mapped_paths(mappings: MappingSet) -> dict[str, set[str]]:
    """The source paths the mapping reads, per entity (`@company.x` is a company path;
    other joins such as `@metrics` are not Moesif records and are left out)."""
    out: dict[str, set[str]] = {"users": set(), "companies": set()}
    for section, rules in mappings.sections.items():
        entity = "users" if section == "identify" else "companies"
        for rule in rules:
            for spec in rule.source_specs:
                paths = [spec] if isinstance(spec, str) else (
                    (spec.get("join") or spec.get("seconds_between") or [])
                    if isinstance(spec, dict) else [])
                for path in paths:
                    if path.startswith("@company."):
                        out["companies"].add(path.removeprefix("@company."))
                    elif not path.startswith("@"):
                        out[entity].add(path)
    return out


def _earlier(conn: sqlite3.Connection) -> dict[str, dict[str, dict[str, float]]]:
    """entity -> path -> {type: the largest share of records it was seen in}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for entity, path, kind, share in conn.execute(
            "SELECT entity, path, type, max_share FROM schema_fields"):
        out.setdefault(entity, {}).setdefault(path, {})[kind] = float(share)
    return out


def vanished(inventory: Inventory, earlier: dict[str, dict[str, dict[str, float]]],
             mapped: dict[str, set[str]], min_records: int) -> list[dict[str, Any]]:
    """Mapped paths common before and absent from every record of this run."""
    out = []
    for entity, paths in mapped.items():
        records = inventory.records.get(entity, 0)
        seen_before = earlier.get(entity)
        if not seen_before or records < min_records or entity in inventory.truncated:
            continue
        present = {p for (ent, p, _) in inventory.counts if ent == entity}
        for path in sorted(paths):
            was = max(seen_before.get(path, {}).values(), default=0.0)
            if was >= VANISHED_SHARE and path not in present:
                out.append({"entity": entity, "path": path,
                            "types": sorted(seen_before[path]), "records": 0,
                            "of_records": records, "was_share": round(was, 3),
                            "mapped": True, "breaking": True})
    return out


def compare(conn: sqlite3.Connection, inventory: Inventory, mapped: dict[str, set[str]],
            *, min_records: int, policy: str) -> dict[str, Any]:
    """The report's `schema` section for this run (read before `save`)."""
    ensure_schema(conn, DDL)
    earlier = _earlier(conn)
    added, changed = [], []
    for entity in sorted(inventory.records):
        before = earlier.get(entity)
        if not before:
            continue  # this entity's first inventory: the baseline
        for path, types in sorted(inventory.present(entity).items()):
            old = before.get(path)
            if old is None:
                added.append({"entity": entity, "path": path, "types": sorted(types),
                              "records": sum(types.values()),
                              "of_records": inventory.records[entity]})
                continue
            new = {t: n for t, n in types.items() if t not in old}
            if new:
                changed.append({"entity": entity, "path": path, "types": sorted(new),
                                "was": sorted(old), "records": sum(new.values()),
                                "of_records": inventory.records[entity]})
    gone = vanished(inventory, earlier, mapped, min_records)
    return {
        "policy": policy,
        "baseline": [e for e in sorted(inventory.records) if not earlier.get(e)],
        "records": dict(sorted(inventory.records.items())),
        "paths": len(inventory.counts),
        "truncated": sorted(inventory.truncated),
        "added": added,
        "type_changed": changed,
        "vanished": gone,
        "breaking": bool(gone),
    }


def save(conn: sqlite3.Connection, inventory: Inventory, run_id: str) -> None:
    """Remember what this run saw (one transaction)."""
    ensure_schema(conn, DDL)
    rows = []
    for (entity, path, kind), n in inventory.counts.items():
        records = inventory.records.get(entity) or 1
        rows.append((entity, path, kind, run_id, run_id, n / records))
    with Transaction(conn):
        conn.executemany(
            "INSERT INTO schema_fields (entity, path, type, first_run_id, last_run_id, runs, "
            "max_share) VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT (entity, path, type) DO "
            "UPDATE SET last_run_id = excluded.last_run_id, runs = schema_fields.runs + 1, "
            # CASE, not SQLite's two-argument max(): the same SQL runs on PostgreSQL.
            "max_share = CASE WHEN excluded.max_share > schema_fields.max_share "
            "THEN excluded.max_share ELSE schema_fields.max_share END", rows)


def check_stop(conn: sqlite3.Connection, inventory: Inventory, mapped: dict[str, set[str]],
               min_records: int) -> None:
    """SCHEMA_DRIFT_POLICY=stop: raise before anything is sent if a mapped field vanished."""
    ensure_schema(conn, DDL)
    gone = vanished(inventory, _earlier(conn), mapped, min_records)
    if gone:
        names = ", ".join(f"{g['entity']}.{g['path']}" for g in gone)
        raise SchemaDriftStopped(
            f"schema drift: mapped source field(s) {names} absent from every record of this "
            "run; SCHEMA_DRIFT_POLICY=stop, so nothing was sent")


def is_drift(schema: dict[str, Any] | None) -> bool:
    return bool(schema and (schema.get("added") or schema.get("type_changed")
                            or schema.get("vanished")))


def diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """For `report diff`: the drift run `b` reported, and what run `a` had reported."""
    def keys(s: dict[str, Any] | None, part: str) -> list[str]:
        return [f"{x['entity']}.{x['path']}" for x in (s or {}).get(part) or []]

    return {part: {"a": keys(a, part), "b": keys(b, part)}
            for part in ("added", "type_changed", "vanished")}
