"""Logging for the connector: readable lines by default, JSON lines on request.

Every line carries the id of the run it belongs to (a context variable, with a process-wide
fallback for threads a library starts, which do not inherit context variables; only one
run is ever active per process). The secret filter sits on the handler, so a key cannot
reach a line whoever logged it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from typing import IO

import orjson

from connector.common.redaction import SecretFilter, remember_secrets, remembered_secrets

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_process_run_id: str | None = None
_HANDLER_MARK = "_connector_handler"


def set_run_id(run_id: str | None) -> contextvars.Token:
    """Tag the lines logged from here on with `run_id` (None clears it)."""
    global _process_run_id
    _process_run_id = run_id
    return _run_id.set(run_id)


def get_run_id() -> str | None:
    return _run_id.get() or _process_run_id


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """`with run_context(run_id):` every line logged inside carries the run id."""
    global _process_run_id
    previous = _process_run_id
    token = set_run_id(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)
        _process_run_id = previous


class RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = get_run_id()
        return True


class TextFormatter(logging.Formatter):
    """`2026-11-22 05:30:00 INFO [run 20261122T053000Z-1a2b3c] message` (UTC)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        run_id = getattr(record, "run_id", None)
        message = record.getMessage()
        prefix = f"{self.formatTime(record, self.datefmt)} {record.levelname}"
        if run_id and run_id not in message:  # said once is enough on an 80-column line
            prefix += f" [run {run_id}]"
        line = f"{prefix} {message}"
        exc = self._exception_text(record)
        return f"{line}\n{exc}" if exc else line

    def _exception_text(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return (record.exc_text or "").rstrip("\n")


class JsonFormatter(TextFormatter):
    """One JSON object per line: ts, level, logger, run_id, msg (and exc when there is one),
    plus the structured fields a line carries (`log.info(..., extra=fields(...))`)."""

    def format(self, record: logging.LogRecord) -> str:
        millis = int(record.msecs)
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "msg": record.getMessage(),
        }
        for key, value in (getattr(record, FIELDS_ATTR, None) or {}).items():
            payload.setdefault(key, value)
        exc = self._exception_text(record)
        if exc:
            payload["exc"] = exc
        return orjson.dumps(payload, default=str).decode()


FIELDS_ATTR = "fields"


def fields(**values: object) -> dict[str, object]:
    """`extra=` for a log line whose values JSON logs carry as their own keys (the text
    format shows only the message)."""
    return {FIELDS_ATTR: values}


def json_mode() -> bool:
    """Whether the connector's handler writes JSON lines (then nothing else may write plain
    text to stderr)."""
    return any(getattr(h, _HANDLER_MARK, False) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)


def new_run_id(prefix: str = "") -> str:
    """`20261122T053000Z-1a2b3c`-style id (UTC start time and random hex)."""
    import secrets

    return f"{prefix}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def setup_logging(level: str | int = "INFO", fmt: str = "text",
                  secrets: list[str] | None = None, *, stream: IO[str] | None = None
                  ) -> logging.Handler:
    """Configure the root logger with one stderr handler; safe to call again."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # Order matters: redact first, so nothing downstream ever sees the raw text.
    remember_secrets(list(secrets or []))
    handler.addFilter(SecretFilter(remembered_secrets()))
    handler.addFilter(RunIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # The Segment library logs whole request bodies (write key included) at DEBUG.
    logging.getLogger("segment").setLevel(logging.WARNING)
    # APScheduler says "Running job ..." twice per run at INFO; its warnings still show.
    if root.level > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return handler
