"""Shape: a user's messages built by the Segment library, trimmed to fit 32 KB."""

from __future__ import annotations

from connector.sync.mapper import Issue
from connector.sync.records import Candidate, _failure_text, _log_unforeseen


class ShapeStage:
    """Shape: a user's messages built by the Segment library, trimmed to fit 32 KB (by the
    run's RecordMapper, connector.sync.mapper), with what it met reported.

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

    def _message_id(self, kind: str, c: Candidate) -> str:
        return self.mapper.message_id(kind, c)

    def _shape_guarded(self, c: Candidate) -> bool:
        """Shape a record's messages, with any unforeseen error (the library, the encoder,
        sizing) made that record's problem."""
        issues: list[Issue] = []
        try:
            shaped = self.mapper.shape(c, issues)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, reported
            self._report_user_issues(issues)
            _log_unforeseen("shaping a user's messages", exc)
            c.messages.clear()
            self._mapping_failed("users", c.id,
                                 f"shaping or encoding failed: {_failure_text(exc)}")
            return False
        self._report_user_issues(issues)
        return shaped

    def _report_user_issues(self, issues: list[Issue]) -> None:
        for rid, code, detail in issues:
            self.report.issue("users", rid, code, detail)
