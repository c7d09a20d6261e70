"""A wrong SEGMENT_HOST is a configuration error, not a series of per-record failures.

A host name that does not resolve, https spoken to a plain-http port, and an address where
nothing listens (a connection refused on every attempt, before the address ever answered)
each stop the send with an EndpointError naming SEGMENT_HOST; the messages are not marked
failed, so nothing is counted against the records and the next run sends them. Once the
address has answered, refused connections are an outage like any other (retried, then
DELIVERY_FAILED per batch).
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
from pydantic import SecretStr

from connector.errors import ConfigError, EndpointError
from connector.sandbox.segment_tracking import SegmentSandbox
from connector.segment.sink import OutMessage, SegmentSink, partial_result
from connector.sync.job import run_sync
from tests.conftest import WRITE_KEY, make_settings
from tests.helpers import sync_sandbox

NO_SUCH_HOST = "no-such-host.invalid"  # RFC 2606: never resolves


def make_sink(url: str, **kw) -> SegmentSink:
    return SegmentSink(SecretStr(WRITE_KEY), url, backoff_base=0.01, backoff_cap=0.02,
                       max_retries=2, timeout=5, **kw)


def messages(sink: SegmentSink, n: int = 3) -> list[OutMessage]:
    return [OutMessage.of(sink.shape("identify", {"userId": f"u{i}", "traits": {}}, None,
                                     f"m-{i}"), ("users", f"u{i}")) for i in range(n)]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolver_answers() -> bool:
    """Whether this machine's resolver says "no such name" (without one, EAI_AGAIN is an
    outage, rightly retried)."""
    try:
        socket.getaddrinfo(NO_SUCH_HOST, 80)
    except socket.gaierror as exc:
        return exc.errno != socket.EAI_AGAIN
    return False


@pytest.mark.skipif(not resolver_answers(), reason="no resolver to say 'no such name'")
def test_a_host_name_that_does_not_resolve_is_a_configuration_error_at_once():
    sink = make_sink(f"http://{NO_SUCH_HOST}")
    with pytest.raises(EndpointError, match="SEGMENT_HOST") as err:
        sink.send(messages(sink))
    result = partial_result(err.value)
    assert result is not None and not result.failed and not result.delivered
    assert result.requests == 1  # never retried
    assert WRITE_KEY not in str(err.value)


def test_https_to_a_plain_http_port_is_a_configuration_error():
    sandbox = SegmentSandbox({WRITE_KEY})
    with sandbox.server() as server:
        sink = make_sink(server.url.replace("http://", "https://"))
        with pytest.raises(EndpointError, match="SEGMENT_HOST") as err:
            sink.send(messages(sink))
    assert partial_result(err.value).requests == 1
    assert not sandbox.messages


@pytest.mark.parametrize("batches", [1, 2, 5])
def test_nothing_listening_is_a_configuration_error_not_failed_records(batches):
    sink = make_sink(f"http://127.0.0.1:{free_port()}", batch_messages=1)
    with pytest.raises(EndpointError, match="nothing listens.*SEGMENT_HOST") as err:
        sink.send(messages(sink, batches))
    result = partial_result(err.value)
    assert result is not None and not result.failed  # no record marked failed
    assert result.requests == 3  # the first batch's attempts only


def test_refused_after_the_host_answered_is_an_outage_not_a_configuration_error():
    sandbox = SegmentSandbox({WRITE_KEY})
    server = sandbox.server().start()
    sink = make_sink(server.url)
    first = sink.send(messages(sink, 2))
    assert len(first.delivered) == 2
    server.stop()  # Segment goes away mid-run: its port now refuses connections
    sink._session.close()  # (a kept-alive connection's handler thread would still answer)
    result = sink.send(messages(sink, 2))
    assert {code for code, _ in result.failed.values()} == {"DELIVERY_FAILED"}


def test_a_configuration_error_still_carries_what_was_confirmed_before_it():
    """A ConfigError in the middle of a send keeps the partial result, so the run
    commits what Segment confirmed before it: here the first batch goes through, then
    every message of the second is refused alike (the mapping's fault)."""
    sandbox = SegmentSandbox({WRITE_KEY})
    with sandbox.server() as server:
        sink = make_sink(server.url, batch_messages=6)
        sandbox.refuse_users({f"u{i}" for i in range(6, 12)})
        with pytest.raises(ConfigError) as err:
            sink.send(messages(sink, 12))
    partial = partial_result(err.value)
    assert partial is not None
    assert partial.delivered == {f"m-{i}" for i in range(6)}


def test_a_run_with_nothing_listening_at_segment_host_exits_2_and_the_next_run_sends():
    with sync_sandbox(20, 3) as sb, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        wrong = make_settings(home, moesif_api_url=sb.moesif_url,
                              segment_host=f"http://127.0.0.1:{free_port()}",
                              segment_max_retries=1)
        first = run_sync(wrong)
        assert first.exit_code == 2, first.report
        assert "SEGMENT_HOST" in first.report["error"]
        assert first.report["entities"]["users"]["gave_up"] == 0
        right = make_settings(home, moesif_api_url=sb.moesif_url,
                              segment_host=sb.segment_url)
        second = run_sync(right)
        assert second.exit_code == 0, second.report["error"]
        assert second.report["entities"]["users"]["delivered"] == \
            second.report["entities"]["users"]["changed"] > 10


@pytest.mark.parametrize("where", ["refused", "404"])
def test_a_key_pasted_into_segment_host_never_shows_in_errors_or_logs(where, caplog):
    sandbox = SegmentSandbox({WRITE_KEY})
    with sandbox.server() as server:
        base = server.url if where == "404" else f"http://127.0.0.1:{free_port()}"
        sink = make_sink(f"{base}/{WRITE_KEY}")
        with caplog.at_level("DEBUG"), pytest.raises(ConfigError) as err:
            sink.send(messages(sink))
    assert "SEGMENT_HOST" in str(err.value) and WRITE_KEY not in str(err.value)
    # (urllib3's own DEBUG lines quote the path: the SecretFilter on the handlers cleans
    # those; this is about what the connector writes)
    assert all(WRITE_KEY not in r.getMessage() for r in caplog.records
               if r.name.startswith("connector"))
