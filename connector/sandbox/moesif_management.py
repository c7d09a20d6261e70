"""A local Moesif Management API (search users and companies) over a sandbox `Dataset`.

Accepted search DSL (anything else is a 400 `{"message": "unsupported query: ..."}`, so a
client bug cannot pass unnoticed):

- top-level keys: `size` (int 1..10000, default 10), `sort`, `search_after`, `query`,
  `_source` (accepted and ignored).
- `sort`: absent (= modified_time asc, id asc), or a list: first `"modified_time"`,
  `{"modified_time": "asc"|"desc"}` or `{"modified_time": {"order": ..., "unmapped_type":
  ...}}`, then the tie-breaker `user_id.raw` (users, usermetrics) / `company_id.raw`
  (companies) or `_id`, in the same three forms and the same direction. The tie-breaker is
  required: without one, keyset paging skips or repeats records at page edges.
- `search_after`: the previous page's last `sort` array, `[epoch_ms, id]`.
- `query`: absent, `{"match_all": {}}`, or `{"bool": {"filter": [...], "must": [...]}}`
  (a single clause instead of a list is fine) of `{"range": {"modified_time": {"gte"|"gt"|
  "lte"|"lt": ISO-8601 string or epoch ms}}}`, `{"terms": {"<id>.raw": [ids]}}`,
  `{"term": {"<id>.raw": id}}` (or `{"value": id}`) and `{"match_all": {}}`, where `<id>` is
  `user_id` (users, usermetrics) or `company_id` (companies; on users too: the members of
  those companies).

Hits carry `"sort": [epoch_ms, _id]`; a user without `user_id` sorts by its `_id`.

Faults: `inject()` (status for the next N matching requests; 429 carries no Retry-After
unless one is given, as Moesif documents none), `inject_delay()`, `corrupt_utf8()` (text
that contains a marker is sent with invalid UTF-8 bytes in its place), and
`rate_limit_per_minute` (fixed calendar-minute window, like Moesif's).

Records may hold values orjson will not write (NaN, integers past 64 bits, lone
surrogates, deep nesting): such responses are written with the standard library, which
sends `NaN`/`Infinity` literals, long integers and `\\udXXX` escapes as a server might.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from connector.common.timeutil import parse_timestamp
from connector.sandbox.dataset import Dataset, epoch_ms
from connector.sandbox.httpbase import JsonHandler, SandboxServer

MAX_SIZE = 10_000
SEARCH_PREFIX = "/v1/search/~/"

Response = tuple[int, Any, dict[str, str]]


class QueryError(ValueError):
    """The body asks for something the sandbox (and our client) must not rely on."""


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: str | None
    path_contains: str | None


@dataclass
class _Body:
    """A raw answer (any bytes, any status and content type) for the next requests."""
    status: int
    body: bytes
    content_type: str
    remaining: int
    path_contains: str | None


@dataclass
class _Delay:
    seconds: float
    remaining: int
    path_contains: str | None


@dataclass(frozen=True)
class SearchRequest:
    """A parsed search body."""

    size: int
    descending: bool
    search_after: tuple[int, str] | None
    min_ms: int | None
    max_ms: int | None
    ids: frozenset[str] | None
    company_ids: frozenset[str] | None = None  # users only: members of these companies


# --- the DSL subset -------------------------------------------------------------------------

def parse_search(body: Any, id_field: str, *, count_only: bool = False) -> SearchRequest:
    """Parse an ES search body; raise QueryError for anything outside the supported subset."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise QueryError("unsupported query: body must be a JSON object")
    allowed = {"query"} if count_only else {"size", "sort", "search_after", "query", "_source"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise QueryError(f"unsupported query: top-level key(s) {unknown}")
    size = 0 if count_only else _parse_size(body.get("size", 10))
    descending = _parse_sort(body.get("sort"), id_field)
    after = _parse_search_after(body.get("search_after"))
    min_ms, max_ms, ids, company_ids = _parse_query(body.get("query"), id_field)
    return SearchRequest(size, descending, after, min_ms, max_ms, ids, company_ids)


def _parse_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise QueryError(f"unsupported query: size must be an integer, got {size!r}")
    if not 1 <= size <= MAX_SIZE:
        raise QueryError(f"unsupported query: size must be 1..{MAX_SIZE}, got {size}")
    return size


def _sort_order(clause: Any, fields: tuple[str, ...]) -> str | None:
    """The order of a sort clause on one of `fields`, or None if it is on another field."""
    if isinstance(clause, str):
        return "asc" if clause in fields else None
    if not isinstance(clause, dict) or len(clause) != 1:
        raise QueryError(f"unsupported query: sort clause {clause!r}")
    (field, spec), = clause.items()
    if field not in fields:
        return None
    if isinstance(spec, str):
        order = spec
    elif isinstance(spec, dict) and set(spec) <= {"order", "unmapped_type"}:
        order = spec.get("order", "asc")
    else:
        raise QueryError(f"unsupported query: sort clause {clause!r}")
    if order not in ("asc", "desc"):
        raise QueryError(f"unsupported query: sort order {order!r}")
    return order


def _parse_sort(sort: Any, id_field: str) -> bool:
    """True for descending. Requires modified_time then the id tie-breaker, same order."""
    if sort is None:
        return False
    if not isinstance(sort, list) or len(sort) != 2:
        raise QueryError("unsupported query: sort must be [modified_time, "
                         f"{id_field}.raw or _id] (a tie-breaker is required)")
    primary = _sort_order(sort[0], ("modified_time",))
    tie = _sort_order(sort[1], (f"{id_field}.raw", "_id"))
    if primary is None or tie is None:
        raise QueryError(f"unsupported query: sort must be [modified_time, {id_field}.raw "
                         f"or _id], got {sort!r}")
    if primary != tie:
        raise QueryError("unsupported query: mixed sort orders")
    return primary == "desc"


def _parse_search_after(after: Any) -> tuple[int, str] | None:
    if after is None:
        return None
    if (not isinstance(after, list) or len(after) != 2 or isinstance(after[0], bool)
            or not isinstance(after[1], str)):
        raise QueryError(f"unsupported query: search_after must be [epoch_ms, id], got {after!r}")
    try:
        return int(after[0]), after[1]
    except (TypeError, ValueError):
        raise QueryError(f"unsupported query: search_after[0] {after[0]!r}") from None


def _to_ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise QueryError(f"unsupported query: range value {value!r}")
    if isinstance(value, int):
        return value  # Elasticsearch reads a number on a date field as epoch millis
    try:
        return epoch_ms(parse_timestamp(value))
    except ValueError:
        raise QueryError(f"unsupported query: range value {value!r} (date math is not "
                         "supported; send ISO 8601 or epoch ms)") from None


def _clauses(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _parse_query(query: Any, id_field: str,
                 ) -> tuple[int | None, int | None, frozenset[str] | None,
                            frozenset[str] | None]:
    if query is None or query == {"match_all": {}}:
        return None, None, None, None
    if not isinstance(query, dict) or set(query) != {"bool"} or not isinstance(query["bool"],
                                                                                dict):
        raise QueryError(f"unsupported query: {query!r}")
    parts = query["bool"]
    unknown = sorted(set(parts) - {"filter", "must"})
    if unknown:
        raise QueryError(f"unsupported query: bool clause(s) {unknown}")
    min_ms: int | None = None
    max_ms: int | None = None
    ids: frozenset[str] | None = None
    company_ids: frozenset[str] | None = None
    for clause in [*_clauses(parts.get("filter", [])), *_clauses(parts.get("must", []))]:
        if clause == {"match_all": {}}:
            continue
        if not isinstance(clause, dict) or len(clause) != 1:
            raise QueryError(f"unsupported query: clause {clause!r}")
        (kind, spec), = clause.items()
        if kind == "range":
            lo, hi = _parse_range(spec)
            min_ms = lo if min_ms is None or (lo is not None and lo > min_ms) else min_ms
            max_ms = hi if max_ms is None or (hi is not None and hi < max_ms) else max_ms
        elif kind in ("terms", "term"):
            field, found = _parse_terms(kind, spec, id_field)
            if field == id_field:
                ids = found if ids is None else ids & found
            else:
                company_ids = found if company_ids is None else company_ids & found
        else:
            raise QueryError(f"unsupported query: clause {clause!r}")
    return min_ms, max_ms, ids, company_ids


def _parse_range(spec: Any) -> tuple[int | None, int | None]:
    """A modified_time range as [min inclusive, max exclusive) in ms (ms are integers)."""
    if not isinstance(spec, dict) or set(spec) != {"modified_time"}:
        raise QueryError(f"unsupported query: range {spec!r} (only modified_time)")
    bounds = spec["modified_time"]
    if not isinstance(bounds, dict) or not bounds or set(bounds) - {"gte", "gt", "lte", "lt"}:
        raise QueryError(f"unsupported query: range {spec!r}")
    lows = [_to_ms(bounds["gte"])] if "gte" in bounds else []
    lows += [_to_ms(bounds["gt"]) + 1] if "gt" in bounds else []
    highs = [_to_ms(bounds["lt"])] if "lt" in bounds else []
    highs += [_to_ms(bounds["lte"]) + 1] if "lte" in bounds else []
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _parse_terms(kind: str, spec: Any, id_field: str) -> tuple[str, frozenset[str]]:
    """(plain field name, values). Users may also be filtered by their `company_id.raw`."""
    fields = {f"{id_field}.raw", "company_id.raw"}
    if not isinstance(spec, dict) or len(spec) != 1 or not set(spec) <= fields:
        raise QueryError(f"unsupported query: {kind} {spec!r} (only {sorted(fields)})")
    (field, value), = spec.items()
    if kind == "term":
        value = value.get("value") if isinstance(value, dict) else value
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise QueryError(f"unsupported query: {kind} values must be strings: {value!r}")
    return field.removesuffix(".raw"), frozenset(value)


# --- the sandbox ----------------------------------------------------------------------------

class MoesifManagementSandbox:
    """The Management API's search endpoints over `dataset`, with faults and recording."""

    def __init__(self, dataset: Dataset, api_key: str,
                 rate_limit_per_minute: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.dataset = dataset
        self._api_key = api_key
        self.rate_limit_per_minute = rate_limit_per_minute
        self.clock = clock  # wall clock for the calendar-minute window (tests may replace it)
        self.requests_seen: deque[tuple[str, str, Any]] = deque(maxlen=10_000)
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._bodies: list[_Body] = []
        # Applied to every search answer before it is sent (a hostile server: hits of the
        # wrong type, paging that ignores `search_after`, ...); None: answers as is.
        self.rewrite: Callable[[str, Any, Any], Any] | None = None
        self._window = -1
        self._window_count = 0
        self._closing = threading.Event()
        self._corrupt_marker: bytes | None = None
        # Search paths answering 404 as if this Moesif did not have them (issue 12 item 4:
        # the plain and the metrics search paths), e.g. {"search/users"}.
        self.missing_paths: set[str] = set()

    def server(self, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
        """A (not yet started) server; use it as a context manager or call `.start()`."""
        self._closing.clear()
        return _ReleasingServer(MoesifManagementHandler, self, host, port)

    # fault injection
    def inject(self, status: int, count: int = 1, retry_after: str | None = None,
               path_contains: str | None = None) -> None:
        """The next `count` API requests (whose path contains `path_contains`) get `status`."""
        if count <= 0:
            return  # nothing to inject (a count of 0 must not fault one request)
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, path_contains))

    def inject_body(self, body: bytes | str, status: int = 200, count: int = 1,
                    content_type: str = "application/json",
                    path_contains: str | None = None) -> None:
        """The next `count` API requests get `body` as it is (truncated JSON, an HTML
        page, JSON of the wrong shape), with `status` and `content_type`."""
        if count <= 0:
            return
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._bodies.append(_Body(status, raw, content_type, count, path_contains))

    def take_body(self, path: str) -> _Body | None:
        with self._lock:
            return self._take(self._bodies, path)

    def inject_delay(self, seconds: float, count: int = 1,
                     path_contains: str | None = None) -> None:
        """Hold the response of the next `count` API requests for `seconds`."""
        if count <= 0:
            return
        with self._lock:
            self._delays.append(_Delay(seconds, count, path_contains))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._bodies.clear()
            self.rewrite = None
            self._corrupt_marker = None

    def corrupt_utf8(self, marker: str | None) -> None:
        """From now on, every occurrence of the ASCII text `marker` in a response body is
        replaced with bytes that are not UTF-8 (`None` stops it)."""
        if marker is not None and (not marker or not marker.isascii()):
            raise ValueError("the marker must be non-empty ASCII text")
        with self._lock:
            self._corrupt_marker = marker.encode() if marker else None

    def encode(self, payload: Any) -> bytes:
        """A response body: orjson, or the standard library for what orjson cannot write."""
        data: bytes | None = None
        if not self.dataset.non_finite_values:
            with contextlib.suppress(TypeError):  # long integers, lone surrogates, depth
                data = orjson.dumps(payload)
        if data is None:
            data = json.dumps(payload).encode()
        marker = self._corrupt_marker
        if marker is not None and marker in data:
            data = data.replace(marker, b"\xff\xfe")
        return data

    def release(self) -> None:
        """Let held (delayed) responses go now; called when the server stops."""
        self._closing.set()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"counters": dict(self.counters),
                    "pending_faults": sum(f.remaining for f in self._faults),
                    "pending_delays": sum(d.remaining for d in self._delays),
                    "rate_limit_per_minute": self.rate_limit_per_minute,
                    "users": self.dataset.user_count, "companies": self.dataset.company_count}

    def _take(self, items: list[Any], path: str) -> Any:
        for item in items:
            if item.path_contains is None or item.path_contains in path:
                item.remaining -= 1
                if item.remaining <= 0:
                    items.remove(item)
                return item
        return None

    def take_delay(self, path: str) -> float:
        with self._lock:
            delay = self._take(self._delays, path)
        return delay.seconds if delay else 0.0

    def wait_delay(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self.counters["delayed"] += 1
            self._closing.wait(seconds)

    # request handling (no I/O here, so it is easy to reason about)
    def handle(self, method: str, target: str, headers: Any, body: bytes,
               parse: Callable[[bytes], Any]) -> Response:
        split = urlsplit(target)
        path, params = unquote(split.path), parse_qs(split.query)
        admin = path.startswith("/_sandbox/")
        if not admin and not self._authorized(headers.get("Authorization")):
            self._record(method, target, None)
            return self._count(401, {"message": "Unauthorized: missing or invalid API key"})
        try:
            parsed = parse(body) if body else None
        except ValueError as exc:
            if not admin:
                self._record(method, target, None)
            return self._count(400, {"message": f"invalid JSON body: {exc}"})
        if admin:
            return self._admin(method, path, parsed)
        self._record(method, target, parsed)
        early = self._fault_or_limit(path)
        if early is not None:
            return early
        try:
            status, payload = self._route(method, path, params, parsed)
            rewrite = self.rewrite
            if rewrite is not None and status == 200:
                payload = rewrite(path, parsed, payload)
            return self._count(status, payload)
        except QueryError as exc:
            return self._count(400, {"message": str(exc)})

    def _record(self, method: str, target: str, parsed: Any) -> None:
        self.requests_seen.append((method, target, parsed))
        with self._lock:
            self.counters["requests"] += 1

    def _count(self, status: int, payload: Any, headers: dict[str, str] | None = None,
               ) -> Response:
        with self._lock:
            self.counters[f"status_{status}"] += 1
        return status, payload, headers or {}

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(),
                                   self._api_key.encode())

    def _fault_or_limit(self, path: str) -> Response | None:
        with self._lock:
            fault = self._take(self._faults, path)
            if fault is None and self.rate_limit_per_minute is not None:
                window = int(self.clock() // 60)
                if window != self._window:
                    self._window, self._window_count = window, 0
                self._window_count += 1
                if self._window_count > self.rate_limit_per_minute:
                    self.counters["rate_limited"] += 1
                    fault = _Fault(429, 1, None, None)
            elif fault is not None:
                self.counters["faults_injected"] += 1
        if fault is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        message = "Too Many Requests" if fault.status == 429 else "injected fault"
        return self._count(fault.status, {"message": message}, headers)

    def _route(self, method: str, path: str, params: dict[str, list[str]], body: Any,
               ) -> tuple[int, Any]:
        rest = path[len(SEARCH_PREFIX):] if path.startswith(SEARCH_PREFIX) else None
        if rest in self.missing_paths:
            return 404, {"message": f"no such endpoint: {method} {path}"}
        if method == "POST" and rest == "search/companymetrics/companies":
            if not params.get("from") or not params.get("to"):
                return 400, {"message": "query parameters 'from' and 'to' are required"}
            return 200, self._search("companies", body)
        if method == "POST" and rest == "search/users":
            return 200, self._search("users", body)
        if method == "POST" and rest == "search/companies":
            return 200, self._search("companies", body)
        if method == "POST" and rest == "search/usermetrics/users":
            if not params.get("from") or not params.get("to"):
                return 400, {"message": "query parameters 'from' and 'to' are required"}
            return 200, self._usermetrics(body, params["from"][0])
        if method == "POST" and rest in ("count/users", "count/companies"):
            kind = rest.split("/")[1]
            return 200, {"count": self._count_query(kind, body)}
        if method == "GET" and rest and rest.startswith(("users/", "companies/")):
            kind, _, key = rest.partition("/")
            doc = self.dataset.get_user(key) if kind == "users" else \
                self.dataset.get_company(key)
            if doc is None:
                return 404, {"message": f"{kind[:-1]} not found"}
            return 200, doc
        return 404, {"message": f"no such endpoint: {method} {path}"}

    def _search(self, kind: str, body: Any) -> dict[str, Any]:
        started = time.perf_counter()
        id_field = "user_id" if kind == "users" else "company_id"
        req = parse_search(body, id_field)
        filters: dict[str, Any] = {"company_ids": req.company_ids} if kind == "users" else {}
        search = self.dataset.search_users if kind == "users" else \
            self.dataset.search_companies
        total, hits = search(min_ms=req.min_ms, max_ms=req.max_ms, ids=req.ids,
                             descending=req.descending, search_after=req.search_after,
                             size=req.size, **filters)
        return _envelope(started, total, [
            {"_id": sort[1], "_source": doc, "sort": sort} for doc, sort in hits])

    def _usermetrics(self, body: Any, window_from: str) -> dict[str, Any]:
        started = time.perf_counter()
        req = parse_search(body, "user_id")
        window = window_from.lstrip("-") or window_from
        # Only ids and sort values are answered: no user document is built.
        total, sorts = self.dataset.search_user_sorts(
            min_ms=req.min_ms, max_ms=req.max_ms, ids=req.ids, descending=req.descending,
            search_after=req.search_after, size=req.size, with_metrics=True,
            company_ids=req.company_ids)
        return _envelope(started, total, [
            {"_id": sort[1], "sort": sort,
             "_source": {"user_id": sort[1],
                         "metrics": self.dataset.metrics_for(sort[1], window)}}
            for sort in sorts])

    def _count_query(self, kind: str, body: Any) -> int:
        req = parse_search(body, "user_id" if kind == "users" else "company_id",
                           count_only=True)
        if kind == "users":
            return self.dataset.count_users(min_ms=req.min_ms, max_ms=req.max_ms, ids=req.ids,
                                            company_ids=req.company_ids)
        return self.dataset.count_companies(min_ms=req.min_ms, max_ms=req.max_ms, ids=req.ids)

    # admin (no auth: only the sandbox has these; used from another process)
    def _admin(self, method: str, path: str, body: Any) -> Response:
        body = body if isinstance(body, dict) else {}
        try:
            if method == "GET" and path == "/_sandbox/stats":
                return 200, self.stats(), {}
            if method == "POST" and path == "/_sandbox/touch":
                return 200, self._admin_touch(body), {}
            if method == "POST" and path == "/_sandbox/update":
                return 200, self._admin_update(body), {}
            if method == "POST" and path == "/_sandbox/fault":
                return 200, self._admin_fault(body), {}
        except KeyError as exc:
            return 404, {"message": str(exc.args[0]) if exc.args else "not found"}, {}
        except (TypeError, ValueError) as exc:
            return 400, {"message": str(exc)}, {}
        return 404, {"message": f"no such sandbox endpoint: {method} {path}"}, {}

    def _admin_touch(self, body: dict[str, Any]) -> dict[str, Any]:
        when = parse_timestamp(body["when"]) if body.get("when") else None
        users = self.dataset.touch_users(body.get("users") or [], when)
        companies = self.dataset.touch_companies(body.get("companies") or [], when)
        return {"touched_users": users, "touched_companies": companies}

    def _admin_update(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("user_id"):
            self.dataset.update_user(body["user_id"], body.get("fields") or {})
        elif body.get("company_id"):
            self.dataset.update_company(body["company_id"], body.get("fields") or {})
        else:
            raise ValueError("give user_id or company_id, and fields")
        return {"updated": True}

    def _admin_fault(self, body: dict[str, Any]) -> dict[str, Any]:
        if "rate_limit_per_minute" in body:
            self.rate_limit_per_minute = body["rate_limit_per_minute"]
        if "missing_paths" in body:  # e.g. ["search/users"]: answered 404
            self.missing_paths = set(body["missing_paths"] or [])
        if body.get("clear"):
            self.clear_faults()
        if body.get("delay_seconds") is not None:
            self.inject_delay(float(body["delay_seconds"]), int(body.get("count", 1)),
                              body.get("path_contains"))
        if body.get("status") is not None:
            retry_after = body.get("retry_after")
            self.inject(int(body["status"]), int(body.get("count", 1)),
                        None if retry_after is None else str(retry_after),
                        body.get("path_contains"))
        return {"ok": True, **self.stats()}


def _envelope(started: float, total: int, hits: list[dict[str, Any]]) -> dict[str, Any]:
    took = int((time.perf_counter() - started) * 1000)
    return {"took": took, "timed_out": False, "hits": {"total": total, "hits": hits}}


class MoesifManagementHandler(JsonHandler):
    def handle(self) -> None:
        # The client went away (killed, or its timeout fired): nobody to answer, no traceback.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()

    def _serve(self, method: str) -> None:
        app: MoesifManagementSandbox = self.app
        body = self.read_body()
        status, payload, headers = app.handle(method, self.path, self.headers, body,
                                              self.parse_json)
        raw = None
        if not self.path.startswith("/_sandbox/"):
            app.wait_delay(app.take_delay(self.path))
            raw = app.take_body(self.path)
        try:
            if raw is not None:
                self.send_response(raw.status)
                self.send_header("Content-Type", raw.content_type)
                self.send_header("Content-Length", str(len(raw.body)))
                self.end_headers()
                self.wfile.write(raw.body)
                return
            self.send_json(status, app.encode(payload), headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._serve("POST")


class _ReleasingServer(SandboxServer):
    """Releases held responses before shutting down, so `stop()` never waits on a delay."""

    def stop(self) -> None:
        release = getattr(self.httpd.app, "release", None)  # type: ignore[attr-defined]
        if release is not None:
            release()
        super().stop()
