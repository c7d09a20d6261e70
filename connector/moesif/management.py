"""Moesif Management API client: search users and companies with keyset paging.

Facts relied on (../shared/reference/moesif-api.md): search bodies are Elasticsearch DSL,
`search_after` takes the previous page's last `sort` array (opaque to us), 500 queries
per *calendar minute* then 429 usually without `Retry-After`, 401/402/403 mean the key
or subscription is wrong and retrying cannot help.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from pydantic import SecretStr
from tenacity import RetryCallState

from connector import __version__
from connector.common import jsonutil
from connector.common.headers import header_text_problem
from connector.common.redaction import redact
from connector.common.timeutil import parse_timestamp, to_iso
from connector.errors import (
    AuthError,
    ConnectorError,
    DestinationUnavailable,
    EndpointError,
    Interrupted,
    RefusedError,
    RetryableError,
)
from connector.http.policy import (
    COMMON_STATUSES,
    Action,
    HttpPolicy,
    Rule,
    display_url,
)
from connector.http.retry import RETRY_AFTER_CAP, Backoff, build_retrying
from connector.http.retry import parse_retry_after as _parse_retry_after

log = logging.getLogger(__name__)

SEARCH_PATHS = {
    "users": "/v1/search/~/search/users",
    "companies": "/v1/search/~/search/companies",
    "usermetrics": "/v1/search/~/search/usermetrics/users",
}
# Issue 12 item 4: Moesif's API reference lists the metrics search paths, its own apps call
# the plain ones. The default (plain) is tried first; on a 404 the other one, and only when
# both answer 404 is MOESIF_API_URL called wrong. The metrics paths need a time window
# (for the metrics they add; the records found are the same).
ALTERNATE_SEARCH_PATHS = {
    "users": "/v1/search/~/search/usermetrics/users",
    "companies": "/v1/search/~/search/companymetrics/companies",
}
METRICS_WINDOW = {"from": "-24h", "to": "now"}
DEFAULT_QUERIES_PER_MINUTE = 450
ID_FIELDS = {"users": "user_id", "companies": "company_id"}
MAX_RETRY_AFTER = RETRY_AFTER_CAP
SINGLE_RECORD_PATHS = ("/v1/search/~/users/", "/v1/search/~/companies/")


class MoesifError(ConnectorError):
    """A Moesif request failed for good (after retries, or not retryable)."""


class MoesifAuthError(AuthError, MoesifError):
    """The Management API refused the key (401/403) or the subscription (402)."""


class MoesifEndpointError(EndpointError, MoesifError):
    """MOESIF_API_URL does not point at the Management API (404, 405, redirect, HTML)."""


class MoesifRefusedError(RefusedError, MoesifError):
    """Moesif refused the query as such (400 and other 4xx)."""


class MoesifRetryableError(RetryableError, MoesifError):
    """One attempt failed in a way waiting can fix (408, 429, 5xx, connection errors)."""


class MoesifUnavailable(DestinationUnavailable, MoesifError):
    """Retries ran out: the run stops, the next one retries."""


def _auth(reason: str) -> Rule:
    return Rule(Action.AUTH, "Moesif Management API answered {status} on {path}: "
                             f"{reason}; check {{key_setting}}")


_NOT_HERE = Rule(Action.CONFIG, "Moesif answered {status} on {path}: the API base is wrong; "
                                "check {setting} (answer: {excerpt})")

# The Management API's table (../shared/reference/moesif-api.md). 408, 429 and 5xx are
# retried; 401/402/403 are the key or subscription; 404/405/410 and redirects mean
# MOESIF_API_URL is not the API base; any other 4xx is a refusal of our query.
MANAGEMENT_POLICY = HttpPolicy(
    api="Moesif", url_setting="MOESIF_API_URL", key_setting="MOESIF_MANAGEMENT_API_KEY",
    statuses={
        **COMMON_STATUSES,
        401: _auth("the key was refused (wrong key or missing scope)"),
        402: _auth("the Moesif subscription is inactive"),
        403: _auth("the key lacks permission"),
        404: _NOT_HERE, 405: _NOT_HERE, 410: _NOT_HERE,
    },
    families={2: Rule(Action.SUCCESS),
              3: Rule(Action.CONFIG, "Moesif answered {status} (a redirect) on {path}: the "
                                     "API base is wrong; check {setting}"),
              4: Rule(Action.REFUSE, "Moesif answered {status} on {path}: {excerpt}"),
              5: Rule(Action.RETRY, "Moesif answered {status} on {path}")},
    errors={
        Action.RETRY: lambda v: MoesifRetryableError(v.message, v.status, v.retry_after),
        Action.REFUSE: lambda v: MoesifRefusedError(v.message, v.status, v.excerpt),
        Action.CONFIG: lambda v: MoesifEndpointError(v.message, v.status),
        Action.AUTH: lambda v: MoesifAuthError(v.message, v.status),
    },
)


@dataclass(slots=True)
class Page:
    hits: list[dict[str, Any]]
    total: int
    exact_total: bool = False  # `total` is the exact count of matches (not a lower bound)

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The records, each keeping the search `_id` (a record without its own id is
        reported by it). A hit that is no object, or whose `_source` is no object, is
        still a record of the page: an empty one (with the hit's `_id`, if any), which the
        mapping reports as MISSING_ID while the rest of the page goes on."""
        out = []
        for hit in self.hits:
            if not isinstance(hit, dict):
                out.append({})
                continue
            source = hit.get("_source")
            if not isinstance(source, dict):
                source = {}
            if "_id" not in source and hit.get("_id"):
                source["_id"] = hit["_id"]
            out.append(source)
        return out


def seconds_to_next_minute(now: float | None = None) -> float:
    """Moesif's rate-limit window resets at the calendar-minute boundary."""
    now = time.time() if now is None else now
    return 60.0 - (now % 60.0)


def parse_retry_after(value: str | None) -> float | None:
    """The one `Retry-After` parser (connector.http.retry), kept importable here."""
    return _parse_retry_after(value)


class BackoffPolicy(Backoff):
    """How long to wait before the next attempt: the common backoff (Retry-After when
    given, else equal jitter from `base`, capped at `cap`), with Moesif's special case: a
    429 without `Retry-After` never waits past the next calendar-minute boundary, where
    the fixed per-minute window resets."""

    def __init__(self, base: float = 1.0, cap: float = 30.0, **knobs: float) -> None:
        super().__init__(base=base, cap=cap, **knobs)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.status == 429 and exc.retry_after is None:
            return min(self.jitter(state.attempt_number), seconds_to_next_minute())
        return super().__call__(state)


class StopPolicy:
    """When to give up. 429s are Moesif's fixed per-minute window filling up: waiting
    always helps, so they are retried for up to `rate_limit_budget` seconds whatever
    the attempt count; other failures stop after `max_retries` retries."""

    def __init__(self, max_retries: int, rate_limit_budget: float = 300.0) -> None:
        self.max_retries = max_retries
        self.rate_limit_budget = rate_limit_budget

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.status == 429:
            return (state.seconds_since_start or 0.0) >= self.rate_limit_budget
        return state.attempt_number >= self.max_retries + 1


def interruptible_sleep(stop_event: threading.Event | None) -> Callable[[float], None]:
    """A wait (rate budget, backoff) that a stop request cuts short with `Interrupted`."""
    def sleep(seconds: float) -> None:
        if stop_event is None:
            time.sleep(seconds)
        elif stop_event.wait(seconds):
            raise Interrupted("stopped while waiting for Moesif")

    return sleep


class QueryLimiter:
    """At most `per_minute` requests per calendar minute (Moesif's fixed window, which
    resets at the minute boundary): the request that would exceed it waits for the next
    minute. Kept below Moesif's 500 so a sync alone never meets a 429 (other clients
    sharing the key may still cause one: that stays retried)."""

    def __init__(self, per_minute: int = DEFAULT_QUERIES_PER_MINUTE,
                 clock: Any = time.time, sleep: Any = None,
                 stop_event: threading.Event | None = None) -> None:
        self.per_minute = max(1, per_minute)
        self.clock = clock
        # A SIGTERM must not wait out the rest of the minute: the wait is cut short.
        self.sleep = sleep or interruptible_sleep(stop_event)
        self._window = -1
        self._count = 0
        self.waited = 0.0  # seconds spent waiting for a window, for the report

    def acquire(self) -> None:
        while True:
            now = self.clock()
            window = int(now // 60)
            if window != self._window:
                self._window, self._count = window, 0
            if self._count < self.per_minute:
                self._count += 1
                return
            pause = seconds_to_next_minute(now) + 0.01
            log.info("Moesif query budget of %d per minute used; waiting %.1f s for the "
                     "next minute", self.per_minute, pause)
            self.waited += pause
            self.sleep(pause)


def _derived_sort(hit: Any, id_field: str) -> list[Any] | None:
    """The sort values of a hit whose server left `sort` out: [epoch ms, id]."""
    if not isinstance(hit, dict):
        return None
    source = hit.get("_source")
    if not isinstance(source, dict):
        source = {}
    record_id = next((v for v in (source.get(id_field), hit.get("_id"))
                      if isinstance(v, str | int) and not isinstance(v, bool) and v != ""),
                     None)  # an object or a list as the id cannot be a sort value
    try:
        millis = int(parse_timestamp(source.get("modified_time")).timestamp() * 1000)
    except ValueError:
        return None
    return [millis, record_id] if record_id else None


def _shape_of(data: Any, hits: Any) -> str:
    """What a search answer was, by its JSON types only (never its values)."""
    if not isinstance(data, dict):
        return f"a JSON {_json_type(data)}"
    if "hits" not in data:
        return "a JSON object without hits"
    if not isinstance(hits, dict):
        return f"hits as a JSON {_json_type(hits)}"
    return f"hits.hits as a JSON {_json_type(hits.get('hits'))}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _page_sort(hits: list[Any], id_field: str) -> list[Any] | None:
    """Where the next page starts: the sort values of the page's last hit that has them
    (a hit that is no object, or has none to derive, is passed over: the next page
    would start after the last usable one and could only repeat)."""
    for hit in reversed(hits):
        sort = hit.get("sort") if isinstance(hit, dict) else None
        if not isinstance(sort, list):  # `search_after` takes the array a hit carries
            sort = None
        sort = sort or _derived_sort(hit, id_field)
        if sort:
            return sort
    return None


def _sort_key(sort: Any) -> str:
    try:
        return jsonutil.dumps_sorted(sort).decode()
    except (TypeError, ValueError):
        return repr(sort)


class MoesifManagementClient:
    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        timeout: float = 30.0,
        max_retries: int = 8,
        backoff: BackoffPolicy | None = None,
        session: requests.Session | None = None,
        limiter: QueryLimiter | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        # kind -> the search path answering for it (issue 12 item 4: see ALTERNATE_SEARCH_PATHS)
        self.search_paths = dict(SEARCH_PATHS)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff or BackoffPolicy()
        self.session = session or requests.Session()
        # A key an HTTP header cannot carry (non-ASCII, spaces, line breaks) fails every
        # request the same way: a setting to fix, said at the first request (never
        # retried, never a UnicodeEncodeError from deep in http.client).
        # Spaces around it are a copy-and-paste accident, not part of a key.
        key = api_key.get_secret_value().strip()
        self._key_problem = header_text_problem(key)
        self.session.headers.update({
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "User-Agent": f"moesif-segment-connector/{__version__}",
        })
        self.requests_made = 0
        self.retries = 0
        # Whether MOESIF_API_URL ever answered (any HTTP status): until it has, a
        # connection refused on every attempt means nothing listens there.
        self._answered = False
        # One Retrying for the client's life (its per-call state is thread-local). A new
        # one per call forms a reference cycle holding the response until the cyclic
        # GC runs, which the sync job deliberately runs rarely.
        self._retrying = build_retrying(wait=self.backoff, stop=StopPolicy(max_retries),
                                        before_sleep=self._count_retry, api="moesif",
                                        sleep=interruptible_sleep(stop_event))
        self._secrets = list(dict.fromkeys([api_key.get_secret_value(), key]))

    def _display(self, path: str) -> str:
        """An address as messages show it: no user info or query, and no key even if
        one was pasted into MOESIF_API_URL's path."""
        return redact(display_url(self.base_url + path), self._secrets)

    # --- low level -------------------------------------------------------------------
    def _post_once(self, path: str, body: dict[str, Any], params: dict[str, str] | None) -> Any:
        return self._request("POST", path, data=jsonutil.dumps(body), params=params)

    def _get_once(self, path: str) -> Any:
        return self._request("GET", path)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._key_problem:
            raise MoesifAuthError(f"MOESIF_MANAGEMENT_API_KEY cannot be sent: it has "
                                  f"{self._key_problem}, which an HTTP header cannot carry; "
                                  f"check MOESIF_MANAGEMENT_API_KEY (copied with extra text?)")
        if self.limiter is not None:
            self.limiter.acquire()
        self.requests_made += 1
        try:
            # No redirects: a redirect means MOESIF_API_URL is not the API base (CONFIG).
            resp = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                        allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise MANAGEMENT_POLICY.request_error(exc, self._display(path)) from None
        self._answered = True
        return self._handle(resp, path)

    def _handle(self, resp: requests.Response, path: str) -> Any:
        status = resp.status_code
        if status == 404 and path.startswith(SINGLE_RECORD_PATHS):
            return None  # a single record that does not exist
        MANAGEMENT_POLICY.check(resp, self._display(path), self._secrets,
                                self.backoff.parse)
        try:
            # Invalid UTF-8 is decoded with U+FFFD (never retried: it would come back the
            # same); the sync job, if it listens, reports the records that carry it.
            return jsonutil.loads(resp.content, on_problem=getattr(self, "on_decode_problem", None))
        except ValueError:
            raise MoesifRetryableError(f"Moesif sent invalid JSON on {path}", status) from None

    def _count_retry(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning("Moesif request failed (%s); retry %d of %d", exc,
                    state.attempt_number, self.max_retries)

    def _with_retries(self, fn: Any, *args: Any) -> Any:
        try:
            return self._retrying(fn, *args)
        except MoesifRetryableError as exc:
            if not self._answered and getattr(exc, "refused_connection", False):
                raise MANAGEMENT_POLICY.nothing_listens(self._display(""),
                                                        self.max_retries) from None
            raise MoesifUnavailable(f"{exc} (gave up after {self.max_retries} retries)",
                                    exc.status) from None

    def post(self, path: str, body: dict[str, Any], params: dict[str, str] | None = None) -> Any:
        return self._with_retries(self._post_once, path, body, params)

    def get(self, path: str) -> Any:
        return self._with_retries(self._get_once, path)

    # --- searches ----------------------------------------------------------------------
    def search(self, kind: str, body: dict[str, Any],
               params: dict[str, str] | None = None) -> Page:
        data = self._search_post(kind, body, params)
        hits = data.get("hits") if isinstance(data, dict) else None
        if not isinstance(hits, dict) or not isinstance(hits.get("hits", []), list):
            # JSON, but not a search result ({"hits": {"hits": [...]}}): some other API
            # answers at this address. Reading it as "no records" would end the run as
            # if nothing had changed.
            raise MoesifEndpointError(
                f"Moesif answered {_shape_of(data, hits)} on "
                f"{self._display(self.search_paths[kind])}, not a search "
                f"result with hits.hits: not the Management API; check MOESIF_API_URL")
        total = hits.get("total", 0)
        # Moesif documents `hits.total` as a plain integer; Elasticsearch's newer shape
        # {"value": n, "relation": "eq"|"gte"} is exact only with "eq".
        exact = isinstance(total, int) and not isinstance(total, bool)
        if isinstance(total, dict):
            exact = total.get("relation", "eq") == "eq"
            total = total.get("value", 0)
        try:
            total = int(total or 0)
        except (TypeError, ValueError):
            total, exact = 0, False
        page = Page(hits=list(hits.get("hits") or []), total=total, exact_total=exact)
        if kind in ALTERNATE_SEARCH_PATHS and "metrics/" in self.search_paths[kind]:
            for hit in page.hits:  # the records as the plain path sends them
                source = hit.get("_source")
                if isinstance(source, dict):
                    source.pop("metrics", None)
        return page

    def _search_post(self, kind: str, body: dict[str, Any],
                     params: dict[str, str] | None) -> Any:
        """POST a search on the path in use for `kind`; on a 404 switch (once) to the
        other documented path (ALTERNATE_SEARCH_PATHS) before calling it a configuration
        error."""
        path = self.search_paths[kind]
        try:
            return self.post(path, body, self._window_for(path, params))
        except MoesifEndpointError as exc:
            other = self._other_path(kind, path)
            if exc.status != 404 or other is None:
                raise
            try:
                data = self.post(other, body, self._window_for(other, params))
            except MoesifEndpointError as again:
                if again.status != 404:
                    raise
                raise MoesifEndpointError(
                    f"{exc} (the other documented path, {other}, answered 404 too)",
                    exc.status) from None
            log.warning("Moesif answered 404 on %s; searching %s on %s from now on",
                        path, kind, other)
            self.search_paths[kind] = other
            return data

    @staticmethod
    def _other_path(kind: str, path: str) -> str | None:
        if kind not in ALTERNATE_SEARCH_PATHS:
            return None
        return SEARCH_PATHS[kind] if path == ALTERNATE_SEARCH_PATHS[kind] else \
            ALTERNATE_SEARCH_PATHS[kind]

    @staticmethod
    def _window_for(path: str, params: dict[str, str] | None) -> dict[str, str] | None:
        """The metrics paths require a time window (for the metrics only)."""
        if params is None and "metrics/" in path:
            return dict(METRICS_WINDOW)
        return params

    def iter_modified(self, entity: str, *, since: datetime | None, until: datetime | None,
                      page_size: int) -> Iterator[Page]:
        """Keyset pages of `entity` ordered by (modified_time, id), within [since, until)."""
        range_clause: dict[str, str] = {}
        if since is not None:
            range_clause["gte"] = to_iso(since)
        if until is not None:
            range_clause["lt"] = to_iso(until)
        query: dict[str, Any] = {"match_all": {}}
        if range_clause:
            query = {"bool": {"filter": [{"range": {"modified_time": range_clause}}]}}
        yield from self._iter_query(entity, query, page_size)

    def fetch_by_ids(self, entity: str, ids: list[str], *, field: str | None = None,
                     page_size: int = 1000) -> Iterator[Page]:
        """Every record whose `field` (default: the entity id) is one of `ids`."""
        by_own_id = field is None or field == ID_FIELDS[entity]
        field = field or ID_FIELDS[entity]
        unique = sorted(set(ids))
        for start in range(0, len(unique), page_size):
            chunk = unique[start:start + page_size]
            query = {"bool": {"filter": [{"terms": {f"{field}.raw": chunk}}]}}
            # A terms query on N distinct ids of the record's own (unique) id field cannot
            # match more than N records: once N came back, nothing is left to page for,
            # and the empty page that would confirm it is not asked for. Fewer than N is
            # not proof (a server cap on `size` could shorten the page): keep paging.
            yield from self._iter_query(entity, query, page_size,
                                        at_most=len(chunk) if by_own_id else None)

    def _iter_query(self, entity: str, query: dict[str, Any], page_size: int,
                    at_most: int | None = None) -> Iterator[Page]:
        """Keyset paging: sort on (modified_time, id), `search_after` the last hit's sort.
        `at_most`: the query cannot match more records than this (paging ends there)."""
        seen = 0
        id_field = ID_FIELDS[entity]
        body: dict[str, Any] = {
            "size": page_size,
            "sort": [{"modified_time": {"order": "asc"}},
                     {f"{id_field}.raw": {"order": "asc"}}],
            "query": query,
        }
        # The sort values each page ended at: a page ending where an earlier one did
        # (a server ignoring `search_after`, or sort values repeating) would page
        # forever over the same records.
        ends: set[str] = set()
        while True:
            page = self.search(entity, body)
            # A short page is not the end (Moesif documents no maximum size, so a server
            # cap could shorten pages): only an empty page is.
            if not page.hits:
                return
            sort = _page_sort(page.hits, id_field)
            if sort:
                end = _sort_key(sort)
                if end in ends:
                    raise MoesifError(
                        f"Moesif's {entity} search does not advance: a page ended at the "
                        f"sort values an earlier page ended at (search_after ignored, or "
                        f"sort values that repeat); stopped paging instead of looping")
                ends.add(end)
            yield page
            seen += len(page.hits)
            if at_most is not None and seen >= at_most:
                return
            # Every match seen: the empty page would only confirm it. A record written
            # into the range behind the paging position raises `total` past what can be
            # seen, which costs the one empty page, never a record.
            if page.exact_total and 0 < page.total <= seen:
                return
            if not sort:
                raise MoesifError("Moesif returned hits without sort values; cannot page")
            body["search_after"] = sort

    def user_metrics(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Last-24-hour activity rollups for a page of users, in one query."""
        if not user_ids:
            return {}
        body = {
            "size": len(user_ids),
            "query": {"bool": {"filter": [{"terms": {"user_id.raw": sorted(set(user_ids))}}]}},
        }
        page = self.search("usermetrics", body, params={"from": "-24h", "to": "now"})
        metrics: dict[str, dict[str, Any]] = {}
        for hit in page.hits:
            if not isinstance(hit, dict):
                continue  # optional enrichment: a hit of the wrong type adds nothing
            source = hit.get("_source")
            source = source if isinstance(source, dict) else {}
            user_id = source.get("user_id") or hit.get("_id")
            value = source.get("metrics") or hit.get("metrics")
            if isinstance(user_id, str | int) and not isinstance(user_id, bool) \
                    and user_id != "" and isinstance(value, dict) and value:
                metrics[str(user_id)] = value
        return metrics

    def count(self, entity: str, query: dict[str, Any] | None = None) -> int | None:
        data = self.post(f"/v1/search/~/count/{entity}", {"query": query or {"match_all": {}}})
        if isinstance(data, dict) and isinstance(data.get("count"), int):
            return data["count"]
        return None
