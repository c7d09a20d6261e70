"""The forwarder's alert rules, on their own thread and connection: reading the spool and
posting webhooks never delays the delivery of events.

Every `interval` seconds: backlog and the oldest spooled event (`spool`), dead letters so
far (the `dead_lettered` counter, monotonic), and the time since the `delivered` counter
last moved (a Collector 201), evaluated by `connector.alerts.forward_tick`.
"""

from __future__ import annotations

import logging
import threading
import time

from connector.settings import Settings
from connector.state.store import connect

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 30.0


def _counter(conn, name: str) -> int:  # noqa: ANN001 - sqlite3.Connection
    row = conn.execute("SELECT value FROM forward_counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


class ForwardAlerts:
    def __init__(self, settings: Settings, interval: float = INTERVAL_SECONDS) -> None:
        self.settings = settings
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="forward-alerts")
        self._delivered: int | None = None
        self._moved_at = time.monotonic()

    def start(self) -> ForwardAlerts:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=self.settings.alert_webhook_max_seconds + 5)

    def tick(self, conn) -> list[dict]:  # noqa: ANN001 - sqlite3.Connection
        from connector.alerts import forward_tick

        backlog, oldest = conn.execute("SELECT count(*), min(enqueued_at) FROM spool").fetchone()
        delivered = _counter(conn, "delivered")
        now = time.monotonic()
        if delivered != self._delivered:
            self._delivered, self._moved_at = delivered, now
        return forward_tick(self.settings, conn, backlog=int(backlog),
                            oldest_age_s=(time.time() - oldest) if oldest else None,
                            dead_letters_total=_counter(conn, "dead_lettered"),
                            since_delivery_s=now - self._moved_at)

    def _loop(self) -> None:
        try:
            conn = connect(self.settings.state_path)
        except Exception as exc:  # noqa: BLE001 - alerts never stop the forwarder
            log.warning("forward alerts disabled: %s", exc)
            return
        try:
            while not self.stopped.wait(self.interval):
                try:
                    self.tick(conn)
                except Exception as exc:  # noqa: BLE001
                    log.warning("forward alert rules not evaluated: %s", exc)
        finally:
            conn.close()
