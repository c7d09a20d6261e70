"""The one error a malformed input event or metrics line raises.

`reason_code` is stable (dead-letter rows and counters key on it); `detail` is for people.
Details name fields and expectations, never the offending value: a malformed event has
not been masked, so echoing its content could leak personal data into the dead letters.
"""

from __future__ import annotations

BAD_JSON = "BAD_JSON"
NOT_AN_OBJECT = "NOT_AN_OBJECT"
MISSING_FIELD = "MISSING_FIELD"
BAD_TYPE = "BAD_TYPE"
BAD_LINE = "BAD_LINE"
UNKNOWN_KIND = "UNKNOWN_KIND"

REASON_CODES = frozenset({BAD_JSON, NOT_AN_OBJECT, MISSING_FIELD, BAD_TYPE, BAD_LINE, UNKNOWN_KIND})


class MalformedEvent(Exception):
    """An input that cannot become a Moesif event; it belongs in the dead letters."""

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = detail

    def __reduce__(self) -> tuple[type[MalformedEvent], tuple[str, str]]:
        # Picklable with both attributes (events may be parsed in a worker process).
        return (type(self), (self.reason_code, self.detail))
