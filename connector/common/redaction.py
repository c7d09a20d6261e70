"""Keep secrets out of logs, reports and exception texts.

A logging filter built from the settings replaces every secret value (and its base64
form, as used in HTTP Basic auth) with `***` in every record, whatever logged it.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import unquote, urlsplit

REDACTED = "***"
# libpq's connection parameters that carry a secret when given in a URL's query.
_URL_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def url_secrets(url: str | None) -> list[str]:
    """The secrets a connection URL carries: the password of `user:pass@` and the values
    of `?password=` / `?sslpassword=`, as written and percent-decoded (a driver's error
    may quote either form)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        raw = [parts.password] if parts.password else []
    except ValueError:
        return []
    for chunk in parts.query.split("&"):
        name, _, value = chunk.partition("=")
        if _secret_param(name) and value:
            raw.append(value)
    found = {form for value in raw for form in (value, unquote(value)) if form}
    return sorted(found, key=len, reverse=True)


def _secret_param(name: str) -> bool:
    return unquote(name).strip().lower() in _URL_SECRET_PARAMS


def redact_url(url: str) -> str:
    """The URL with every secret it carries (see `url_secrets`) replaced by `***`, for
    messages and `check`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{hostport}"
    except ValueError:
        return REDACTED
    query = "&".join(
        f"{chunk.partition('=')[0]}={REDACTED}" if _secret_param(chunk.partition("=")[0])
        else chunk for chunk in parts.query.split("&")) if parts.query else ""
    return parts._replace(netloc=netloc, query=query).geturl()


# Every secret this process has been told about (settings, URL options): the last line a
# command prints (`error: ...`) is scrubbed with them, whoever wrote its text.
_remembered: set[str] = set()


def remember_secrets(secrets: list[str]) -> None:
    _remembered.update(s for s in secrets if s)


def remembered_secrets() -> list[str]:
    return sorted(_remembered)


def secret_variants(secrets: list[str]) -> list[str]:
    variants: set[str] = set()
    for secret in secrets:
        if len(secret) < 4:
            continue
        variants.add(secret)
        variants.add(base64.b64encode(f"{secret}:".encode()).decode())
    return sorted(variants, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for variant in secret_variants(secrets):
        text = text.replace(variant, REDACTED)
    return text


def last4(secret: str | None) -> str:
    """How a key may be shown to a person: only its last four characters."""
    if not secret:
        return "(not set)"
    return "…" + secret[-4:] if len(secret) > 8 else "(set)"


class SecretFilter(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.variants = secret_variants(secrets)

    def _scrub(self, text: str) -> str:
        for variant in self.variants:
            text = text.replace(variant, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.variants:
            return True
        message = record.getMessage()
        cleaned = self._scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # Tracebacks are formatted here, once, so the text can be scrubbed; a traceback
        # formatted by an earlier filter (exc_text) is scrubbed too, since every filter
        # knows only its own secrets.
        if record.exc_info:
            import traceback

            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True


def install_secret_filter(secrets: list[str]) -> None:
    """Attach the filter to every handler of the root logger (handlers see all records)."""
    root = logging.getLogger()
    flt = SecretFilter(secrets)
    for handler in root.handlers:
        handler.addFilter(flt)
    # The Segment library logs whole request bodies (write key included) at DEBUG.
    logging.getLogger("segment").setLevel(logging.WARNING)
