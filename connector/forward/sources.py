"""Where WSO2 analytics events come from: the ELK log, JSON lines, and HTTP ingest.

File sources hand out `LineChunk`s: complete lines plus the offset to save once those
lines are spooled. They never save an offset themselves; the pipeline passes
`chunk.offset_update` to `Spool.append` together with the events, so the offset moves in
the same transaction as the events it covers.

`LogTailer` follows a file like `tail -F`:

- it reads large chunks (1 MB) with `os.pread` and hands out complete lines only; a
  partial last line is handed out once its newline has arrived, and while it grows only
  the new bytes are looked at (never the line again from its start at every poll);
- a line over `FORWARD_MAX_LINE_BYTES` is never held: the tailer looks for its end one
  chunk at a time and hands out a `skipped` chunk (position and length only) that the
  pipeline dead-letters as LINE_TOO_LONG;
- the saved offset carries the file's identity (device, inode, hash of the first 1 KB), so
  a restart resumes in the right file: if the log was rotated meanwhile (WSO2 renames
  `apim_metrics.log` to `apim_metrics-MM-dd-yyyy-N.log` and starts a new file), the
  renamed file is found in the directory by its inode, read to its end, followed by any
  later rotated files, and only then the new `apim_metrics.log` from its start;
- while running, a rename is noticed at end of file; the old file (still open) is read
  to its end before switching, so no line is lost or repeated;
- a truncated file (size below our offset) or a replaced one (different first bytes
  under the same inode) is read again from 0.

`StdinLines` streams a pipe (select + os.read): lines are handed out as they arrive.

The HTTP ingest server answers 202 only after `Spool.append` committed the events; it
has a read timeout on every connection, a cap on open connections (503 over it), takes
the `Bearer` scheme in any case, and checks the spool limit atomically with the write.
It reads a request's framing strictly (exactly one Content-Length of ASCII digits, no
Transfer-Encoding: 411), takes a JSON body (no Content-Type, or a JSON media type; any
other is 415) that is plain or gzip (`gzip` / `x-gzip`, every member, nothing after the
last; any other Content-Encoding is 415), answers a body that ends early 400 and one that
stops arriving 408, and decodes it like the file inputs (`loads_event`), so an event is
refused or taken by the same rules whichever way it came.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import select
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr

from connector.forward.errors import BAD_JSON, BAD_VALUE, NOT_AN_OBJECT, MalformedEvent
from connector.forward.logline import loads_event
from connector.forward.spool import DeadLetter, FileIdentity, OffsetUpdate, Spool, SpoolFull
from connector.http.server import FastThreadingHTTPServer, JsonHandler

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 1 << 20  # FORWARD_MAX_LINE_BYTES' default
FINGERPRINT_BYTES = 1024
POLL_SECONDS = 0.05
STDIN_CHUNK_LINES = 2000
READ_BYTES = 1 << 16


@dataclass(slots=True)
class LineChunk:
    """Complete lines from one source, and where reading resumes once they are spooled."""

    source: str                        # "log:/path", "jsonl:/path", "jsonl:-"
    # The lines without their terminators; from a file, the bytes as read (the lines
    # joined by b"\n"), split only where they are parsed: a parse worker, not the reader.
    body: list[bytes] | bytes
    first_position: int                # byte offset (files) or line number (stdin)
    position_unit: str                 # "byte" or "line"
    offset_update: OffsetUpdate | None  # None for stdin
    # > 0: no lines; one line of this many bytes at first_position was skipped unread
    # (over FORWARD_MAX_LINE_BYTES): it becomes a LINE_TOO_LONG dead letter.
    skipped: int = 0

    @property
    def lines(self) -> list[bytes]:
        return split_lines(self.body)

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


def split_lines(body: list[bytes] | bytes) -> list[bytes]:
    """A chunk's lines: a block read from a file is split on its newlines."""
    return body.split(b"\n") if isinstance(body, bytes) else body


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
                 source: str | None = None, max_line_bytes: int = MAX_LINE_BYTES,
                 tail_complete: Callable[[bytes], bool] | None = None) -> None:
        self.path = Path(path).absolute()
        # Whether an unterminated last line holds a whole record (see final_tail).
        self.tail_complete = tail_complete
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
        self.max_line_bytes = max_line_bytes
        # Bytes from _offset up to _scan_from are known to hold no newline (a partial or
        # an over-long line): the next poll looks on from there, not from the line start.
        self._scan_from = 0
        self._skipping = False          # inside a line over max_line_bytes

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
        self._scan_from, self._skipping = 0, False

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
        scan = max(self._scan_from, start)
        if scan == start and not self._skipping:
            data = os.pread(self._fd, self.chunk_bytes, start)
            end_nl = data.rfind(b"\n")
            if end_nl >= 0:
                return self._emit(start, data, end_nl)
            scan = start + len(data)
            if len(data) < self.chunk_bytes:  # a partial last line: remember its length
                self._scan_from = scan
                return None
        elif os.fstat(self._fd).st_size < scan:  # cut back under what we had looked at
            scan, self._skipping = start, False
        # A line longer than a chunk, or one seen partial before: look for its end from
        # where the last look stopped, holding one chunk at a time.
        end = self._find_newline(start, scan)
        if end is None:
            return None
        if self._skipping or end - start > self.max_line_bytes:
            return self._skipped(start, end)
        data = os.pread(self._fd, end + 1 - start, start)
        if data.rfind(b"\n") < 0:  # the file changed under us: look again next time
            self._scan_from = 0
            return None
        return self._emit(start, data, data.rfind(b"\n"))

    def _find_newline(self, start: int, scan: int) -> int | None:
        """Position of the first newline at or after `scan`, or None (remembered)."""
        assert self._fd is not None
        while True:
            if scan - start > self.max_line_bytes:
                self._skipping = True  # its content will never be needed
            piece = os.pread(self._fd, self.chunk_bytes, scan)
            if not piece:
                self._scan_from = scan
                return None
            newline = piece.find(b"\n")
            if newline >= 0:
                return scan + newline
            scan += len(piece)

    def _emit(self, start: int, data: bytes, end_nl: int) -> LineChunk:
        block = data[:end_nl]
        self._offset = start + end_nl + 1
        self._scan_from = 0
        self._refresh_fingerprint()
        return LineChunk(self.source, block, start, "byte",
                         (self.key, self._ident, self._offset))  # type: ignore[arg-type]

    def _skipped(self, start: int, end: int) -> LineChunk:
        """The line [start, end) is over max_line_bytes: skip it (and its newline)."""
        self._offset = end + 1
        self._scan_from, self._skipping = 0, False
        self._refresh_fingerprint()
        if end - start > self.max_line_bytes:
            log.warning("%s: a line of %d bytes at byte %d is over FORWARD_MAX_LINE_BYTES; "
                        "skipped", self.path, end - start, start)
        return LineChunk(self.source, [], start, "byte",
                         (self.key, self._ident, self._offset),  # type: ignore[arg-type]
                         skipped=max(1, end - start))

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
        if self._skipping or size - start > self.max_line_bytes:
            return self._skip_to(start, size)
        return self._take_tail(start, os.pread(self._fd, size - start, start))

    def _take_tail(self, start: int, data: bytes) -> LineChunk:
        """The unterminated last line `data` (at byte `start`), taken: reading resumes
        after it."""
        self._offset = start + len(data)
        self._scan_from = 0
        self._refresh_fingerprint()
        return LineChunk(self.source, [data], start, "byte",
                         (self.key, self._ident, self._offset))  # type: ignore[arg-type]

    def final_tail(self) -> LineChunk | None:
        """At the end of a `once` run: the unterminated last line when `tail_complete`
        says it holds a whole record (a JSON-lines export, or a log, whose last line has
        no newline), so its event is not left behind.

        Safe against a writer still writing it: a proper prefix of a JSON object is never
        a whole JSON object, so a line taken here is complete; the newline written after
        it later is read as a blank line. An incomplete one stays for a later run (the
        offset does not move), with a warning naming its position and length only."""
        if self.tail_complete is None or self._fd is None or self._ident is None:
            return None
        if self._skipping:
            return None
        start = self._offset
        size = os.fstat(self._fd).st_size
        if size <= start or size - start > self.max_line_bytes:
            return None
        data = os.pread(self._fd, size - start, start)
        if b"\n" in data or not data.strip():
            return None
        if not self.tail_complete(data):
            log.warning("%s: the last line (%d bytes at byte %d) has no newline and is not "
                        "a complete record yet; left for a later run", self.path, len(data),
                        start)
            return None
        return self._take_tail(start, data)

    def _skip_to(self, start: int, size: int) -> LineChunk:
        """An unterminated over-long last line of a rotated file: skip to its end."""
        chunk = self._skipped(start, size)
        self._offset = size
        chunk.offset_update = (self.key, self._ident, size)  # type: ignore[assignment]
        chunk.skipped = size - start
        return chunk

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
                tail = self.final_tail()
                if tail is not None:
                    yield tail
                return
            if on_idle is not None:
                on_idle()
            if self._fd is None and not self._warned_missing:
                self._warned_missing = True
                log.warning("waiting for %s to appear", self.path)
            stop_event.wait(self.poll_seconds)


class StdinLines:
    """JSON lines from standard input (or any binary stream): no offsets to keep, so a
    restart cannot resume a pipe; the stream ends at EOF.

    A live pipe streams: what has arrived is handed out as soon as the pipe has nothing
    more for now (or `chunk_lines` lines, or `flush_seconds` passed), so events are
    spooled within the batch age, not at the end of the input. The pipe is read with
    select + os.read on its descriptor, never a buffered read() a thread could be stuck
    in: a stop (SIGTERM) ends the loop within a poll, hands out what was read (a partial
    last line too) and leaves no thread blocked in the interpreter's stdin lock.
    """

    def __init__(self, stream: IO[bytes] | None = None, source: str = "jsonl:-",
                 chunk_lines: int = STDIN_CHUNK_LINES, *, max_line_bytes: int = MAX_LINE_BYTES,
                 flush_seconds: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.source = source
        self.chunk_lines = chunk_lines
        self.max_line_bytes = max_line_bytes
        self.flush_seconds = flush_seconds
        self._line_no = 1
        self._pending = bytearray()     # the partial line read so far
        self._skipping = 0              # > 0: bytes of an over-long line being skipped
        self._fd = _fileno(self.stream)

    def chunks(self, stop_event: threading.Event, once: bool = True,
               can_read: Callable[[], bool] | None = None) -> Iterator[LineChunk]:
        items: list[bytes | int] = []   # lines, or the length of a skipped line
        first_at = 0.0
        while not stop_event.is_set():
            while can_read is not None and not can_read() and not stop_event.is_set():
                stop_event.wait(POLL_SECONDS)
            data = self._read()
            if data == b"":  # end of input
                break
            if data:
                if not items:
                    first_at = time.monotonic()
                self._feed(data, items)
            idle = data is None or not self._more_now()
            if items and (idle or len(items) >= self.chunk_lines
                          or time.monotonic() - first_at >= self.flush_seconds):
                yield from self._flush(items)
                items = []
        if self._pending or self._skipping:  # the unterminated last line
            self._end_line(items)
        yield from self._flush(items)

    def _read(self) -> bytes | None:
        """Bytes, b"" at end of input, or None when nothing arrived within a poll."""
        if self._fd is None:
            return self.stream.read(READ_BYTES)
        ready, _, _ = select.select([self._fd], [], [], POLL_SECONDS)
        return os.read(self._fd, READ_BYTES) if ready else None

    def _more_now(self) -> bool:
        if self._fd is None:
            return True
        return bool(select.select([self._fd], [], [], 0)[0])

    def _feed(self, data: bytes, items: list[bytes | int]) -> None:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if self._skipping:
                self._skipping += len(piece)
            else:
                self._pending += piece
                if len(self._pending) > self.max_line_bytes:  # stop holding it
                    self._skipping = len(self._pending)
                    self._pending = bytearray()
            if newline < 0:
                return
            self._end_line(items)
            start = newline + 1

    def _end_line(self, items: list[bytes | int]) -> None:
        if self._skipping:
            items.append(self._skipping)
            self._skipping = 0
        else:
            items.append(bytes(self._pending).rstrip(b"\r"))
            self._pending.clear()

    def _flush(self, items: list[bytes | int]) -> Iterator[LineChunk]:
        lines: list[bytes] = []
        for item in items:
            if isinstance(item, int):
                if lines:
                    yield LineChunk(self.source, lines, self._line_no, "line", None)
                    self._line_no += len(lines)
                    lines = []
                yield LineChunk(self.source, [], self._line_no, "line", None, skipped=item)
                self._line_no += 1
            else:
                lines.append(item)
                if len(lines) >= self.chunk_lines:
                    yield LineChunk(self.source, lines, self._line_no, "line", None)
                    self._line_no += len(lines)
                    lines = []
        if lines:
            yield LineChunk(self.source, lines, self._line_no, "line", None)
            self._line_no += len(lines)

    def close(self) -> None:
        pass


def _fileno(stream: Any) -> int | None:
    """The descriptor to select() on, or None for an in-memory stream."""
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def jsonl_object(line: bytes) -> dict[str, Any] | None:
    """One JSON-lines event map; None for a blank line."""
    if not line.strip():
        return None
    try:
        value = loads_event(line)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise MalformedEvent(BAD_JSON, f"invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MalformedEvent(NOT_AN_OBJECT,
                             f"event JSON is a {type(value).__name__}, not an object")
    return value


# --- HTTP ingest -----------------------------------------------------------------------
# encode(raw event, kind or None) -> (transaction_id, encoded Moesif event); raises
# MalformedEvent. Supplied by the pipeline (validate + mask + map + orjson).
Encoder = Callable[[dict[str, Any], str | None], tuple[str, bytes]]
# keep(raw event) -> what its dead letter may store (masked, or a fingerprint only).
Keeper = Callable[[Any], bytes]

INGEST_PATH = "/v1/events"
HEALTH_PATH = "/healthz"
RETRY_AFTER_SECONDS = 1
READ_TIMEOUT_SECONDS = 10.0     # a client must send each part of a request within this
# ... and a whole body at this rate at least (after READ_TIMEOUT_SECONDS of grace): a
# client trickling one byte per read timeout cannot hold a connection slot for hours.
MIN_BODY_BYTES_PER_SECOND = 16_384
MAX_CONNECTIONS = 64            # open connections at once; one more is answered 503
MAX_REPORTED_EVENTS = 100       # refused events listed in one 400 answer
_BEARER = b"bearer"


def _withheld(_raw: Any) -> bytes:
    return b'{"withheld":"not masked, so not stored"}'


class IngestApp:
    """What the ingest handler needs: spool, encoder, token, limits."""

    def __init__(self, spool: Spool, encode: Encoder, token: SecretStr,
                 max_body_bytes: int = 1_048_576,
                 on_spooled: Callable[[], None] | None = None, *,
                 keep: Keeper = _withheld, read_timeout: float = READ_TIMEOUT_SECONDS,
                 max_connections: int = MAX_CONNECTIONS,
                 min_body_rate: float = MIN_BODY_BYTES_PER_SECOND) -> None:
        secret = token.get_secret_value()
        if not secret:
            raise ValueError("FORWARD_INGEST_TOKEN is empty")
        self.spool = spool
        self.encode = encode
        self.keep = keep
        self._expected = secret.encode()
        self.max_body_bytes = max_body_bytes
        self.on_spooled = on_spooled
        self.read_timeout = read_timeout
        self.min_body_rate = min_body_rate
        self.max_connections = max_connections

    def authorized(self, header: str | None) -> bool:
        """`Authorization: Bearer <token>`; the scheme in any case (RFC 7235)."""
        scheme, _, given = (header or "").strip().encode("utf-8", "replace").partition(b" ")
        return scheme.lower() == _BEARER and hmac.compare_digest(given.strip(), self._expected)


class _IngestHandler(JsonHandler):
    """`POST /v1/events` (one event map or an array) and `GET /healthz`.

    Each event stands alone, as in the file inputs: the valid events of a request are
    spooled, and each invalid one (whatever is wrong with it) goes to the dead letters
    with its index and reason. The answer is 202 when every event was taken; otherwise
    400 naming the first refused index (`index`, `reason`, `detail`), listing every
    refused one (`rejected`) and saying how many were taken (`accepted`). A client that
    resends the whole request anyway creates no duplicates in Moesif: transaction ids are
    derived from the event, so Moesif de-duplicates them.
    """

    server_version = "moesif-segment-forward"
    sys_version = ""

    def setup(self) -> None:
        # A read timeout on every connection: a client that stops sending (or an idle
        # keep-alive connection) cannot hold a connection slot for ever.
        self.timeout = self.app.read_timeout
        super().setup()
        # ... nor one that keeps sending a byte now and then: every read also stops at a
        # deadline for the request (its line and headers, then its body).
        self.deadline = float("inf")
        plain, self.rfile = self.rfile, io.BufferedReader(_DeadlineReader(self))
        plain.close()  # (the socket stays open: it is closed when the request is done)

    def handle_one_request(self) -> None:
        # Waiting for the request (keep-alive idle) and reading its headers: two read
        # timeouts in all.
        self.deadline = time.monotonic() + 2 * self.app.read_timeout
        super().handle_one_request()

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
        if not self._acceptable_body_type():
            return
        try:
            body = self._read_body(length)
        except TimeoutError:  # the client stopped sending: say so before closing
            self._answer_and_close(408, {"error": "request_timeout",
                                         "detail": "the body did not arrive in time"})
            return
        except OSError:  # the client went away
            self.close_connection = True
            return
        if len(body) < length:  # the client closed its side early
            self._answer_and_close(400, {"error": "incomplete_body",
                                         "detail": f"{len(body)} of {length} bytes arrived"})
            return
        if app.spool.is_full():
            self._spool_full()
            return
        events = self._decode(body)
        if events is None:
            return
        self._take(events)

    def _take(self, events: list[Any]) -> None:
        app: IngestApp = self.app
        encoded, letters, rejected = self._encode_all(events)
        n = len(events)
        if len(encoded) > app.spool.max_events:  # could never fit: not worth a retry
            self.send_json(413, {"error": "too_many_events",
                                 "limit_events": app.spool.max_events})
            return
        try:
            # The limit is checked under the spool's lock, with the write: concurrent
            # requests cannot push the backlog past FORWARD_SPOOL_MAX_EVENTS together.
            app.spool.append(encoded, dead_letters=letters,
                             counters={"read": n, "parsed": n, "masked": len(encoded)},
                             limit=app.spool.max_events)
        except SpoolFull:
            self._spool_full()
            return
        except Exception:  # disk full, I/O error: the client must retry, nothing was taken
            log.exception("spooling an ingest request failed")
            self.send_json(500, {"error": "spool_failed"})
            return
        if encoded and app.on_spooled is not None:
            app.on_spooled()
        if rejected:
            first = rejected[0]
            self.send_json(400, {"error": "invalid_event", **first,
                                 "rejected": rejected[:MAX_REPORTED_EVENTS],
                                 "accepted": len(encoded)})
            return
        self.send_json(202, {"accepted": len(encoded)})

    def _spool_full(self) -> None:
        self.send_json(503, {"error": "spool_full", "detail": "retry later"},
                       {"Retry-After": str(RETRY_AFTER_SECONDS)})

    def _refuse(self, status: int, payload: dict[str, Any],
                headers: dict[str, str] | None = None) -> None:
        # The body was not read: close the connection rather than misread it as a request.
        self.close_connection = True
        self.send_json(status, payload, {"Connection": "close", **(headers or {})})

    def _read_body(self, length: int) -> bytes:
        """`length` bytes (fewer if the client closed its side), within the read timeout
        per read AND a deadline for the whole body (read timeout + length at the minimum
        rate); TimeoutError past either."""
        app: IngestApp = self.app
        if not length:
            return b""
        self.deadline = time.monotonic() + app.read_timeout + length / app.min_body_rate
        return self.rfile.read(length)

    def _answer_and_close(self, status: int, payload: dict[str, Any]) -> None:
        """An answer to a client that may already be gone (best effort), then close."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.send_json(status, payload, {"Connection": "close"})

    def _content_length(self) -> int | None:
        # Any Transfer-Encoding (chunked, or a list ending in it) frames the body itself:
        # never read such a body by a Content-Length as well (request smuggling).
        values = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None or not values:
            self._refuse(411, {"error": "length_required",
                               "detail": "send the body with one Content-Length, "
                                         "without Transfer-Encoding"})
            return None
        texts = {value.strip() for value in values}
        text = texts.pop()
        # int() would also take "1_0", "+5" or non-ASCII digits: only plain digits frame.
        if texts or not (text.isascii() and text.isdigit()):
            self._refuse(400, {"error": "invalid_request", "detail": "bad Content-Length"})
            return None
        return int(text)

    def _acceptable_body_type(self) -> bool:
        """A JSON body (Content-Type absent or a JSON media type), plain or gzip; 415
        otherwise, before the body is read."""
        media = self.headers.get("Content-Type")
        if media is not None and not _is_json_media(media):
            self._refuse(415, {"error": "unsupported_media_type",
                               "detail": "send Content-Type: application/json"})
            return False
        coding = (self.headers.get("Content-Encoding") or "").strip().lower()
        if coding not in _CODINGS:
            self._refuse(415, {"error": "unsupported_encoding",
                               "detail": "Content-Encoding must be gzip or identity"},
                         {"Accept-Encoding": "gzip"})
            return False
        return True

    def _decode(self, body: bytes) -> list[Any] | None:
        app: IngestApp = self.app
        if (self.headers.get("Content-Encoding") or "").strip().lower() in _GZIP:
            inflated = gunzip(body, app.max_body_bytes)
            if inflated is None:
                self.send_json(400, {"error": "invalid_gzip",
                                     "detail": "not a complete gzip stream"})
                return None
            if len(inflated) > app.max_body_bytes:
                self.send_json(413, {"error": "body_too_large",
                                     "limit_bytes": app.max_body_bytes})
                return None
            body = inflated
        try:
            # As the file inputs decode a line: an escaped lone surrogate in one event
            # must not refuse the other events of the request.
            value = loads_event(body)
        except ValueError as exc:  # orjson's message names a position, never the content
            self.send_json(400, {"error": "invalid_json", "detail": str(exc)})
            return None
        events = value if isinstance(value, list) else [value]
        return events

    def _encode_all(self, events: list[Any]
                    ) -> tuple[list[tuple[str, bytes]], list[DeadLetter], list[dict[str, Any]]]:
        app: IngestApp = self.app
        encoded: list[tuple[str, bytes]] = []
        letters: list[DeadLetter] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(events):
            try:
                if not isinstance(raw, dict):
                    raise MalformedEvent(NOT_AN_OBJECT, f"event is a {type(raw).__name__}, "
                                                        "not an object")
                encoded.append(app.encode(raw, None))
            except Exception as exc:  # noqa: BLE001 - one event's problem is that event's
                if isinstance(exc, MalformedEvent):
                    reason, detail = exc.reason_code, exc.detail
                else:  # the type only: a message may quote the unmasked value
                    reason, detail = BAD_VALUE, f"the event cannot be mapped ({type(exc).__name__})"
                rejected.append({"index": index, "reason": reason, "detail": detail})
                letters.append(DeadLetter("http", f"request event {index}", reason, detail,
                                          _kept(app.keep, raw)))
        return encoded, letters, rejected


_GZIP = frozenset({"gzip", "x-gzip"})
_CODINGS = _GZIP | {"", "identity"}


def _is_json_media(value: str) -> bool:
    media = value.partition(";")[0].strip().lower()
    return media in ("", "application/json", "text/json") or (
        media.startswith("application/") and media.endswith("+json"))


def gunzip(data: bytes, limit: int) -> bytes | None:
    """The inflated gzip `data`: every member (RFC 1952 allows several), at most
    `limit + 1` bytes (more means too large; a bomb is never inflated further). None when
    it is no complete gzip stream: truncated, corrupt, or followed by anything but zero
    padding."""
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            return None
        if len(out) > limit:
            return bytes(out)
        if not inflater.eof:  # the stream ended inside a member
            return None
        rest = inflater.unused_data
        if not rest.strip(b"\x00"):
            return bytes(out)


class _DeadlineReader(io.RawIOBase):
    """The handler's socket as a raw stream whose every read waits at most the read
    timeout and never past `handler.deadline` (then TimeoutError, as a socket timeout)."""

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self.handler = handler
        self.sock: socket.socket = handler.connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request is arriving too slowly")
        self.sock.settimeout(min(self.handler.app.read_timeout, left))
        return self.sock.recv_into(buffer)


def _kept(keep: Keeper, raw: Any) -> bytes:
    try:
        return keep(raw)
    except Exception:  # noqa: BLE001 - never let the dead letter fail the request
        return _withheld(raw)


class _IngestHTTPServer(FastThreadingHTTPServer):
    """At most `app.max_connections` connections at once: one more is answered 503
    (from the accepting thread, without reading it) and closed."""

    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for every failed request, including a
        # client that reset the connection while we answered: that is no error of ours,
        # and a client must not be able to fill the forwarder's stderr with tracebacks.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        log.error("ingest: a request failed unexpectedly (%s)", type(exc).__name__,
                  exc_info=exc)

    def _busy(self, request: socket.socket) -> None:
        body = orjson.dumps({"error": "too_many_connections", "detail": "retry later"})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Retry-After: {RETRY_AFTER_SECONDS}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            request.settimeout(1.0)
            request.sendall(head + body)
            # Read what already arrived, so closing does not reset the connection
            # before the client has read the answer.
            request.setblocking(False)
            while request.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


class _Ipv6Server(_IngestHTTPServer):
    address_family = socket.AF_INET6


class IngestServer:
    """The HTTP ingest endpoint in a background thread (127.0.0.1 unless told otherwise)."""

    def __init__(self, app: IngestApp, host: str = "127.0.0.1", port: int = 0) -> None:
        server_class = _Ipv6Server if ":" in host else _IngestHTTPServer
        self.httpd = server_class((host, port), _IngestHandler)
        self.httpd.app = app  # type: ignore[attr-defined]
        self.httpd.slots = threading.BoundedSemaphore(app.max_connections)
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
