"""The report's field coverage and its samples of records (personal fields masked)."""

from __future__ import annotations

from typing import Any

from connector.mapping import TRIMMED, encodable, sanitise
from connector.segment.sink import OutMessage
from connector.sync.records import Candidate, _log_unforeseen, mask_paths

SAMPLE_COUNT = 3
ISSUE_SAMPLE_COUNT = 5  # records with issues sampled beside the clean ones, one per code


class SampleStage:
    """The report's field coverage and its samples of records (personal fields masked).

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

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
