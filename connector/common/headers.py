"""What text can travel as an HTTP header value: the one rule for the keys the settings
load and the clients send."""

from __future__ import annotations


def header_text_problem(text: str) -> str | None:
    """What keeps `text` out of an HTTP header value such as `Authorization: Bearer
    <key>` (None: nothing). Names the kind of character, never the text: it is a key."""
    if not text:
        return "no characters"
    if not text.isascii():
        return "non-ASCII characters (a typographic quote?)"
    if any(c.isspace() for c in text):
        return "a space or line break"
    if not text.isprintable():
        return "a control character"
    return None
