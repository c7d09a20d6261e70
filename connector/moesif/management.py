"""Moesif Management API client: search users and companies with keyset paging.

Facts relied on (../shared/reference/moesif-api.md): search bodies are Elasticsearch DSL,
`search_after` takes the previous page's last `sort` array (opaque to us), 500 queries
per *calendar minute* then 429 usually without `Retry-After`, 401/402/403 mean the key
or subscription is wrong and retrying cannot help.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception

from connector import __version__, jsonutil
from connector.timeutil import parse_timestamp, to_iso

log = logging.getLogger(__name__)

SEARCH_PATHS = {
    "users": "/v1/search/~/search/users",
    "companies": "/v1/search/~/search/companies",
    "usermetrics": "/v1/search/~/search/usermetrics/users",
}
ID_FIELDS = {"users": "user_id", "companies": "company_id"}
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 300.0
AUTH_STATUSES = frozenset({401, 402, 403})


class MoesifError(Exception):
    """A Moesif request failed for good (after retries, or not retryable)."""


class MoesifAuthError(MoesifError):
    """The Management API refused the key (401/403) or the subscription (402)."""


class MoesifRetryableError(MoesifError):
    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(slots=True)
class Page:
    hits: list[dict[str, Any]]
    total: int

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The records, each keeping the search `_id` (a record without its own id is
        reported by it)."""
        out = []
        for hit in self.hits:
            source = hit.get("_source") or {}
            if "_id" not in source and hit.get("_id"):
                source["_id"] = hit["_id"]
            out.append(source)
        return out


def seconds_to_next_minute(now: float | None = None) -> float:
    """Moesif's rate-limit window resets at the calendar-minute boundary."""
    now = time.time() if now is None else now
    return 60.0 - (now % 60.0)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class BackoffPolicy:
    """How long to wait before the next attempt.

    429: `Retry-After` when given; else exponential with full jitter from `base`, never
    past the next calendar-minute boundary. 5xx and connection errors: exponential with
    jitter, capped at `cap`.
    """

    def __init__(self, base: float = 1.0, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        attempt = state.attempt_number
        exp = min(self.cap, self.base * (2 ** (attempt - 1)))
        jittered = random.uniform(self.base / 2, max(self.base, exp))
        if isinstance(exc, MoesifRetryableError) and exc.status == 429:
            if exc.retry_after is not None:
                return min(exc.retry_after, MAX_RETRY_AFTER)
            return min(jittered, seconds_to_next_minute())
        return jittered


class StopPolicy:
    """When to give up. 429s are Moesif's fixed per-minute window filling up: waiting
    always helps, so they are retried for up to `rate_limit_budget` seconds whatever
    the attempt count; other failures stop after `max_retries` retries."""

    def __init__(self, max_retries: int, rate_limit_budget: float = 300.0) -> None:
        self.max_retries = max_retries
        self.rate_limit_budget = rate_limit_budget

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, MoesifRetryableError) and exc.status == 429:
            return (state.seconds_since_start or 0.0) >= self.rate_limit_budget
        return state.attempt_number >= self.max_retries + 1


def _derived_sort(hit: dict[str, Any], id_field: str) -> list[Any] | None:
    """The sort values of a hit whose server left `sort` out: [epoch ms, id]."""
    source = hit.get("_source") or {}
    record_id = source.get(id_field) or hit.get("_id")
    try:
        millis = int(parse_timestamp(source.get("modified_time")).timestamp() * 1000)
    except ValueError:
        return None
    return [millis, record_id] if record_id else None


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, MoesifRetryableError)


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff or BackoffPolicy()
        self.session = session or requests.Session()
        self.session.headers.update({
            "Authorization": f"Bearer {api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "User-Agent": f"moesif-segment-connector/{__version__}",
        })
        self.requests_made = 0
        self.retries = 0
        # One Retrying for the client's life (its per-call state is thread-local). A new
        # one per call forms a reference cycle holding the response until the cyclic
        # GC runs, which the sync job deliberately runs rarely.
        self._retrying = Retrying(
            retry=retry_if_exception(_is_retryable),
            wait=self.backoff,
            stop=StopPolicy(max_retries),
            before_sleep=self._count_retry,
            reraise=True,
        )

    # --- low level -------------------------------------------------------------------
    def _post_once(self, path: str, body: dict[str, Any], params: dict[str, str] | None) -> Any:
        url = self.base_url + path
        self.requests_made += 1
        try:
            resp = self.session.post(url, data=jsonutil.dumps(body), params=params,
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            # The exception text carries the URL (no key in it) and the reason.
            raise MoesifRetryableError(f"{type(exc).__name__} calling {path}") from None
        return self._handle(resp, path)

    def _get_once(self, path: str) -> Any:
        self.requests_made += 1
        try:
            resp = self.session.get(self.base_url + path, timeout=self.timeout)
        except requests.RequestException as exc:
            raise MoesifRetryableError(f"{type(exc).__name__} calling {path}") from None
        return self._handle(resp, path)

    def _handle(self, resp: requests.Response, path: str) -> Any:
        status = resp.status_code
        if status in AUTH_STATUSES:
            reason = {401: "the key was refused (wrong key or missing scope)",
                      402: "the Moesif subscription is inactive",
                      403: "the key lacks permission"}[status]
            raise MoesifAuthError(
                f"Moesif Management API answered {status} on {path}: {reason}; "
                "check MOESIF_MANAGEMENT_API_KEY")
        if status in RETRY_STATUSES or status >= 500:
            raise MoesifRetryableError(
                f"Moesif answered {status} on {path}", status,
                parse_retry_after(resp.headers.get("Retry-After")))
        if status == 404:
            if path.startswith(("/v1/search/~/users/", "/v1/search/~/companies/")):
                return None  # a single record that does not exist
            raise MoesifAuthError(
                f"Moesif answered 404 on {path}: the API base is wrong; check MOESIF_API_URL")
        if status >= 400:
            raise MoesifError(f"Moesif answered {status} on {path}: {resp.text[:300]}")
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
            raise MoesifError(f"{exc} (gave up after {self.max_retries} retries)") from None

    def post(self, path: str, body: dict[str, Any], params: dict[str, str] | None = None) -> Any:
        return self._with_retries(self._post_once, path, body, params)

    def get(self, path: str) -> Any:
        return self._with_retries(self._get_once, path)

    # --- searches ----------------------------------------------------------------------
    def search(self, kind: str, body: dict[str, Any],
               params: dict[str, str] | None = None) -> Page:
        data = self.post(SEARCH_PATHS[kind], body, params) or {}
        hits = data.get("hits") or {}
        total = hits.get("total", 0)
        if isinstance(total, dict):  # newer Elasticsearch shape {"value": n}
            total = total.get("value", 0)
        return Page(hits=list(hits.get("hits") or []), total=int(total or 0))

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
        field = field or ID_FIELDS[entity]
        unique = sorted(set(ids))
        for start in range(0, len(unique), page_size):
            chunk = unique[start:start + page_size]
            query = {"bool": {"filter": [{"terms": {f"{field}.raw": chunk}}]}}
            yield from self._iter_query(entity, query, page_size)

    def _iter_query(self, entity: str, query: dict[str, Any], page_size: int) -> Iterator[Page]:
        """Keyset paging: sort on (modified_time, id), `search_after` the last hit's sort."""
        id_field = ID_FIELDS[entity]
        body: dict[str, Any] = {
            "size": page_size,
            "sort": [{"modified_time": {"order": "asc"}},
                     {f"{id_field}.raw": {"order": "asc"}}],
            "query": query,
        }
        while True:
            page = self.search(entity, body)
            # A short page is not the end (Moesif documents no maximum size, so a server
            # cap could shorten pages): only an empty page is.
            if not page.hits:
                return
            yield page
            sort = page.hits[-1].get("sort") or _derived_sort(page.hits[-1], id_field)
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
            source = hit.get("_source") or {}
            user_id = source.get("user_id") or hit.get("_id")
            value = source.get("metrics") or hit.get("metrics")
            if user_id and isinstance(value, dict) and value:
                metrics[str(user_id)] = value
        return metrics

    def count(self, entity: str, query: dict[str, Any] | None = None) -> int | None:
        data = self.post(f"/v1/search/~/count/{entity}", {"query": query or {"match_all": {}}})
        if isinstance(data, dict) and isinstance(data.get("count"), int):
            return data["count"]
        return None
