"""A webhook receiver for alerts on loopback: verifies `X-Connector-Signature` (when it
knows the secret), keeps every request, and answers a configurable status (e.g. 500 to
play a failing receiver). Used by the tests and by `demo`."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from connector.alerts.webhook import SIGNATURE_HEADER, verify
from connector.sandbox.httpbase import JsonHandler, SandboxServer


@dataclass
class Received:
    payload: Any
    signature: str | None
    verified: bool | None  # None: no secret known to the receiver


@dataclass
class AlertReceiver:
    secret: str | None = None
    status: int = 200
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def server(self) -> SandboxServer:
        """Not started yet: use it as a context manager, or call `.start()`."""
        return SandboxServer(_Handler, self)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r.payload for r in self.received
                    if event is None or r.payload.get("event") == event]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


class _Handler(JsonHandler):
    def do_POST(self) -> None:
        app: AlertReceiver = self.app
        body = self.read_body()
        signature = self.headers.get(SIGNATURE_HEADER)
        verified = None if app.secret is None else bool(
            signature and verify(app.secret, body, signature))
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"unreadable": True}
        with app.changed:
            app.received.append(Received(payload, signature, verified))
            app.changed.notify_all()
        if verified is False:
            self.send_json(401, {"error": "bad signature"})
            return
        self.send_json(app.status, {"ok": 200 <= app.status < 300})
