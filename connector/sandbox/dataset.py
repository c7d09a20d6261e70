"""Deterministic, lazily generated Moesif users and companies for the sandbox.

A million users must not mean a million dicts: user `i`'s document is a pure function of
`(seed, i)`, built on demand. Only mutations (touched, updated or added records) are
stored, in a small side index that is merged in at query time.

Ordering is Elasticsearch's `(modified_time, id)`. The base `modified_time` of record `i`
is `base_time + i * 250 ms + jitter(i)` with `0 <= jitter < 250 ms`, so it grows strictly
with `i`: finding where a range or a `search_after` key starts is arithmetic, not a scan.
Every fourth record (`i % 4 == 0`) has no jitter and sits on a whole second, so its
`modified_time` can use the seconds-only `...Z` shape without breaking the order.

Special users (when `special_records=True`; see the constants below):

- `NO_USER_ID_INDEXES` (3, 17): no `user_id` at all; their `_id` is an opaque `AY...` id.
- `BAD_CREATED_INDEX` (5): `created` is `"not-a-date"`.
- `BIG_METADATA_INDEX` (11): `metadata` is about 60 KB (one big `history` list: trimmable).
- `HUGE_NAME_INDEX` (13): `name` is 12,000 CJK characters, 72 KB as ASCII-escaped JSON
  (6 bytes a character), so it cannot be trimmed below Segment's 32 KB message limit.
"""

from __future__ import annotations

import bisect
import copy
import functools
import heapq
import math
import threading
import zlib
from _random import Random as _Twister  # why: see _make_user
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any

from connector.common.timeutil import parse_timestamp

DEFAULT_BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
STEP_MS = 250  # base modified_time step between consecutive records
USER_PREFIX = "usr_"
COMPANY_PREFIX = "cmp_"

NO_USER_ID_INDEXES: tuple[int, ...] = (3, 17)
BAD_CREATED_INDEX = 5
BIG_METADATA_INDEX = 11
HUGE_NAME_INDEX = 13
HUGE_NAME_CHARS = 12_000
BIG_METADATA_BYTES = 60_000

SortValues = list[Any]  # [epoch_millis, id]
Hit = tuple[dict[str, Any], SortValues]

_MASK64 = (1 << 64) - 1
_EPOCH_DATE = date(1970, 1, 1)


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread hash of an int."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


# --- timestamp shapes (all three seen in Moesif's own examples) ---------------------------

@functools.lru_cache(maxsize=32_768)
def _hour_text(hour: int) -> str:
    """`YYYY-MM-DDTHH:` of an hour since the epoch. Cached: a dataset's timestamps fall in a
    few thousand hours, and a datetime per timestamp was ~15% of generation time."""
    day, hour = divmod(hour, 24)
    return f"{(_EPOCH_DATE + timedelta(days=day)).isoformat()}T{hour:02d}:"


_MINUTE_SECOND = tuple(f"{m:02d}:{s:02d}" for m in range(60) for s in range(60))


def _seconds_text(ms: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of epoch `ms`, floored to the second (as a datetime would be)."""
    hour, sec = divmod(ms // 1000, 3600)
    return _hour_text(hour) + _MINUTE_SECOND[sec]


def fmt_7digits(ms: int, sub: int = 0) -> str:
    """`2023-07-27T21:52:58.0990000Z`: milliseconds plus 4 sub-millisecond digits."""
    return f"{_seconds_text(ms)}.{ms % 1000:03d}{sub:04d}Z"


def fmt_no_zone(ms: int) -> str:
    """`2023-07-27T21:55:19.464`: no zone, which means UTC."""
    return f"{_seconds_text(ms)}.{ms % 1000:03d}"


def fmt_seconds(ms: int) -> str:
    """`2023-07-27T21:55:19Z`: whole seconds (the milliseconds are dropped)."""
    return _seconds_text(ms) + "Z"


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch, truncated the way Elasticsearch stores dates."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _fmt_any(rnd: Callable[[], float], ms: int) -> str:
    shape = int(rnd() * 3)
    if shape == 0:
        return fmt_7digits(ms, int(rnd() * 10_000))
    return fmt_no_zone(ms) if shape == 1 else fmt_seconds(ms)


def _sort_ms(modified_time: Any, when: datetime | None) -> int:
    """Where a writer-supplied modified_time sorts. One that is no date at all (a poison
    value in tests) is kept as written and sorts at `when` (default now)."""
    try:
        return epoch_ms(parse_timestamp(modified_time))
    except ValueError:
        return epoch_ms(when or datetime.now(UTC))


def _has_non_finite(value: Any, depth: int = 0) -> bool:
    """Whether a value holds NaN or an infinity (orjson would write null for them)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth > 500:
        return False
    if isinstance(value, dict):
        return any(_has_non_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v, depth + 1) for v in value)
    return False


def _fmt_when(when: datetime) -> tuple[int, str]:
    """A mutation's timestamp: Moesif writes the 7-digit shape."""
    ms = epoch_ms(when)
    sub = (when.microsecond % 1000) * 10
    return ms, fmt_7digits(ms, sub)


# --- word lists -----------------------------------------------------------------------------

# (given name, family name, ascii slug for the email, family-name-first without a space)
_NAMES: tuple[tuple[str, str, str, bool], ...] = (
    ("Alice", "Smith", "alice.smith", False),
    ("Bob", "Johnson", "bob.johnson", False),
    ("José", "García", "jose.garcia", False),
    ("Zoë", "Müller", "zoe.mueller", False),
    ("François", "Dubois", "francois.dubois", False),
    ("Søren", "Ødegaard", "soren.odegaard", False),
    ("Łukasz", "Kowalski", "lukasz.kowalski", False),
    ("Priya", "Natarajan", "priya.natarajan", False),
    ("Chloé", "Lefèvre", "chloe.lefevre", False),
    ("Björn", "Andersson", "bjorn.andersson", False),
    ("Seán", "O'Brien", "sean.obrien", False),
    ("Thị Mai", "Nguyễn", "mai.nguyen", False),
    ("Иван", "Петров", "ivan.petrov", False),
    ("Ελένη", "Παπαδοπούλου", "eleni.papadopoulou", False),
    ("Adaeze", "Okafor", "adaeze.okafor", False),
    ("Mónica", "Fernández", "monica.fernandez", False),
    ("伟", "王", "wei.wang", True),
    ("芳", "李", "fang.li", True),
    ("さくら", "佐藤", "sakura.sato", True),
    ("민준", "김", "minjun.kim", True),
    ("Ahmed", "Hassan", "ahmed.hassan", False),
    ("Grace", "Hopper", "grace.hopper", False),
)
_EMOJI = ("🚀", "🦄", "🌟", "🔥", "👩‍💻")
_EMAIL_DOMAINS = ("gmail.com", "example.com", "outlook.com", "proton.me", "yahoo.co.jp")

# (raw user agent, name, os, os_name, os_major, device, major, minor)
_AGENTS: tuple[tuple[str, ...], ...] = (
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.6099.109 Safari/537.36", "Chrome", "Windows 10", "Windows", "10", "Other",
     "120", "0"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
     "like Gecko) Version/17.2 Mobile/15E148 Safari/604.1", "Mobile Safari", "iOS 17.2", "iOS",
     "17", "iPhone", "17", "2"),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox",
     "Linux", "Linux", "", "Other", "121", "0"),
    ("python-requests/2.31.0", "Python Requests", "Other", "Other", "", "Other", "2", "31"),
    ("curl/8.4.0", "curl", "Other", "Other", "", "Other", "8", "4"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/119.0.0.0 Safari/537.36 Edg/119.0.2151.97", "Edge", "Mac OS X 10.15.7",
     "Mac OS X", "10", "Mac", "119", "0"),
    ("okhttp/4.12.0", "okhttp", "Android", "Android", "", "Generic Smartphone", "4", "12"),
)

# (city, region, country, code, lat, lon, timezone, postal code)
_PLACES: tuple[tuple[Any, ...], ...] = (
    ("San Francisco", "California", "United States", "US", 37.7749, -122.4194,
     "America/Los_Angeles", "94103"),
    ("New York", "New York", "United States", "US", 40.7128, -74.006, "America/New_York",
     "10001"),
    ("Berlin", "Land Berlin", "Germany", "DE", 52.52, 13.405, "Europe/Berlin", "10115"),
    ("Tokyo", "Tokyo", "Japan", "JP", 35.6762, 139.6503, "Asia/Tokyo", "100-0001"),
    ("São Paulo", "São Paulo", "Brazil", "BR", -23.5505, -46.6333, "America/Sao_Paulo",
     "01000-000"),
    ("Bengaluru", "Karnataka", "India", "IN", 12.9716, 77.5946, "Asia/Kolkata", "560001"),
    ("London", "England", "United Kingdom", "GB", 51.5074, -0.1278, "Europe/London", "EC1A"),
    ("Zürich", "Zurich", "Switzerland", "CH", 47.3769, 8.5417, "Europe/Zurich", "8001"),
    ("Lagos", "Lagos", "Nigeria", "NG", 6.5244, 3.3792, "Africa/Lagos", "100001"),
    ("Sydney", "New South Wales", "Australia", "AU", -33.8688, 151.2093, "Australia/Sydney",
     "2000"),
)

_CAMPAIGNS = (
    ("google", "cpc", "spring_launch", "api analytics", "ad_a", "https://www.google.com/",
     "www.google.com"),
    ("newsletter", "email", "weekly_digest", None, "header_link", None, None),
    ("twitter", "social", "devrel_2024", None, "thread", "https://t.co/abc", "t.co"),
    ("partner", "referral", "wso2_marketplace", None, None,
     "https://apim.example.org/store", "apim.example.org"),
    ("bing", "cpc", "brand", "moesif", None, "https://www.bing.com/", "www.bing.com"),
)
_PLANS = ("free", "starter", "growth", "enterprise")
_INDUSTRIES = ("fintech", "healthcare", "e-commerce", "logistics", "media", "saas", "gaming")
_COMPANY_WORDS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne",
                  "tyrell", "soylent", "cyberdyne", "wonka", "vandelay")
_COMPANY_NAMES = ("Acme Corp", "Globex GmbH", "Initech", "Umbrella 株式会社", "Hooli",
                  "Stark Industries", "Wayne Enterprises", "Tyrell S.A.", "Soylent Ltd",
                  "Cyberdyne Systems", "Wonka Süßwaren", "Vandelay Industries")
_TLDS = ("com", "io", "de", "co.jp", "com.br")
_TITLES = ("Software Engineer", "CTO", "Product Manager", "Developer Advocate", "Data Analyst")
_ENDPOINTS = ("/v1/orders", "/v1/payments", "/v1/users/{id}", "/v2/search", "/graphql")
_TAGS = ("beta", "vip", "churn-risk", "api-heavy", "trial", "partner")
_LOCALES = ("en-US", "de-DE", "ja-JP", "pt-BR", "fr-FR")


def _pick(rnd: Callable[[], float], seq: tuple[Any, ...]) -> Any:
    return seq[int(rnd() * len(seq))]


def _hex(rng: _Twister, bits: int = 128) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _ip(rnd: Callable[[], float], rng: _Twister) -> str:
    """Documentation ranges only (RFC 5737 / RFC 3849): realistic, never a real host."""
    if rnd() < 0.12:
        return "2001:db8:" + ":".join(f"{rng.getrandbits(16):x}" for _ in range(6))
    net = _pick(rnd, ("192.0.2", "198.51.100", "203.0.113"))
    return f"{net}.{1 + int(rnd() * 254)}"


def company_domain_for(index: int) -> str:
    word = _COMPANY_WORDS[index % len(_COMPANY_WORDS)]
    return f"{word}{index}.{_TLDS[index % len(_TLDS)]}"


# --- one mutable collection over an immutable, lazily generated base ----------------------

@dataclass(frozen=True)
class _Override:
    """A mutated or added record. Never changed in place (replaced), so readers may keep it."""

    ms: int
    key: str
    base_index: int | None  # None: an added record, `patch` is its whole document
    patch: dict[str, Any]


class _Collection:
    """Records ordered by (modified_time ms, key); base records lazy, mutations on the side."""

    def __init__(self, count: int, base_ms: int, salt: int,
                 key_of: Callable[[int], str], index_of: Callable[[str], int | None],
                 make_doc: Callable[[int, int, int], dict[str, Any]], id_field: str) -> None:
        self.count = count
        self.base_ms = base_ms
        self.salt = salt
        self.key_of = key_of
        self.index_of = index_of
        # (index, modified ms, base ms) -> document; the base ms is passed in because the
        # caller has it (computing it again was measurable per document).
        self.make_doc = make_doc
        self.id_field = id_field
        self.lock = threading.RLock()
        self._by_index: dict[int, _Override] = {}
        self._added: dict[str, _Override] = {}
        self._mutated_sorted: list[int] = []  # base indexes living in the side index
        self._side: list[tuple[int, str]] = []  # sorted (ms, key) of every override
        self._side_ref: dict[str, _Override] = {}

    # base arithmetic
    def base_ms_of(self, i: int) -> int:
        jitter = 0 if i % 4 == 0 else _mix(self.salt ^ i) % STEP_MS
        return self.base_ms + STEP_MS * i + jitter

    def _first_at_or_after(self, ms: int) -> int:
        """Smallest base index whose ms >= `ms` (O(1): the base grows by 250 ms a step)."""
        if ms <= self.base_ms:
            return 0
        q = (ms - self.base_ms) // STEP_MS
        if q >= self.count:
            return self.count
        return q if self.base_ms_of(q) >= ms else q + 1

    # resolution
    def _current(self, key: str) -> tuple[int, str, int | _Override] | None:
        ref = self._side_ref.get(key)
        if ref is not None:
            return ref.ms, key, ref
        i = self.index_of(key)
        if i is None:
            return None
        return self.base_ms_of(i), key, i

    def exists(self, key: str) -> bool:
        with self.lock:
            return self._current(key) is not None

    def build(self, ref: int | _Override) -> dict[str, Any]:
        if isinstance(ref, int):
            base_ms = self.base_ms_of(ref)
            return self.make_doc(ref, base_ms, base_ms)
        if ref.base_index is None:
            return copy.deepcopy(ref.patch)
        doc = self.make_doc(ref.base_index, ref.ms, self.base_ms_of(ref.base_index))
        for name, value in ref.patch.items():
            if value is None:
                doc.pop(name, None)
            else:
                doc[name] = copy.deepcopy(value)
        return doc

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._current(key)
        return None if found is None else self.build(found[2])

    # mutation
    def _put(self, new: _Override) -> None:
        old = self._side_ref.get(new.key)
        if old is not None:
            del self._side[bisect.bisect_left(self._side, (old.ms, old.key))]
        elif new.base_index is not None:
            bisect.insort(self._mutated_sorted, new.base_index)
        bisect.insort(self._side, (new.ms, new.key))
        self._side_ref[new.key] = new
        if new.base_index is not None:
            self._by_index[new.base_index] = new
        else:
            self._added[new.key] = new

    def _resolve_all(self, keys: Iterable[str]) -> list[tuple[int, str, int | _Override]]:
        found, missing = [], []
        for key in keys:
            cur = self._current(key)
            (found if cur is not None else missing).append(cur if cur else key)
        if missing:
            raise KeyError(f"unknown {self.id_field}: {', '.join(map(str, missing[:5]))}")
        return found

    def touch(self, keys: Iterable[str], when: datetime | None) -> int:
        ms, text = _fmt_when(when or datetime.now(UTC))
        with self.lock:
            found = self._resolve_all(keys)
            for _, key, ref in found:
                if isinstance(ref, int):
                    self._put(_Override(ms, key, ref, {"modified_time": text}))
                else:
                    patch = {**ref.patch, "modified_time": text}
                    self._put(_Override(ms, key, ref.base_index, patch))
            return len(found)

    def update(self, key: str, fields: dict[str, Any], when: datetime | None) -> None:
        if self.id_field in fields or "_id" in fields:
            raise ValueError(f"{self.id_field} cannot be changed")
        fields = copy.deepcopy(fields)
        if fields.get("modified_time") is not None:
            # Moesif keeps a writer-supplied modified_time: records can move "into the past".
            ms = _sort_ms(fields["modified_time"], when)
        else:
            ms, fields["modified_time"] = _fmt_when(when or datetime.now(UTC))
        with self.lock:
            (_, _, ref), = self._resolve_all([key])
            if isinstance(ref, int):
                self._put(_Override(ms, key, ref, fields))
            elif ref.base_index is None:
                doc = {**ref.patch, **fields}
                self._put(_Override(ms, key, None, {k: v for k, v in doc.items()
                                                    if v is not None}))
            else:
                self._put(_Override(ms, key, ref.base_index, {**ref.patch, **fields}))

    def add(self, key: str, doc: dict[str, Any]) -> None:
        doc = copy.deepcopy(doc)
        if doc.get("modified_time") is None:
            ms, doc["modified_time"] = _fmt_when(datetime.now(UTC))
        else:
            ms = _sort_ms(doc["modified_time"], None)
        with self.lock:
            if self._current(key) is not None:
                raise ValueError(f"{self.id_field} already exists: {key}")
            self._put(_Override(ms, key, None, doc))

    def clear(self) -> None:
        """Forget every mutation and added record: back to the generated base."""
        with self.lock:
            self._by_index.clear()
            self._added.clear()
            self._mutated_sorted.clear()
            self._side.clear()
            self._side_ref.clear()

    # query
    def search(self, *, min_ms: int | None = None, max_ms: int | None = None,
               ids: Iterable[str] | None = None, descending: bool = False,
               search_after: tuple[int, str] | None = None, size: int = 10,
               base_ok: Callable[[int], bool] | None = None,
               base_count: Callable[[int, int], int] | None = None,
               side_ok: Callable[[_Override], bool] | None = None,
               ) -> tuple[int, list[tuple[int, str, int | _Override]]]:
        """(total matching, up to `size` (ms, key, ref) in sort order after `search_after`).

        `min_ms` is inclusive, `max_ms` exclusive. `base_ok`/`side_ok` narrow the match
        further; `base_count(lo, hi)` must count base indexes in [lo, hi) passing `base_ok`.
        """
        if search_after is not None:  # callers pass the hit's list; tuples compare with ours
            search_after = (int(search_after[0]), str(search_after[1]))
        lo_ms = -(1 << 62) if min_ms is None else min_ms
        hi_ms = 1 << 62 if max_ms is None else max_ms
        with self.lock:
            if ids is not None:
                return self._search_ids(ids, lo_ms, hi_ms, descending, search_after, size,
                                        base_ok, side_ok)
            lo = self._first_at_or_after(lo_ms)
            hi = self._first_at_or_after(hi_ms)
            total = self._total(lo, hi, lo_ms, hi_ms, base_ok, base_count, side_ok)
            if size <= 0:
                return total, []
            if descending:
                merged = heapq.merge(self._base_desc(lo, hi, search_after, base_ok),
                                     self._side_desc(lo_ms, hi_ms, search_after, side_ok),
                                     reverse=True)
            else:
                merged = heapq.merge(self._base_asc(lo, hi, search_after, base_ok),
                                     self._side_asc(lo_ms, hi_ms, search_after, side_ok))
            return total, list(islice(merged, size))

    def _total(self, lo: int, hi: int, lo_ms: int, hi_ms: int,
               base_ok: Callable[[int], bool] | None,
               base_count: Callable[[int, int], int] | None,
               side_ok: Callable[[_Override], bool] | None) -> int:
        base = (hi - lo) if base_count is None else base_count(lo, hi)
        a = bisect.bisect_left(self._mutated_sorted, lo)
        b = bisect.bisect_left(self._mutated_sorted, hi)
        moved = self._mutated_sorted[a:b]
        base -= len(moved) if base_ok is None else sum(1 for i in moved if base_ok(i))
        s = bisect.bisect_left(self._side, (lo_ms,))
        e = bisect.bisect_left(self._side, (hi_ms,))
        if side_ok is None:
            return base + (e - s)
        return base + sum(1 for _, k in self._side[s:e] if side_ok(self._side_ref[k]))

    def _base_asc(self, lo: int, hi: int, after: tuple[int, str] | None,
                  ok: Callable[[int], bool] | None) -> Iterator[tuple[int, str, int]]:
        start = lo
        if after is not None:
            j = self._first_at_or_after(after[0])
            if j < self.count and self.base_ms_of(j) == after[0] and self.key_of(j) <= after[1]:
                j += 1
            start = max(start, j)
        moved = self._by_index
        for i in range(start, hi):
            if i in moved or (ok is not None and not ok(i)):
                continue
            yield self.base_ms_of(i), self.key_of(i), i

    def _base_desc(self, lo: int, hi: int, after: tuple[int, str] | None,
                   ok: Callable[[int], bool] | None) -> Iterator[tuple[int, str, int]]:
        end = hi
        if after is not None:
            j = self._first_at_or_after(after[0])
            if j < self.count and self.base_ms_of(j) == after[0] and self.key_of(j) < after[1]:
                j += 1
            end = min(end, j)
        moved = self._by_index
        for i in range(end - 1, lo - 1, -1):
            if i in moved or (ok is not None and not ok(i)):
                continue
            yield self.base_ms_of(i), self.key_of(i), i

    def _side_asc(self, lo_ms: int, hi_ms: int, after: tuple[int, str] | None,
                  ok: Callable[[_Override], bool] | None,
                  ) -> Iterator[tuple[int, str, _Override]]:
        pos = bisect.bisect_left(self._side, (lo_ms,))
        if after is not None:
            pos = max(pos, bisect.bisect_right(self._side, after))
        side = self._side
        for n in range(pos, len(side)):
            ms, key = side[n]
            if ms >= hi_ms:
                return
            ref = self._side_ref[key]
            if ok is None or ok(ref):
                yield ms, key, ref

    def _side_desc(self, lo_ms: int, hi_ms: int, after: tuple[int, str] | None,
                   ok: Callable[[_Override], bool] | None,
                   ) -> Iterator[tuple[int, str, _Override]]:
        end = bisect.bisect_left(self._side, (hi_ms,))
        if after is not None:
            end = min(end, bisect.bisect_left(self._side, after))
        side = self._side
        for n in range(end - 1, -1, -1):
            ms, key = side[n]
            if ms < lo_ms:
                return
            ref = self._side_ref[key]
            if ok is None or ok(ref):
                yield ms, key, ref

    def _search_ids(self, ids: Iterable[str], lo_ms: int, hi_ms: int, descending: bool,
                    after: tuple[int, str] | None, size: int,
                    base_ok: Callable[[int], bool] | None,
                    side_ok: Callable[[_Override], bool] | None,
                    ) -> tuple[int, list[tuple[int, str, int | _Override]]]:
        found = []
        for key in set(ids):
            cur = self._current(key) if isinstance(key, str) else None
            if cur is None or not lo_ms <= cur[0] < hi_ms:
                continue
            ref = cur[2]
            if isinstance(ref, int) and base_ok is not None and not base_ok(ref):
                continue
            if not isinstance(ref, int) and side_ok is not None and not side_ok(ref):
                continue
            found.append(cur)
        found.sort(key=lambda t: (t[0], t[1]), reverse=descending)
        if after is not None:
            if descending:
                found_after = [t for t in found if (t[0], t[1]) < after]
            else:
                found_after = [t for t in found if (t[0], t[1]) > after]
            return len(found), found_after[:max(size, 0)]
        return len(found), found[:max(size, 0)]


# --- the dataset ----------------------------------------------------------------------------

class Dataset:
    """Moesif users and companies, deterministic in `(seed, index)`, mutable on the side."""

    def __init__(self, users: int, companies: int, seed: int = 7,
                 base_time: datetime | None = None, special_records: bool = True) -> None:
        if users < 0 or companies < 0:
            raise ValueError("users and companies must be >= 0")
        self.seed = seed
        self.special_records = special_records
        start = base_time or DEFAULT_BASE_TIME
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
        # Whole seconds, so `i % 4 == 0` records land on a whole second (see module doc).
        self.base_ms = epoch_ms(start) // 1000 * 1000
        self.user_width = max(7, len(str(max(users - 1, 0))))
        self.company_width = max(5, len(str(max(companies - 1, 0))))
        self._user_salt = _mix(seed * 2 + 1)
        self._company_salt = _mix(seed * 2 + 2)
        self.app_id = f"sandbox-app-{seed}"
        self.org_id = f"sandbox-org-{seed}"
        self._no_id_keys: dict[str, int] = {}
        if special_records:
            for i in NO_USER_ID_INDEXES:
                if i < users:
                    self._no_id_keys[f"AY{_mix(self._user_salt ^ (i << 20)):016x}"] = i
        self._no_id_indexes = {i: k for k, i in self._no_id_keys.items()}
        self.users = _Collection(users, self.base_ms, self._user_salt, self.user_key,
                                 self._user_index, self._make_user, "user_id")
        self.companies = _Collection(companies, self.base_ms, self._company_salt,
                                     self.company_id, self._company_index,
                                     self._make_company, "company_id")
        self._added_user_keys = 0
        # Set once a mutation holds NaN or an infinity: the Moesif sandbox then writes its
        # responses with the standard library, which sends them as `NaN`/`Infinity`
        # literals (orjson would quietly write null).
        self.non_finite_values = False
        # User -> company is arithmetic, so "users of company c" needs no index (see
        # base_company_of): company = (i * mult) % companies, for ~85% of users.
        self._company_mult = _coprime_multiplier(companies)
        self._company_inverse = pow(self._company_mult, -1, companies) if companies > 1 else 0

    # ids
    @property
    def user_count(self) -> int:
        """Base users (added users not included)."""
        return self.users.count

    @property
    def company_count(self) -> int:
        return self.companies.count

    def user_id(self, i: int) -> str | None:
        """User `i`'s `user_id`, or None for the special users that have none."""
        if i in self._no_id_indexes:
            return None
        return f"{USER_PREFIX}{i:0{self.user_width}d}"

    def user_key(self, i: int) -> str:
        """User `i`'s `_id` (its `user_id`, or an opaque id when it has none)."""
        return self._no_id_indexes.get(i) or f"{USER_PREFIX}{i:0{self.user_width}d}"

    def company_id(self, i: int) -> str:
        return f"{COMPANY_PREFIX}{i:0{self.company_width}d}"

    def _user_index(self, key: str) -> int | None:
        if key in self._no_id_keys:
            return self._no_id_keys[key]
        i = _parse_index(key, USER_PREFIX, self.user_width, self.users.count)
        return None if i is None or i in self._no_id_indexes else i

    def _company_index(self, key: str) -> int | None:
        return _parse_index(key, COMPANY_PREFIX, self.company_width, self.companies.count)

    @property
    def special_users(self) -> dict[str, Any]:
        """Where the special records are: name -> index (a list for `no_user_id`).

        Empty when `special_records=False`; a record is listed only if its index exists.
        """
        if not self.special_records:
            return {}
        n = self.users.count
        out: dict[str, Any] = {"no_user_id": [i for i in NO_USER_ID_INDEXES if i < n]}
        for name, i in (("bad_created", BAD_CREATED_INDEX), ("big_metadata", BIG_METADATA_INDEX),
                        ("huge_name", HUGE_NAME_INDEX)):
            if i < n:
                out[name] = i
        return out

    # reads
    def user(self, i: int) -> dict[str, Any]:
        """Base user `i`'s current document (mutations applied)."""
        return self.get_user(self.user_key(i)) or {}

    def get_user(self, key: str) -> dict[str, Any] | None:
        return self.users.get(key)

    def get_company(self, key: str) -> dict[str, Any] | None:
        return self.companies.get(key)

    def search_users(self, *, min_ms: int | None = None, max_ms: int | None = None,
                     ids: Iterable[str] | None = None, descending: bool = False,
                     search_after: tuple[int, str] | None = None, size: int = 10,
                     with_metrics: bool = False,
                     company_ids: Iterable[str] | None = None) -> tuple[int, list[Hit]]:
        """Users matching the filters: (total, [(doc, [epoch_ms, _id])]).

        `min_ms` inclusive, `max_ms` exclusive (callers turn gt/lte into these: ms are ints).
        `ids` are `_id`s; `company_ids` keeps members of those companies; `with_metrics`
        keeps only users that have usermetrics.
        """
        total, rows = self._user_rows(min_ms, max_ms, ids, descending, search_after, size,
                                      with_metrics, company_ids)
        return total, [(self.users.build(ref), [ms, key]) for ms, key, ref in rows]

    def search_user_sorts(self, **filters: Any) -> tuple[int, list[SortValues]]:
        """`search_users` without the documents: (total, [[epoch_ms, _id]]), same filters.

        For answers that carry only ids and sort values (usermetrics): building each
        document only to drop it was a quarter of the sandbox's CPU in a benchmark sync.
        """
        total, rows = self._user_rows(**filters)
        return total, [[ms, key] for ms, key, _ in rows]

    def _user_rows(self, min_ms: int | None = None, max_ms: int | None = None,
                   ids: Iterable[str] | None = None, descending: bool = False,
                   search_after: tuple[int, str] | None = None, size: int = 10,
                   with_metrics: bool = False, company_ids: Iterable[str] | None = None,
                   ) -> tuple[int, list[tuple[int, str, int | _Override]]]:
        if company_ids is not None:
            members = self.user_keys_in_companies(company_ids)
            ids = members if ids is None else members & set(ids)
        extra: dict[str, Any] = {}
        if with_metrics:
            extra = {"base_ok": self._base_has_metrics, "base_count": self._count_metrics,
                     "side_ok": lambda ref: self._has_metrics_key(ref.key, ref.base_index)}
        return self.users.search(min_ms=min_ms, max_ms=max_ms, ids=ids,
                                 descending=descending, search_after=search_after,
                                 size=size, **extra)

    def search_companies(self, *, min_ms: int | None = None, max_ms: int | None = None,
                         ids: Iterable[str] | None = None, descending: bool = False,
                         search_after: tuple[int, str] | None = None,
                         size: int = 10) -> tuple[int, list[Hit]]:
        total, rows = self.companies.search(min_ms=min_ms, max_ms=max_ms, ids=ids,
                                            descending=descending,
                                            search_after=search_after, size=size)
        return total, [(self.companies.build(ref), [ms, key]) for ms, key, ref in rows]

    def count_users(self, **filters: Any) -> int:
        return self.search_users(size=0, **filters)[0]

    def count_companies(self, **filters: Any) -> int:
        return self.companies.search(size=0, **filters)[0]

    # mutations
    def touch_users(self, ids: Iterable[str], when: datetime | None = None) -> int:
        """Set `modified_time` to `when` (default now); unknown ids raise KeyError, no change."""
        return self.users.touch(list(ids), when)

    def touch_companies(self, ids: Iterable[str], when: datetime | None = None) -> int:
        return self.companies.touch(list(ids), when)

    def update_user(self, user_id: str, fields: dict[str, Any],
                    when: datetime | None = None) -> None:
        """Shallow-merge `fields` (None removes a field) and touch; a given
        `modified_time` is kept as is, so a record can move into the past. Values may be
        anything a JSON document can hold, including what a client must survive (NaN,
        integers past 64 bits, lone surrogates, deep nesting): the sandbox sends them."""
        self._note_values(fields)
        self.users.update(user_id, fields, when)

    def update_company(self, company_id: str, fields: dict[str, Any],
                       when: datetime | None = None) -> None:
        self._note_values(fields)
        self.companies.update(company_id, fields, when)

    def add_user(self, doc: dict[str, Any], key: str | None = None) -> str:
        """Add a user document; returns its `_id` (`key` when given, else its `user_id`
        when it has one). With `key`, `user_id` may be any value (a poison record)."""
        key = key if key is not None else doc.get("user_id")
        if key is None:
            with self.users.lock:
                self._added_user_keys += 1
                key = f"AZ{_mix(self._user_salt ^ self._added_user_keys):016x}"
        elif not isinstance(key, str) or not key:
            raise ValueError("user_id must be a non-empty string")
        self._note_values(doc)
        self.users.add(key, doc)
        return key

    def add_company(self, doc: dict[str, Any], key: str | None = None) -> str:
        """Add a company; its `_id` is `key` when given (then `company_id` may be any
        value), else its `company_id`."""
        key = key if key is not None else doc.get("company_id")
        if not isinstance(key, str) or not key:
            raise ValueError("company_id must be a non-empty string")
        self._note_values(doc)
        self.companies.add(key, doc)
        return key

    def _note_values(self, values: Any) -> None:
        if _has_non_finite(values):
            self.non_finite_values = True

    def clear_mutations(self) -> None:
        """Drop every touched, updated and added record (tests reuse one sandbox)."""
        self.users.clear()
        self.companies.clear()
        self.non_finite_values = False

    # user -> company membership
    def base_company_of(self, i: int) -> int | None:
        """Base user `i`'s company index (None for the ~15% without a company)."""
        count = self.companies.count
        if not count or _mix(self._user_salt ^ (i << 1) ^ 0x5A5A) % 100 >= 85:
            return None
        return (i * self._company_mult) % count

    def user_keys_in_companies(self, company_ids: Iterable[str]) -> set[str]:
        """`_id`s of users whose current `company_id` is one of `company_ids`.

        Base users of company j are i = j * mult^-1 (mod companies) + k * companies: about
        users / companies candidates each, with no index over all users.
        """
        wanted = {c for c in company_ids if isinstance(c, str)}
        count, n = self.companies.count, self.users.count
        keys: set[str] = set()
        with self.users.lock:
            for cid in wanted:
                j = self._company_index(cid)
                if j is None:
                    continue
                first = (j * self._company_inverse) % count if count > 1 else 0
                keys.update(self.user_key(i) for i in range(first, n, count)
                            if self.base_company_of(i) == j)
            # Mutated and added users: their current company decides.
            for key, ref in self.users._side_ref.items():
                if "company_id" in ref.patch or ref.base_index is None:
                    current = ref.patch.get("company_id")
                else:
                    j = self.base_company_of(ref.base_index)
                    current = None if j is None else self.company_id(j)
                if isinstance(current, str) and current in wanted:
                    keys.add(key)
                else:
                    keys.discard(key)
        return keys

    # usermetrics: ~70% of users, a fixed pattern so counts over a range are arithmetic
    def _base_has_metrics(self, i: int) -> bool:
        return (i * 7 + self.seed) % 10 < 7 and i not in self._no_id_indexes

    def _count_metrics(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return 0
        full, rest = divmod(hi - lo, 10)
        count = full * 7 + sum(1 for i in range(hi - rest, hi) if (i * 7 + self.seed) % 10 < 7)
        return count - sum(1 for i in self._no_id_indexes
                           if lo <= i < hi and (i * 7 + self.seed) % 10 < 7)

    def _has_metrics_key(self, key: str, base_index: int | None) -> bool:
        if base_index is not None:
            return self._base_has_metrics(base_index)
        return not key.startswith("AZ") and zlib.crc32(key.encode()) % 10 < 7

    def usermetrics(self, user_ids: Iterable[str], window: str = "24h",
                    ) -> dict[str, dict[str, Any]]:
        """user_id -> metrics for the given users that have metrics (others are absent)."""
        out = {}
        for key in user_ids:
            with self.users.lock:
                cur = self.users._current(key)
            if cur is None:
                continue
            ref = cur[2]
            base_index = ref if isinstance(ref, int) else ref.base_index
            if self._has_metrics_key(key, base_index):
                out[key] = self.metrics_for(key, window)
        return out

    def metrics_for(self, key: str, window: str = "24h") -> dict[str, Any]:
        h = _mix(self.seed * 31 + zlib.crc32(key.encode()))
        events = 1 + h % 5000
        return {
            "event_count": events,
            "error_count": (h >> 13) % (events // 20 + 1),
            "avg_latency_ms": round(20 + (h >> 24) % 4000 / 10, 1),
            "top_endpoint": _ENDPOINTS[(h >> 40) % len(_ENDPOINTS)],
            "window": window,
        }

    # generation
    def _make_user(self, i: int, modified_ms: int, base_ms: int) -> dict[str, Any]:
        # random.Random's C base: for an int seed the same Mersenne Twister stream (its
        # Python seed() only adds type checks), made ~15% faster; one per document.
        rng = _Twister(_mix(self._user_salt ^ (i + 1)))
        rnd = rng.random
        key = self.user_key(i)
        given, family, slug, family_first = _pick(rnd, _NAMES)
        name = f"{family}{given}" if family_first else f"{given} {family}"
        if rnd() < 0.06:
            name = f"{name} {_pick(rnd, _EMOJI)}"
        doc: dict[str, Any] = {}
        if i not in self._no_id_indexes:
            doc["user_id"] = key
            doc["identified_user_id"] = key
        company = self.base_company_of(i)
        if company is not None:
            doc["company_id"] = self.company_id(company)
        doc["name"] = name
        doc["first_name"] = given
        doc["last_name"] = family
        domain = company_domain_for(company) if company is not None and rnd() < 0.5 else \
            _pick(rnd, _EMAIL_DOMAINS)
        email = f"{slug}{i}@{domain}"
        email_kind = rnd()
        if email_kind < 0.78:
            doc["email"] = email
        first_seen = base_ms - int(rnd() * 400 * 86_400_000)
        doc["first_seen_time"] = _fmt_any(rnd, first_seen)
        doc["last_seen_time"] = _fmt_any(rnd, base_ms - int(rnd() * 3_600_000))
        doc["modified_time"] = self._modified_text(i, modified_ms, rnd)
        if rnd() < 0.8:
            doc["created"] = _fmt_any(rnd, first_seen - int(rnd() * 30 * 86_400_000))
        ip = _ip(rnd, rng)
        doc["ip_address"] = ip
        doc["session_token"] = [_hex(rng) for _ in range(int(rnd() * 4))]
        agent = _pick(rnd, _AGENTS)
        doc["user_agent"] = dict(zip(("name", "os", "os_name", "os_major", "device", "major",
                                      "minor"), agent[1:], strict=True))
        if rnd() < 0.85:
            doc["user_agent_string"] = agent[0]
        doc["geo_ip"] = self._geo(rnd, ip)
        if rnd() < 0.4:
            doc["campaign"] = _campaign(rnd, rng)
        doc["metadata"] = self._user_metadata(rnd, i, name, email if email_kind < 0.9 else None,
                                              email_kind >= 0.78)
        if rnd() < 0.25:
            doc["clearbit"] = _clearbit(rnd, rng, given, family, name, domain)
        doc["app_id"] = self.app_id
        doc["org_id"] = self.org_id
        if self.special_records:
            _apply_special(doc, i)
        return doc

    def base_ms_of_user(self, i: int) -> int:
        return self.users.base_ms_of(i)

    @staticmethod
    def _modified_text(i: int, ms: int, rnd: Callable[[], float]) -> str:
        # Always draw, so the rest of the document does not depend on `ms` (touches move it).
        sub = int(rnd() * 10_000)
        if i % 4 == 0 and ms % 1000 == 0:
            return fmt_seconds(ms)
        if i % 4 == 2:
            return fmt_no_zone(ms)
        return fmt_7digits(ms, sub)

    @staticmethod
    def _geo(rnd: Callable[[], float], ip: str) -> dict[str, Any]:
        city, region, country, code, lat, lon, tz, postal = _pick(rnd, _PLACES)
        return {"ip": ip, "city_name": city, "region_name": region, "country_name": country,
                "country_code2": code, "location": {"lat": lat, "lon": lon},
                "latitude": lat, "longitude": lon, "timezone": tz, "postal_code": postal}

    @staticmethod
    def _user_metadata(rnd: Callable[[], float], i: int, name: str, email: str | None,
                       email_in_metadata: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "plan": _pick(rnd, _PLANS),
            "signup": {"source": _pick(rnd, ("web", "cli", "partner", "sso")),
                       "date": fmt_no_zone(DEFAULT_BASE_TIME_MS - int(rnd() * 4e10)),
                       "trial": rnd() < 0.3},
            "tags": [_pick(rnd, _TAGS) for _ in range(int(rnd() * 3))],
            "preferences": {"locale": _pick(rnd, _LOCALES), "newsletter": rnd() < 0.5,
                            "notifications": {"email": rnd() < 0.7, "sms": rnd() < 0.1}},
            "seats": 1 + int(rnd() * 50),
        }
        if email_in_metadata and email is not None:
            meta["email"] = email
        if rnd() < 0.2:
            meta["name"] = name
        if rnd() < 0.15:
            meta["phone"] = f"+1 415 555 {int(rnd() * 10_000):04d}"
        if rnd() < 0.1:
            meta["username"] = f"@dev{i}"
        if rnd() < 0.05:
            meta["api_keys"] = [{"label": "default", "created": fmt_seconds(
                DEFAULT_BASE_TIME_MS - int(rnd() * 1e10)), "scopes": ["read", "write"]}]
        return meta

    def _make_company(self, j: int, modified_ms: int, base_ms: int) -> dict[str, Any]:
        rng = _Twister(_mix(self._company_salt ^ (j + 1)))
        rnd = rng.random
        doc: dict[str, Any] = {"company_id": self.company_id(j)}
        domain = company_domain_for(j)
        doc["domain_name" if rnd() < 0.2 else "company_domain"] = domain
        first_seen = base_ms - int(rnd() * 600 * 86_400_000)
        doc["created"] = _fmt_any(rnd, first_seen - int(rnd() * 10 * 86_400_000))
        doc["modified_time"] = self._modified_text(j, modified_ms, rnd)
        doc["first_seen_time"] = _fmt_any(rnd, first_seen)
        doc["last_seen_time"] = _fmt_any(rnd, base_ms - int(rnd() * 86_400_000))
        doc["ip_address"] = _ip(rnd, rng)
        doc["session_token"] = [_hex(rng) for _ in range(int(rnd() * 3))]
        doc["campaign"] = _campaign(rnd, rng) if rnd() < 0.3 else {}
        city = _pick(rnd, _PLACES)
        doc["metadata"] = {
            "name": f"{_COMPANY_NAMES[j % len(_COMPANY_NAMES)]} #{j}",
            "plan": _pick(rnd, _PLANS),
            "industry": _pick(rnd, _INDUSTRIES),
            "employees": 1 + int(rnd() ** 3 * 20_000),
            "website": f"https://www.{domain}",
            "address": {"city": city[0], "country": city[3]},
            "arr_usd": round(rnd() * 2e6, 2),
        }
        if rnd() < 0.6:
            doc["ttfhw_s"] = int(rnd() * 7 * 86_400)
        doc["app_id"] = self.app_id
        doc["org_id"] = self.org_id
        return doc


DEFAULT_BASE_TIME_MS = epoch_ms(DEFAULT_BASE_TIME)


def _coprime_multiplier(count: int) -> int:
    """A multiplier that spreads consecutive users over companies, invertible mod `count`."""
    for candidate in (7919, 104_729, 1_299_709, 15_485_863):
        if count <= 1 or math.gcd(candidate, count) == 1:
            return candidate
    return 1


def _parse_index(key: str, prefix: str, width: int, count: int) -> int | None:
    if not isinstance(key, str) or len(key) != len(prefix) + width or not key.startswith(prefix):
        return None
    digits = key[len(prefix):]
    if not digits.isdigit() or not digits.isascii():
        return None
    i = int(digits)
    return i if i < count else None


def _campaign(rnd: Callable[[], float], rng: _Twister) -> dict[str, Any]:
    source, medium, name, term, content, referrer, ref_domain = _pick(rnd, _CAMPAIGNS)
    out = {"utm_source": source, "utm_medium": medium, "utm_campaign": name, "utm_term": term,
           "utm_content": content, "referrer": referrer, "referring_domain": ref_domain}
    if source == "google":
        out["gclid"] = "Cj0KCQ" + _hex(rng, 96)
    return {k: v for k, v in out.items() if v is not None}


def _clearbit(rnd: Callable[[], float], rng: _Twister, given: str, family: str,
              name: str, domain: str) -> dict[str, Any]:
    city = _pick(rnd, _PLACES)
    return {
        "id": f"{_hex(rng, 32)}-{_hex(rng, 16)}-{_hex(rng, 16)}-{_hex(rng, 16)}-{_hex(rng, 48)}",
        "name": {"fullName": name, "givenName": given, "familyName": family},
        "employment": {"domain": domain, "name": domain.split(".")[0].title(),
                       "title": _pick(rnd, _TITLES), "role": "engineering",
                       "seniority": _pick(rnd, ("junior", "senior", "executive"))},
        "geo": {"city": city[0], "state": city[1], "country": city[3], "lat": city[4],
                "lng": city[5]},
        "github": {"handle": f"gh-{_hex(rng, 24)}"},
        "twitter": {"handle": None, "followers": int(rnd() * 5000)},
        "avatar": None,
        "fuzzy": rnd() < 0.2,
    }


def _apply_special(doc: dict[str, Any], i: int) -> None:
    if i == BAD_CREATED_INDEX:
        doc["created"] = "not-a-date"
    elif i == BIG_METADATA_INDEX:
        entry = {"at": "2023-07-27T21:55:19Z", "event": "plan_changed", "note": "x" * 60}
        size_each = len(str(entry)) + 2
        doc["metadata"]["history"] = [dict(entry, seq=n)
                                      for n in range(BIG_METADATA_BYTES // size_each)]
    elif i == HUGE_NAME_INDEX:
        doc["name"] = "".join(chr(0x4E00 + (n * 7) % 2000) for n in range(HUGE_NAME_CHARS))
