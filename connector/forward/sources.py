"""Where WSO2 analytics events come from: the ELK log, JSON lines, and HTTP ingest.

File sources hand out `LineChunk`s: complete lines plus the offset to save once those
lines are spooled. They never save an offset themselves; the pipeline passes
`chunk.offset_update` to `Spool.append` together with the events, so the offset moves in
the same transaction as the events it covers.

`LogTailer` follows a file like `tail -F`:

- it reads large chunks (1 MB) with `os.pread` and hands out complete lines only; a
  partial last line is read again, whole, once its newline has arrived;
- the saved offset carries the file's identity (device, inode, hash of the first 1 KB), so
  a restart resumes in the right file: if the log was rotated meanwhile (WSO2 renames
  `apim_metrics.log` to `apim_metrics-MM-dd-yyyy-N.log` and starts a new file), the
  renamed file is found in the directory by its inode, read to its end, followed by any
  later rotated files, and only then the new `apim_metrics.log` from its start;
- while running, a rename is noticed at end of file; the old file (still open) is read
  to its end before switching, so no line is lost or repeated;
- a truncated file (size below our offset) or a replaced one (different first bytes
  under the same inode) is read again from 0.

The HTTP ingest server answers 202 only after `Spool.append` committed the events.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import logging
import os
import socket
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr

from connector.forward.errors import BAD_JSON, NOT_AN_OBJECT, MalformedEvent
from connector.forward.spool import FileIdentity, OffsetUpdate, Spool
from connector.sandbox.httpbase import FastThreadingHTTPServer, JsonHandler

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
FINGERPRINT_BYTES = 1024
POLL_SECONDS = 0.05
STDIN_CHUNK_LINES = 2000


@dataclass(slots=True)
class LineChunk:
    """Complete lines from one source, and where reading resumes once they are spooled."""

    source: str                        # "log:/path", "jsonl:/path", "jsonl:-"
    lines: list[bytes]                 # without their line terminator
    first_position: int                # byte offset (files) or line number (stdin)
    position_unit: str                 # "byte" or "line"
    offset_update: OffsetUpdate | None  # None for stdin

    def positions(self) -> Iterator[tuple[int, bytes]]:
        """(position, line) pairs: the byte offset or number of each line."""
        pos = self.first_position
        if self.position_unit == "line":
            for line in self.lines:
                yield pos, line
                pos += 1
            return
        for line in self.lines:
            yield pos, line
            pos += len(line) + 1


# --- file identity ---------------------------------------------------------------------
def _fingerprint(fd: int, length: int) -> str:
    return hashlib.blake2b(os.pread(fd, length, 0), digest_size=16).hexdigest()


def identify(fd: int) -> FileIdentity:
    """The identity of an open file: device, inode and a hash of up to its first 1 KB."""
    st = os.fstat(fd)
    length = min(st.st_size, FINGERPRINT_BYTES)
    return FileIdentity(st.st_dev, st.st_ino, _fingerprint(fd, length), length)


def same_content(fd: int, ident: FileIdentity) -> bool:
    """True if the open file still starts with the bytes `ident` fingerprinted."""
    if os.fstat(fd).st_size < ident.fingerprint_len:
        return False
    return _fingerprint(fd, ident.fingerprint_len) == ident.fingerprint


def _open_fd(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None


# --- the tailer ------------------------------------------------------------------------
class LogTailer:
    """Follows one log file across rotations; see the module doc.

    `state` is the Spool (it holds the saved offsets). Use `chunks(stop_event, once)` or
    call `read_chunk()` repeatedly; close() when done.
    """

    def __init__(self, path: Path | str, spool_key: str, state: Spool, *,
                 chunk_bytes: int = CHUNK_BYTES, poll_seconds: float = POLL_SECONDS,
                 source: str | None = None) -> None:
        self.path = Path(path).absolute()
        self.key = spool_key
        self.state = state
        self.chunk_bytes = chunk_bytes
        self.poll_seconds = poll_seconds
        self.source = source or spool_key
        self._fd: int | None = None
        self._ident: FileIdentity | None = None
        self._offset = 0
        self._draining = False          # the open file is a rotated one: read it out, move on
        self._queue: list[Path] = []    # rotated files still to read (after a restart)
        self._started = False
        self._warned_missing = False

    # -- position -------------------------------------------------------------------
    @property
    def offset(self) -> int:
        return self._offset

    @property
    def current_identity(self) -> FileIdentity | None:
        return self._ident

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _start(self) -> None:
        """Find where to resume from the saved offset (once, lazily)."""
        self._started = True
        saved = self.state.get_offset(self.key)
        if saved is None:
            self._open_current(0)
            return
        ident, offset = saved
        fd = _open_fd(self.path)
        if fd is not None:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (ident.device, ident.inode):
                if same_content(fd, ident) and st.st_size >= offset:
                    self._adopt(fd, ident, offset)
                else:
                    log.warning("%s was truncated or replaced; reading it from the start",
                                self.path)
                    self._adopt(fd, identify(fd), 0)
                return
            os.close(fd)
        rotated = self._find_rotated(ident)
        if rotated is None:
            log.warning("the file read last (inode %d) is gone; reading %s from the start",
                        ident.inode, self.path)
            self._open_current(0)
            return
        rotated_path, fd = rotated
        log.info("resuming in rotated file %s at byte %d", rotated_path.name, offset)
        self._queue = self._later_rotations(rotated_path)
        self._adopt(fd, ident, offset)
        self._draining = True

    def _find_rotated(self, ident: FileIdentity) -> tuple[Path, int] | None:
        """The renamed file with the saved inode and content, scanning the directory."""
        for candidate in self._siblings():
            try:
                st = candidate.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (ident.device, ident.inode):
                continue
            fd = _open_fd(candidate)
            if fd is not None and same_content(fd, ident):
                return candidate, fd
            if fd is not None:
                os.close(fd)
        return None

    def _siblings(self) -> list[Path]:
        try:
            entries = list(self.path.parent.iterdir())
        except OSError:
            return []
        return [p for p in entries if p != self.path and p.is_file()]

    def _later_rotations(self, rotated: Path) -> list[Path]:
        """Rotated files written after `rotated` (several rotations while we were down),
        oldest first. WSO2 names them `<stem>-MM-dd-yyyy-N<suffix>`; order by mtime."""
        stem, suffix = self.path.stem, self.path.suffix
        base = rotated.stat().st_mtime_ns
        later = []
        for p in self._siblings():
            if p == rotated or not (p.name.startswith(stem + "-") and p.name.endswith(suffix)):
                continue
            try:
                mtime = p.stat().st_mtime_ns
            except OSError:
                continue
            if mtime > base:
                later.append((mtime, p))
        return [p for _, p in sorted(later)]

    def _adopt(self, fd: int, ident: FileIdentity, offset: int) -> None:
        if self._fd is not None and self._fd != fd:
            self.close()
        self._fd, self._ident, self._offset, self._draining = fd, ident, offset, False

    def _open_current(self, offset: int) -> bool:
        fd = _open_fd(self.path)
        if fd is None:
            self.close()
            self._ident = None
            self._offset = 0
            return False
        self._adopt(fd, identify(fd), offset)
        return True

    def _switch_to_next(self) -> None:
        """The open file is finished (rotated away): continue with the next one."""
        while self._queue:
            nxt = self._queue.pop(0)
            fd = _open_fd(nxt)
            if fd is not None:
                log.info("reading rotated file %s", nxt.name)
                self._adopt(fd, identify(fd), 0)
                self._draining = True
                return
        self._open_current(0)

    # -- reading --------------------------------------------------------------------
    def read_chunk(self) -> LineChunk | None:
        """The next complete lines, or None when there is nothing new (for now)."""
        if not self._started:
            self._start()
        for _ in range(64):  # bounded: each pass either returns or changes file
            if self._fd is None and not self._open_current(0):
                return None
            chunk = self._read_lines()
            if chunk is not None:
                return chunk
            if self._draining:
                tail = self._final_partial_line()
                self._switch_to_next()
                if tail is not None:
                    return tail
                continue
            if self._rotated_or_replaced():
                continue
            return None
        return None

    def _read_lines(self) -> LineChunk | None:
        assert self._fd is not None and self._ident is not None
        start = self._offset
        data = os.pread(self._fd, self.chunk_bytes, start)
        end_nl = data.rfind(b"\n")
        # A line longer than one chunk: keep reading until its newline (or the end).
        while end_nl < 0 and len(data) >= self.chunk_bytes:
            more = os.pread(self._fd, self.chunk_bytes, start + len(data))
            if not more:
                break
            data += more
            end_nl = data.rfind(b"\n")
        if end_nl < 0:
            return None
        lines = data[:end_nl].split(b"\n")
        self._offset = start + end_nl + 1
        self._refresh_fingerprint()
        return LineChunk(self.source, lines, start, "byte",
                         (self.key, self._ident, self._offset))

    def _refresh_fingerprint(self) -> None:
        # A file first seen nearly empty has a short fingerprint: lengthen it as it grows,
        # so a later replacement is still recognised.
        ident = self._ident
        if ident is not None and ident.fingerprint_len < FINGERPRINT_BYTES:
            new = identify(self._fd)  # type: ignore[arg-type]
            if new.fingerprint_len > ident.fingerprint_len:
                self._ident = new

    def _final_partial_line(self) -> LineChunk | None:
        """A rotated file can no longer grow: an unterminated last line is final."""
        assert self._fd is not None and self._ident is not None
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return None
        start = self._offset
        data = os.pread(self._fd, size - start, start)
        self._offset = start + len(data)
        return LineChunk(self.source, [data], start, "byte",
                         (self.key, self._ident, self._offset))

    def _rotated_or_replaced(self) -> bool:
        """At end of file: has the path moved on to another file, or been truncated?"""
        assert self._fd is not None and self._ident is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # between the rename and the new file: wait for it
        if (st.st_dev, st.st_ino) != (self._ident.device, self._ident.inode):
            # Rotated. Read the old file once more to its end (lines written between our
            # last read and the rename), then switch.
            self._draining = True
            return True
        if st.st_size < self._offset or not same_content(self._fd, self._ident):
            log.warning("%s was truncated or replaced; reading it from the start", self.path)
            self._adopt(self._fd, identify(self._fd), 0)
            return True
        return False

    def chunks(self, stop_event: threading.Event, once: bool = False,
               can_read: Callable[[], bool] | None = None,
               on_idle: Callable[[], None] | None = None) -> Iterator[LineChunk]:
        """Chunks until the stop event (follow mode) or the current end (`once`).

        `can_read` is the back-pressure hook: while it returns False nothing is read.
        `on_idle` runs whenever there is nothing new to read (before waiting), so a
        consumer holding read-ahead work can finish it instead of waiting for more lines.
        """
        while not stop_event.is_set():
            if can_read is not None and not can_read():
                if on_idle is not None:
                    on_idle()
                stop_event.wait(self.poll_seconds)
                continue
            chunk = self.read_chunk()
            if chunk is not None:
                yield chunk
                continue
            if once:
                return
            if on_idle is not None:
                on_idle()
            if self._fd is None and not self._warned_missing:
                self._warned_missing = True
                log.warning("waiting for %s to appear", self.path)
            stop_event.wait(self.poll_seconds)


class StdinLines:
    """JSON lines from standard input (or any binary stream): no offsets to keep, so a
    restart cannot resume a pipe; the stream ends at EOF."""

    def __init__(self, stream: IO[bytes] | None = None, source: str = "jsonl:-",
                 chunk_lines: int = STDIN_CHUNK_LINES) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.source = source
        self.chunk_lines = chunk_lines
        self._line_no = 1

    def chunks(self, stop_event: threading.Event, once: bool = True,
               can_read: Callable[[], bool] | None = None) -> Iterator[LineChunk]:
        lines: list[bytes] = []
        first = self._line_no
        for raw in self.stream:
            while can_read is not None and not can_read() and not stop_event.is_set():
                stop_event.wait(POLL_SECONDS)
            if stop_event.is_set():
                break
            lines.append(raw.rstrip(b"\r\n"))
            self._line_no += 1
            if len(lines) >= self.chunk_lines:
                yield LineChunk(self.source, lines, first, "line", None)
                lines, first = [], self._line_no
        if lines:
            yield LineChunk(self.source, lines, first, "line", None)

    def close(self) -> None:
        pass


def jsonl_object(line: bytes) -> dict[str, Any] | None:
    """One JSON-lines event map; None for a blank line."""
    if not line.strip():
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(BAD_JSON, f"invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MalformedEvent(NOT_AN_OBJECT,
                             f"event JSON is a {type(value).__name__}, not an object")
    return value


# --- HTTP ingest -----------------------------------------------------------------------
# encode(raw event, kind or None) -> (transaction_id, encoded Moesif event); raises
# MalformedEvent. Supplied by the pipeline (validate + mask + map + orjson).
Encoder = Callable[[dict[str, Any], str | None], tuple[str, bytes]]

INGEST_PATH = "/v1/events"
HEALTH_PATH = "/healthz"
RETRY_AFTER_SECONDS = 1


class IngestApp:
    """What the ingest handler needs: spool, encoder, token, limits."""

    def __init__(self, spool: Spool, encode: Encoder, token: SecretStr,
                 max_body_bytes: int = 1_048_576,
                 on_spooled: Callable[[], None] | None = None) -> None:
        secret = token.get_secret_value()
        if not secret:
            raise ValueError("FORWARD_INGEST_TOKEN is empty")
        self.spool = spool
        self.encode = encode
        self._expected = b"Bearer " + secret.encode()
        self.max_body_bytes = max_body_bytes
        self.on_spooled = on_spooled

    def authorized(self, header: str | None) -> bool:
        given = (header or "").strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, self._expected)


class _IngestHandler(JsonHandler):
    """`POST /v1/events` (one event map or an array) and `GET /healthz`.

    A request is all or nothing: if any event in it is invalid, nothing is spooled and
    the 400 names the first bad index, so a client can fix and resend the whole request
    without creating duplicates or wondering which part was taken.
    """

    server_version = "moesif-segment-forward"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if urlsplit(self.path).path != HEALTH_PATH:
            self.send_json(404, {"error": "not_found"})
            return
        spool: Spool = self.app.spool
        self.send_json(200, {"status": "ok", "backlog": spool.depth(),
                             "spool_full": spool.is_full()})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        app: IngestApp = self.app
        if urlsplit(self.path).path != INGEST_PATH:
            self._refuse(404, {"error": "not_found"})
            return
        if not app.authorized(self.headers.get("Authorization")):
            self._refuse(401, {"error": "unauthorized",
                               "detail": "send Authorization: Bearer <FORWARD_INGEST_TOKEN>"},
                         {"WWW-Authenticate": 'Bearer realm="forward"'})
            return
        length = self._content_length()
        if length is None:
            return
        if length > app.max_body_bytes:
            # Checked before reading a byte; the connection is closed, not drained.
            self._refuse(413, {"error": "body_too_large", "limit_bytes": app.max_body_bytes})
            return
        body = self.rfile.read(length) if length else b""
        if app.spool.is_full():
            self.send_json(503, {"error": "spool_full", "detail": "retry later"},
                           {"Retry-After": str(RETRY_AFTER_SECONDS)})
            return
        events = self._decode(body)
        if events is None:
            return
        encoded = self._encode_all(events)
        if encoded is None:
            return
        n = len(encoded)
        try:
            app.spool.append(encoded, counters={"read": n, "parsed": n, "masked": n})
        except Exception:  # disk full, I/O error: the client must retry, nothing was taken
            log.exception("spooling an ingest request failed")
            self.send_json(500, {"error": "spool_failed"})
            return
        if app.on_spooled is not None:
            app.on_spooled()
        self.send_json(202, {"accepted": n})

    def _refuse(self, status: int, payload: dict[str, Any],
                headers: dict[str, str] | None = None) -> None:
        # The body was not read: close the connection rather than misread it as a request.
        self.close_connection = True
        self.send_json(status, payload, {"Connection": "close", **(headers or {})})

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or value is None:
            self._refuse(411, {"error": "length_required"})
            return None
        try:
            length = int(value)
            if length < 0:
                raise ValueError
        except ValueError:
            self._refuse(400, {"error": "invalid_request", "detail": "bad Content-Length"})
            return None
        return length

    def _decode(self, body: bytes) -> list[Any] | None:
        app: IngestApp = self.app
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = inflater.decompress(body, app.max_body_bytes + 1)
            except (zlib.error, gzip.BadGzipFile):
                self.send_json(400, {"error": "invalid_gzip"})
                return None
            if len(body) > app.max_body_bytes:
                self.send_json(413, {"error": "body_too_large",
                                     "limit_bytes": app.max_body_bytes})
                return None
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.send_json(400, {"error": "invalid_json", "detail": str(exc)})
            return None
        events = value if isinstance(value, list) else [value]
        return events

    def _encode_all(self, events: list[Any]) -> list[tuple[str, bytes]] | None:
        app: IngestApp = self.app
        encoded = []
        for index, raw in enumerate(events):
            try:
                if not isinstance(raw, dict):
                    raise MalformedEvent(NOT_AN_OBJECT, f"event is a {type(raw).__name__}, "
                                                        "not an object")
                encoded.append(app.encode(raw, None))
            except MalformedEvent as exc:
                self.send_json(400, {"error": "invalid_event", "index": index,
                                     "reason": exc.reason_code, "detail": exc.detail,
                                     "accepted": 0})
                return None
        return encoded


class _Ipv6Server(FastThreadingHTTPServer):
    address_family = socket.AF_INET6


class IngestServer:
    """The HTTP ingest endpoint in a background thread (127.0.0.1 unless told otherwise)."""

    def __init__(self, app: IngestApp, host: str = "127.0.0.1", port: int = 0) -> None:
        server_class = _Ipv6Server if ":" in host else FastThreadingHTTPServer
        self.httpd = server_class((host, port), _IngestHandler)
        self.httpd.app = app  # type: ignore[attr-defined]
        # A short poll interval only makes stop() quick (the default waits up to 0.5 s).
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True, name="forward-ingest")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> IngestServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> IngestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `:port` or `port` -> (host, port); the host defaults to 127.0.0.1."""
    text = value.strip()
    if text.startswith("[") and "]:" in text:  # [::1]:9099
        host, _, port = text[1:].partition("]:")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = "", text
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen: bad port in {value!r} (use host:port)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen: port out of range in {value!r}")
    return host or "127.0.0.1", number
