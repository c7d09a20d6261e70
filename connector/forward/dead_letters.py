"""`forward dead-letters list | show | replay`: inspect what the forwarder set aside, and
send it again after a mapping or configuration fix.

A dead letter keeps the event's masked form (never the raw text: a line that could not
be masked is kept only as a keyed fingerprint, which cannot be replayed). Replay re-reads
that stored form: an event Moesif refused is spooled again as it was; an event that failed
validation or mapping goes through the current mapping first. Spooled events are
delivered by the running forwarder or the next `forward` run; a letter that still fails
stays where it is (replay tells why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connector.forward.spool import Spool
from connector.settings import Settings
from connector.state.store import Transaction, connect

COLLECTOR_SOURCE = "collector"  # letters of events Moesif refused: already Moesif events


@dataclass
class ReplayResult:
    spooled: list[int] = field(default_factory=list)           # dead-letter ids re-spooled
    still_failing: dict[int, str] = field(default_factory=dict)  # id -> why
    not_replayable: list[int] = field(default_factory=list)     # fingerprints only


def _open(settings: Settings) -> Any:
    if not settings.state_path.exists():
        return None
    return connect(settings.state_path)


def list_letters(settings: Settings, reason: str | None = None,
                 limit: int = 50) -> list[dict[str, Any]]:
    """The newest dead letters (without their content), optionally of one reason."""
    conn = _open(settings)
    if conn is None:
        return []
    try:
        sql = ("SELECT id, source, position, reason_code, detail, created_at, length(raw) "
               "FROM dead_letters")
        args: tuple[Any, ...] = ()
        if reason:
            sql += " WHERE reason_code = ?"
            args = (reason.upper(),)
        rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    finally:
        conn.close()
    keys = ("id", "source", "position", "reason_code", "detail", "created_at", "bytes")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def get_letter(settings: Settings, letter_id: int) -> dict[str, Any] | None:
    """One dead letter with its stored (masked) content decoded when it is JSON."""
    conn = _open(settings)
    if conn is None:
        return None
    try:
        row = conn.execute("SELECT id, source, position, reason_code, detail, raw, created_at "
                           "FROM dead_letters WHERE id = ?", (letter_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    keys = ("id", "source", "position", "reason_code", "detail", "raw", "created_at")
    letter = dict(zip(keys, row, strict=True))
    letter["content"] = _decode(letter.pop("raw"))
    return letter


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"undecodable": len(raw)}


def replay(settings: Settings, ids: list[int] | None = None, reason: str | None = None,
           wso2_config: Path | None = None) -> ReplayResult:
    """Spool the chosen dead letters again (all of `reason`, or the given ids)."""
    from connector.forward.config import resolve_config
    from connector.forward.encoder import EncoderSpec
    from connector.forward.errors import MalformedEvent

    result = ReplayResult()
    conn = _open(settings)
    if conn is None:
        return result
    try:
        spool = Spool(conn, settings.forward_spool_max_events,
                      settings.forward_dead_letters_max)
        config = resolve_config(settings, wso2_config)
        encoder = EncoderSpec.of(config, spool.installation_secret(),
                                 settings.forward_max_line_bytes).build()
        for letter_id, source, raw in _chosen(conn, ids, reason):
            content = _decode(raw)
            if not isinstance(content, dict) or "withheld" in content:
                result.not_replayable.append(letter_id)
                continue
            try:
                event = _as_spooled(content, source, encoder)
            except MalformedEvent as exc:
                result.still_failing[letter_id] = f"{exc.reason_code}: {exc.detail}"
                continue
            spool.append([event])
            with Transaction(conn) as tx:
                tx.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
            result.spooled.append(letter_id)
    finally:
        conn.close()
    return result


def _chosen(conn: Any, ids: list[int] | None, reason: str | None) -> list[tuple[int, str, Any]]:
    sql, args = "SELECT id, source, raw FROM dead_letters", []
    where = []
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        args += ids
    if reason:
        where.append("reason_code = ?")
        args.append(reason.upper())
    if where:
        sql += " WHERE " + " AND ".join(where)
    return conn.execute(sql + " ORDER BY id", args).fetchall()


def _as_spooled(content: dict[str, Any], source: str, encoder: Any) -> tuple[str, bytes]:
    """(transaction id, body) to spool: a refused Moesif event as it was; a WSO2 event
    through the current mapping (it was masked when stored, masking again is a no-op)."""
    if source == COLLECTOR_SOURCE and isinstance(content.get("transaction_id"), str):
        return content["transaction_id"], orjson.dumps(content)
    return encoder(content, None)
