"""The sandbox peers' HTTP server: the production base in `connector.http.server`.

The sandbox builds on the product's server, never the other way round;
`SandboxServer` keeps its historical name for the peers, tests and benchmarks.
"""

from __future__ import annotations

from connector.http.server import BackgroundServer, FastThreadingHTTPServer, JsonHandler

SandboxServer = BackgroundServer

__all__ = ["FastThreadingHTTPServer", "JsonHandler", "SandboxServer"]
