"""Fast JSON (orjson) behind small functions, so the choice lives in one place."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import orjson

# The logger keeps its name from before the module moved: operators filter on it.
log = logging.getLogger("connector.jsonutil")

# A number literal longer than this is not turned into a Python int (the standard
# library refuses to, past 4,300 digits): it becomes ±infinity, which the mapping
# reports as a bad value, instead of making the whole document unreadable.
MAX_INT_DIGITS = 1000


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_sorted(value: Any) -> bytes:
    """Canonical form, for content hashes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


_fallbacks = 0  # documents the standard library had to read (see fallback_count)


def fallback_count() -> int:
    """How many documents so far orjson could not read. A value read before and after
    parsing tells whether everything in between came from orjson, which then writes it
    back exactly (the standard library's NaN or huge integers it would not)."""
    return _fallbacks


def loads(data: bytes | str, on_problem: Callable[[str], None] | None = None) -> Any:
    """Parse JSON; one bad string or number in one record must not block a page forever.

    orjson refuses some documents a server can still send: invalid UTF-8, an escaped half
    surrogate pair (`"\\ud83d"` alone: a truncated emoji), `NaN`/`Infinity` literals, numbers
    beyond a double. Those are parsed by the standard library instead: broken text is
    decoded with U+FFFD replacing what cannot be read, numbers are kept as they are (the
    sync mapping reports and drops what JSON cannot carry). The real reason is logged, and
    each text repair is passed to `on_problem` so the caller can report it.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return _fallback(data, exc, on_problem)


def _fallback(data: bytes | str, exc: orjson.JSONDecodeError,
              on_problem: Callable[[str], None] | None) -> Any:
    global _fallbacks
    _fallbacks += 1
    repairs: list[str] = []
    text = data
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            text = raw.decode("utf-8", "replace")
            repairs.append(f"invalid UTF-8 at byte {bad.start} (replaced with U+FFFD)")
    numbers: list[str] = []
    try:
        value = json.loads(text, parse_int=_parse_int(numbers),
                           parse_constant=_parse_constant(numbers))
    except (ValueError, RecursionError):
        raise exc from None
    value, surrogates = _repair_surrogates(value)
    if surrogates:
        repairs.append(f"{surrogates} string(s) with a lone surrogate escape "
                       "(replaced with U+FFFD)")
    log.warning("JSON refused by orjson (%s); read with the standard library: %s", exc,
                "; ".join(repairs + numbers) or "no repair needed")
    if on_problem is not None:
        for repair in repairs:
            on_problem(repair)
    return value


def _parse_int(notes: list[str]) -> Callable[[str], Any]:
    def parse(literal: str) -> Any:
        if len(literal) <= MAX_INT_DIGITS:
            return int(literal)
        notes.append(f"a {len(literal)}-digit integer (read as infinity)")
        return -math.inf if literal.startswith("-") else math.inf
    return parse


def _parse_constant(notes: list[str]) -> Callable[[str], float]:
    def parse(literal: str) -> float:
        notes.append(f"{literal} literal")
        return float(literal)
    return parse


def fix_text(text: str) -> str:
    """The text with each lone surrogate replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def text_ok(text: str) -> bool:
    """True unless the text holds a lone surrogate (which no UTF-8 encoder writes)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _repair_surrogates(value: Any) -> tuple[Any, int]:
    """Replace lone surrogates in every string and key; (value, strings repaired).

    Iterative (an explicit stack), so a document nested as deep as the parser allows
    cannot exhaust Python's recursion limit here.
    """
    if isinstance(value, str):
        return (fix_text(value), 1) if not text_ok(value) else (value, 0)
    fixed = 0
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if not text_ok(k)]:
                node[fix_text(key)] = node.pop(key)
                fixed += 1
            items: Any = list(node.items())
        elif isinstance(node, list):
            items = enumerate(node)
        else:  # a number, a boolean or null at the top
            continue
        for slot, item in items:
            if isinstance(item, str):
                if not text_ok(item):
                    node[slot] = fix_text(item)
                    fixed += 1
            elif isinstance(item, list | dict):
                stack.append(item)
    return value, fixed
