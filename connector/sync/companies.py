"""Companies: mapped and diffed, their members re-sent, their hashes settled."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from connector.common import jsonutil
from connector.mapping import Applied
from connector.sync.records import Timer, _failure_text, _fingerprint, _id_text, _log_unforeseen
from connector.sync.state import PageCommit


class CompanyStage:
    """Companies: mapped and diffed, their members re-sent, their hashes settled.

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

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
                "company_id is not an id (visible text or integer)"
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
        unsent: set[str] = set()
        for cid, (_, digest) in changed.items():
            outcomes = member_outcomes.get(cid, [])
            if not outcomes:
                counts["invalid"] += 1
                self.report.issue(entity, cid, "NO_MEMBERS",
                                  "no Moesif user belongs to this company; Segment group calls "
                                  "need a userId, so nothing was sent")
                hashes[cid] = digest  # nothing to send until it changes again
                continue
            if cid not in self.companies_reached and "failed" not in outcomes:
                counts["invalid"] += 1
                self.report.issue(entity, cid, "NO_MEMBERS",
                                  f"none of its {len(outcomes)} member user(s) could be sent "
                                  "(see their issues), so nothing carried this company to "
                                  "Segment; it is sent with them once one can be")
                hashes[cid] = digest  # its members' next change sends it
                unsent.add(cid)
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
        counts["delivered"] += len([h for h in hashes if member_outcomes.get(h)
                                    and h not in unsent])
        counts["failed"] += len(failures)
        for f in recorded:
            if f.gave_up:
                counts["gave_up"] += 1
            code = "GAVE_UP" if f.gave_up else f.code
            self.report.issue(entity, f.id, code, f.detail, f.attempts)

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
