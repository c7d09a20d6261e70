"""Source: Moesif pages in, joined with their companies (state store first) and metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from connector.common import jsonutil
from connector.common.timeutil import parse_timestamp, to_iso
from connector.errors import IssueCode
from connector.moesif.management import MoesifError
from connector.sync.records import Joined, _has_replacement, _id_text


class SourceStage:
    """Source: Moesif pages in, joined with their companies (state store first) and metrics.

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

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

    def _join_companies(self, joined: Joined, texts_only: bool = False) -> None:
        """A users page's companies, from the state store; by id from Moesif only the
        ones it does not hold (then kept too). `texts_only`: as the texts the store keeps
        (`joined.company_texts`, for the map process), not read into documents here."""
        wanted = {cid for d in joined.docs if (cid := _id_text(d.get("company_id")))
                  and cid not in joined.companies}
        if not wanted:
            return
        t0 = time.perf_counter()
        if texts_only:
            found_texts = self.company_cache.get_texts(sorted(wanted))
            missing = sorted(wanted - found_texts.keys() - self.absent_companies)
            fetched = self._fetch_companies(missing, joined) if missing else {}
            found_texts.update(self.company_cache.get_texts(sorted(fetched)))
            joined.company_texts.update(found_texts)
            if self.all_users_pass:
                self.joined_companies.update(found_texts)
            self.report.phases["fetch"] += time.perf_counter() - t0
            return
        found = self.company_cache.get_many(sorted(wanted))
        missing = sorted(wanted - found.keys() - self.absent_companies)
        if missing:
            found.update(self._fetch_companies(missing, joined))
        joined.companies.update(found)
        if self.all_users_pass:
            self.joined_companies.update(found)
        self.report.phases["fetch"] += time.perf_counter() - t0

    def _fetch_companies(self, missing: list[str], joined: Joined) -> dict[str, dict[str, Any]]:
        """Companies the store does not hold, by id from Moesif, then kept there."""
        fetched: dict[str, dict[str, Any]] = {}
        for page in self.moesif.fetch_by_ids("companies", missing,
                                             page_size=self.settings.moesif_page_size):
            for doc in page.sources:
                if cid := _id_text(doc.get("company_id")):
                    fetched[cid] = doc
        self.company_cache.put(fetched)
        self.absent_companies.update(set(missing) - fetched.keys())
        joined.problems.extend(self._drain_decode_problems())
        return fetched

    def _page_cursor(self, docs: list[dict[str, Any]]) -> str | None:
        """Where the next run starts: the page's last modification time, never past the
        run's start. The search asked for records modified before it, so a later time
        (a record's own odd `modified_time`, year 9999, a server ignoring the range) is
        no position: the stored cursor only moves forward, and one such value would make
        every later run skip everything modified before it."""
        for doc in reversed(docs):
            try:
                when = parse_timestamp(doc.get("modified_time"))
            except ValueError:
                continue
            return to_iso(min(when, self.report.started))
        return None

    def _joined(self, pages: Iterator[Any]) -> Iterator[Joined]:
        """Users pages with their metrics (in the prefetch thread); their companies are
        joined on the run's thread, which owns the state store's connection."""
        pages = iter(pages)
        while True:
            before = jsonutil.fallback_count()
            page = next(pages, None)
            if page is None:
                return
            joined = self._join(page.sources, total=page.total, companies=False)
            # Any fallback meanwhile (this page's or another thread's) counts: a doubt
            # only costs the map process a pickle instead of JSON.
            joined.exact = jsonutil.fallback_count() == before
            yield joined

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
