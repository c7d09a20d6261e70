"""The run report as a typed model, and the builder a sync run fills in while it works.

`ReportBuilder` is mutable and cheap (plain dicts and counters on the hot path);
`ReportBuilder.finish()` turns it into a `RunReport`, the one shape the store saves and
loads, and the renderers, metrics and CLI read. The stored JSON is the model's
`to_dict()`; reports written before the model existed (no `report_version`) load as
version 1, since their keys are the same.
"""

from __future__ import annotations

import copy
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connector.common.redaction import redact
from connector.common.timeutil import to_iso, utcnow
from connector.errors import IssueCode
from connector.mapping import Coverage

if TYPE_CHECKING:
    from connector.settings import Settings

REPORT_VERSION = 2  # 1: the untyped dict reports (no version field); 2: this model
ENTITIES = ("users", "companies")
COUNT_KEYS = ("fetched", "changed", "unchanged", "invalid", "sent", "delivered", "failed",
              "retried", "gave_up")
MESSAGE_TYPES = ("identify", "group")
PHASE_NAMES = ("fetch", "map", "diff", "send", "store")
MAX_STORED_ISSUES = 10_000
DRY_RUN_NOTE = ("dry run: nothing was sent and no state moved; "
                "'changed' counts what would have been sent")


class Mode(StrEnum):
    INCREMENTAL = "incremental"
    FULL = "full"
    DRY_RUN = "dry-run"


class Status(StrEnum):
    """How a run ended (see the README's table of what sets each)."""

    RUNNING = "running"          # started, not ended yet (its process is alive)
    SUCCESS = "success"          # every record delivered, unchanged or invalid (reported)
    PARTIAL = "partial"          # some deliveries failed; the next run retries them
    FAILED = "failed"            # stopped by a configuration, outage or unexpected error
    INTERRUPTED = "interrupted"  # stopped by a signal, or its process died mid-run


FINISHED = frozenset({Status.SUCCESS, Status.PARTIAL, Status.FAILED, Status.INTERRUPTED})


class Outcome(StrEnum):
    """Where a fetched record ended up (the per-entity counts metrics export)."""

    DELIVERED = "delivered"
    UNCHANGED = "unchanged"
    INVALID = "invalid"
    FAILED = "failed"
    GAVE_UP = "gave_up"


class _Part(BaseModel):
    """Read-only `part["key"]` / `part.get("key")` for code written against the dict
    report; new code reads attributes."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, default)
        return default if value is None else value


class EntityCounts(_Part):
    fetched: int = 0
    changed: int = 0
    unchanged: int = 0
    invalid: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    gave_up: int = 0

    def outcome(self, outcome: Outcome) -> int:
        return int(getattr(self, outcome.value))


class MessageCounts(_Part):
    sent: int = 0
    delivered: int = 0
    failed: int = 0


class FieldCoverage(_Part):
    present: int = 0
    missing: int = 0
    converted: int = 0
    trimmed: int = 0

    @property
    def total(self) -> int:
        """The records this field was mapped for."""
        return self.present + self.missing


class Issue(_Part):
    entity: str = ""
    id: str | None = None
    # A known code becomes an IssueCode; a code this version does not know stays text.
    code: IssueCode | str = Field(default="UNKNOWN", union_mode="left_to_right")
    detail: str = ""
    attempts: int | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> str | None:
        return None if value is None else str(value)

    @field_validator("code", mode="before")
    @classmethod
    def _code_text(cls, value: Any) -> Any:
        return "UNKNOWN" if value in (None, "") else value


class Throughput(_Part):
    records_per_s: float = 0.0
    messages_per_s: float = 0.0


class Sample(_Part):
    entity: str = ""
    id: str | None = None
    source: Any = None
    messages: list[Any] = Field(default_factory=list)

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> str | None:
        return None if value is None else str(value)


class RunSettings(_Part):
    """The settings a run used (never a key); more may be added, so extras are kept."""

    moesif_api_url: str | None = None
    segment_host: str | None = None
    page_size: int | None = None
    lookback_seconds: int | None = None
    group_calls: bool | None = None
    max_attempts: int | None = None


class RunReport(_Part):
    """One run's report: what the store keeps and every reader reads."""

    report_version: int = 1  # a stored report without the field is a version-1 report
    run_id: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    mode: Mode | str | None = Field(default=None, union_mode="left_to_right")
    status: Status | str = Field(default=Status.FAILED, union_mode="left_to_right")
    error: str | None = None
    mapping_version: str | None = None
    settings: RunSettings = Field(default_factory=RunSettings)
    entities: dict[str, EntityCounts] = Field(default_factory=dict)
    messages: dict[str, MessageCounts] = Field(default_factory=dict)
    fields: dict[str, FieldCoverage] = Field(default_factory=dict)
    issues: list[Issue] = Field(default_factory=list)
    issue_counts: dict[str, int] = Field(default_factory=dict)
    issues_truncated: bool = False
    phases: dict[str, float] = Field(default_factory=dict)
    duration_s: float | None = None
    throughput: Throughput | None = None
    samples: list[Sample] = Field(default_factory=list)
    dry_run_note: str | None = None
    # Issue 9: the run's schema drift (connector.schema_drift.compare) and its alerts
    # (raised, resolved, open). Optional: older reports have neither. The field is not
    # named `schema` because that shadows a pydantic method; its stored key is `schema`.
    schema_section: dict[str, Any] | None = Field(default=None, alias="schema")
    alerts: dict[str, Any] | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status_text(cls, value: Any) -> Any:
        return "unknown" if value in (None, "") else value

    @property
    def dry_run(self) -> bool:
        return self.mode == Mode.DRY_RUN

    @property
    def running(self) -> bool:
        return self.status == Status.RUNNING

    def total(self, count: str) -> int:
        """One count summed over entities (e.g. every failed record)."""
        return sum(int(getattr(c, count, 0) or 0) for c in self.entities.values())

    def to_dict(self) -> dict[str, Any]:
        """The stored (and `report show --format json`) form: the version-1 keys plus
        `report_version`; absent optional parts are left out as they always were."""
        data = self.model_dump(mode="json")
        data["settings"] = self.settings.model_dump(mode="json", exclude_none=True)
        for issue in data["issues"]:
            if issue.get("attempts") is None:
                issue.pop("attempts", None)
        if data.get("dry_run_note") is None:
            data.pop("dry_run_note", None)
        if data.get("throughput") is None:
            data.pop("throughput", None)
        schema = data.pop("schema_section", None)
        if schema is not None:
            data["schema"] = schema
        if data.get("alerts") is None:
            data.pop("alerts", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A stored report of any version: a missing part is empty, and a part of an
        unexpected shape is left out rather than making the whole report unreadable (a
        report is read when something looks off, which is when it may be incomplete)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
        data = copy.deepcopy(data) if isinstance(data, dict) else {}
        for _ in range(20):
            if not any([_drop(data, err["loc"]) for err in errors]):
                break
            data = _without_dropped(data)
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                errors = exc.errors()
        return cls(run_id=str(data.get("run_id") or ""), status="unknown")


class RunSummary(_Part):
    """One line of `report list`: read without decompressing the report."""

    run_id: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    mode: Mode | str | None = Field(default=None, union_mode="left_to_right")
    status: Status | str = Field(default="unknown", union_mode="left_to_right")
    entities: dict[str, EntityCounts] = Field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        try:
            return cls.model_validate(data)
        except ValidationError:
            return cls.model_validate({**data, "entities": {}})


_DROPPED = object()


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Remove the deepest part of `data` that `loc` (a validation error's path) reaches."""
    node: Any = data
    last: tuple[Any, Any] | None = None
    for part in loc:
        if isinstance(node, dict) and part in node or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            last = (node, part)
            node = node[part]
        else:
            break
    if last is None:
        return False
    container, key = last
    if isinstance(container, list):
        container[key] = _DROPPED  # removed after the pass, so indexes stay valid
    else:
        del container[key]
    return True


def _without_dropped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_dropped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_dropped(v) for v in value if v is not _DROPPED]
    return value


class ReportBuilder:
    """Accumulates a run's counts, coverage, issues and timings (mutable, hot-path cheap).

    `entities[entity]["fetched"] += 1` style counters and `issue(...)` are what the job
    uses while it works; `finish()` returns the typed `RunReport`.
    """

    def __init__(self, run_id: str, mode: str, mapping_version: str,
                 settings: Settings) -> None:
        self.run_id = run_id
        self.mode = mode
        self.started: datetime = utcnow()
        self.mapping_version = mapping_version
        self.entities: dict[str, dict[str, int]] = {e: dict.fromkeys(COUNT_KEYS, 0)
                                                    for e in ENTITIES}
        self.messages: dict[str, dict[str, int]] = {
            k: {"sent": 0, "delivered": 0, "failed": 0} for k in MESSAGE_TYPES}
        self.coverage = Coverage()
        self.issues: list[dict[str, Any]] = []
        self.issue_counts: dict[str, int] = {}
        self.phases: dict[str, float] = dict.fromkeys(PHASE_NAMES, 0.0)
        self.samples: list[dict[str, Any]] = []
        # A report is kept on disk and shown to people: no key goes into it, even one an
        # issue's detail quotes (an API's answer echoing it, a key pasted into a URL).
        self._secrets = settings.secrets()
        self.settings: dict[str, Any] = {
            "moesif_api_url": redact(settings.moesif_api_url, self._secrets),
            "segment_host": redact(settings.segment_host, self._secrets),
            "page_size": settings.moesif_page_size,
            "lookback_seconds": settings.moesif_lookback_seconds,
            "group_calls": settings.sync_send_group_calls,
            "max_attempts": settings.sync_max_attempts,
        }

    def issue(self, entity: str, record_id: str | None, code: str, detail: str,
              attempts: int | None = None) -> None:
        code = str(code)
        self.issue_counts[code] = self.issue_counts.get(code, 0) + 1
        if len(self.issues) < MAX_STORED_ISSUES:
            if self._secrets:
                detail = redact(detail, self._secrets)
            item: dict[str, Any] = {"entity": entity, "id": record_id, "code": code,
                                    "detail": detail}
            if attempts is not None:
                item["attempts"] = attempts
            self.issues.append(item)

    def finish(self, status: str, error: str | None) -> RunReport:
        finished = utcnow()
        duration = max((finished - self.started).total_seconds(), 1e-9)
        records = sum(e["fetched"] for e in self.entities.values())
        messages = sum(m["delivered"] for m in self.messages.values())
        return RunReport.model_validate({
            "report_version": REPORT_VERSION,
            "run_id": self.run_id,
            "started_at": to_iso(self.started),
            "finished_at": to_iso(finished),
            "mode": self.mode,
            "status": status,
            "error": error,
            "mapping_version": self.mapping_version,
            "settings": self.settings,
            "entities": self.entities,
            "messages": self.messages,
            "fields": self.coverage.as_dict(),
            "issues": self.issues,
            "issue_counts": dict(sorted(self.issue_counts.items())),
            "issues_truncated": sum(self.issue_counts.values()) > len(self.issues),
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "duration_s": round(duration, 4),
            "throughput": {"records_per_s": round(records / duration, 1),
                           "messages_per_s": round(messages / duration, 1)},
            "samples": self.samples,
            "dry_run_note": DRY_RUN_NOTE if self.mode == Mode.DRY_RUN else None,
        })
