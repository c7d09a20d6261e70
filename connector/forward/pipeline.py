"""The forwarder: WSO2 analytics events in, durable spool, batches to Moesif's Collector.

```
 reader thread per source                      sender threads (2 batches in flight)
 LogTailer / JSONL file / stdin                  claim the next batch (count, bytes, age)
   -> parse workers (processes): parse,          -> encode_batch (stored bytes, joined)
      validate, mask, map, orjson                -> CollectorClient.post_batch (gzip, retry)
   -> Spool.append(events + offset), in order    -> ack on 201 | 400: split, dead-letter
 HTTP ingest: validate+mask+map inline, Spool.append, then 202
```

One module per stage: `sources` (read) -> `parse` (lines -> rows, with `encoder`) ->
`spool` -> `sender`; `config` resolves the settings. This module runs them together.

- JSON decoding and mapping hold the GIL, so for file sources they run in parse worker
  processes (spawned, one per core up to 4); chunk results are committed in read order,
  one transaction per chunk (up to 1 MB of lines): events, the source offset they cover,
  dead letters, counters. Sending overlaps reading (zlib, SQLite and sockets release the
  GIL) and two batches are in flight so gzip overlaps Moesif's answer.
- Encoded events are stored once and sent as stored (`encode_batch` joins them).
- A 400 splits the batch in halves, recursively, until the refused event(s) are alone;
  those go to the dead letters with Moesif's answer, the rest is delivered.
- Back-pressure: while the spool holds `FORWARD_SPOOL_MAX_EVENTS`, readers stop reading
  (they overshoot by at most the chunks already read) and HTTP ingest answers 503;
  nothing is ever dropped. A full spool is sent at once, without waiting for batch age.
- SIGTERM/SIGINT: stop reading, let the in-flight requests finish (a retry wait is cut
  short), exit cleanly. Everything not confirmed stays in the spool for the next run;
  SIGKILL loses nothing either (Moesif de-duplicates the resent batch by transaction id).
- Standard input (`--from-jsonl -`) has no offsets; it streams: lines from a live pipe
  are spooled as they arrive (within the batch age), its EOF ends the run like `--once`,
  and SIGTERM commits what was read (the next run sends it) and exits 0.
- Poison never stops the stream: any failure while reading, validating, masking,
  mapping or encoding one line or event sends it, alone, to the dead letters with a
  reason code (`connector.errors.DeadLetterCode`); HTTP ingest takes the valid events of
  a request and answers 400 naming the refused ones.
- Nothing unmasked is stored: spooled events are masked; a dead letter keeps the event
  masked by the `[apim.analytics.mask]` rules (without captured headers unless
  send_headers), or, when it is not an object that can be masked, only a fingerprint
  (BLAKE2b keyed with the installation's secret) and the length of its bytes; its
  position says where to find it in the source.
- WAL checkpoints run in a background thread on their own connection, so their copying
  and fsyncs do not land on an HTTP request or a reader commit.

Counters (lifetime totals in the state file; the run's own are printed at exit): read
(lines or event maps taken), ignored (log lines that are not metrics), parsed, masked
(validated, masked and mapped), spooled, delivered (201), retried (events in a batch
whose send was repeated, once per repetition), dead_lettered.

Exit codes of `run_forward`:
  0  done: in `--once`, every valid event read is accepted by Moesif (malformed lines and
     invalid events went to the dead letters; they are reported and counted, but do not
     fail the run, since retrying cannot fix them); otherwise stopped by a signal;
  1  `--once` could not finish: Moesif refused some events (400, dead-lettered), the run
     was interrupted before the spool was empty, or an unexpected error;
  2  configuration error (missing application id, unreadable file, bad mask value,
     Moesif refusing the application id or the URL).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from connector.common.redaction import install_secret_filter
from connector.errors import ExitCode
from connector.forward.config import ForwardConfig, resolve_config
from connector.forward.encoder import EncoderSpec, EventEncoder
from connector.forward.parse import (
    ChunkResult,
    _init_worker,
    _warm_up,
    _work,
    default_parse_workers,
    process_lines,
    record_is_complete,
    skipped_line_result,
)
from connector.forward.sender import BatchSender
from connector.forward.sources import (
    IngestApp,
    IngestServer,
    LineChunk,
    LogTailer,
    StdinLines,
    parse_listen,
)
from connector.forward.spool import COUNTER_NAMES, Spool
from connector.moesif.collector import CollectorConfigError
from connector.ops.signals import stop_on_signals
from connector.settings import ConfigError, Settings
from connector.state.store import connect

log = logging.getLogger(__name__)

# Old names of the exit codes (connector.errors.ExitCode is the one definition).
EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG = ExitCode.OK, ExitCode.FAILED, ExitCode.CONFIGURATION
CHECKPOINT_SECONDS = 0.5


# --- the forwarder -----------------------------------------------------------------------
class Forwarder:
    """Readers, HTTP ingest and the sender around one spool. `run()` returns an exit code."""

    def __init__(self, settings: Settings, config: ForwardConfig, *,
                 from_log: Path | None = None, from_jsonl: str | None = None,
                 listen: str | None = None, once: bool = False,
                 stop_event: threading.Event | None = None,
                 stdin: Any = None, parse_workers: int | None = None,
                 senders: int = 2) -> None:
        self.settings = settings
        self.config = config
        self.once = once
        self.stop_event = stop_event or threading.Event()
        self.conn = connect(settings.state_path)
        self.spool = Spool(self.conn, settings.forward_spool_max_events,
                           settings.forward_dead_letters_max)
        self.encoder_spec = EncoderSpec.of(config, self.spool.installation_secret(),
                                           settings.forward_max_line_bytes)
        self.encoder = self.encoder_spec.build()
        max_line = settings.forward_max_line_bytes
        # (source, format): "log" lines go through the metrics-line parser, "jsonl" lines
        # are event maps.
        self.sources: list[tuple[Any, str]] = []
        if from_log is not None:
            path = Path(from_log).absolute()
            self.sources.append((LogTailer(path, f"log:{path}", self.spool,
                                           max_line_bytes=max_line,
                                           tail_complete=record_is_complete("log")), "log"))
        if from_jsonl is not None:
            if from_jsonl == "-":
                self.sources.append((StdinLines(stdin, max_line_bytes=max_line,
                                                flush_seconds=settings.forward_batch_age_seconds),
                                     "jsonl"))
            else:
                path = Path(from_jsonl).absolute()
                self.sources.append((LogTailer(path, f"jsonl:{path}", self.spool,
                                               max_line_bytes=max_line,
                                               tail_complete=record_is_complete("jsonl")),
                                     "jsonl"))
        workers = default_parse_workers() if parse_workers is None else parse_workers
        self.parse_workers = workers if self.sources else 0
        self._pool: ProcessPoolExecutor | None = None
        self.ingest: IngestServer | None = None
        if listen is not None:
            token = settings.forward_ingest_token
            assert token is not None  # checked by run_forward
            host, port = parse_listen(listen)
            app = IngestApp(self.spool, self.encoder, token, settings.forward_max_body_bytes,
                            on_spooled=self._wake_sender, keep=self.encoder.kept)
            try:
                self.ingest = IngestServer(app, host, port)
            except OSError as exc:
                self.conn.close()
                raise OSError(exc.errno, f"--listen {listen}: {exc.strerror}") from None
        self._inputs_done = threading.Event()
        self._fatal: BaseException | None = None
        self.sender = BatchSender(self.spool, config, settings, self.stop_event,
                                  self._inputs_done, self._fail, senders)
        self._start_counters = self.spool.counters()
        self._stopped = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        if self.parse_workers > 0:
            # spawn, not fork: this process runs threads, and a forked child could inherit
            # a lock some other thread held at that moment.
            self._pool = ProcessPoolExecutor(self.parse_workers, get_context("spawn"),
                                             initializer=_init_worker,
                                             initargs=(self.encoder_spec,))
            for _ in range(self.parse_workers):
                self._pool.submit(_warm_up)
        readers = [threading.Thread(target=self._read_source, args=(src, fmt),
                                    name=f"forward-reader-{i}", daemon=True)
                   for i, (src, fmt) in enumerate(self.sources)]
        self._exclusive_checkpoints()
        checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                        name="forward-checkpoint")
        checkpointer.start()
        if self.ingest is not None:
            self.ingest.start()
            host, port = self.ingest.address
            log.info("HTTP ingest listening on http://%s:%d/v1/events", host, port)
        for thread in readers:
            thread.start()
        watcher = threading.Thread(target=self._watch_readers, args=(readers,), daemon=True,
                                   name="forward-inputs")
        watcher.start()
        self.sender.start()
        from connector.alerts.forward import ForwardAlerts  # issue 9: its own thread

        alerts = ForwardAlerts(self.settings).start()
        try:
            # Production wait loop: wake on the stop signal or when the senders are done.
            while not self.sender.done.wait(0.05) and not self.stop_event.is_set():
                pass
        finally:
            self._shutdown(readers)
            self._stopped.set()
            checkpointer.join(timeout=30)
            alerts.stop()
        return self._exit_code()

    def _shutdown(self, readers: list[threading.Thread]) -> None:
        self.stop_event.set()
        if self.ingest is not None:
            self.ingest.stop()
        self._wake_sender()
        for thread in readers:
            # Every reader sees the stop within a poll (a pipe is read with select).
            thread.join(timeout=10)
        self.sender.join(timeout=60)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _exclusive_checkpoints(self) -> None:
        # WAL checkpoints copy pages to the database file and fsync twice: done inline
        # they land on whichever commit crosses the threshold (a reader chunk, an ack, an
        # HTTP request). A background thread with its own connection does them instead.
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")

    def _checkpoint_loop(self) -> None:
        conn = connect(self.settings.state_path)
        try:
            while not self._stopped.wait(CHECKPOINT_SECONDS):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except Exception as exc:  # a failed checkpoint loses nothing; the WAL just grows
            log.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        for source, _ in self.sources:
            source.close()
        self.conn.close()

    def _watch_readers(self, readers: list[threading.Thread]) -> None:
        """Inputs are done when every reader finished and no HTTP listener runs."""
        for thread in readers:
            thread.join()
        if self.ingest is None and not self.stop_event.is_set():
            self._inputs_done.set()
            self._wake_sender()

    def _exit_code(self) -> int:
        if isinstance(self._fatal, ConfigError | CollectorConfigError):
            return ExitCode.CONFIGURATION
        if self._fatal is not None:
            return ExitCode.FAILED
        if not (self.once or self._inputs_done.is_set()):
            return ExitCode.OK  # follow mode, stopped by a signal
        if self.sender.rejected or self.spool.depth() > 0:
            return ExitCode.FAILED
        return ExitCode.OK

    def run_counters(self) -> dict[str, int]:
        """Counters of this run (the spool keeps lifetime totals)."""
        now = self.spool.counters()
        return {name: now[name] - self._start_counters.get(name, 0) for name in COUNTER_NAMES}

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self.stop_event.set()
        self._wake_sender()

    # -- reader side --------------------------------------------------------------------
    def _read_source(self, source: Any, fmt: str) -> None:
        try:
            # A pipe blocks in read() while idle, so its read-ahead could not be flushed:
            # standard input is parsed inline.
            if self._pool is None or isinstance(source, StdinLines):
                self._read_inline(source, fmt)
            else:
                self._read_pooled(source, fmt, self._pool)
        except Exception as exc:
            if not (self.stop_event.is_set() and isinstance(exc, BrokenProcessPool)):
                log.error("reading %s failed: %s", getattr(source, "source", "?"), exc)
                self._fail(exc)

    def _can_read(self) -> bool:
        return not self.spool.is_full()

    def _read_inline(self, source: Any, fmt: str) -> None:
        for chunk in source.chunks(self.stop_event, once=self.once, can_read=self._can_read):
            if chunk.skipped:
                result = self._skipped(chunk)
            else:
                result = process_lines(self.encoder, fmt, chunk.source, chunk.body,
                                       chunk.first_position, chunk.position_unit,
                                       _inode(chunk))
            self._commit(chunk, result)

    def _skipped(self, chunk: LineChunk) -> ChunkResult:
        return skipped_line_result(chunk.source, chunk.first_position, chunk.position_unit,
                                   chunk.skipped,
                                   self.settings.forward_max_line_bytes, _inode(chunk))

    def _read_pooled(self, source: Any, fmt: str, pool: ProcessPoolExecutor) -> None:
        """Chunks go to the workers in order and are committed in the same order, so each
        offset is saved only after every line before it is in the spool."""
        pending: deque[tuple[LineChunk, Future[ChunkResult]]] = deque()
        limit = 2 * self.parse_workers + 1

        def commit_ready(all_of_them: bool = False) -> None:
            while pending and (all_of_them or len(pending) >= limit or pending[0][1].done()):
                done, future = pending.popleft()
                self._commit(done, future.result())

        try:
            # Idle (end of file for now, or spool full): commit what the workers hold, so a
            # quiet log is not left waiting in read-ahead.
            for chunk in source.chunks(self.stop_event, once=self.once,
                                       can_read=self._can_read,
                                       on_idle=lambda: commit_ready(True)):
                if chunk.skipped:  # nothing to parse: its dead letter, in its turn
                    future: Future[ChunkResult] = Future()
                    future.set_result(self._skipped(chunk))
                else:
                    future = pool.submit(_work, fmt, chunk.source, chunk.body,
                                         chunk.first_position, chunk.position_unit,
                                         _inode(chunk))
                pending.append((chunk, future))
                commit_ready()
            commit_ready(True)
        finally:
            for _, future in pending:
                future.cancel()

    def _commit(self, chunk: LineChunk, result: ChunkResult) -> None:
        # Events, the offset that covers them, dead letters and counters: one transaction.
        self.spool.append(result.events, chunk.offset_update, result.dead_letters,
                          result.counters)
        self._wake_sender()

    def _wake_sender(self) -> None:
        self.sender.wake()


def _inode(chunk: LineChunk) -> int | None:
    return chunk.offset_update[1].inode if chunk.offset_update else None


# --- entry points ------------------------------------------------------------------------
def run_forward(settings: Settings, *, from_log: Path | None = None,
                from_jsonl: str | None = None, listen: str | None = None,
                wso2_config_path: Path | None = None, once: bool = False,
                stop_event: threading.Event | None = None,
                client_options: dict[str, Any] | None = None,
                parse_workers: int | None = None, senders: int = 2, out: Any = None,
                stdin: Any = None) -> int:
    """Run the forwarder; returns the exit code (see the module doc). Prints the run's
    counters at exit to `out` (stderr by default).

    `client_options` go to CollectorClient (e.g. a faster backoff in tests);
    `parse_workers` is the number of parse processes for file sources (None: one per core
    up to 4 when there is more than one core; 0: parse in the reader thread); `senders`
    the number of batches in flight to Moesif at once; `stdin` replaces standard input
    for `from_jsonl="-"` (a binary stream).

    Parse workers are started with multiprocessing's "spawn": a script calling this must
    keep its top level under `if __name__ == "__main__":` (the CLI entry points do)."""
    out = out if out is not None else sys.stderr
    install_secret_filter(settings.secrets())
    try:
        config = _check_start(settings, from_log, from_jsonl, listen, wso2_config_path, once,
                              client_options)
    except ConfigError as exc:
        _error_line(out, str(exc))
        return ExitCode.CONFIGURATION
    stop_event = stop_event or threading.Event()
    try:
        forwarder = Forwarder(settings, config, from_log=from_log, from_jsonl=from_jsonl,
                              listen=listen, once=once, stop_event=stop_event,
                              parse_workers=parse_workers, senders=senders, stdin=stdin)
    except OSError as exc:  # --listen address in use or not ours; state file unwritable
        _error_line(out, str(exc.strerror or exc))
        return ExitCode.CONFIGURATION
    from connector.ops.logsetup import new_run_id, run_context

    try:
        # A forwarder run has a run id too: every line it logs (its threads' included,
        # through the process-wide fallback) carries it.
        with run_context(new_run_id("fwd-")), \
                stop_on_signals(stop_event, "the in-flight send finishes, the rest stays spooled"):
            code = forwarder.run()
            _report(out, code, forwarder.run_counters(), forwarder.spool.depth(),
                    forwarder._fatal, log_only=True)
    finally:
        counters = forwarder.run_counters()
        backlog = forwarder.spool.depth()
        forwarder.close()
    _report(out, code, counters, backlog, forwarder._fatal)
    return code


def _error_line(out: Any, message: str) -> None:
    """`error: ...` on `out`; a JSON log line instead when logs are JSON lines."""
    from connector.ops.logsetup import fields, json_mode

    if json_mode() and out is sys.stderr:
        log.error("error: %s", message, extra=fields(event="error"))
    else:
        print(f"error: {message}", file=out)


def _check_start(settings: Settings, from_log: Path | None, from_jsonl: str | None,
                 listen: str | None, wso2_config_path: Path | None, once: bool,
                 client_options: dict[str, Any] | None) -> ForwardConfig:
    if from_log is None and from_jsonl is None and listen is None:
        raise ConfigError("nothing to forward: give --from-log, --from-jsonl or --listen")
    if once and listen is not None:
        raise ConfigError("--once cannot be combined with --listen (a listener has no end)")
    if listen is not None:
        settings.require("forward_ingest_token")
        try:
            parse_listen(listen)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for flag, value in (("--from-log", from_log), ("--from-jsonl", from_jsonl)):
        if value is None or str(value) == "-":
            continue
        path = Path(value)
        if path.exists() and not path.is_file():
            raise ConfigError(f"{flag}: {path} is not a file")
        if once and not path.exists():
            raise ConfigError(f"{flag}: {path} does not exist")
        if path.exists():
            try:
                path.open("rb").close()
            except OSError as exc:
                raise ConfigError(f"{flag}: cannot read {path} ({exc.strerror})") from None
    return resolve_config(settings, wso2_config_path, client_options)


def _report(out: Any, code: int, counters: dict[str, int], backlog: int,
            fatal: BaseException | None, log_only: bool = False) -> None:
    """The run's counters: a structured log line (inside the run's context), then, unless
    logs are JSON lines (nothing plain on stderr then), one readable line on `out`."""
    from connector.ops.logsetup import fields, json_mode

    if log_only:
        log.info("forward finished with exit code %d", code, extra=fields(
            event="forward_finished", exit_code=code, backlog=backlog,
            error=None if fatal is None else str(fatal), **counters))
        return
    if json_mode() and out is sys.stderr:
        return
    for line in summary_lines(counters, backlog, code):
        print(line, file=out)
    if fatal is not None:
        print(f"forward: stopped by error: {fatal}", file=out)


SUMMARY_WIDTH = 80


def summary_lines(counters: dict[str, int], backlog: int, code: int) -> list[str]:
    """`forward: name=value ...` lines that fit 80 columns, `backlog=N exit=C` ending the
    last one (scripts read the counters from the `forward:` lines up to it)."""
    prefix = "forward: "
    words = [f"{name}={counters[name]}" for name in COUNTER_NAMES]
    words.append(f"backlog={backlog} exit={code}")  # one word: never split apart
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(prefix) + len(current) + 1 + len(word) > SUMMARY_WIDTH:
            lines.append(prefix + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(prefix + current)
    return lines


def forward_status(settings: Settings) -> dict[str, Any]:
    """Backlog, delivered, dead letters by reason and per-source offsets of the state file."""
    if not settings.state_path.exists():  # nothing forwarded yet: do not create the file
        return {"backlog": 0, "backlog_bytes": 0, "oldest_age_seconds": None,
                "spool_max_events": settings.forward_spool_max_events, "delivered": 0,
                "dead_letters": {"total": 0, "by_reason": {}}, "sources": {},
                "counters": dict.fromkeys(COUNTER_NAMES, 0), "state_file": None}
    conn = connect(settings.state_path)
    try:
        status = Spool(conn, settings.forward_spool_max_events).status()
    finally:
        conn.close()
    status["state_file"] = str(settings.state_path)
    return status


def dead_letter_summary(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The latest dead letters, without their raw content (for a terminal)."""
    conn = connect(settings.state_path)
    try:
        letters = Spool(conn, settings.forward_spool_max_events).dead_letters(limit)
    finally:
        conn.close()
    return [{k: v for k, v in d.items() if k != "raw"} for d in letters]


__all__: Iterable[str] = (
    "EXIT_CONFIG", "EXIT_INCOMPLETE", "EXIT_OK", "EventEncoder", "ForwardConfig", "Forwarder",
    "dead_letter_summary", "forward_status", "resolve_config", "run_forward",
)
