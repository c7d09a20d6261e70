"""Fast JSON (orjson) behind small functions, so the choice lives in one place."""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_sorted(value: Any) -> bytes:
    """Canonical form, for content hashes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | str) -> Any:
    """Parse JSON. A document that escapes half a surrogate pair (`"\\ud83d"` alone: a
    truncated emoji, valid JSON but not valid Unicode) is parsed by the standard library
    instead, with the broken halves replaced by U+FFFD, so one bad string in one record
    cannot block a page forever."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            value = json.loads(data)
        except ValueError:
            raise exc from None
        log.warning("JSON with a lone surrogate escape; replaced with U+FFFD")
        return _replace_surrogates(value)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value
