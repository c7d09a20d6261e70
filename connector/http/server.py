"""A small threaded HTTP/1.1 server: the base of every HTTP endpoint the connector serves.

Production uses it for the forwarder's HTTP ingest (`forward/sources.py`) and the
`/metrics` endpoint (`ops/metrics.py`); the sandbox peers in `connector/sandbox/` build on it
too, so the product never needs the sandbox.

Keep-alive is on and Nagle's algorithm is off: with Nagle left on, `http.server` stalls
every keep-alive response on the client's delayed ACK (measured: ~2,000 instead of
~14,000 messages/s), and a benchmark would end up measuring the sandbox.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


class FastThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class JsonHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 keep-alive, no Nagle, JSON helpers, quiet logs.

    Subclasses implement `do_GET` / `do_POST`; the owning sandbox object is `self.server.app`.
    """

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    @property
    def app(self) -> Any:
        return self.server.app  # type: ignore[attr-defined]

    def read_body(self) -> bytes:
        """The request body, gunzipped when `Content-Encoding: gzip`."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip" and body:
            body = gzip.decompress(body)
        return body

    def raw_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(payload) if not isinstance(payload, bytes) else payload
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def parse_json(self, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return json.loads(body)  # raises ValueError with a readable message


class BackgroundServer:
    """Runs a handler class on 127.0.0.1 in a background thread.

    `with BackgroundServer(Handler, app) as srv:` ... `srv.url` is `http://127.0.0.1:<port>`.
    """

    def __init__(self, handler: type[JsonHandler], app: Any, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.httpd = FastThreadingHTTPServer((host, port), handler)
        self.httpd.app = app  # type: ignore[attr-defined]
        # A short poll interval makes stop() prompt (tests start and stop many servers).
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True,
                                       name=f"http-{handler.__name__}")

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
