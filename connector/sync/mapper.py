"""Map and shape one user record: the pure part of the users pass.

Nothing here reports, stores or sends. What a record produces (its candidate messages,
the issues met on the way, the company version a member carries) is handed back, and the
run (connector.sync.users and .shaping) applies it: reports the issues in order, records
the version, diffs, sends. The same code runs in the run's own process or in the map
process (connector.sync.mapworker), so both paths give the same messages, hashes and
issues by construction.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from connector.common import jsonutil
from connector.common.timeutil import parse_own_iso
from connector.errors import IssueCode
from connector.mapping import Applied, MappingSet
from connector.segment.sink import MAX_MESSAGE_BYTES, OutMessage, SegmentSink, json_size
from connector.sync.records import (
    Candidate,
    _get_path,
    _id_text,
    _pop_path,
    _strip,
    _version_key,
)

Issue = tuple[str | None, str, str]  # (record id, code, detail), in the order met


@dataclass(slots=True)
class Mapped:
    """One user record mapped: its candidate (None: left out, see the issues) and, for a
    member of a company, the company id and version key it carries."""

    candidate: Candidate | None
    issues: list[Issue]
    company_id: str | None = None
    version: Any = None


class RecordMapper:
    """Maps a user record to its identify (and group) message, hashes it, and shapes and
    encodes the messages, trimming free-form fields to fit Segment's 32 KB."""

    def __init__(self, mappings: MappingSet, sink: SegmentSink, send_group_calls: bool) -> None:
        self.mappings = mappings
        self.sink = sink
        self.send_group_calls = send_group_calls
        self.identify_volatile = mappings.volatile_paths("identify")
        self.identify_trimmable = mappings.trimmable_paths("identify")
        self.group_trimmable = mappings.trimmable_paths("group")

    # --- map and hash -----------------------------------------------------------------------
    def map_user(self, doc: dict[str, Any], companies: dict[str, dict[str, Any]],
                 metrics: dict[str, Any], cache: dict[Any, Any]) -> Mapped:
        raw_company = doc.get("company_id")
        company_id = _id_text(raw_company)
        company = companies.get(company_id) if company_id else None
        user_id = doc.get("user_id")
        record_id = _id_text(user_id)
        issues: list[Issue] = []
        joins = {"@company": company,
                 "@metrics": metrics.get(record_id) if record_id else None}
        identify = self.mappings.apply("identify", doc, joins, cache=cache)
        report_id = record_id or _id_text(doc.get("_id"))
        issues.extend((report_id, code, detail) for code, detail in identify.issues)
        if identify.missing_required or record_id is None:
            missing = identify.missing_required or ["userId"]
            detail = f"required field(s) missing: {', '.join(missing)}"
            if user_id not in (None, "") and record_id is None:
                detail = "user_id is not an id (visible text or integer)"
            issues.append((report_id, "MISSING_ID", detail))
            return Mapped(None, issues)
        if raw_company not in (None, "") and company_id is None:
            issues.append((record_id, IssueCode.BAD_VALUE.value,
                           "company_id: not an id (visible text or integer); sent without "
                           "a company"))
        group = None
        version = _version_key(company, cache) if company is not None else None
        if company is not None and self.send_group_calls:
            group_key = ("group", company_id, version)
            shared = cache.get(group_key)
            if shared is None:
                shared = cache[group_key] = self.mappings.apply("group", company, {})
                shared.message.pop("timestamp", None)  # the user's change time, for both
            if not shared.missing_required:
                group = Applied({**shared.message, "userId": record_id}, [], [], shared.fields)
        if company_id and company is None:
            issues.append((record_id, "COMPANY_NOT_FOUND",
                           f"company {company_id} is not in Moesif's companies search"))
        timestamp = stamp = None
        if identify.message.get("timestamp"):
            # The mapping's datetime conversion already wrote it as `to_iso` does (the
            # body's timestamp must be a datetime field), so the text is the hashed form.
            stamp = identify.message.pop("timestamp")
            timestamp = parse_own_iso(stamp)
        hashed = [_strip(identify.message, self.identify_volatile),
                  group.message if group else None, stamp]
        digest = hashlib.blake2b(jsonutil.dumps_sorted(hashed), digest_size=16).hexdigest()
        candidate = Candidate(record_id, doc, timestamp, identify, group, digest)
        if company is None:
            return Mapped(candidate, issues)
        return Mapped(candidate, issues, company_id, version)

    # --- shape and encode -------------------------------------------------------------------
    def message_id(self, kind: str, c: Candidate) -> str:
        return f"ms-{kind[:3]}-" + hashlib.blake2b(
            f"users|{c.id}|{kind}|{c.hash}|{self.mappings.version}".encode(),
            digest_size=20).hexdigest()

    def shape(self, c: Candidate, issues: list[Issue]) -> bool:
        """Shape every message of a record into `c.messages`, trimming to fit 32 KB;
        False if it cannot (the reason is in `issues`)."""
        parts = [("identify", c.identify.message, self.identify_trimmable, "identify")]
        if c.group is not None:
            parts.append(("group", c.group.message, self.group_trimmable, "group"))
        for kind, body, trimmable, prefix in parts:
            shaped = self._shape_one(kind, body, c, trimmable, prefix, issues)
            if shaped is None:
                return False
            c.messages.append(shaped)
        if c.trimmed:
            issues.append((c.id, "OVERSIZE_TRIMMED",
                           f"dropped {', '.join(c.trimmed)} to fit Segment's 32 KB limit"))
        return True

    def _shape_one(self, kind: str, body: dict[str, Any], c: Candidate,
                   trimmable: list[tuple[str, tuple[str, ...]]], prefix: str,
                   issues: list[Issue]) -> OutMessage | None:
        message_id = self.message_id(kind, c)
        copied = False
        while True:
            try:
                msg = self.sink.shape(kind, body, c.timestamp, message_id)
            except RuntimeError:  # the library's own 32 KB check
                msg = None
            if msg is not None:
                out = OutMessage.of(msg, ("users", c.id))
                if out.library_size <= MAX_MESSAGE_BYTES:
                    return out
            # Too big: drop the largest free-form subtree still present, then retry. Parts
            # of the body may be shared with other users (a company), so trim a copy.
            if not copied:
                body, copied = copy.deepcopy(body), True
            present = [(json_size(v), target, path) for target, path in trimmable
                       if (v := _get_path(body, path)) is not None]
            if not present:
                issues.append((c.id, "OVERSIZE",
                               f"{kind} is over 32 KB even without "
                               f"{', '.join(t for t, _ in trimmable) or 'free-form fields'}"
                               f"{_largest_field(body)}"))
                return None
            _, target, path = max(present)
            _pop_path(body, path)
            c.trimmed.append(f"{prefix}.{target}")


def _largest_field(body: dict[str, Any]) -> str:
    """"; largest field: <path> (<n> bytes)": what makes an oversized message big, by its
    path and size only (never its value), so a person can tell a huge name from a huge
    id without reading the record."""
    best: tuple[int, str] | None = None
    for key, value in body.items():
        nested = isinstance(value, dict) and key in ("traits", "context")
        for sub, item in (value.items() if nested else [(None, value)]):
            size = json_size(item)
            if best is None or size > best[0]:
                best = (size, key if sub is None else f"{key}.{sub}")
    return f"; largest field: {best[1]} ({best[0]:,} bytes)" if best else ""
