from connector.state.store import connect
from connector.sync.state import PageCommit, SyncState


def state(tmp_path, attempts=2) -> SyncState:
    return SyncState(connect(tmp_path / "s.sqlite3"), max_attempts=attempts)


def test_wal_mode_and_cursor_only_moves_forward(tmp_path):
    s = state(tmp_path)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.commit_page(PageCommit("users", {"u1": "h1"}, [], [], cursor="2024-01-02T00:00:00.000Z"))
    s.commit_page(PageCommit("users", {}, [], [], cursor="2024-01-01T00:00:00.000Z"))
    assert s.cursor("users") == "2024-01-02T00:00:00.000Z"
    assert s.hashes("users", ["u1", "u2"]) == {"u1": "h1"}


def test_refusals_give_up_but_transient_failures_do_not(tmp_path):
    s = state(tmp_path, attempts=2)
    for _ in range(3):
        recorded = s.commit_page(PageCommit("users", {}, [], [
            ("refused", "REJECTED", "400"), ("flaky", "DELIVERY_FAILED", "503")]))
    by_id = {f.id: f for f in recorded}
    assert by_id["refused"].gave_up and by_id["refused"].attempts == 3
    assert not by_id["flaky"].gave_up and by_id["flaky"].attempts == 3
    pending = s.pending_failures("users", failed_before="9999")
    assert [f.id for f in pending] == ["flaky"]
    assert s.failure_attempts("users", ["flaky", "refused"]) == {"flaky": 3}


def test_delivery_resolves_a_failure(tmp_path):
    s = state(tmp_path)
    s.commit_page(PageCommit("users", {}, [], [("u1", "DELIVERY_FAILED", "x")]))
    s.commit_page(PageCommit("users", {"u1": "h"}, ["u1"], []))
    assert s.pending_failures("users", failed_before="9999") == []


def test_failures_attempted_in_this_run_are_not_pending_again(tmp_path):
    s = state(tmp_path)
    s.commit_page(PageCommit("users", {}, [], [("u1", "DELIVERY_FAILED", "x")]))
    assert s.pending_failures("users", failed_before="2000-01-01") == []
