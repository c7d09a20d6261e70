"""Map and diff: a page of users mapped to Segment messages, compared with stored hashes."""

from __future__ import annotations

from concurrent.futures import CancelledError
from types import EllipsisType
from typing import Any

from connector.errors import IssueCode
from connector.schema_drift import check_stop
from connector.sync import mapworker
from connector.sync.mapper import Mapped
from connector.sync.mapworker import MapProcess, PageResult, RecordResult
from connector.sync.records import (
    Candidate,
    Joined,
    Timer,
    _failure_text,
    _fingerprint,
    _id_text,
    _log_unforeseen,
    log,
)
from connector.sync.state import PageCommit, _decode_doc


class UserStage:
    """Map and diff: a page of users mapped to Segment messages, compared with stored hashes.

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

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
        mapped = self._mapped_result(page)  # the map process's work, if it did the page
        if page.company_texts and (mapped is None or page.problems):
            self._company_docs(page)
        self._report_decode_problems(entity, page.docs, page.problems)
        if page.problems and page.companies:
            self._report_decode_problems("companies", list(page.companies.values()),
                                         page.problems, quiet=True)
        if cache is None:
            cache = self.map_cache  # each company (id, version) is mapped once (bounded)
            if len(cache) > 20_000:
                cache.clear()
        shaped_by: dict[int, RecordResult] = {}
        with Timer(self.report.phases, "map"):
            for index, doc in enumerate(page.docs):
                counts["fetched"] += 1
                if not members:
                    self.inventory.add(entity, doc)
                if mapped is None:
                    candidate = self._map_user_guarded(doc, page, cache)
                else:
                    result = mapped.record(index)
                    candidate = self._apply_record(result, doc, page)
                    if candidate is not None:
                        shaped_by[id(candidate)] = result
                if candidate is None:
                    key = _id_text(doc.get("user_id")) or _id_text(doc.get("_id"))
                    self._count_left_out(counts, key)
                    if key:
                        outcomes[key] = self.settled[key] = "invalid"
                    self._sample_issue(key, doc, [])
                    continue
                candidates.append(candidate)
        self.progress("fetched", entity=entity, n=len(page.docs))
        candidates = self._latest_of_each(candidates, counts)
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
                done = shaped_by.get(id(c))
                if self._shape_guarded(c) if done is None else self._apply_shaped(c, done):
                    sendable.append(c)
                else:
                    self._count_left_out(counts, c.id)
                    outcomes[c.id] = self.settled[c.id] = "invalid"
                    self._sample_issue(c.id, c.doc, c.messages)
        counts["changed"] += len(sendable)
        for c in sendable:
            self._count_fields(c)
        for c in candidates:
            if outcomes.get(c.id) != "invalid" and (cid := _id_text(c.doc.get("company_id"))):
                self.companies_reached.add(cid)
        self._sample(sendable)
        if self.dry_run:
            for c in sendable:  # a dry run stores no hashes: remember them instead
                outcomes[c.id] = self.settled[c.id] = "would-send"
        else:
            self._deliver(entity, sendable, cursor, outcomes)
        return outcomes

    @staticmethod
    def _latest_of_each(candidates: list[Candidate], counts: Any) -> list[Candidate]:
        """One candidate per user id: a page holding a user twice (a server repeating a
        hit, or two records with one id) sends and commits its last one, the latest in
        the search's order. Two would send two versions of one profile, count one
        delivery for two sends, and could store the one's hash beside the other's
        failure. The earlier ones are not counted as fetched: they are the same record."""
        if len({c.id for c in candidates}) == len(candidates):
            return candidates
        last = {c.id: i for i, c in enumerate(candidates)}
        kept = [c for i, c in enumerate(candidates) if last[c.id] == i]
        counts["fetched"] -= len(candidates) - len(kept)
        return kept

    # --- the map process (connector.sync.mapworker) ---------------------------------------
    def _map_process_ready(self, page: Joined) -> bool:
        """Whether this users page goes to the map process (started here for a pass big
        enough); False: it is mapped in this process."""
        if self._map_process is not None:
            return True
        if self._map_process_tried or not mapworker.wanted(self.settings.sync_map_process,
                                                           page.total):
            return False
        self._map_process_tried = True
        try:
            self._map_process = MapProcess(self.mappings.files,
                                           self.settings.sync_send_group_calls)
        except Exception as exc:  # noqa: BLE001 - an optimisation, never the run's end
            self._map_process_failed(type(exc).__name__, starting=True)
            return False
        log.info("mapping users in a second process (SYNC_MAP_PROCESS=%s)",
                 self.settings.sync_map_process)
        # auto: this first page is mapped here while the process starts
        return self.settings.sync_map_process == "on"

    def _map_process_for(self, page: Joined) -> bool:
        """Hand a users page to the map process; False: it is mapped here after all."""
        if self._map_process is None:
            return False
        try:
            page.mapped = self._map_process.submit(page, mapworker.company_texts(page))
        except Exception as exc:  # noqa: BLE001 - an optimisation, never the run's end
            self._map_process_failed(type(exc).__name__)
            return False
        return True

    def _company_docs(self, page: Joined) -> None:
        """A page joined for the map process but mapped here after all (or reporting a
        decoding problem): its companies read from their texts."""
        missing = page.company_texts.keys() - page.companies.keys()
        page.companies.update({cid: _decode_doc(*page.company_texts[cid]) for cid in missing})

    def _mapped_result(self, page: Joined) -> PageResult | None:
        future, page.mapped = page.mapped, None
        if future is None:
            return None
        try:
            if self._map_process is None:  # stopped since the page was handed over
                raise CancelledError
            result = self._map_process.result(future)
        except (Exception, CancelledError) as exc:  # noqa: BLE001 - mapped here instead
            # (CancelledError: a page handed over before the process was stopped)
            self._map_process_failed(type(exc).__name__)
            return None
        if result.mappings_version != self.mappings.version:
            self._map_process_failed("the mapping files changed during the run")
            return None
        return result

    def _map_process_failed(self, why: str, starting: bool = False) -> None:
        """Stop using the map process (once: later pages it held are mapped here quietly).
        `why` names an exception by its type, never its text (it may quote a record)."""
        if self._map_process is not None or starting:
            log.warning("map process unavailable (%s): users are mapped in this process for "
                        "the rest of the run", why)
        self._close_map_process(kill=True)

    def _close_map_process(self, kill: bool = False) -> None:
        if self._map_process is not None:
            self._map_process.close(kill=kill)
            self._map_process = None

    def _apply_record(self, result: RecordResult, doc: dict[str, Any],
                      page: Joined) -> Candidate | None:
        """A record the map process mapped, applied as `_map_user_guarded` applies its own."""
        if result.failure is not None:
            log.error("mapping a user failed: %s; the record was left out", result.failure_type)
            rid = _id_text(doc.get("user_id")) or _id_text(doc.get("_id"))
            self._mapping_failed("users", rid, result.failure)
            return None
        candidate = self._apply_mapped(
            Mapped(result.candidate, result.issues, result.company_id, result.version),
            page.companies, result.fingerprint)
        if candidate is not None:
            candidate.doc = doc
        return candidate

    def _apply_shaped(self, c: Candidate, result: RecordResult) -> bool:
        """A record's messages the map process shaped, applied as `_shape_guarded` does."""
        self._report_user_issues(result.shape_issues)
        if result.shape_failure is not None:
            log.error("shaping a user's messages failed: %s; the record was left out",
                      result.shape_failure_type)
            c.messages.clear()
            self._mapping_failed("users", c.id, result.shape_failure)
            return False
        return result.shaped

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
        mapped = self.mapper.map_user(doc, page.companies, page.metrics, cache)
        return self._apply_mapped(mapped, page.companies)

    def _apply_mapped(self, mapped: Mapped, companies: dict[str, dict[str, Any]],
                      fingerprint: bytes | None | EllipsisType = ...) -> Candidate | None:
        """What mapping a record produced, applied to the run: its issues reported in
        order, the company version a member carries remembered (see process_companies).
        `fingerprint`: of that company document, when the caller has it already."""
        for rid, code, detail in mapped.issues:
            self.report.issue("users", rid, code, detail)
        if mapped.company_id is not None:
            versions = self.member_versions.setdefault(mapped.company_id, {})
            if mapped.version not in versions:
                versions[mapped.version] = _fingerprint(companies[mapped.company_id]) \
                    if fingerprint is ... else fingerprint
        return mapped.candidate
