"""`check` against a host that is not the API (a web server's 404 page, a proxy's HTML,
a redirect, an outage): each named as failing, as the sync itself would judge it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connector.ops.checks import check_collector, check_moesif, check_segment
from tests.conftest import WRITE_KEY, assert_no_keys_in, make_settings

ANSWERS = {
    "404-html": (404, "text/html", b"<!DOCTYPE html><html><body>Not Found</body></html>"),
    "200-html": (200, "text/html", b"<html><body>Please log in to the proxy</body></html>"),
    "301": (301, "text/plain", b""),
    "503": (503, "application/json", b'{"error": "down"}'),
    "405-json": (405, "application/json", b'{"error": "method"}'),
}


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        status, ctype, body = ANSWERS[self.path.split("/")[1]]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status == 301:
            self.send_header("Location", "https://example.com/")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    do_GET = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_segment_check_fails_on_what_a_sync_would_not_accept(web_server, tmp_path, answer):
    settings = make_settings(tmp_path, segment_host=f"{web_server}/{answer}")
    result = check_segment(settings)
    assert not result.ok, result.detail
    assert_no_keys_in(result.detail)
    if answer != "503":
        assert "SEGMENT_HOST" in result.detail


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_moesif_and_collector_checks_fail_on_a_wrong_host(web_server, tmp_path, answer):
    settings = make_settings(tmp_path, moesif_api_url=f"{web_server}/{answer}",
                             moesif_collector_url=f"{web_server}/{answer}",
                             moesif_max_retries=0)
    for result, setting in ((check_moesif(settings), "MOESIF_API_URL"),
                            (check_collector(settings), "MOESIF_COLLECTOR_URL")):
        assert not result.ok, result.detail
        assert_no_keys_in(result.detail)
        if answer != "503":
            assert setting in result.detail, result.detail


def test_segment_check_names_a_refused_connection(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = check_segment(make_settings(tmp_path, segment_host=f"http://127.0.0.1:{port}"))
    assert not result.ok and "Connection refused" in result.detail
    assert WRITE_KEY not in result.detail
