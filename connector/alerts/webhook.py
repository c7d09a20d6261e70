"""Alert delivery: a signed JSON POST to every ALERT_WEBHOOK_URL, retried with backoff
within a bounded time (ALERT_WEBHOOK_MAX_SECONDS for a whole delivery pass), so a dead
receiver never slows a sync or the forwarder by more than that bound.

Signature (with ALERT_WEBHOOK_SECRET set): `X-Connector-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, the widely used signed-webhook scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from tenacity import RetryCallState

from connector.errors import ConfigError, RetryableError
from connector.http.retry import Backoff, build_retrying
from connector.settings import Settings, check_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Connector-Signature"
REQUEST_TIMEOUT = 5.0
BACKOFF = Backoff(base=0.5, cap=4.0, retry_after_cap=4.0)
USER_AGENT = "moesif-segment-connector-alerts"


class _Refused(Exception):
    """The receiver answered 4xx (not 408/429): waiting will not fix it."""


def webhook_urls(settings: Settings) -> list[str]:
    """ALERT_WEBHOOK_URL as a list (ConfigError naming the setting for a bad entry)."""
    urls = [u.strip() for u in (settings.alert_webhook_url or "").split(",") if u.strip()]
    for url in urls:
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(f"invalid setting(s): ALERT_WEBHOOK_URL: {exc}") from None
    return urls


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """What a receiver does (also used by tests and the sandbox receiver)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass
class Delivery:
    url_index: int
    ok: bool
    status: int | None
    attempts: int
    error: str | None


def _host(url: str) -> str:
    """For logs and errors: the host only (a Slack URL's path is its secret)."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or "?"


def post(url: str, payload: dict[str, Any], secret: str | None, deadline: float) -> Delivery:
    """POST one payload, retrying transport errors, 408, 429 and 5xx until `deadline`."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
    attempts = 0
    last_status: list[int | None] = [None]

    def attempt() -> int:
        nonlocal attempts
        attempts += 1
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
        timeout = max(0.1, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
        try:
            resp = requests.post(url, data=body, headers=headers, timeout=timeout,
                                 allow_redirects=False)
        except requests.RequestException as exc:
            raise RetryableError(f"{type(exc).__name__}") from None
        last_status[0] = resp.status_code
        if 200 <= resp.status_code < 300:
            return resp.status_code
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise RetryableError(f"HTTP {resp.status_code}", resp.status_code,
                                 BACKOFF.parse(resp.headers.get("Retry-After")))
        raise _Refused(f"HTTP {resp.status_code}")

    def stop(state: RetryCallState) -> bool:
        return time.monotonic() >= deadline - 0.05

    def sleep(seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))

    retrying = build_retrying(wait=BACKOFF, stop=stop, sleep=sleep)
    try:
        status = retrying(attempt)
        return Delivery(0, True, status, attempts, None)
    except (RetryableError, _Refused) as exc:
        return Delivery(0, False, last_status[0], attempts, f"{_host(url)}: {exc}")


def deliver(settings: Settings, payload: dict[str, Any],
            deadline: float | None = None) -> list[Delivery]:
    """Send one payload to every receiver within the deadline (default: the bound)."""
    urls = webhook_urls(settings)
    if deadline is None:
        deadline = time.monotonic() + settings.alert_webhook_max_seconds
    secret = (settings.alert_webhook_secret.get_secret_value()
              if settings.alert_webhook_secret is not None else None)
    out = []
    for index, url in enumerate(urls):
        if time.monotonic() >= deadline:
            out.append(Delivery(index, False, None, 0, f"{_host(url)}: no time left in "
                                                        "ALERT_WEBHOOK_MAX_SECONDS"))
            continue
        result = post(url, payload, secret, deadline)
        result.url_index = index
        if not result.ok:
            log.warning("alert %s (%s) not delivered: %s", payload.get("rule"),
                        payload.get("event"), result.error)
        out.append(result)
    return out
