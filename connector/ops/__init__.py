"""Running the connector in production: the lease (one writer), `/metrics` and `/healthz`,
the forwarder's metrics, `check` (configuration and reachability), logging set-up and
signal handling."""
