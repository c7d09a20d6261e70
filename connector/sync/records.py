"""What the stages of a sync run hand each other (a page joined, a user record on its
way to Segment), and the small helpers on records they share: ids, paths, masks,
fingerprints, phase timers and the error line for a record left out.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connector.common import jsonutil
from connector.mapping import INT_MAX, INT_MIN, Applied, encodable
from connector.segment.sink import OutMessage

# Log lines keep the logger name they had before the run was split by stage.
log = logging.getLogger("connector.sync.job")


MASK = "*****"

Progress = Callable[..., None]


@dataclass
class Candidate:
    """A mapped user record on its way to Segment."""

    id: str
    doc: dict[str, Any]
    timestamp: datetime | None
    identify: Applied
    group: Applied | None
    hash: str
    messages: list[OutMessage] = field(default_factory=list)
    trimmed: list[str] = field(default_factory=list)


@dataclass
class Joined:
    """A page of users with what it needs from other searches."""

    docs: list[dict[str, Any]]
    companies: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    cursor: str | None
    total: int
    problems: list[str] = field(default_factory=list)  # text repairs while decoding
    # Whether orjson read the page's documents (so it writes them back exactly): the map
    # process is handed them as JSON, else as a pickle.
    exact: bool = True
    mapped: Any = None  # the map process's PageResult for it, once applied
    # Its companies as the company cache's texts (id -> (text, exact with orjson)), when
    # they were joined for the map process instead of read into `companies`.
    company_texts: dict[str, tuple[str, bool | None]] = field(default_factory=dict)


class Timer:
    def __init__(self, phases: dict[str, float], name: str) -> None:
        self.phases, self.name = phases, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.phases[self.name] += time.perf_counter() - self.t0


def _strip(message: dict[str, Any], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """A shallow-copied message without the given paths (for hashing)."""
    if not paths:
        return message
    out = dict(message)
    for path in paths:
        node: Any = out
        for part in path[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                node = None
                break
            node[part] = dict(node[part])  # copy each level before changing it
            node = node[part]
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def _get_path(node: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pop_path(node: dict[str, Any], path: tuple[str, ...]) -> bool:
    for part in path[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return False
    return node.pop(path[-1], None) is not None


def mask_paths(doc: Any, paths: set[str]) -> Any:
    """A copy of `doc` with the personal fields (dotted paths) replaced by *****."""
    masked = jsonutil.loads(jsonutil.dumps(doc))
    for dotted in paths:
        parts = dotted.lstrip("@").split(".")
        node = masked
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(parts[-1]) not in (None, ""):
            node[parts[-1]] = MASK
    return masked


def _id_text(value: Any) -> str | None:
    """A record id as text: text with at least one visible character and without lone
    surrogates, or a 64-bit integer. Anything else (an object, a number with a fraction,
    NaN, text of only spaces or control characters) is no id: "   " or "\x00" as a
    userId or groupId would make one Segment profile of every such record."""
    if isinstance(value, str):
        if not value or value.isspace() or not encodable(value):
            return None
        if value.isprintable() or any(c.isprintable() and not c.isspace() for c in value):
            return value
        return None
    if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
        return str(value)
    return None


def _version_key(doc: dict[str, Any], cache: dict[Any, Any]) -> Any:
    """A company's version for cache keys: its modified_time, or (when that is no plain
    value) the document itself, kept alive in the cache so its id is not reused."""
    version = doc.get("modified_time")
    if isinstance(version, str | int | float):
        return version
    cache[("keep", id(doc))] = doc
    return ("doc", id(doc))


def _fingerprint(doc: dict[str, Any]) -> bytes | None:
    """A digest of a document's whole content (None when it cannot be encoded: such a
    document never counts as the same as another)."""
    try:
        return hashlib.blake2b(jsonutil.dumps_sorted(doc), digest_size=16).digest()
    except TypeError:  # orjson's refusal (NaN is written, long integers are not)
        return None


def _failure_text(exc: BaseException) -> str:
    """An unexpected error, named for the report without the values it may quote."""
    return f"{type(exc).__name__} (a bug: the record was left out so the run could go on)"


def _log_unforeseen(what: str, exc: BaseException) -> None:
    """An error line without the exception's text (it may quote a record's values); the
    traceback, for whoever debugs it, at DEBUG level."""
    log.error("%s failed: %s; the record was left out", what, type(exc).__name__)
    log.debug("%s failed", what, exc_info=exc)


def _has_replacement(value: Any, depth: int = 0) -> bool:
    """Whether U+FFFD appears anywhere in a decoded document (bounded depth)."""
    if isinstance(value, str):
        return "\ufffd" in value
    if depth > 64:
        return False
    if isinstance(value, dict):
        return any(_has_replacement(k, depth + 1) or _has_replacement(v, depth + 1)
                   for k, v in value.items())
    if isinstance(value, list):
        return any(_has_replacement(v, depth + 1) for v in value)
    return False
