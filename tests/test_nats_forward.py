"""The forwarder's JetStream path against real NATS servers: log -> JetStream publisher
(surviving a NATS restart: our own nats-server, never the machine's), and two forwarders
on one durable consumer, one SIGKILLed mid-batch."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.forward.config import resolve_config
from connector.forward.encoder import EncoderSpec
from connector.forward.nats_bridge import run_nats
from connector.forward.parse import process_lines
from connector.forward.spool import Spool
from connector.sandbox.apim_log import LogGenerator
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings
from connector.state.store import connect
from tests.backends import free_port, nats_or_skip, unavailable
from tests.conftest import APP_ID
from tests.helpers import wait_until

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def settings_for(home: Path, collector_url: str = "http://127.0.0.1:9") -> Settings:
    return Settings(_env_file=None, moesif_application_id=APP_ID,
                    moesif_collector_url=collector_url, connector_home=home)


def expected_txids(settings: Settings, lines: list[bytes]) -> set[str]:
    conn = connect(settings.state_path)
    try:
        secret = Spool(conn, settings.forward_spool_max_events).installation_secret()
    finally:
        conn.close()
    encoder = EncoderSpec.of(resolve_config(settings), secret).build()
    return {t for t, _ in process_lines(encoder, "log", "t", lines, 0, "byte", None).events}


async def _js_call(url: str, fn: Callable[[Any, Any], Any]) -> Any:
    import nats

    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        return await fn(nc, nc.jetstream())
    finally:
        await nc.close()


def js(url: str, fn: Callable[[Any, Any], Any]) -> Any:
    return asyncio.run(_js_call(url, fn))


def stream_messages(url: str, stream: str) -> int:
    async def count(_nc: Any, j: Any) -> int:
        return (await j.stream_info(stream)).state.messages
    try:
        return js(url, count)
    except Exception:  # noqa: BLE001 - the server is restarting or the stream not there yet
        return -1


class OwnNats:
    """A nats-server of our own (port, store dir), to kill and restart."""

    def __init__(self, tmp: Path) -> None:
        if not os.path.exists(NATS_SERVER):
            unavailable(f"nats-server is not installed at {NATS_SERVER}")
        self.port = free_port()
        self.store = tmp / "nats-store"
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p",
                                      str(self.port), "-sd", str(self.store)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: stream_messages(self.url, "none") == -1 and self._up(), 15,
                   "our nats-server")

    def _up(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def own_nats(tmp_path) -> Iterator[OwnNats]:
    server = OwnNats(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def test_log_to_jetstream_survives_a_nats_restart(own_nats, tmp_path):
    log_path = tmp_path / "apim_metrics.log"
    gen = LogGenerator(seed=11)
    gen.write(log_path, 800)
    settings = settings_for(tmp_path / "gw")
    subject, stream = "apim.analytics.node1", "APIM_ANALYTICS"
    stop = threading.Event()
    codes: list[int] = []
    publisher = threading.Thread(target=lambda: codes.append(run_nats(
        settings, from_log=log_path, to_nats=own_nats.url, subject=subject, stream=stream,
        stop_event=stop, out=open(os.devnull, "w"))), daemon=True)  # noqa: SIM115
    publisher.start()
    try:
        first = expected_txids(settings, log_path.read_bytes().split(b"\n")[:-1])
        wait_until(lambda: stream_messages(own_nats.url, stream) == len(first), 30,
                   "the first lines in JetStream")
        own_nats.kill()
        gen.write(log_path, 700, start=800, append=True)  # written while NATS is down
        own_nats.start()
        every = expected_txids(settings, log_path.read_bytes().split(b"\n")[:-1])
        assert len(every) > len(first)
        wait_until(lambda: stream_messages(own_nats.url, stream) == len(every), 60,
                   "every line in JetStream after the restart")
    finally:
        stop.set()
        publisher.join(timeout=30)
    assert codes == [0]

    async def ids(_nc: Any, j: Any) -> set[str]:
        sub = await j.pull_subscribe(subject, stream=stream)
        found: set[str] = set()
        while len(found) < len(every):
            for msg in await sub.fetch(500, timeout=5):
                found.add(msg.headers["Nats-Msg-Id"])
                assert json.loads(msg.data)["transaction_id"] == msg.headers["Nats-Msg-Id"]
                await msg.ack()  # past max_ack_pending nothing more would be delivered
        return found
    assert js(own_nats.url, ids) == every  # none lost, none twice


def publish_log(tmp_path: Path, url: str, records: int, seed: int
                ) -> tuple[str, str, str, Settings, set[str]]:
    """A generated log published to a fresh stream: (stream, subject, durable, the
    publisher's settings, the transaction ids of its valid events)."""
    suffix = secrets.token_hex(4)
    stream, subject, durable = f"T_{suffix}", f"t{suffix}.apim.node1", f"d{suffix}"
    log_path = tmp_path / "apim_metrics.log"
    LogGenerator(seed=seed).write(log_path, records)
    publisher = settings_for(tmp_path / "gw")
    assert run_nats(publisher, from_log=log_path, to_nats=url, subject=subject, stream=stream,
                    once=True, out=open(os.devnull, "w")) == 0  # noqa: SIM115
    expected = expected_txids(publisher, log_path.read_bytes().split(b"\n")[:-1])
    return stream, subject, durable, publisher, expected


def drop_stream(url: str, stream: str) -> None:
    async def drop(_nc: Any, j: Any) -> None:
        await j.delete_stream(stream)
    js(url, drop)


def test_two_forwarders_share_a_consumer_one_killed_mid_batch(tmp_path):
    url = nats_or_skip()
    stream, subject, durable, publisher, expected = publish_log(tmp_path, url, 3000, seed=5)
    # Other producers: raw log lines and event maps, and a poison message.
    extra = tmp_path / "extra.log"
    LogGenerator(seed=6).write(extra, 40)
    raw_lines = extra.read_bytes().split(b"\n")[:-1]
    event_maps = [json.dumps(LogGenerator(seed=8).event(i)[1]).encode() for i in range(20)]

    async def produce(_nc: Any, j: Any) -> None:
        for body in [*raw_lines, *event_maps, b"{not json", b"\xff\xfe binary"]:
            await j.publish(subject, body, stream=stream)
    try:
        js(url, produce)
        encoder = EncoderSpec.of(resolve_config(publisher), b"k" * 32).build()
        others = (len(process_lines(encoder, "log", "t", raw_lines, 0, "byte", None).events)
                  + len(process_lines(encoder, "jsonl", "t", event_maps, 0, "line", None)
                        .events))
        assert others > 40
        collector = MoesifCollectorSandbox({APP_ID})
        with collector.server() as server:
            _run_two_forwarders(tmp_path, url, stream, durable, server.url, collector,
                                expected, others)
    finally:
        drop_stream(url, stream)


def _run_two_forwarders(tmp_path: Path, url: str, stream: str, durable: str,
                        collector_url: str, collector: MoesifCollectorSandbox,
                        expected: set[str], others: int) -> None:
    collector.inject_delay(0.4, count=6)  # batches slow enough to kill one mid-batch
    procs = []
    for n in range(2):
        env = dict(os.environ, MOESIF_APPLICATION_ID=APP_ID, MOESIF_COLLECTOR_URL=collector_url,
                   CONNECTOR_HOME=str(tmp_path / f"fwd{n}"), FORWARD_BATCH_EVENTS="200",
                   FORWARD_NATS_ACK_WAIT_SECONDS="2", FORWARD_BATCH_AGE_SECONDS="0.2")
        out = (tmp_path / f"fwd{n}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "connector", "forward", "--from-nats", url, "--stream",
             stream, "--durable", durable], env=env, stdout=out, stderr=subprocess.STDOUT))
        out.close()
    try:
        assert collector.wait_for(lambda c: c.batches >= 1, 30), "nothing was forwarded"
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        # Other producers' events are masked and mapped by the forwarder that takes them.
        assert collector.wait_for(
            lambda c: expected <= set(c.by_transaction_id)
            and len(c.by_transaction_id) >= len(expected) + others, 90), \
            "not every event reached the Collector"
        received = [e.get("transaction_id") for e in collector.events]
        assert all(received), "an event without a transaction id"
        assert expected <= set(received)  # every valid event; repeats only by transaction id
        status = wait_until(lambda: (s := _status(url, stream, durable))
                            and s["pending"] == 0 and s["ack_pending"] == 0 and s, 30,
                            "the consumer to be drained")
        assert status["consumer_exists"] and status["messages"] >= len(expected)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    assert procs[1].returncode == 0
    survivor = (tmp_path / "fwd1.log").read_text()
    assert "dead_lettered=" in survivor


def _status(url: str, stream: str, durable: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "connector", "forward", "status", "--nats", url,
                          "--stream", stream, "--durable", durable], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, MOESIF_APPLICATION_ID=APP_ID))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_nats_address_that_refuses_is_one_clear_error_soon(tmp_path: Path) -> None:
    """nats-py retries an address that refuses for ever: the first connection is bounded,
    cancelled cleanly, and named without the URL's password."""
    import time

    from connector.errors import ConfigError
    from connector.forward.nats_bridge import _Loop, _open
    from tests.backends import free_port

    loop = _Loop()
    try:
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            _open(loop, f"nats://bob:hunter2-secret@127.0.0.1:{free_port()}", "--from-nats",
                  seconds=2)
        assert time.monotonic() - started < 10
    finally:
        loop.close()
    text = str(caught.value)
    assert "--from-nats" in text and "127.0.0.1" in text
    assert "hunter2" not in text and "bob" not in text
    assert "no answer" in text or "cannot connect" in text


def test_a_new_stream_whose_subjects_another_holds_is_a_clear_config_error(tmp_path):
    from connector.errors import ConfigError
    from connector.forward.nats_bridge import ensure_stream

    url = nats_or_skip()
    suffix = secrets.token_hex(4)
    holder, subjects = f"HOLD_{suffix}", f"t{suffix}.apim.>"
    settings = settings_for(tmp_path / "home")

    async def scenario(_nc: Any, j: Any) -> str:
        await ensure_stream(j, holder, subjects, settings)  # created: nobody holds them
        try:
            await ensure_stream(j, f"OTHER_{suffix}", subjects, settings)
        except ConfigError as exc:
            return str(exc)
        finally:
            await j.delete_stream(holder)
        return "no error"

    text = js(url, scenario)
    assert f"OTHER_{suffix} does not exist" in text
    assert f"use --stream {holder}" in text


# --- the pipelined forwarder: a failure or a stop leaves what it did not send unacked ----
@pytest.fixture
def published(tmp_path) -> Iterator[tuple[str, str, str, set[str]]]:
    """A fresh stream holding a generated log's events: (url, stream, durable, txids)."""
    url = nats_or_skip()
    stream, _, durable, _, expected = publish_log(tmp_path, url, 1200, seed=11)
    try:
        yield url, stream, durable, expected
    finally:
        drop_stream(url, stream)


def _forwarder(tmp_path: Path, url: str, stream: str, durable: str, collector_url: str,
               **env: str) -> Any:
    from connector.forward.nats_bridge import NatsForwarder

    settings = Settings(_env_file=None, moesif_application_id=APP_ID,
                        moesif_collector_url=collector_url, connector_home=tmp_path / "fwd",
                        forward_batch_events=100, forward_batch_age_seconds=0.2, **env)
    return NatsForwarder(settings, resolve_config(settings), url, stream, durable, once=True)


def test_a_refused_application_id_is_exit_2_and_acks_nothing(tmp_path, published):
    url, stream, durable, expected = published
    collector = MoesifCollectorSandbox({"another-application"})
    with collector.server() as server:
        forwarder = _forwarder(tmp_path, url, stream, durable, server.url)
        try:
            assert forwarder.run() == 2
        finally:
            forwarder.close()
    assert forwarder.delivered == 0 and not collector.events
    status = _status(url, stream, durable)
    # Pulled batches stay unacknowledged (redelivered later); nothing left the stream.
    assert status["pending"] + status["ack_pending"] >= len(expected)


def test_a_stop_during_an_outage_acks_only_what_moesif_confirmed(tmp_path, published):
    url, stream, durable, expected = published
    collector = MoesifCollectorSandbox({APP_ID})
    with collector.server() as server:
        forwarder = _forwarder(tmp_path, url, stream, durable, server.url)
        collector.outage(True)  # an outage from the first batch on
        ran: list[int] = []
        runner = threading.Thread(target=lambda: ran.append(forwarder.run()))
        runner.start()
        try:
            wait_until(lambda: collector.requests >= 2, 30, "the forwarder to retry")
            forwarder.stop_event.set()
            runner.join(timeout=60)
            assert not runner.is_alive() and ran == [0]
        finally:
            forwarder.stop_event.set()
            runner.join(timeout=60)
            forwarder.close()
    assert forwarder.delivered == 0
    status = _status(url, stream, durable)
    assert status["pending"] + status["ack_pending"] >= len(expected)


def test_every_event_is_delivered_once_through_the_pipelined_forwarder(tmp_path, published):
    url, stream, durable, expected = published
    collector = MoesifCollectorSandbox({APP_ID})
    with collector.server() as server:
        collector.inject_delay(0.2, count=3)  # the sender lags: batches queue behind it
        forwarder = _forwarder(tmp_path, url, stream, durable, server.url)
        try:
            assert forwarder.run() == 0
        finally:
            forwarder.close()
    received = [e["transaction_id"] for e in collector.events]
    assert sorted(received) == sorted(expected)  # each once, none missing
    assert forwarder.delivered == len(expected)
    status = _status(url, stream, durable)
    assert status["pending"] == 0 and status["ack_pending"] == 0
