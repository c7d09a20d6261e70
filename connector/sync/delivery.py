"""Sink and state: a page sent on the sender thread, then its confirmed outcome committed."""

from __future__ import annotations

import contextlib
import copy
import time
from collections import Counter

from connector.errors import ConnectorError, DestinationUnavailable
from connector.segment.sink import DeliveryResult, OutMessage, partial_result
from connector.settings import ConfigError
from connector.sync.records import Candidate, Timer
from connector.sync.state import PageCommit

# Pages sent and not yet committed at most (each holds its messages until committed).
PAGES_IN_FLIGHT = 2


class DeliveryStage:
    """Sink and state: a page sent on the sender thread, then its confirmed outcome committed.

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

    def _commit_in_flight(self) -> None:
        """After a failure, still record what Segment already confirmed, page by page."""
        while self._pending:
            with contextlib.suppress(ConnectorError):
                self._commit_oldest()

    def _deliver(self, entity: str, sendable: list[Candidate], cursor: str | None,
                 outcomes: dict[str, str]) -> None:
        """Hand a page to the sender thread, once fewer than `PAGES_IN_FLIGHT` are there.

        Sending pages N and N-1 overlaps with mapping page N+1 (two, so that one slow
        batch does not stall the mapping), while commits (hashes, failures, cursor)
        still happen one page at a time, in order, on this thread, and only after
        Segment confirmed. `outcomes` is filled in when the page is committed.
        """
        counts = self.report.entities[entity]
        try:
            while len(self._pending) >= PAGES_IN_FLIGHT:
                self._commit_oldest()
        except ConnectorError:
            counts["changed"] -= len(sendable)  # mapped, never sent: the next run sends it
            raise
        out = [m for c in sendable for m in c.messages]
        self._count_messages(out, "sent")
        counts["sent"] += len(sendable)
        future = self._sender.submit(self._send, out)
        self._pending.append((future, entity, sendable, cursor, outcomes))

    def _count_messages(self, out: list[OutMessage], key: str) -> None:
        kinds = Counter(m.kind for m in out)
        for kind, n in kinds.items():
            self.report.messages[kind][key] += n

    def _send(self, out: list[OutMessage]) -> DeliveryResult:
        stopped = self._sending_stopped
        if stopped is not None:
            # An earlier page found Segment misconfigured or out: the run is ending, and a
            # page queued behind it must not start its own round of retries.
            again = copy.copy(stopped)
            again.partial = DeliveryResult()  # type: ignore[attr-defined]
            raise again
        started = time.perf_counter()
        try:
            return self.sink.send(out, on_batch=lambda n: self.progress("delivered", n=n))
        except (ConfigError, DestinationUnavailable) as exc:
            self._sending_stopped = exc
            raise
        finally:
            self.report.phases["send"] += time.perf_counter() - started

    def flush_pending(self) -> None:
        """Wait for the pages in flight and commit their confirmed outcomes, in order."""
        while self._pending:
            self._commit_oldest()

    def _commit_oldest(self) -> None:
        future, entity, sendable, cursor, outcomes = self._pending.popleft()
        try:
            result: DeliveryResult = future.result()
        except (ConfigError, DestinationUnavailable) as exc:
            self._commit_confirmed(entity, sendable, partial_result(exc))
            raise
        counts = self.report.entities[entity]
        hashes: dict[str, str] = {}
        failures: list[tuple[str, str, str]] = []
        if not result.failed:  # the common case, without a look-up per message
            self._count_messages([m for c in sendable for m in c.messages], "delivered")
            for c in sendable:
                hashes[c.id] = c.hash
                outcomes[c.id] = "delivered"
        for c in sendable if result.failed else ():
            problems = [result.failed[m.message_id] for m in c.messages
                        if m.message_id in result.failed]
            for m in c.messages:
                key = "failed" if m.message_id in result.failed else "delivered"
                self.report.messages[m.kind][key] += 1
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
            m.message_id in result.delivered for m in c.messages)}
        for c in sendable:
            for m in c.messages:
                key = "delivered" if m.message_id in result.delivered else "failed"
                self.report.messages[m.kind][key] += 1
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
