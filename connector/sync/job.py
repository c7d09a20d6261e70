"""One sync run: Moesif users and companies that changed -> Segment identify and group.

Page by page: fetch (with the page's companies and 24-hour metrics joined, prefetched in
a background thread) -> map -> diff against stored hashes -> shape and size-guard ->
send -> commit hashes, failures and the cursor in one transaction. Every fetched record
ends as delivered, unchanged, invalid (with a reason code) or failed (retried next run).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from connector import jsonutil
from connector.errors import (
    ConnectorError,
    DestinationUnavailable,
    ExitCode,
    Interrupted,
    IssueCode,
    exit_code_for,
)
from connector.mapping import (
    INT_MAX,
    INT_MIN,
    TRIMMED,
    Applied,
    Coverage,
    MappingSet,
    encodable,
    load_mappings,
    sanitise,
)
from connector.moesif.management import MoesifError, MoesifManagementClient, QueryLimiter
from connector.redaction import redact
from connector.report_model import ENTITIES, Mode, RunReport, Status
from connector.report_model import ReportBuilder as Report  # the builder SyncRun fills in
from connector.report_store import new_run_id
from connector.schema_drift import Inventory, check_stop, mapped_paths
from connector.segment.sink import (
    MAX_MESSAGE_BYTES,
    DeliveryResult,
    OutMessage,
    SegmentSink,
    json_size,
    partial_result,
)
from connector.settings import ConfigError, Settings
from connector.store import connect_state, state_error, state_errors
from connector.sync.prefetch import Prefetcher
from connector.sync.state import CompanyCache, PageCommit, SyncState
from connector.timeutil import parse_timestamp, to_iso

log = logging.getLogger(__name__)

SAMPLE_COUNT = 3
ISSUE_SAMPLE_COUNT = 5  # records with issues sampled beside the clean ones, one per code
MASK = "*****"

Progress = Callable[..., None]


@dataclass
class SyncOutcome:
    exit_code: int  # an ExitCode
    report: RunReport


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
    """A record id as text: non-empty text without lone surrogates, or a 64-bit integer.
    Anything else (an object, a number with a fraction, NaN) is no id."""
    if isinstance(value, str):
        return value if value and encodable(value) else None
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


class SyncRun:
    def __init__(self, settings: Settings, mode: str, conn: sqlite3.Connection,
                 mappings: MappingSet, stop_event: threading.Event | None = None,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.mode = mode
        self.dry_run = mode == "dry-run"
        self.full = mode == "full"
        self.stop_event = stop_event or threading.Event()
        self.progress = progress or (lambda *a, **k: None)
        self.mappings = mappings
        self.state = SyncState(conn, max_attempts=settings.sync_max_attempts)
        self.report = Report(new_run_id(), mode, f"{mappings.version}", settings)
        self.report.coverage = Coverage(mappings.event_names)
        self.moesif = MoesifManagementClient(
            settings.moesif_api_url, settings.moesif_management_api_key,  # type: ignore[arg-type]
            timeout=settings.moesif_timeout_seconds, max_retries=settings.moesif_max_retries,
            limiter=QueryLimiter(settings.moesif_queries_per_minute,
                                 stop_event=self.stop_event),
            stop_event=self.stop_event)
        # Issue 12 item 3: companies come first, into the state store; users pages join
        # their companies from there (see load_companies and resolve_companies).
        self.company_cache = CompanyCache(conn)
        self.loaded_companies: set[str] = set()  # changed since the cursor, this run
        self.companies_cursor: str | None = None  # where the companies pass ended
        self.idless_companies: list[dict[str, Any]] = []  # reported by resolve_companies
        self.absent_companies: set[str] = set()  # ids Moesif did not find this run
        self.sink = SegmentSink(
            settings.segment_write_key, settings.segment_host,  # type: ignore[arg-type]
            batch_messages=settings.segment_batch_messages,
            batch_bytes=settings.segment_batch_bytes,
            timeout=settings.segment_timeout_seconds, max_retries=settings.segment_max_retries,
            max_failed_batches=settings.segment_max_failed_batches,
            refused_before=self._failed_before().__contains__)
        self.identify_volatile = mappings.volatile_paths("identify")
        self.identify_trimmable = mappings.trimmable_paths("identify")
        self.group_trimmable = mappings.trimmable_paths("group")
        self.personal = mappings.personal_sources()
        # Issue 9: source fields seen this run (bounded walk per record), for schema drift.
        self.inventory = Inventory()
        self.mapped_sources = mapped_paths(mappings)
        self.drift_stop = settings.schema_drift_policy == "stop"
        # Users that failed or were invalid in this run (few, normally): a changed
        # company's members are not re-sent or re-reported in the same run. Users that
        # were delivered need no entry: their stored hash already says "unchanged".
        self.settled: dict[str, str] = {}
        self._clean_samples = 0
        self._issues_seen = 0
        self._sampled_codes: set[str] = set()
        self.all_users_pass = False
        self.joined_companies: dict[str, Any] = {}  # id -> version, from an all-users pass
        # company -> failure code of its members this run (DELIVERY_FAILED wins)
        self.failed_companies: dict[str, str] = {}
        self.metrics_unavailable = False
        self.map_cache: dict[Any, Any] = {}
        # company id -> {version key: fingerprint of the document} of the company versions
        # its members were mapped with in this run (a company written mid-run is seen
        # with two): see process_companies. Fingerprints, not documents: this lives for
        # the whole run, one entry per company.
        self.member_versions: dict[str, dict[Any, bytes | None]] = {}
        self.companies_seen: set[str] = set()
        self.mapping_failures: set[str] = set()  # ids kept as failures by _mapping_failed
        # Text repairs the Moesif client made while decoding (invalid UTF-8 and the like).
        self.decode_problems: deque[str] = deque(maxlen=1000)
        self.moesif.on_decode_problem = self.decode_problems.append  # type: ignore[attr-defined]
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-send")
        self._pending: tuple[Future[DeliveryResult], str, list[Candidate], str | None,
                             dict[str, str]] | None = None

    # --- the run --------------------------------------------------------------------------
    def run(self) -> SyncOutcome:
        started = self.report.started
        try:
            # Companies first (kept in the state store), then users joining them from
            # there, then the companies again by id to settle their hashes and re-send
            # members that carried an older version (ENTITIES keeps the report's order).
            steps: list[tuple[str, Callable[[], None]]] = [
                ("companies", lambda: self.load_companies(until=started)),
                ("users", lambda: self.sync_entity("users", until=started)),
                ("companies", self.resolve_companies),
            ]
            for entity, step in steps:
                if self.stop_event.is_set():
                    break
                step()
                self.flush_pending()
                if step is not steps[0][1]:
                    self.retry_failures(entity)
                    self.flush_pending()
        except Interrupted:
            # A stop cut a wait short: commit what was confirmed, end as a stopped run.
            self._commit_in_flight()
        except ConnectorError as exc:
            # Configuration (exit 2), an outage that ended the run early or a Moesif failure
            # (exit 1): what Segment confirmed is committed, the rest waits for the next run
            # without an attempt counted (records are only marked failed page by page).
            self._commit_in_flight()
            return SyncOutcome(int(exit_code_for(exc)), self.report.finish("failed", str(exc)))
        finally:
            self._sender.shutdown(wait=True)
        failed = any(self.report.entities[e]["failed"] for e in ENTITIES)
        stopped = self.stop_event.is_set()
        status = "partial" if failed or stopped else "success"
        error = "stopped by signal before the end; the next run continues" if stopped else None
        return SyncOutcome(1 if failed else 0, self.report.finish(status, error))

    def _failed_before(self) -> frozenset[tuple[str, str]]:
        """Records still being retried after an earlier failure (read once, at start)."""
        pending = self.state.pending_failures("users", failed_before="9999")
        return frozenset(("users", f.id) for f in pending)

    def _commit_in_flight(self) -> None:
        """After a failure, still record what Segment already confirmed."""
        with contextlib.suppress(ConnectorError):
            self.flush_pending()

    def _since(self, entity: str) -> datetime | None:
        if self.full:
            return None
        cursor = self.state.cursor(entity)
        if cursor is None:
            return None
        return parse_timestamp(cursor) - timedelta(seconds=self.settings.moesif_lookback_seconds)

    def sync_entity(self, entity: str, until: datetime) -> None:
        since = self._since(entity)
        pages = self.moesif.iter_modified(entity, since=since, until=until,
                                          page_size=self.settings.moesif_page_size)
        joined = self._joined(pages) if entity == "users" else self._plain(pages)
        # A users pass over *every* user joins every user's current company: companies
        # found then at the same version need no member re-send afterwards.
        self.all_users_pass = entity == "users" and since is None
        prefetch = Prefetcher(joined, depth=2)
        try:
            waited = time.perf_counter()
            for page in prefetch:
                self.report.phases["fetch"] += time.perf_counter() - waited
                self.progress("total", entity=entity, total=page.total)
                if entity == "users":
                    self._join_companies(page)
                    self.process_users(page, cursor=page.cursor)
                else:
                    self.process_companies(page.docs, cursor=page.cursor)
                if self.stop_event.is_set():
                    log.info("stop requested: %s page finished and saved", entity)
                    break
                waited = time.perf_counter()
        finally:
            prefetch.close()

    # --- companies first (issue 12 item 3) ------------------------------------------------
    def load_companies(self, until: datetime) -> None:
        """The companies changed since the cursor, into the state store: the users pass
        joins them from there (no company search per users page). Their hashes and the
        member re-sends are settled by resolve_companies, after the users pass."""
        since = self._since("companies")
        pages = self.moesif.iter_modified("companies", since=since, until=until,
                                          page_size=self.settings.moesif_page_size)
        for page in pages:
            t0 = time.perf_counter()
            self._drain_decode_problems()  # reported when resolve_companies fetches again
            docs: dict[str, dict[str, Any]] = {}
            for doc in page.sources:
                cid = _id_text(doc.get("company_id"))
                if cid is None:
                    self.idless_companies.append(doc)
                else:
                    docs[cid] = doc
            self.company_cache.put(docs)
            self.loaded_companies.update(docs)
            self.companies_cursor = self._page_cursor(page.sources) or self.companies_cursor
            self.report.phases["fetch"] += time.perf_counter() - t0
            self.progress("total", entity="companies", total=page.total)
            if self.stop_event.is_set():
                return

    def _join_companies(self, joined: Joined) -> None:
        """A users page's companies, from the state store; by id from Moesif only the
        ones it does not hold (then kept too)."""
        wanted = {cid for d in joined.docs if (cid := _id_text(d.get("company_id")))
                  and cid not in joined.companies}
        if not wanted:
            return
        t0 = time.perf_counter()
        found = self.company_cache.get_many(sorted(wanted))
        missing = sorted(wanted - found.keys() - self.absent_companies)
        if missing:
            fetched: dict[str, dict[str, Any]] = {}
            for page in self.moesif.fetch_by_ids("companies", missing,
                                                 page_size=self.settings.moesif_page_size):
                for doc in page.sources:
                    if cid := _id_text(doc.get("company_id")):
                        fetched[cid] = doc
            self.company_cache.put(fetched)
            self.absent_companies.update(set(missing) - fetched.keys())
            found.update(fetched)
            joined.problems.extend(self._drain_decode_problems())
        joined.companies.update(found)
        if self.all_users_pass:
            for cid, doc in found.items():
                self.joined_companies[cid] = doc.get("modified_time")
        self.report.phases["fetch"] += time.perf_counter() - t0

    def resolve_companies(self) -> None:
        """The changed companies and those this run's users joined, fetched again by id:
        hashes are stored for the version fetched now, and members that carried another
        version (a company written during the run, or kept from an earlier run and
        changed with a modified_time in the past) are re-sent with it. A joined company
        whose members all carry exactly the version fetched now needs nothing."""
        if self.idless_companies:  # reported as invalid; they cannot be fetched by id
            self.process_companies(self.idless_companies, cursor=None)
            self.idless_companies = []
        ids = sorted(self.loaded_companies | self.member_versions.keys())
        for page in self.moesif.fetch_by_ids("companies", ids,
                                             page_size=self.settings.moesif_page_size):
            problems = self._drain_decode_problems()
            docs = page.sources
            self.company_cache.put({cid: d for d in docs
                                    if (cid := _id_text(d.get("company_id")))})
            todo = [d for d in docs if (cid := _id_text(d.get("company_id"))) is not None
                    and (cid in self.loaded_companies or not self._members_carry(cid, d))]
            if todo:
                self._report_decode_problems("companies", todo, problems)
                self.process_companies(todo, cursor=None)
            if self.stop_event.is_set():
                return
        if self.companies_cursor and not self.dry_run:
            self.state.commit_page(PageCommit("companies", {}, [], [],
                                              cursor=self.companies_cursor))

    def _page_cursor(self, docs: list[dict[str, Any]]) -> str | None:
        for doc in reversed(docs):
            try:
                return to_iso(parse_timestamp(doc.get("modified_time")))
            except ValueError:
                continue
        return None

    def _joined(self, pages: Iterator[Any]) -> Iterator[Joined]:
        """Users pages with their metrics (in the prefetch thread); their companies are
        joined on the run's thread, which owns the state store's connection."""
        for page in pages:
            yield self._join(page.sources, total=page.total, companies=False)

    def _plain(self, pages: Iterator[Any]) -> Iterator[Joined]:
        for page in pages:
            docs = page.sources
            yield Joined(docs, {}, {}, self._page_cursor(docs), page.total,
                         self._drain_decode_problems())

    def _join(self, docs: list[dict[str, Any]], total: int = 0,
              known: dict[str, dict[str, Any]] | None = None,
              companies: bool = True) -> Joined:
        """The page's 24-hour metrics (one search, unless SYNC_USER_METRICS is off) and,
        with `companies`, its companies (`known`, then the state store, then Moesif)."""
        user_ids = [uid for d in docs if (uid := _id_text(d.get("user_id")))]
        metrics: dict[str, dict[str, Any]] = {}
        if not self.metrics_unavailable and self.settings.sync_user_metrics:
            try:
                metrics = self.moesif.user_metrics(user_ids)
            except MoesifError as exc:  # optional enrichment: never the reason a run fails
                self.metrics_unavailable = True
                self.report.issue("users", None, "METRICS_UNAVAILABLE",
                                  f"24-hour metrics search failed, sending without "
                                  f"last24HourAggResults for the rest of the run: {exc}")
        joined = Joined(docs, dict(known or {}), metrics, self._page_cursor(docs), total,
                        self._drain_decode_problems())
        if companies:
            self._join_companies(joined)
        return joined

    def _drain_decode_problems(self) -> list[str]:
        found = []
        while self.decode_problems:
            found.append(self.decode_problems.popleft())
        return found

    def _report_decode_problems(self, entity: str, docs: list[dict[str, Any]],
                                problems: list[str], quiet: bool = False) -> None:
        """Moesif sent text that had to be repaired: name the records that carry it
        (`quiet`: say nothing when none of `docs` does)."""
        if not problems:
            return
        why = "; ".join(dict.fromkeys(problems))[:300]
        id_field = "user_id" if entity == "users" else "company_id"
        named: list[str | None] = [_id_text(d.get(id_field)) or _id_text(d.get("_id"))
                                   for d in docs if _has_replacement(d)]
        if not named and not quiet:
            named = [None]
        for rid in named:
            self.report.issue(entity, rid, IssueCode.BAD_ENCODING.value,
                              f"Moesif sent text that is not valid Unicode ({why}); "
                              "sent with U+FFFD in its place")

    # --- users ----------------------------------------------------------------------------
    def process_users(self, page: Joined, cursor: str | None,
                      members: bool = False, cache: dict[Any, Any] | None = None,
                      ) -> dict[str, str]:
        """Map, diff, send and commit one page of users; return id -> outcome.

        `members`: a changed company's users. Stored hashes count even in a full run (one
        stored with the same hash was sent earlier in this very run), and an unchanged
        member is not counted again: it was counted when the users pass saw it.
        `cache`: mapped companies to reuse (default: the run's, bounded).
        """
        entity = "users"
        counts = self.report.entities[entity]
        outcomes: dict[str, str] = {}
        candidates: list[Candidate] = []
        self._report_decode_problems(entity, page.docs, page.problems)
        if page.problems and page.companies:
            self._report_decode_problems("companies", list(page.companies.values()),
                                         page.problems, quiet=True)
        if cache is None:
            cache = self.map_cache  # each company (id, version) is mapped once (bounded)
            if len(cache) > 20_000:
                cache.clear()
        with Timer(self.report.phases, "map"):
            for doc in page.docs:
                counts["fetched"] += 1
                if not members:
                    self.inventory.add(entity, doc)
                candidate = self._map_user_guarded(doc, page, cache)
                if candidate is None:
                    key = _id_text(doc.get("user_id")) or _id_text(doc.get("_id"))
                    self._count_left_out(counts, key)
                    if key:
                        outcomes[key] = self.settled[key] = "invalid"
                    self._sample_issue(key, doc, [])
                    continue
                candidates.append(candidate)
        self.progress("fetched", entity=entity, n=len(page.docs))
        self._drift_guard()
        with Timer(self.report.phases, "diff"):
            ids = [c.id for c in candidates]
            stored = {} if self.full and not members else self.state.hashes(entity, ids)
            retried = self.state.failure_attempts(entity, ids)
            counts["retried"] += len(retried)
            changed = []
            for c in candidates:
                if stored.get(c.id) == c.hash and c.id not in retried:
                    outcomes[c.id] = "unchanged"
                    if members:
                        counts["fetched"] -= 1
                    else:
                        counts["unchanged"] += 1
                else:
                    changed.append(c)
        sendable: list[Candidate] = []
        with Timer(self.report.phases, "map"):
            for c in changed:
                if self._shape_guarded(c):
                    sendable.append(c)
                else:
                    self._count_left_out(counts, c.id)
                    outcomes[c.id] = self.settled[c.id] = "invalid"
                    self._sample_issue(c.id, c.doc, c.messages)
        counts["changed"] += len(sendable)
        for c in sendable:
            self._count_fields(c)
        self._sample(sendable)
        if self.dry_run:
            for c in sendable:  # a dry run stores no hashes: remember them instead
                outcomes[c.id] = self.settled[c.id] = "would-send"
        else:
            self._deliver(entity, sendable, cursor, outcomes)
        return outcomes

    def _drift_guard(self) -> None:
        """SCHEMA_DRIFT_POLICY=stop: a vanished mapped field stops the run before the
        page is sent (SchemaDriftStopped, exit 1)."""
        if self.drift_stop and not self.dry_run:
            check_stop(self.state.conn, self.inventory, self.mapped_sources,
                       self.settings.schema_drift_min_records)

    def _map_user_guarded(self, doc: dict[str, Any], page: Joined,
                          cache: dict[Any, Any]) -> Candidate | None:
        """`_map_user`, with any unforeseen error made that record's problem: it is
        reported and left out, and the rest of the page goes on."""
        try:
            return self._map_user(doc, page, cache)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, reported
            _log_unforeseen("mapping a user", exc)
            rid = _id_text(doc.get("user_id")) or _id_text(doc.get("_id"))
            self._mapping_failed("users", rid, f"mapping or hashing failed: {_failure_text(exc)}")
            return None

    def _count_left_out(self, counts: dict[str, int], rid: str | None) -> None:
        """A record left out is invalid, unless an unforeseen error did it: that one
        failed (it is retried by the next run, and this run ends partial)."""
        if rid is not None and rid in self.mapping_failures:
            counts["changed"] += 1
            counts["failed"] += 1
        else:
            counts["invalid"] += 1

    def _mapping_failed(self, entity: str, rid: str | None, detail: str) -> None:
        """Report a record an unforeseen error left out, and keep it as a failure so a
        later run (after a fix) retries it, up to SYNC_MAX_ATTEMPTS, instead of losing
        it until it changes in Moesif."""
        code = IssueCode.MAPPING_FAILED.value
        if rid is not None:
            self.mapping_failures.add(rid)
        if rid is None or self.dry_run:
            self.report.issue(entity, rid, code, detail)
            return
        for f in self.state.commit_page(PageCommit(entity, {}, [], [(rid, code, detail)])):
            if f.gave_up:
                self.report.entities[entity]["gave_up"] += 1
            self.report.issue(entity, f.id, "GAVE_UP" if f.gave_up else code,
                              f"{code} after {f.attempts} attempts: {detail}" if f.gave_up
                              else detail, f.attempts)

    def _map_user(self, doc: dict[str, Any], page: Joined,
                  cache: dict[Any, Any]) -> Candidate | None:
        raw_company = doc.get("company_id")
        company_id = _id_text(raw_company)
        company = page.companies.get(company_id) if company_id else None
        user_id = doc.get("user_id")
        record_id = _id_text(user_id)
        joins = {"@company": company,
                 "@metrics": page.metrics.get(record_id) if record_id else None}
        identify = self.mappings.apply("identify", doc, joins, cache=cache)
        for code, detail in identify.issues:
            self.report.issue("users", record_id or _id_text(doc.get("_id")), code, detail)
        if identify.missing_required or record_id is None:
            missing = identify.missing_required or ["userId"]
            detail = f"required field(s) missing: {', '.join(missing)}"
            if user_id not in (None, "") and record_id is None:
                detail = "user_id is not an id (text or integer)"
            self.report.issue("users", record_id or _id_text(doc.get("_id")), "MISSING_ID",
                              detail)
            return None
        if raw_company not in (None, "") and company_id is None:
            self.report.issue("users", record_id, IssueCode.BAD_VALUE.value,
                              "company_id: not an id (text or integer); sent without a company")
        group = None
        version = _version_key(company, cache) if company is not None else None
        if company is not None:  # remember which version of the company it carries
            versions = self.member_versions.setdefault(company_id, {})
            if version not in versions:
                versions[version] = _fingerprint(company)
        if company is not None and self.settings.sync_send_group_calls:
            group_key = ("group", company_id, version)
            shared = cache.get(group_key)
            if shared is None:
                shared = cache[group_key] = self.mappings.apply("group", company, {})
                shared.message.pop("timestamp", None)  # the user's change time, for both
            if not shared.missing_required:
                group = Applied({**shared.message, "userId": record_id}, [], [], shared.fields)
        if company_id and company is None:
            self.report.issue("users", record_id, "COMPANY_NOT_FOUND",
                              f"company {company_id} is not in Moesif's companies search")
        timestamp = None
        if identify.message.get("timestamp"):
            timestamp = parse_timestamp(identify.message.pop("timestamp"))
        hashed = [_strip(identify.message, self.identify_volatile),
                  group.message if group else None, to_iso(timestamp) if timestamp else None]
        digest = hashlib.blake2b(jsonutil.dumps_sorted(hashed), digest_size=16).hexdigest()
        return Candidate(record_id, doc, timestamp, identify, group, digest)

    def _members_carry(self, cid: str, doc: dict[str, Any]) -> bool:
        """Whether every member this run mapped carries this very company document."""
        versions = self.member_versions.get(cid)
        if not versions or len(versions) != 1:
            return False
        (mapped,) = versions.values()
        return mapped is not None and mapped == _fingerprint(doc)

    def _company_digest(self, doc: dict[str, Any]) -> tuple[Applied, Applied, str]:
        """A company's traits object, group body and their content hash."""
        obj = self.mappings.apply("company_object", doc, {})
        grp = self.mappings.apply("group", doc, {})
        digest = hashlib.blake2b(jsonutil.dumps_sorted([obj.message, grp.message]),
                                 digest_size=16).hexdigest()
        return obj, grp, digest

    def _message_id(self, kind: str, c: Candidate) -> str:
        return f"ms-{kind[:3]}-" + hashlib.blake2b(
            f"users|{c.id}|{kind}|{c.hash}|{self.mappings.version}".encode(),
            digest_size=20).hexdigest()

    def _shape_guarded(self, c: Candidate) -> bool:
        """`_shape`, with any unforeseen error (the library, the encoder, sizing) made
        that record's problem."""
        try:
            return self._shape(c)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, reported
            _log_unforeseen("shaping a user's messages", exc)
            c.messages.clear()
            self._mapping_failed("users", c.id,
                                 f"shaping or encoding failed: {_failure_text(exc)}")
            return False

    def _shape(self, c: Candidate) -> bool:
        """Shape every message of a record, trimming to fit 32 KB; False if it cannot."""
        parts = [("identify", c.identify.message, self.identify_trimmable, "identify")]
        if c.group is not None:
            parts.append(("group", c.group.message, self.group_trimmable, "group"))
        for kind, body, trimmable, prefix in parts:
            shaped = self._shape_one(kind, body, c, trimmable, prefix)
            if shaped is None:
                return False
            c.messages.append(shaped)
        if c.trimmed:
            self.report.issue("users", c.id, "OVERSIZE_TRIMMED",
                              f"dropped {', '.join(c.trimmed)} to fit Segment's 32 KB limit")
        return True

    def _shape_one(self, kind: str, body: dict[str, Any], c: Candidate,
                   trimmable: list[tuple[str, tuple[str, ...]]], prefix: str) -> OutMessage | None:
        message_id = self._message_id(kind, c)
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
                self.report.issue("users", c.id, "OVERSIZE",
                                  f"{kind} is over 32 KB even without "
                                  f"{', '.join(t for t, _ in trimmable) or 'free-form fields'}")
                return None
            _, target, path = max(present)
            _pop_path(body, path)
            c.trimmed.append(f"{prefix}.{target}")

    def _count_fields(self, c: Candidate) -> None:
        self.report.coverage.add_all(c.identify.fields)
        if c.group is not None:
            self.report.coverage.add_all(c.group.fields)
        for key in set(c.trimmed):
            self.report.coverage.add(self.mappings.event_id(key, TRIMMED))

    def _sample_issue(self, rid: str | None, doc: dict[str, Any],
                      messages: list[OutMessage], code: str | None = None) -> None:
        """Sample a record with an issue (the first of each code; by default the issue just
        reported), so the report shows what went wrong beside what went right."""
        if code is None:
            last = self.report.issues[-1] if self.report.issues else None
            if last is None or last.get("id") != rid:
                return
            code = str(last["code"])
        if len(self._sampled_codes) >= ISSUE_SAMPLE_COUNT or code in self._sampled_codes:
            return
        self._sampled_codes.add(code)
        self._add_sample(rid, doc, messages)

    def _sample(self, sendable: list[Candidate]) -> None:
        # Issues reported since the last page (mapping: BAD_TIMESTAMP, OVERSIZE_TRIMMED...)
        recent = {i["id"]: i["code"] for i in self.report.issues[self._issues_seen:]
                  if i.get("id")}
        self._issues_seen = len(self.report.issues)
        for c in sendable:
            if c.id in recent:  # sent, with an issue: sampled as one
                self._sample_issue(c.id, c.doc, c.messages, recent[c.id])
                continue
            if self._clean_samples >= SAMPLE_COUNT:
                continue
            self._clean_samples += 1
            self._add_sample(c.id, c.doc, c.messages)

    def _add_sample(self, rid: str | None, doc: dict[str, Any],
                    messages: list[OutMessage]) -> None:
        try:
            # The source may hold what JSON cannot carry (it was left out of the messages).
            source = doc if encodable(doc) else sanitise(doc, "")[0]
            self.report.samples.append({
                "entity": "users", "id": rid, "source": mask_paths(source, self.personal),
                "messages": [self._mask_message(o.message) for o in messages]})
        except Exception as exc:  # noqa: BLE001 - a sample is optional, never the run's end
            _log_unforeseen("sampling a record for the report", exc)

    def _mask_message(self, message: dict[str, Any]) -> dict[str, Any]:
        personal = {r.target for section in ("identify", "group")
                    for r in self.mappings.rules(section) if r.personal}
        personal |= {f"traits.company.{r.target}" for r in self.mappings.rules("company_object")
                     if r.personal}
        masked = mask_paths(message, personal)
        if isinstance(masked.get("traits"), dict) and "metadata" in masked["traits"]:
            masked["traits"]["metadata"] = mask_paths(masked["traits"]["metadata"],
                                                      {"email", "name", "phone",
                                                       "first_name", "last_name"})
        return masked

    def _deliver(self, entity: str, sendable: list[Candidate], cursor: str | None,
                 outcomes: dict[str, str]) -> None:
        """Hand a page to the sender thread; the previous page is committed first.

        Sending page N overlaps with mapping page N+1, while commits (hashes, failures,
        cursor) still happen one page at a time, in order, on this thread, and only
        after Segment confirmed. `outcomes` is filled in when the page is committed.
        """
        counts = self.report.entities[entity]
        try:
            self.flush_pending()
        except ConnectorError:
            counts["changed"] -= len(sendable)  # mapped, never sent: the next run sends it
            raise
        out = [m for c in sendable for m in c.messages]
        for m in out:
            self.report.messages[m.message["type"]]["sent"] += 1
        counts["sent"] += len(sendable)
        future = self._sender.submit(self._send, out)
        self._pending = (future, entity, sendable, cursor, outcomes)

    def _send(self, out: list[OutMessage]) -> DeliveryResult:
        started = time.perf_counter()
        try:
            return self.sink.send(out, on_batch=lambda n: self.progress("delivered", n=n))
        finally:
            self.report.phases["send"] += time.perf_counter() - started

    def flush_pending(self) -> None:
        """Wait for the page in flight and commit its confirmed outcome."""
        if self._pending is None:
            return
        future, entity, sendable, cursor, outcomes = self._pending
        self._pending = None
        try:
            result: DeliveryResult = future.result()
        except (ConfigError, DestinationUnavailable) as exc:
            self._commit_confirmed(entity, sendable, partial_result(exc))
            raise
        counts = self.report.entities[entity]
        hashes: dict[str, str] = {}
        failures: list[tuple[str, str, str]] = []
        for c in sendable:
            problems = [result.failed[m.message["messageId"]] for m in c.messages
                        if m.message["messageId"] in result.failed]
            for m in c.messages:
                key = "failed" if m.message["messageId"] in result.failed else "delivered"
                self.report.messages[m.message["type"]][key] += 1
            if problems:
                failures.append((c.id, problems[0][0], problems[0][1]))
                outcomes[c.id] = "failed"
                if c.doc.get("company_id"):
                    cid = str(c.doc["company_id"])
                    # a transient failure anywhere keeps the company retrying
                    if self.failed_companies.get(cid) != "DELIVERY_FAILED":
                        self.failed_companies[cid] = problems[0][0]
            else:
                hashes[c.id] = c.hash
                outcomes[c.id] = "delivered"
        with Timer(self.report.phases, "store"):
            recorded = self.state.commit_page(PageCommit(
                entity=entity, hashes=hashes, resolved=list(hashes), failures=failures,
                cursor=cursor))
        for rid, _, _ in failures:
            self.settled[rid] = "failed"
        codes = {rid: code for rid, code, _ in failures}
        for c in sendable:
            if c.id in codes:
                self._sample_issue(c.id, c.doc, c.messages, codes[c.id])
        counts["delivered"] += len(hashes)
        counts["failed"] += len(failures)
        for f in recorded:
            if f.gave_up:
                counts["gave_up"] += 1
                self.report.issue(entity, f.id, "GAVE_UP",
                                  f"{f.code} after {f.attempts} attempts: {f.detail}", f.attempts)
            else:
                self.report.issue(entity, f.id, f.code, f.detail, f.attempts)

    def _commit_confirmed(self, entity: str, sendable: list[Candidate],
                          result: DeliveryResult | None) -> None:
        """A send stopped early (misconfiguration or outage): commit only the records whose
        every message Segment confirmed. No failure is recorded (no attempt counted) and
        the cursor does not move: the rest is sent again by the next run."""
        if result is None:
            return
        hashes = {c.id: c.hash for c in sendable if c.messages and all(
            m.message["messageId"] in result.delivered for m in c.messages)}
        for c in sendable:
            for m in c.messages:
                key = "delivered" if m.message["messageId"] in result.delivered else "failed"
                self.report.messages[m.message["type"]][key] += 1
        # Sent but never confirmed counts as failed, so changed = delivered + failed holds
        # in a failed run too (the report only: no attempt is counted in the state).
        for c in sendable:
            if c.id not in hashes:
                self.report.entities[entity]["failed"] += 1
                self.report.issue(entity, c.id, "DELIVERY_FAILED", "sent but not confirmed "
                                  "before the run stopped; the next run sends it again")
        if hashes:
            with Timer(self.report.phases, "store"):
                self.state.commit_page(PageCommit(entity=entity, hashes=hashes,
                                                  resolved=list(hashes), failures=[]))
        self.report.entities[entity]["delivered"] += len(hashes)

    # --- companies ------------------------------------------------------------------------
    def process_companies(self, docs: list[dict[str, Any]], cursor: str | None,
                          problems: list[str] | None = None) -> None:
        """A changed company re-sends its members (identify with the new traits.company,
        and group), since Segment's group call needs a userId."""
        entity = "companies"
        counts = self.report.entities[entity]
        changed: dict[str, tuple[dict[str, Any], str]] = {}
        self._report_decode_problems(entity, docs, problems or [])
        with Timer(self.report.phases, "map"):
            mapped = []
            for doc in docs:
                counts["fetched"] += 1
                self.inventory.add(entity, doc)
                found = self._map_company_guarded(doc)
                if found is None:
                    self._count_left_out(counts, _id_text(doc.get("company_id")))
                    continue
                mapped.append(found)
                self.companies_seen.add(found[0])
        self.progress("fetched", entity=entity, n=len(docs))
        self._drift_guard()
        with Timer(self.report.phases, "diff"):
            ids = [m[0] for m in mapped]
            stored = {} if self.full else self.state.hashes(entity, ids)
            retried = self.state.failure_attempts(entity, ids)
            counts["retried"] += len(retried)
            for cid, doc, digest in mapped:
                if stored.get(cid) == digest and cid not in retried:
                    counts["unchanged"] += 1
                else:
                    changed[cid] = (doc, digest)
        if not changed:
            if not self.dry_run and cursor:
                self.state.commit_page(PageCommit(entity, {}, [], [], cursor=cursor))
            return
        # Members need no re-send only if this run's all-users pass mapped every one of
        # them with exactly this version: a company written mid-run (with a modified_time
        # in the past) left earlier pages' members with the older one.
        covered = {cid for cid, (doc, _) in changed.items()
                   if cid in self.joined_companies and self._members_carry(cid, doc)
                   and not self.stop_event.is_set()}
        member_outcomes = self._sync_members(
            {cid: v for cid, v in changed.items() if cid not in covered})
        for cid in covered:  # every member was handled by this run's all-users pass
            member_outcomes[cid] = ["failed" if cid in self.failed_companies else "delivered"]
        self._resolve_companies(changed, member_outcomes, cursor)

    def _map_company_guarded(self, doc: dict[str, Any]) -> tuple[str, dict[str, Any], str] | None:
        """(id, document, content hash) of a company, or None when it is invalid; any
        unforeseen error is that company's problem, reported."""
        entity = "companies"
        raw_id = doc.get("company_id")
        cid = _id_text(raw_id)
        if cid is None:
            detail = "company record without company_id" if raw_id in (None, "") else \
                "company_id is not an id (text or integer)"
            self.report.issue(entity, _id_text(doc.get("_id")), "MISSING_ID", detail)
            return None
        try:
            obj, _, digest = self._company_digest(doc)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, reported
            _log_unforeseen("mapping a company", exc)
            self._mapping_failed(entity, cid, f"mapping or hashing failed: {_failure_text(exc)}")
            return None
        for code, detail in obj.issues:
            self.report.issue(entity, cid, code, detail)
        return cid, doc, digest

    def _sync_members(self, changed: dict[str, tuple[dict[str, Any], str]]
                      ) -> dict[str, list[str]]:
        """Run every member of the changed companies through the user pipeline."""
        known = {cid: doc for cid, (doc, _) in changed.items()}
        by_company: dict[str, list[str]] = {cid: [] for cid in changed}
        # Members are mapped with exactly the company versions being stored: a company
        # cached earlier in the run under the same modified_time may differ in content.
        cache: dict[Any, Any] = {}
        pages = self.moesif.fetch_by_ids("users", sorted(changed), field="company_id",
                                         page_size=self.settings.moesif_page_size)
        for page in pages:
            fresh = [d for d in page.sources
                     if (_id_text(d.get("user_id")) or _id_text(d.get("_id"))) not in self.settled]
            outcomes: dict[str, str] = {}
            if fresh:
                t0 = time.perf_counter()
                joined = self._join(fresh, known=known)
                self.report.phases["fetch"] += time.perf_counter() - t0
                outcomes = self.process_users(joined, cursor=None, members=True, cache=cache)
            self.flush_pending()  # fills `outcomes` with what Segment confirmed
            outcomes = {**self.settled, **outcomes}
            for doc in page.sources:
                uid, cid = _id_text(doc.get("user_id")), _id_text(doc.get("company_id"))
                if uid and cid and cid in by_company:
                    by_company[cid].append(outcomes.get(uid, "invalid"))
        return by_company

    def _resolve_companies(self, changed: dict[str, tuple[dict[str, Any], str]],
                           member_outcomes: dict[str, list[str]], cursor: str | None) -> None:
        entity = "companies"
        counts = self.report.entities[entity]
        hashes: dict[str, str] = {}
        failures: list[tuple[str, str, str]] = []
        for cid, (_, digest) in changed.items():
            outcomes = member_outcomes.get(cid, [])
            if not outcomes:
                counts["invalid"] += 1
                self.report.issue(entity, cid, "NO_MEMBERS",
                                  "no Moesif user belongs to this company; Segment group calls "
                                  "need a userId, so nothing was sent")
                hashes[cid] = digest  # nothing to send until it changes again
                continue
            counts["changed"] += 1
            if self.dry_run:
                continue
            counts["sent"] += 1
            if "failed" in outcomes:
                # A company whose members Segment refused gives up with them; one whose
                # members could not be delivered is retried until they are.
                code = self.failed_companies.get(cid, "DELIVERY_FAILED")
                failures.append((cid, code,
                                 f"{outcomes.count('failed')} member user(s) not delivered"))
            else:
                hashes[cid] = digest
        if self.dry_run:
            return
        with Timer(self.report.phases, "store"):
            recorded = self.state.commit_page(PageCommit(
                entity=entity, hashes=hashes, resolved=list(hashes), failures=failures,
                cursor=cursor))
        counts["delivered"] += len([h for h in hashes if member_outcomes.get(h)])
        counts["failed"] += len(failures)
        for f in recorded:
            if f.gave_up:
                counts["gave_up"] += 1
            code = "GAVE_UP" if f.gave_up else f.code
            self.report.issue(entity, f.id, code, f.detail, f.attempts)

    # --- failures from earlier runs ---------------------------------------------------------
    def retry_failures(self, entity: str) -> None:
        """Records whose delivery failed before are retried whatever the cursor says."""
        if self.stop_event.is_set():
            return
        if entity == "companies":
            self._recheck_companies_changed_mid_run()
        pending = [f for f in self.state.pending_failures(
            entity, failed_before=self.report.started.isoformat(timespec="microseconds"))
            if f.id not in self.settled]
        if not pending:
            return
        attempts = {f.id: f.attempts for f in pending}
        found: set[str] = set()
        id_field = "user_id" if entity == "users" else "company_id"
        for page in self.moesif.fetch_by_ids(entity, list(attempts),
                                             page_size=self.settings.moesif_page_size):
            found.update(rid for d in page.sources if (rid := _id_text(d.get(id_field))))
            if entity == "users":
                self.process_users(self._join(page.sources), cursor=None)
            else:
                self.process_companies(page.sources, cursor=None,
                                       problems=self._drain_decode_problems())
        # A failed record that is now invalid (e.g. OVERSIZE) waits for a change in Moesif,
        # reported; it no longer counts as pending.
        invalid_now = [rid for rid in attempts if self.settled.get(rid) == "invalid"
                       and rid not in self.mapping_failures]
        if invalid_now and not self.dry_run:
            self.state.commit_page(PageCommit(entity, {}, invalid_now, []))
        gone = [rid for rid in attempts if rid not in found]
        if gone and not self.dry_run:
            self.state.commit_page(PageCommit(entity, {}, gone, []))
            for rid in gone:
                self.report.issue(entity, rid, "GONE",
                                  "failed earlier and no longer exists in Moesif; dropped")

    def _recheck_companies_changed_mid_run(self) -> None:
        """A company whose members this run mapped with two different versions was
        written during the run. If the companies pass did not see it (its modified_time
        lies before the pass's window), it is checked now, so the members mapped with the
        older version are re-sent and the stored hash matches what members carry."""
        stale = sorted(cid for cid, versions in self.member_versions.items()
                       if len(versions) > 1 and cid not in self.companies_seen)
        if not stale:
            return
        for page in self.moesif.fetch_by_ids("companies", stale,
                                             page_size=self.settings.moesif_page_size):
            self.process_companies(page.sources, cursor=None,
                                   problems=self._drain_decode_problems())


def failed_outcome(settings: Settings, mode: str, error: str, exit_code: int) -> SyncOutcome:
    """The outcome of a run that could not start: a report that says why."""
    report = Report(new_run_id(), mode, "-", settings).finish(Status.FAILED, error)
    return SyncOutcome(exit_code, report)


def _run_to_the_end(run: SyncRun, stop_event: threading.Event,
                    settings: Settings) -> SyncOutcome:
    """`run.run()`, but whatever happens it ends with a report: an exception escaping the
    run (a bug, a failure nobody classified) becomes a `failed` report and its exit code,
    and a run a signal stopped is `interrupted` (exit 1), since it did not finish."""
    try:
        outcome = run.run()
    except Exception as exc:
        # A full disk or a damaged state file mid-run is the state home's problem (exit 2).
        exc = state_error(exc, settings.state_path) or exc
        text = str(exc) if isinstance(exc, ConnectorError) else f"{type(exc).__name__}: {exc}"
        error = redact(text, settings.secrets())
        log.error("sync run %s failed: %s", run.report.run_id, error)
        log.debug("where the run failed", exc_info=True)
        return SyncOutcome(exit_code_for(exc), run.report.finish(Status.FAILED, error))
    report = outcome.report
    if report.error:
        report.error = redact(report.error, settings.secrets())
    if stop_event.is_set() and report.status in (Status.SUCCESS, Status.PARTIAL):
        report.status = Status.INTERRUPTED
        return SyncOutcome(ExitCode.FAILED, report)
    return outcome


def _schema_and_alerts(settings: Settings, conn: sqlite3.Connection, run: SyncRun,
                       report: RunReport) -> None:
    """Issue 9: the report's schema section (and the inventory kept for the next run),
    then the sync alert rules. Neither may fail the run: a problem is logged."""
    from connector import alerts, schema_drift

    try:
        report.schema_section = schema_drift.compare(
            conn, run.inventory, run.mapped_sources,
            min_records=settings.schema_drift_min_records,
            policy=settings.schema_drift_policy)
        if not run.dry_run:
            schema_drift.save(conn, run.inventory, report.run_id)
        if schema_drift.is_drift(report.schema_section):
            log.warning("schema drift in run %s: %d added, %d type changed, %d vanished",
                        report.run_id, len(report.schema_section["added"]),
                        len(report.schema_section["type_changed"]),
                        len(report.schema_section["vanished"]))
    except sqlite3.Error as exc:
        log.warning("schema drift not recorded: %s", exc)
    alerts.after_sync(settings, conn, report)


def _deliver_alerts(settings: Settings, conn: sqlite3.Connection) -> None:
    """Webhook delivery after the report is saved, bounded by ALERT_WEBHOOK_MAX_SECONDS."""
    from connector import alerts

    alerts.deliver_pending(settings, conn)


def run_sync(settings: Settings, mode: str = "incremental",
             stop_event: threading.Event | None = None, progress: Progress | None = None,
             conn: sqlite3.Connection | None = None) -> SyncOutcome:
    """One run, with its report stored, whatever ends it. Configuration problems come
    back as exit code 2, with a report that says why (not stored: the run never began)."""
    from connector.logsetup import run_context
    from connector.report_store import ReportStore

    if mode not in tuple(Mode):
        raise ValueError(f"unknown mode {mode!r}")
    stop_event = stop_event or threading.Event()
    own_conn = conn is None
    try:
        settings.require("moesif_management_api_key", "segment_write_key")
        mappings = load_mappings(settings.mappings_dir)
        conn = conn or connect_state(settings)
        store = ReportStore(conn)
        run = SyncRun(settings, mode, conn, mappings, stop_event, progress)
    except ConnectorError as exc:
        if own_conn and conn is not None:
            conn.close()
        return failed_outcome(settings, mode, str(exc), exit_code=exit_code_for(exc))
    # Records are acyclic JSON trees freed by reference counting; the cyclic collector's
    # frequent passes over millions of young objects cost a third of the mapping time.
    gc_threshold = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        store.start(run.report.run_id, to_iso(run.report.started), mode)
        with run_context(run.report.run_id):
            log.info("sync run %s started (%s)", run.report.run_id, mode)
            outcome = _run_to_the_end(run, stop_event, settings)
            log.info("sync run %s finished: %s", run.report.run_id, outcome.report.status)
        with state_errors(settings.state_path):
            _schema_and_alerts(settings, conn, run, outcome.report)
            store.save(outcome.report)
            store.prune(settings.report_keep_runs)
        _deliver_alerts(settings, conn)
        return outcome
    finally:
        gc.set_threshold(*gc_threshold)
        if own_conn and conn is not None:
            conn.close()
