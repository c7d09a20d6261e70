"""The Moesif Collector's documented size limits, compressed or not. Their own module so
that the forwarder's parse workers, which refuse an oversize event before it is spooled,
need not load the HTTP client."""

MAX_EVENT_BYTES = 1_000_000
MAX_BATCH_BYTES = 50_000_000
