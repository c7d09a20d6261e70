"""Per-API tables from an HTTP status (or a `requests` exception) to what the client does.

The way Airbyte's CDK keeps `default_error_mapping.py`: the tables are data, and the
three clients (Moesif Management, Segment, Moesif Collector) differ only in their rows
and their real special cases. A row says the action, the failure category and a message
template that names the setting a person has to fix:

- SUCCESS: the request did what we asked.
- RETRY:   waiting can fix it (408, 429, 5xx but 501/505, timeouts, connection errors).
- REFUSE:  the destination refused this message or batch as such (retrying cannot help).
- CONFIG:  the URL setting is wrong (404, 405, a redirect, a proxy's HTML page, a URL
           that `requests` cannot even use); never retried.
- AUTH:    the key or subscription was refused; never retried.

Templates may use {api}, {status}, {path}, {setting} (the URL setting), {key_setting},
{excerpt} (a short, key-redacted excerpt of the answer) and {error} (for exceptions).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

import requests

from connector.common.redaction import redact
from connector.errors import (
    AuthError,
    EndpointError,
    FailureKind,
    RefusedError,
    RetryableError,
)

EXCERPT_CHARS = 160


class Action(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    REFUSE = "refuse"
    CONFIG = "config"
    AUTH = "auth"


_KIND = {Action.RETRY: FailureKind.TRANSIENT, Action.REFUSE: FailureKind.REFUSED,
         Action.CONFIG: FailureKind.CONFIG, Action.AUTH: FailureKind.AUTH}


@dataclass(frozen=True)
class Rule:
    action: Action
    template: str = ""

    @property
    def kind(self) -> FailureKind | None:
        return _KIND.get(self.action)


@dataclass(frozen=True)
class Verdict:
    """What one answer (or one exception) means, with the message to raise."""

    action: Action
    message: str
    status: int | None = None
    retry_after: float | None = None
    excerpt: str = ""

    @property
    def kind(self) -> FailureKind | None:
        return _KIND.get(self.action)


ErrorFactory = Callable[[Verdict], Exception]

DEFAULT_ERRORS: dict[Action, ErrorFactory] = {
    Action.RETRY: lambda v: RetryableError(v.message, v.status, v.retry_after),
    Action.REFUSE: lambda v: RefusedError(v.message, v.status, v.excerpt),
    # The address (or the mapping) is wrong, whether or not anything answered.
    Action.CONFIG: lambda v: EndpointError(v.message, v.status),
    Action.AUTH: lambda v: AuthError(v.message, v.status),
}

RETRY_TEMPLATE = "{api} answered {status} on {path}"
UNREACHABLE_TEMPLATE = "{api} cannot be reached at {path}: {error}; check {setting}"
NOTHING_LISTENS_TEMPLATE = ("nothing listens at {path}: the connection was refused on every "
                            "attempt ({error}) and the address never answered in this run; "
                            "check {setting}")
REDIRECT_TEMPLATE = ("{api} answered {status} (a redirect) on {path}: the address is not "
                     "the API's; check {setting}")
NOT_HERE_TEMPLATE = ("{api} answered {status} on {path}: no such endpoint there, the "
                     "address is wrong; check {setting} (answer: {excerpt})")
HTML_TEMPLATE = ("{api} answered {status} with a web page, not the API's JSON, on {path}: "
                 "a proxy or a wrong address; check {setting} (answer: {excerpt})")
BAD_URL_TEMPLATE = ("{setting} is not a usable URL ({error}): it needs a scheme "
                    "(http or https) and a host")

# Exceptions of `requests`, most specific first. A URL that cannot be used is a setting to
# fix, not an outage: retrying it (forever, for the Collector) would only hide the typo.
COMMON_EXCEPTIONS: tuple[tuple[type[BaseException], Rule], ...] = (
    (requests.exceptions.MissingSchema, Rule(Action.CONFIG, BAD_URL_TEMPLATE)),
    (requests.exceptions.InvalidSchema, Rule(Action.CONFIG, BAD_URL_TEMPLATE)),
    (requests.exceptions.InvalidURL, Rule(Action.CONFIG, BAD_URL_TEMPLATE)),
    # A header value no HTTP request can carry (a key with a line break): never heals.
    (requests.exceptions.InvalidHeader, Rule(Action.CONFIG, "{api}: a request header cannot "
                                                            "be sent as set; check "
                                                            "{key_setting}")),
    (requests.exceptions.Timeout, Rule(Action.RETRY, "timeout calling {api} on {path} "
                                                     "({error})")),
    (requests.exceptions.ConnectionError, Rule(Action.RETRY, "connection error calling {api} "
                                                             "on {path} ({error})")),
    (requests.exceptions.ChunkedEncodingError, Rule(Action.RETRY, "connection error calling "
                                                                  "{api} on {path} ({error})")),
    (requests.RequestException, Rule(Action.RETRY, "{error} calling {api} on {path}")),
)

# The default row of each status family; a table lists only its exceptions to these.
COMMON_FAMILIES: dict[int, Rule] = {
    2: Rule(Action.SUCCESS),
    3: Rule(Action.CONFIG, REDIRECT_TEMPLATE),
    4: Rule(Action.CONFIG, NOT_HERE_TEMPLATE),
    5: Rule(Action.RETRY, RETRY_TEMPLATE),
}

# Rows every API shares: 408 and 429 are retried everywhere; 501 (the server does not
# implement that method there) and 505 (nor that HTTP version) come from a server that is
# not the API, which no wait heals, unlike the rest of the 5xx family.
COMMON_STATUSES: dict[int, Rule] = {
    408: Rule(Action.RETRY, RETRY_TEMPLATE),
    429: Rule(Action.RETRY, RETRY_TEMPLATE),
    501: Rule(Action.CONFIG, NOT_HERE_TEMPLATE),
    505: Rule(Action.CONFIG, NOT_HERE_TEMPLATE),
}


@dataclass(frozen=True)
class HttpPolicy:
    """One API's table. `statuses` rows win over `families` (by first digit)."""

    api: str
    url_setting: str
    key_setting: str
    statuses: Mapping[int, Rule]
    families: Mapping[int, Rule] = field(default_factory=lambda: dict(COMMON_FAMILIES))
    exceptions: tuple[tuple[type[BaseException], Rule], ...] = COMMON_EXCEPTIONS
    # SUCCESS and REFUSE need the API's own (JSON) answer: an HTML page with such a
    # status comes from a proxy or a web server at a wrong address, so it is CONFIG.
    html_is_config: bool = True
    errors: Mapping[Action, ErrorFactory] = field(default_factory=lambda: dict(DEFAULT_ERRORS))

    def rule_for_status(self, status: int) -> Rule:
        rule = self.statuses.get(status)
        if rule is not None:
            return rule
        return self.families.get(status // 100, Rule(Action.CONFIG, NOT_HERE_TEMPLATE))

    def rule_for_exception(self, exc: BaseException) -> Rule:
        for exc_type, rule in self.exceptions:
            if isinstance(exc, exc_type):
                return rule
        return Rule(Action.RETRY, "{error} calling {api} on {path}")

    def judge(self, response: requests.Response, path: str,
              secrets: list[str] | None = None,
              parse_retry_after: Callable[[str | None], float | None] | None = None
              ) -> Verdict:
        """What an answer means. The excerpt is read only when a message needs it."""
        status = response.status_code
        rule = self.rule_for_status(status)
        if self.html_is_config and rule.action in (Action.SUCCESS, Action.REFUSE) \
                and looks_like_html(response):
            rule = Rule(Action.CONFIG, HTML_TEMPLATE)
        if rule.action is Action.SUCCESS:
            return Verdict(Action.SUCCESS, "", status)
        excerpt = excerpt_of(response, secrets or [])
        retry_after = None
        if rule.action is Action.RETRY and parse_retry_after is not None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        message = self._format(rule.template, status=status, path=path, excerpt=excerpt)
        return Verdict(rule.action, message, status, retry_after, excerpt)

    def judge_exception(self, exc: BaseException, path: str) -> Verdict:
        rule = self.rule_for_exception(exc)
        message = self._format(rule.template, path=path, error=short_reason(exc))
        return Verdict(rule.action, message)

    def request_error(self, exc: BaseException, path: str) -> Exception:
        """What a request that got no answer raises. An address that cannot be right (no
        such host name, a TLS mismatch) is CONFIG at once, never retried; otherwise the
        table's row, marked `refused_connection` so that a client which knows the address
        never answered can tell a wrong port (`nothing_listens`) from an outage."""
        why = unusable_host(exc)
        if why is not None:
            return self.error(Verdict(Action.CONFIG, self._format(
                UNREACHABLE_TEMPLATE, path=path, error=why)))
        error = self.error(self.judge_exception(exc, path))
        error.refused_connection = connection_refused(exc)  # type: ignore[attr-defined]
        return error

    def nothing_listens(self, path: str, retries: int) -> Exception:
        """The CONFIG error for connections refused on every retry by an address that
        never answered (see `request_error`)."""
        return self.error(Verdict(Action.CONFIG, self._format(
            NOTHING_LISTENS_TEMPLATE, path=path, error=f"{retries} retries")))

    def error(self, verdict: Verdict) -> Exception:
        """The exception a verdict raises (the client's own classes, by its `errors`)."""
        factory = self.errors.get(verdict.action) or DEFAULT_ERRORS[verdict.action]
        return factory(verdict)

    def check(self, response: requests.Response, path: str, secrets: list[str] | None = None,
              parse_retry_after: Callable[[str | None], float | None] | None = None) -> None:
        """Raise the error of any answer that is not a SUCCESS."""
        verdict = self.judge(response, path, secrets, parse_retry_after)
        if verdict.action is not Action.SUCCESS:
            raise self.error(verdict)

    def _format(self, template: str, **values: object) -> str:
        fields = {"api": self.api, "setting": self.url_setting, "key_setting": self.key_setting,
                  "status": "", "path": "", "excerpt": "", "error": ""}
        fields.update({k: v for k, v in values.items() if v is not None})
        return template.format(**fields)


def looks_like_html(response: requests.Response) -> bool:
    content_type = response.headers.get("Content-Type", "").lower()
    if "html" in content_type:
        return True
    head = response.content[:64].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<head", b"<body"))


def excerpt_of(response: requests.Response, secrets: list[str]) -> str:
    """A short one-line excerpt of an answer, keys redacted (a server may echo them)."""
    raw = response.content[:EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = re.sub(r"<[^>]{0,200}>", " ", raw) if "<" in raw else raw  # tags say nothing
    text = " ".join(text.split())
    text = _without_cut_secret(redact(text, secrets), secrets)
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "") or "(empty)"


def _without_cut_secret(text: str, secrets: list[str]) -> str:
    """The window read of an answer can end inside an echoed key, where `redact` (whole
    keys only) does not see it: a tail that starts a key is cut off as well."""
    for secret in secrets:
        for n in range(min(len(secret) - 1, len(text)), 3, -1):
            if text.endswith(secret[:n]):
                return text[:-n] + "***"
    return text


_SHORT_MARKERS = ("Connection refused", "Connection reset", "RemoteDisconnected",
                  "Name or service not known", "timed out")


def short_reason(exc: BaseException) -> str:
    """A one-line reason: urllib3's nested messages can run to several hundred characters."""
    text = str(exc)
    for marker in _SHORT_MARKERS:
        if marker in text:
            return marker
    return type(exc).__name__


def display_url(url: str) -> str:
    """A URL as messages may show it: without user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if not parts.scheme or not host:
        return url.split("?", 1)[0].rsplit("@", 1)[-1][:200]
    return f"{parts.scheme}://{host}{port}{parts.path}"


# --- connection failures that name a wrong address, not an outage --------------------------
def _causes(exc: BaseException) -> Iterable[BaseException]:
    """An exception of `requests` and what it wraps (urllib3's MaxRetryError keeps the
    socket's error in `.reason`; others chain it as the cause), at most a few levels."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 12:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        reason = getattr(item, "reason", None)
        todo.extend([item.__cause__, item.__context__,
                     reason if isinstance(reason, BaseException) else None,
                     *(a for a in item.args if isinstance(a, BaseException))])
    return seen


# getaddrinfo's "no such name" answers (EAI_AGAIN, a DNS server not answering, is an
# outage and stays retried).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def unusable_host(exc: BaseException) -> str | None:
    """Why a connection failure says the address setting is wrong, not that the API is
    out (None: it may be an outage). A host name that does not exist, a TLS certificate
    that is not the host's, or https spoken to a plain-http port never heal by waiting."""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror) and cause.errno in _NO_SUCH_NAME:
            return "its host name does not resolve"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "its TLS certificate is not valid for that host"
        if isinstance(cause, ssl.SSLError) and getattr(cause, "reason", None) in (
                "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
            return "it does not speak TLS there (http, not https?)"
    return None


def connection_refused(exc: BaseException) -> bool:
    """Whether the connection was refused (nothing listening at that address and port)."""
    return any(isinstance(c, ConnectionRefusedError) for c in _causes(exc))
