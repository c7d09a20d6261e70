"""`/metrics` and `/healthz` for the forwarder (`forward --metrics-port`).

Read from the state file at each scrape (the spool's backlog, oldest unsent event,
counters and dead letters by reason), so the numbers are the same ones `forward status`
prints and they survive a restart: the counters are stored with the spool.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from connector.ops.metrics import RetryCollector, build_info
from connector.settings import Settings

PREFIX = "moesif_forward"
# The oldest unsent event older than this makes /healthz answer 503: delivery is stuck.
DEFAULT_STALE_AFTER_S = 900.0


class _SpoolCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from connector.forward.pipeline import forward_status

        status = forward_status(self.settings)
        yield GaugeMetricFamily(f"{PREFIX}_backlog_events", "Events in the spool, not yet "
                                "delivered.", value=status.get("backlog", 0))
        yield GaugeMetricFamily(f"{PREFIX}_backlog_bytes", "Bytes in the spool.",
                                value=status.get("backlog_bytes", 0))
        oldest = status.get("oldest_age_seconds")
        yield GaugeMetricFamily(f"{PREFIX}_oldest_event_age_seconds", "Age of the oldest "
                                "unsent event (0 when the spool is empty).",
                                value=oldest or 0.0)
        events = CounterMetricFamily(f"{PREFIX}_events", "Events by stage (read, parsed, "
                                     "delivered, retried, dead_lettered, ...).",
                                     labels=["stage"])
        for stage, value in (status.get("counters") or {}).items():
            events.add_metric([stage], value)
        yield events
        dead = CounterMetricFamily(f"{PREFIX}_dead_letters", "Dead-lettered events by "
                                   "reason code.", labels=["reason"])
        for reason, value in ((status.get("dead_letters") or {}).get("by_reason") or {}).items():
            dead.add_metric([str(reason)], value)
        yield dead


class ForwardMetrics:
    """What `serve_metrics` serves for a forwarder."""

    def __init__(self, settings: Settings,
                 stale_after_seconds: float = DEFAULT_STALE_AFTER_S) -> None:
        self.settings = settings
        self.stale_after_seconds = stale_after_seconds
        self.started_at = time.time()
        self.registry = CollectorRegistry()
        self.registry.register(_SpoolCollector(settings))
        build_info(self.registry)
        self.registry.register(RetryCollector())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict[str, Any]]:
        from connector.forward.pipeline import forward_status

        status = forward_status(self.settings)
        oldest = status.get("oldest_age_seconds")
        body: dict[str, Any] = {"backlog": status.get("backlog", 0),
                                "oldest_age_s": oldest,
                                "stale_after_s": self.stale_after_seconds}
        stuck = oldest is not None and oldest > self.stale_after_seconds
        body["status"] = "unhealthy" if stuck else "ok"
        body["reason"] = ("the oldest unsent event is older than stale_after_s"
                          if stuck else "delivering")
        return (503 if stuck else 200), body
