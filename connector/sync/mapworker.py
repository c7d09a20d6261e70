"""The map process: the users pass's per-record work in a second process.

A full sync is CPU-bound in Python, and one process holds one core (the GIL). Per user,
most of the work is pure: map, hash, shape and encode its messages (connector.sync.mapper).
That part runs here, in a process of its own, a page ahead of the run, while the run's
process fetches, counts the schema inventory, diffs, sends and commits.

What crosses between the two is cheap to carry and exact:
- in: the page's documents and 24-hour metrics as JSON (orjson writes back exactly what
  it read; a page the standard library had to read, with NaN or huge integers, goes as a
  pickle), and the ids of its companies, with the texts the company cache keeps of those
  the process was not sent before;
- out: per record, packed into plain tuples as soon as it is mapped (its documents and
  message bodies are freed while still in the CPU's cache, which measured 8% faster),
  the candidate without its documents (its messages as the bytes to send), the issues
  met in order, and the company version it carries (with the document's fingerprint).

The run applies the results exactly as it applies its own in-process mapping, so the
messages, hashes, issues and report are the same either way (tests compare both). The
process is only a means: if it cannot start, dies, hangs or loaded other mapping files,
the run maps in its own process again and says so in its log. It holds no key: it
shapes messages, never sends them.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from connector.mapping import Applied, load_mappings
from connector.segment.sink import OutMessage, SegmentSink
from connector.sync.mapper import Issue, RecordMapper
from connector.sync.records import Candidate, Joined, _failure_text, _fingerprint
from connector.sync.state import _decode_doc, _encode_doc

log = logging.getLogger("connector.sync.job")

# `SYNC_MAP_PROCESS=auto` uses the process for a users pass of at least this many users
# (below it, starting a process costs more than it saves), on a machine with 2+ cores.
AUTO_MIN_USERS = 10_000
# The map cache is cleared past this many entries, as the run's own (users.py) is.
CACHE_LIMIT = 20_000
# A page takes the process well under a second; one that takes this long means it hangs:
# it is stopped and the run maps the rest itself.
PAGE_TIMEOUT_SECONDS = 300.0
# Company texts the process keeps (about 700 bytes each): past this, both sides forget
# them all at the same page and the texts are sent again as pages need them.
TEXTS_LIMIT = 50_000


@dataclass(slots=True)
class RecordResult:
    """One record as the map process left it (see the module docstring)."""

    issues: list[Issue]
    candidate: Candidate | None = None
    failure: str | None = None           # an unforeseen error while mapping
    failure_type: str = ""
    company_id: str | None = None
    version: Any = None
    fingerprint: bytes | None = None
    shaped: bool = False
    shape_issues: list[Issue] = field(default_factory=list)
    shape_failure: str | None = None     # an unforeseen error while shaping
    shape_failure_type: str = ""

    def packed(self) -> tuple[Any, ...]:
        """Plain tuples, lists, text and bytes (a tenth of the cost of pickling the
        objects): the message bytes, not the messages; no documents."""
        c = self.candidate
        packed = None
        if c is not None:
            group = c.group
            packed = (c.id, c.hash, c.identify.missing_required, c.identify.fields,
                      None if group is None else group.missing_required,
                      None if group is None else group.fields,
                      [(m.encoded, m.library_size, m.kind, m.message_id) for m in c.messages],
                      c.trimmed)
        return (self.issues, packed, self.failure, self.failure_type, self.company_id,
                self.version, self.fingerprint, self.shaped, self.shape_issues,
                self.shape_failure, self.shape_failure_type)


def _unpack_record(issues: list[Issue], packed: tuple[Any, ...] | None,
                   *rest: Any) -> RecordResult:
    candidate = None
    if packed is not None:
        rid, digest, i_missing, i_fields, g_missing, g_fields, messages, trimmed = packed
        group = None if g_fields is None else Applied({}, [], g_missing, g_fields)
        # The document is the run's own (set when applied); the timestamp was only needed
        # to shape the messages.
        candidate = Candidate(rid, {}, None, Applied({}, [], i_missing, i_fields), group,
                              digest, [OutMessage(None, encoded, size, ("users", rid), kind, mid)
                                       for encoded, size, kind, mid in messages], trimmed)
    return RecordResult(issues, candidate, *rest)


@dataclass(slots=True)
class PageResult:
    mappings_version: str
    packed: list[tuple[Any, ...]]  # RecordResult.packed() of each record, in page order

    def record(self, index: int) -> RecordResult:
        """The page's `index`-th record, unpacked when the run applies it."""
        return _unpack_record(*self.packed[index])


# --- in the map process -------------------------------------------------------------------
class _Worker:
    def __init__(self, mapping_files: list[str], send_group_calls: bool) -> None:
        files = [Path(f) for f in mapping_files]
        mappings = load_mappings(files[0].parent, tuple(f.name for f in files))
        # A sink only for its shaping (the library's envelope): it never sends.
        sink = SegmentSink(SecretStr("shaping-only"), "http://127.0.0.1")
        self.mapper = RecordMapper(mappings, sink, send_group_calls)
        self.cache: dict[Any, Any] = {}
        self.fingerprints: dict[tuple[str, Any], bytes | None] = {}
        self.companies: dict[str, tuple[str, dict[str, Any]]] = {}  # id -> (text, document)
        self.texts: dict[str, tuple[str, bool | None]] = {}  # as sent, see MapProcess.submit

    def map_page(self, blob: bytes, exact: bool, company_ids: list[str],
                 new_texts: dict[str, tuple[str, bool | None]], forget: bool) -> PageResult:
        docs, metrics = orjson.loads(blob) if exact else pickle.loads(blob)  # noqa: S301
        if forget:
            self.texts.clear()
        self.texts.update(new_texts)
        joined = {cid: self.company(cid, *self.texts[cid]) for cid in company_ids}
        if len(self.cache) > CACHE_LIMIT:
            self.cache.clear()
            self.fingerprints.clear()
            self.companies.clear()
        # Packed record by record: each record's documents and message bodies are freed
        # while still in the cache, not all at once after the page.
        packed = []
        for index, doc in enumerate(docs):
            docs[index] = None  # the record holds the only reference: freed once packed
            packed.append(self.map_record(doc, joined, metrics).packed())
        return PageResult(self.mapper.mappings.version, packed)

    def map_record(self, doc: dict[str, Any], companies: dict[str, dict[str, Any]],
                   metrics: dict[str, Any]) -> RecordResult:
        try:
            mapped = self.mapper.map_user(doc, companies, metrics, self.cache)
        except Exception as exc:  # noqa: BLE001 - that record's problem, as in the run
            return RecordResult([], failure=f"mapping or hashing failed: {_failure_text(exc)}",
                                failure_type=type(exc).__name__)
        result = RecordResult(mapped.issues, company_id=mapped.company_id,
                              version=mapped.version)
        if mapped.company_id is not None:
            result.fingerprint = self.fingerprint(mapped.company_id, mapped.version,
                                                  companies[mapped.company_id])
        c = mapped.candidate
        if c is None:
            return result
        try:
            result.shaped = self.mapper.shape(c, result.shape_issues)
        except Exception as exc:  # noqa: BLE001 - that record's problem, as in the run
            c.messages.clear()
            result.shape_failure = f"shaping or encoding failed: {_failure_text(exc)}"
            result.shape_failure_type = type(exc).__name__
        result.candidate = c  # packed without its document and message bodies (packed)
        return result

    def company(self, cid: str, text: str, exact: bool | None) -> dict[str, Any]:
        """A company document, read once per text: pages ask for the same companies
        again and again. Only a document with a plain version is shared between pages
        (an odd one is keyed by the object itself, which must then be the page's own,
        as in the run)."""
        kept = self.companies.get(cid)
        if kept is not None and kept[0] == text:
            return kept[1]
        doc = _decode_doc(text, exact)
        if isinstance(doc, dict) and isinstance(doc.get("modified_time"), str):
            self.companies[cid] = (text, doc)
        return doc

    def fingerprint(self, cid: str, version: Any, doc: dict[str, Any]) -> bytes | None:
        if isinstance(version, tuple):  # an object's id: not a key that lasts
            return _fingerprint(doc)
        key = (cid, version)
        if key not in self.fingerprints:
            self.fingerprints[key] = _fingerprint(doc)
        return self.fingerprints[key]


_worker: _Worker | None = None


def _start(mapping_files: list[str], send_group_calls: bool) -> None:
    global _worker
    _worker = _Worker(mapping_files, send_group_calls)
    # As in the run (run_sync): records are acyclic and freed by reference counting; the
    # cyclic collector's frequent passes over young objects would cost a third of the work.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _map_page(blob: bytes, exact: bool, company_ids: list[str],
              new_texts: dict[str, tuple[str, bool | None]], forget: bool) -> PageResult:
    assert _worker is not None, "the map process was not started"
    return _worker.map_page(blob, exact, company_ids, new_texts, forget)


def _ready() -> bool:
    return _worker is not None


# --- in the run's process -----------------------------------------------------------------
def wanted(setting: str, total_users: int) -> bool:
    """Whether a users pass of `total_users` (Moesif's count) uses the map process."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return total_users >= AUTO_MIN_USERS and (os.cpu_count() or 1) > 1


class MapProcess:
    """The run's handle on the map process: pages in, futures of their results out."""

    def __init__(self, mapping_files: list[Path], send_group_calls: bool) -> None:
        # spawn: a fresh interpreter, not a fork of a process that runs threads.
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start, initargs=([str(f) for f in mapping_files], send_group_calls))
        self._pool.submit(_ready)  # starts it now, while the run goes on
        self._sent: dict[str, tuple[str, bool | None]] = {}  # company texts it holds

    def submit(self, page: Joined, companies: dict[str, tuple[str, bool | None]]
               ) -> Future[PageResult]:
        """Hand a page over; of its companies' texts only those the process does not
        hold yet (it keeps every text it was sent: about 700 bytes a company)."""
        content = [page.docs, page.metrics]
        blob = orjson.dumps(content) if page.exact else pickle.dumps(content, protocol=5)
        forget = len(self._sent) > TEXTS_LIMIT  # both sides start over, in step
        if forget:
            self._sent.clear()
        new = {cid: text for cid, text in companies.items() if self._sent.get(cid) != text}
        self._sent.update(new)
        return self._pool.submit(_map_page, blob, page.exact, list(companies), new, forget)

    def result(self, future: Future[PageResult]) -> PageResult:
        """A page's result. Raises if the process died (checked every 0.2 s: a killed
        worker can leave the pool's own bookkeeping waiting) or the page took longer than
        PAGE_TIMEOUT_SECONDS."""
        deadline = time.monotonic() + PAGE_TIMEOUT_SECONDS
        while True:
            try:
                return future.result(timeout=min(0.2, PAGE_TIMEOUT_SECONDS))
            except TimeoutError:
                if not self.alive():
                    raise BrokenProcessPool("the map process died") from None
                if time.monotonic() >= deadline:
                    raise

    def alive(self) -> bool:
        procs = getattr(self._pool, "_processes", None) or {}
        return bool(procs) and all(p.exitcode is None for p in list(procs.values()))

    def close(self, kill: bool = False) -> None:
        """Stop the process: once idle (after the last page), or at once (`kill`: it hung
        or failed; what it was doing is not wanted any more)."""
        if kill:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)


def company_texts(page: Joined) -> dict[str, tuple[str, bool | None]]:
    """The page's companies as text: the company cache's own (those the page was joined
    with), and any document the page holds besides, encoded here."""
    out = dict(page.company_texts)
    for cid, doc in page.companies.items():
        if cid not in out:
            out[cid] = (_encode_doc(doc), None)
    return out
