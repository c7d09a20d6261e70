"""The forward spool: one transaction per append, ack/dead-letter, counters, status."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from connector.forward.spool import (
    COUNTER_NAMES,
    DEAD_LETTER_RAW_MAX,
    DeadLetter,
    FileIdentity,
    Spool,
)
from connector.state.store import connect

IDENT = FileIdentity(device=1, inode=42, fingerprint="ab" * 16, fingerprint_len=1024)


def _event(i: int) -> tuple[str, bytes]:
    return f"00000000-0000-4000-8000-{i:012d}", orjson.dumps({"i": i, "pad": "x" * 50})


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite3"


@pytest.fixture()
def spool(state: Path) -> Spool:
    conn = connect(state)
    yield Spool(conn, max_events=100)
    conn.close()


def test_append_moves_offset_with_events_in_one_transaction(spool: Spool, state: Path) -> None:
    seqs = spool.append([_event(i) for i in range(3)], ("log:a", IDENT, 300),
                        counters={"read": 4, "parsed": 3})
    assert len(seqs) == 3 and seqs == sorted(seqs)
    # Another connection (another process) sees events and offset together.
    other = sqlite3.connect(state)
    assert other.execute("SELECT count(*) FROM spool").fetchone()[0] == 3
    assert other.execute("SELECT offset, inode FROM source_offsets WHERE source='log:a'"
                         ).fetchone() == (300, 42)
    other.close()
    assert spool.get_offset("log:a") == (IDENT, 300)
    counters = spool.counters()
    assert counters["read"] == 4 and counters["parsed"] == 3 and counters["spooled"] == 3


def test_failed_append_leaves_nothing_behind(spool: Spool, state: Path) -> None:
    spool.append([_event(0)], ("log:a", IDENT, 100))
    bad_body = [1, 2]  # has a len() but cannot be bound: the INSERT fails mid-transaction
    with pytest.raises(sqlite3.Error):
        spool.append([_event(1), ("txid", bad_body)], ("log:a", IDENT, 999))  # type: ignore[list-item]
    assert spool.depth() == 1
    assert spool.get_offset("log:a") == (IDENT, 100)
    assert spool.counters()["spooled"] == 1
    # The connection is usable after the rollback.
    spool.append([_event(2)], ("log:a", IDENT, 200))
    assert spool.depth() == 2


def test_peek_respects_count_and_bytes_but_always_returns_one(spool: Spool) -> None:
    spool.append([_event(i) for i in range(10)])
    assert len(spool.peek_batch(4, 10_000)) == 4
    one_size = len(_event(0)[1]) + 1
    assert len(spool.peek_batch(100, one_size * 3)) == 3
    assert len(spool.peek_batch(100, 1)) == 1  # bigger than max_bytes still moves
    first = spool.peek_batch(3, 10_000)
    after = spool.peek_batch(3, 10_000, after_seq=first[-1][0])
    assert after[0][0] > first[-1][0]
    assert after[0][2] == _event(3)[1]  # bytes come back exactly as stored


def test_ack_removes_and_counts_delivered(spool: Spool) -> None:
    spool.append([_event(i) for i in range(5)])
    batch = spool.peek_batch(3, 10_000)
    assert spool.ack([seq for seq, _, _ in batch]) == 3
    assert spool.depth() == 2
    assert spool.counters()["delivered"] == 3
    remaining = [txid for _, txid, _ in spool.peek_batch(10, 10_000)]
    assert remaining == [_event(3)[0], _event(4)[0]]


def test_dead_letter_moves_event_with_reason(spool: Spool) -> None:
    spool.append([_event(i) for i in range(3)])
    seq, txid, body = spool.peek_batch(1, 10_000)[0]
    assert spool.dead_letter([seq], "REJECTED_BY_COLLECTOR", "HTTP 400: bad event") == 1
    letters = spool.dead_letters()
    assert letters[-1]["reason_code"] == "REJECTED_BY_COLLECTOR"
    assert txid in letters[-1]["position"] and letters[-1]["raw"] == body
    assert spool.depth() == 2
    assert spool.counters()["dead_lettered"] == 1


def test_dead_letters_from_append_are_truncated(spool: Spool) -> None:
    huge = "y" * (DEAD_LETTER_RAW_MAX * 3)
    spool.append([], None, [DeadLetter("log:a", "byte 10", "BAD_JSON", "truncated", huge)],
                 {"read": 1})
    letter = spool.dead_letters()[-1]
    assert len(letter["raw"]) == DEAD_LETTER_RAW_MAX
    assert letter["position"] == "byte 10"
    assert spool.counters()["dead_lettered"] == 1


def test_is_full_and_depth_survive_reopen(state: Path) -> None:
    conn = connect(state)
    spool = Spool(conn, max_events=3)
    spool.append([_event(i) for i in range(3)])
    assert spool.is_full()
    conn.close()
    reopened = Spool(connect(state), max_events=3)
    assert reopened.depth() == 3 and reopened.is_full()
    reopened.ack([seq for seq, _, _ in reopened.peek_batch(1, 10_000)])
    assert not reopened.is_full()


def test_sequence_numbers_never_reused_after_emptying(spool: Spool) -> None:
    first = spool.append([_event(0)])
    spool.ack(first)
    second = spool.append([_event(1)])
    assert second[0] > first[0]


def test_mark_attempt_counts_retried(spool: Spool, state: Path) -> None:
    seqs = spool.append([_event(i) for i in range(4)])
    spool.mark_attempt(seqs[:2])
    spool.mark_attempt(seqs[:2])
    assert spool.counters()["retried"] == 4
    attempts = sqlite3.connect(state).execute(
        "SELECT attempts FROM spool ORDER BY seq").fetchall()
    assert [a for (a,) in attempts] == [2, 2, 0, 0]


def test_status_reports_backlog_dead_letters_and_offsets(spool: Spool) -> None:
    spool.append([_event(i) for i in range(2)], ("log:a", IDENT, 77),
                 [DeadLetter("log:a", "byte 5", "BAD_JSON", "x"),
                  DeadLetter("log:a", "byte 9", "BAD_LINE", "y"),
                  DeadLetter("log:a", "byte 11", "BAD_JSON", "z")])
    status = spool.status()
    assert status["backlog"] == 2
    assert status["oldest_age_seconds"] is not None and status["oldest_age_seconds"] >= 0
    assert status["dead_letters"] == {"total": 3, "by_reason": {"BAD_JSON": 2, "BAD_LINE": 1}}
    assert status["sources"]["log:a"]["offset"] == 77
    assert set(status["counters"]) == set(COUNTER_NAMES)


def test_concurrent_appends_and_acks_keep_depth_exact(spool: Spool) -> None:
    spool.max_events = 1_000_000
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for k in range(50):
                spool.append([_event(base + k * 10 + j) for j in range(10)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def acker(stop: threading.Event) -> None:
        while not stop.is_set() or spool.depth():
            batch = spool.peek_batch(37, 1 << 20)
            spool.ack([seq for seq, _, _ in batch])

    stop = threading.Event()
    ack_thread = threading.Thread(target=acker, args=(stop,))
    writers = [threading.Thread(target=writer, args=(n * 100_000,)) for n in range(3)]
    ack_thread.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    ack_thread.join(timeout=30)
    assert not errors
    assert spool.depth() == 0
    assert spool.counters()["delivered"] == 1500 == spool.counters()["spooled"]


def test_dead_letters_are_capped_oldest_first_and_all_are_counted(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    conn = connect(state)
    spool = Spool(conn, max_events=100, max_dead_letters=10)
    for chunk in range(3):  # 18 letters from reading, in three chunks
        letters = [DeadLetter("log:a", f"byte {chunk * 6 + i}", "BAD_JSON", "broken", None)
                   for i in range(6)]
        spool.append([], None, letters, {"read": 6})
    spool.append([_event(i) for i in range(2)])
    seqs = [seq for seq, _, _ in spool.peek_batch(2, 10_000)]
    spool.dead_letter(seqs, "REJECTED_BY_COLLECTOR", "HTTP 400")  # and 2 refused by Moesif
    kept = spool.dead_letters(limit=100)
    assert len(kept) == 10
    positions = [letter["position"] for letter in kept]
    # The newest ten: the last 8 read, then the 2 refused (the oldest 10 went).
    assert positions[:8] == [f"byte {n}" for n in range(10, 18)]
    assert all(p.startswith("transaction_id=") for p in positions[8:])
    assert spool.counters()["dead_lettered"] == 20
    assert spool.depth() == 0
    warnings = [r for r in caplog.records if "FORWARD_DEAD_LETTERS_MAX" in r.getMessage()]
    assert len(warnings) == 1
    conn.close()
