"""Parse: a chunk of lines -> spool rows (events, dead letters, counters), in the
reader thread or in a parse worker process (JSON decoding and mapping hold the GIL).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.errors import DeadLetterCode
from connector.forward.encoder import EncoderSpec, EventEncoder
from connector.forward.errors import MalformedEvent
from connector.forward.logline import parse_metrics_line
from connector.forward.sources import jsonl_object, split_lines
from connector.forward.spool import DeadLetter


@dataclass(slots=True)
class ChunkResult:
    events: list[tuple[str, bytes]]
    dead_letters: list[DeadLetter]
    counters: dict[str, int]



def _parse_log_line(line: bytes) -> tuple[str, dict[str, Any]] | None:
    return parse_metrics_line(line.decode("utf-8", "replace"))



def _parse_jsonl_line(line: bytes) -> tuple[None, dict[str, Any]] | None:
    value = jsonl_object(line)
    return None if value is None else (None, value)

PARSERS: dict[str, Callable[[bytes], Any]] = {"log": _parse_log_line, "jsonl": _parse_jsonl_line}


def record_is_complete(fmt: str) -> Callable[[bytes], bool]:
    """For LogTailer.final_tail: whether an unterminated last line of format `fmt` holds
    a whole record (it parses: a metrics line with a whole JSON object, or a JSON-lines
    object). A line that does not parse may still be being written: it is not taken."""
    parse = PARSERS[fmt]

    def complete(line: bytes) -> bool:
        try:
            return parse(line.rstrip(b"\r")) is not None
        except Exception:  # noqa: BLE001 - not complete (or never will be): leave it
            return False

    return complete



def process_lines(encoder: EventEncoder, fmt: str, source: str, body: list[bytes] | bytes,
                  first_position: int, unit: str, inode: int | None) -> ChunkResult:
    """Parse, validate, mask, map and encode each line (`body`: a LineChunk's); malformed
    ones become dead letters with their position (byte offset or line number) and reason."""
    lines = split_lines(body)
    parse = PARSERS[fmt]
    events: list[tuple[str, bytes]] = []
    dead: list[DeadLetter] = []
    ignored = parsed_n = 0
    position = first_position
    step_bytes = unit == "byte"
    limit = encoder.max_line_bytes
    for line in lines:
        here = position
        position += len(line) + 1 if step_bytes else 1
        raw = None
        try:
            if len(line) > limit:
                raise MalformedEvent(DeadLetterCode.LINE_TOO_LONG,
                                     f"a line of {len(line)} bytes, over "
                                     f"FORWARD_MAX_LINE_BYTES ({limit})")
            parsed = parse(line)
            if parsed is None:
                ignored += 1
                continue
            parsed_n += 1
            kind, raw = parsed
            events.append(encoder(raw, kind))
        except Exception as exc:  # noqa: BLE001 - one line's problem is that line's
            code, detail = _reason(exc)
            where = f"{unit} {here}" + (f" (inode {inode})" if inode is not None else "")
            event = raw if raw is not None else getattr(exc, "event", None)
            kept = encoder.kept(event, line) if code != DeadLetterCode.LINE_TOO_LONG else None
            dead.append(DeadLetter(source, where, code, detail, kept))
    counters = {"read": len(lines), "ignored": ignored, "parsed": parsed_n,
                "masked": len(events)}
    return ChunkResult(events, dead, counters)



def _reason(exc: BaseException) -> tuple[str, str]:
    """(reason code, detail) of a line or event that failed; never the value itself."""
    if isinstance(exc, MalformedEvent):
        return exc.reason_code, exc.detail
    return DeadLetterCode.BAD_VALUE.value, f"the line cannot be read ({type(exc).__name__})"



def skipped_line_result(source: str, position: int, unit: str, length: int, limit: int,
                        inode: int | None) -> ChunkResult:
    """A line over FORWARD_MAX_LINE_BYTES that the reader skipped without holding it."""
    where = f"{unit} {position}" + (f" (inode {inode})" if inode is not None else "")
    detail = f"a line of {length} bytes, over FORWARD_MAX_LINE_BYTES ({limit})"
    letter = DeadLetter(source, where, DeadLetterCode.LINE_TOO_LONG.value, detail, None)
    return ChunkResult([], [letter], {"read": 1})

_worker_encoder: EventEncoder | None = None



def _init_worker(spec: EncoderSpec) -> None:
    global _worker_encoder
    # Ctrl-C reaches the whole process group: the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_encoder = spec.build()
    # A worker holds both ends of its task pipe, so it would never see EOF if the parent
    # were SIGKILLed: watch the parent instead and leave with it.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                         name="parent-watch").start()



def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)



def _work(fmt: str, source: str, body: list[bytes] | bytes, first_position: int, unit: str,
          inode: int | None) -> ChunkResult:
    assert _worker_encoder is not None
    return process_lines(_worker_encoder, fmt, source, body, first_position, unit, inode)



def _warm_up() -> None:
    """A no-op task: makes a worker start (imports, mapping file) before the first chunk."""



def default_parse_workers() -> int:
    """Parse workers for file sources: JSON decoding and mapping are CPU-bound and hold
    the GIL, so on more than one core they run in other processes."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, 4)
