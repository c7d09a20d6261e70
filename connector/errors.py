"""The one exception tree, the failure categories and the exit codes of every command.

Callers branch on the *category* of a failure, never on which client raised it (the way
`singer_sdk/exceptions.py` and Airbyte's failure types work):

| category      | meaning                                                      | exit |
| ------------- | ------------------------------------------------------------ | ---- |
| CONFIG        | a setting, an option, a mapping file or the state home is wrong | 2 |
| AUTH          | a key or subscription was refused (a configuration problem)  | 2    |
| TRANSIENT     | an outage, a timeout, a rate limit: the next run retries     | 1    |
| REFUSED       | the destination refused one message; the rest goes on        | 1    |
| MALFORMED     | one input record, line or event is unusable; the rest goes on | 1   |
| INTERNAL      | a bug: reported with the run, never a traceback only         | 1    |

Messages name settings, fields and statuses, never a key or a record's personal values.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1          # some deliveries failed or the run was cut short; the next run retries
    CONFIGURATION = 2   # configuration, usage or authentication: a person must act


class FailureKind(StrEnum):
    CONFIG = "config"
    AUTH = "auth"
    TRANSIENT = "transient"
    REFUSED = "refused"
    MALFORMED = "malformed"
    INTERNAL = "internal"


_EXIT_BY_KIND = {
    FailureKind.CONFIG: ExitCode.CONFIGURATION,
    FailureKind.AUTH: ExitCode.CONFIGURATION,
    FailureKind.TRANSIENT: ExitCode.FAILED,
    FailureKind.REFUSED: ExitCode.FAILED,
    FailureKind.MALFORMED: ExitCode.FAILED,
    FailureKind.INTERNAL: ExitCode.FAILED,
}


def exit_code_for_kind(kind: FailureKind) -> ExitCode:
    """The one place a failure category becomes an exit code."""
    return _EXIT_BY_KIND[kind]


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""

    kind: FailureKind = FailureKind.INTERNAL

    @property
    def exit_code(self) -> ExitCode:
        return exit_code_for_kind(self.kind)


class ConfigError(ConnectorError):
    """A setting, option, mapping file or state home is wrong. The message names it."""

    kind = FailureKind.CONFIG


class EndpointError(ConfigError):
    """A destination answered in a way that says its address (or our mapping) is wrong:
    404/405, a redirect, a proxy's HTML page, every message of a batch refused alike."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ConfigError):
    """A key or subscription was refused (401/402/403)."""

    kind = FailureKind.AUTH

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(ConnectorError):
    """One attempt failed in a way that waiting can fix (timeouts, 429, 5xx)."""

    kind = FailureKind.TRANSIENT

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class DestinationUnavailable(RetryableError):
    """Retries ran out (or an outage was detected): the run stops early, the next retries."""


class RefusedError(ConnectorError):
    """The destination refused a message or batch as such: retrying it cannot help."""

    kind = FailureKind.REFUSED

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class MalformedInput(ConnectorError):
    """One input (record, line, event) cannot be used; it is reported with a code."""

    kind = FailureKind.MALFORMED

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = str(reason_code)
        self.detail = detail

    def __reduce__(self) -> tuple[type[MalformedInput], tuple[str, str]]:
        # Picklable with both attributes (events may be parsed in a worker process).
        return (type(self), (self.reason_code, self.detail))


class Interrupted(ConnectorError):
    """A stop was asked for (SIGTERM/SIGINT) while waiting; nothing unconfirmed moved."""

    kind = FailureKind.TRANSIENT


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of any exception: its category's, or FAILED for an unexpected one."""
    if isinstance(exc, ConnectorError):
        return exc.exit_code
    return ExitCode.FAILED


class IssueCode(StrEnum):
    """Why a sync record did not simply go through; reports and alerts key on these."""

    MISSING_ID = "MISSING_ID"                # no user_id / company_id (or a required field)
    BAD_VALUE = "BAD_VALUE"                  # a field's value cannot be converted or sent
    BAD_TIMESTAMP = "BAD_TIMESTAMP"          # an unparsable date: sent without it
    BAD_ENCODING = "BAD_ENCODING"            # Moesif sent invalid UTF-8: decoded with U+FFFD
    COMPANY_NOT_FOUND = "COMPANY_NOT_FOUND"  # a user's company is not in Moesif's search
    NO_MEMBERS = "NO_MEMBERS"                # a company without users: no group call possible
    OVERSIZE_TRIMMED = "OVERSIZE_TRIMMED"    # free-form fields dropped to fit 32 KB
    OVERSIZE = "OVERSIZE"                    # over 32 KB even without them
    REJECTED = "REJECTED"                    # Segment refused the message (400/413 isolated)
    DELIVERY_FAILED = "DELIVERY_FAILED"      # not confirmed (outage); retried next run
    GAVE_UP = "GAVE_UP"                      # refused SYNC_MAX_ATTEMPTS times
    GONE = "GONE"                            # failed earlier, no longer in Moesif
    METRICS_UNAVAILABLE = "METRICS_UNAVAILABLE"  # 24-hour metrics search failed
    MAPPING_FAILED = "MAPPING_FAILED"        # unexpected error on one record: retried next run


class DeadLetterCode(StrEnum):
    """Why a forwarded event or line went to the dead letters instead of Moesif."""

    BAD_JSON = "BAD_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    MISSING_FIELD = "MISSING_FIELD"
    BAD_TYPE = "BAD_TYPE"
    BAD_LINE = "BAD_LINE"
    BAD_VALUE = "BAD_VALUE"                  # a value that cannot be mapped or encoded
    UNKNOWN_KIND = "UNKNOWN_KIND"
    LINE_TOO_LONG = "LINE_TOO_LONG"
    EVENT_TOO_LARGE = "EVENT_TOO_LARGE"      # its Moesif form is over the Collector's limit
    REJECTED_BY_COLLECTOR = "REJECTED_BY_COLLECTOR"


class LeaseLost(ConnectorError):
    """This process's lease was taken over (it paused past its expiry): it must not commit
    anything more; the holder that took over continues from the last committed page."""

    kind = FailureKind.TRANSIENT
