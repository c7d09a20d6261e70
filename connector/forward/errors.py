"""The one error a malformed input event or metrics line raises.

`reason_code` is stable (dead-letter rows and counters key on it); `detail` is for people.
Details name fields and expectations, never the offending value: a malformed event has
not been masked, so echoing its content could leak personal data into the dead letters.
"""

from __future__ import annotations

from connector.errors import DeadLetterCode, MalformedInput

BAD_JSON = DeadLetterCode.BAD_JSON.value
NOT_AN_OBJECT = DeadLetterCode.NOT_AN_OBJECT.value
MISSING_FIELD = DeadLetterCode.MISSING_FIELD.value
BAD_TYPE = DeadLetterCode.BAD_TYPE.value
BAD_LINE = DeadLetterCode.BAD_LINE.value
UNKNOWN_KIND = DeadLetterCode.UNKNOWN_KIND.value
BAD_VALUE = DeadLetterCode.BAD_VALUE.value
LINE_TOO_LONG = DeadLetterCode.LINE_TOO_LONG.value

REASON_CODES = frozenset(c.value for c in DeadLetterCode)


class MalformedEvent(MalformedInput):
    """An input that cannot become a Moesif event; it belongs in the dead letters."""
