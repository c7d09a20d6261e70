"""JetStream between gateways and forwarders (issue 11).

```
 gateway host                            any host, any number of them
 apim_metrics.log -> LogTailer           forward --from-nats (pull consumer, one durable)
   -> parse, validate, mask, map           fetch <= FORWARD_BATCH_EVENTS, decode (while the
   -> JetStream publish                      sender thread posts the batch before; one
      Nats-Msg-Id = transaction_id           decoded batch at most waits for it)
   -> offset saved after every ack         -> CollectorClient.post_batch (gzip, retry)
                                           -> ack on 201 | 400: split, dead-letter, ack
```

- Publisher (`forward --from-log ... --to-nats URL --subject apim.analytics.<node>`): the
  log is tailed as for the local spool (rotation, offsets); each chunk's events are
  published and the chunk's offset is saved only once JetStream acknowledged every one of
  them. A publish that fails (NATS restarting, unreachable) is retried, the whole chunk
  again: the stream drops the repeats by `Nats-Msg-Id` (its duplicate window).
  Messages carry the header `Moesif-Event: 1`: masked and mapped at the source.
- Forwarder (`forward --from-nats URL --stream APIM_ANALYTICS --durable moesif`): any
  number of processes share the durable pull consumer (work-queue style). A message is
  acknowledged only after the Collector answered 201 for the batch that carried it, or
  after it was dead-lettered (in this host's state file); a killed forwarder's
  unacknowledged messages are redelivered to the others after
  FORWARD_NATS_ACK_WAIT_SECONDS (a long send tells the server it is still in progress).
  Messages from other producers may be an event map (as in JSONL) or one
  `apim_metrics.log` line: they are validated, masked and mapped like any other input.
- The stream is created when missing (file storage, limits retention,
  FORWARD_NATS_STREAM_MAX_BYTES / FORWARD_NATS_STREAM_MAX_AGE_SECONDS), else used as it is.

asyncio (nats-py) runs in one dedicated thread with its own loop; the rest of the
connector stays synchronous and calls into it (`_Loop.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson

from connector.common.redaction import install_secret_filter
from connector.errors import ConfigError, DeadLetterCode, ExitCode
from connector.forward.config import ForwardConfig, resolve_config
from connector.forward.encoder import DEAD_LETTER_KEEP_BYTES, EncoderSpec, EventEncoder
from connector.forward.parse import process_lines, skipped_line_result
from connector.forward.sender import REJECTED_BY_COLLECTOR
from connector.forward.sources import LogTailer
from connector.forward.spool import DeadLetter, Spool
from connector.http.policy import display_url
from connector.moesif.collector import (
    BatchRejected,
    CollectorClient,
    CollectorConfigError,
    DeliveryInterrupted,
    encode_batch,
)
from connector.ops.signals import stop_on_signals
from connector.settings import Settings
from connector.state.store import connect

log = logging.getLogger(__name__)

DEFAULT_STREAM = "APIM_ANALYTICS"
DEFAULT_SUBJECTS = "apim.analytics.>"
DEFAULT_DURABLE = "moesif"
MAPPED_HEADER = "Moesif-Event"
PUBLISH_TIMEOUT = 5.0
PUBLISH_CONCURRENCY = 256
T = TypeVar("T")



def _spool_and_encoder(settings: Settings, config: ForwardConfig
                       ) -> tuple[Any, Spool, EventEncoder]:
    """The state connection, its spool, and the event encoder keyed with the
    installation's secret: what both ends of the bridge start from."""
    conn = connect(settings.state_path)
    spool = Spool(conn, settings.forward_spool_max_events,
                  settings.forward_dead_letters_max)
    encoder = EncoderSpec.of(config, spool.installation_secret(),
                             settings.forward_max_line_bytes).build()
    return conn, spool, encoder

class _Loop:
    """An asyncio loop in its own thread; `run(coro)` waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        with contextlib.suppress(RuntimeError):
            self.loop.close()


async def _connect(url: str) -> Any:
    import nats

    async def on_disconnect() -> None:
        log.warning("NATS connection lost; reconnecting")

    async def on_reconnect() -> None:
        log.info("NATS connection restored")

    async def on_error(exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    return await nats.connect(url, name="moesif-segment", connect_timeout=5,
                              allow_reconnect=True, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, disconnected_cb=on_disconnect,
                              reconnected_cb=on_reconnect, error_cb=on_error)


# The first connection: nats-py keeps retrying an address that refuses (reconnects are
# allowed), so it is bounded here and cancelled cleanly when the time is up.
CONNECT_SECONDS = 10.0


async def _first_connect(url: str, seconds: float) -> Any:
    return await asyncio.wait_for(_connect(url), seconds)


def _open(loop: _Loop, url: str, what: str,
          seconds: float = CONNECT_SECONDS) -> tuple[Any, Any]:
    where = display_url(url)  # never the user info of a nats://user:pass@host URL
    try:
        nc = loop.run(_first_connect(url, seconds))
    except TimeoutError:
        raise ConfigError(f"{what}: no answer from NATS at {where} within {seconds:.0f} s "
                          "(nothing listening there, or a wrong address)") from None
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the setting's
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ConfigError(f"{what}: cannot connect to NATS at {where} "
                          f"({type(exc).__name__}{': ' + reason if reason else ''})") from None
    return nc, nc.jetstream()


async def ensure_stream(js: Any, stream: str, subjects: str, settings: Settings) -> Any:
    """The stream's info; created (file storage, limits retention) when missing."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        return await js.stream_info(stream)
    except NotFoundError:
        pass
    log.info("creating JetStream stream %s for %s", stream, subjects)
    try:
        return await js.add_stream(StreamConfig(
            name=stream, subjects=[subjects], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_bytes=settings.forward_nats_stream_max_bytes,
            max_age=float(settings.forward_nats_stream_max_age_seconds),
            duplicate_window=120.0))
    except BadRequestError as exc:
        if getattr(exc, "err_code", None) != SUBJECTS_OVERLAP:
            raise
        other = await _stream_holding(js, subjects)
        raise ConfigError(
            f"JetStream stream {stream} does not exist, and its subjects ({subjects}) "
            f"already belong to stream {other or 'another stream'}: use --stream "
            f"{other or '<that stream>'} (the subjects it publishes to must be in it)") from None


# The server's error code when a new stream's subjects overlap an existing stream's.
SUBJECTS_OVERLAP = 10065


async def _stream_holding(js: Any, subjects: str) -> str | None:
    """The stream that already holds these subjects (None when the server does not say)."""
    probe = subjects.replace(">", "x").replace("*", "x")
    try:
        return str(await js.find_stream_name_by_subject(probe))
    except Exception:  # noqa: BLE001 - only for a better message
        return None


def _stream_for(subject: str) -> str:
    """The subjects a created stream covers: `apim.analytics.>` for the usual names."""
    return DEFAULT_SUBJECTS if subject.startswith("apim.analytics.") else subject


# --- the publisher: apim_metrics.log -> JetStream -----------------------------------------
class NatsPublisher:
    def __init__(self, settings: Settings, config: ForwardConfig, from_log: Path, url: str,
                 subject: str, stream: str = DEFAULT_STREAM, *, once: bool = False,
                 stop_event: threading.Event | None = None) -> None:
        self.settings, self.url, self.subject, self.stream = settings, url, subject, stream
        self.once = once
        self.stop_event = stop_event or threading.Event()
        self.conn, self.spool, self.encoder = _spool_and_encoder(settings, config)
        path = Path(from_log).absolute()
        self.tailer = LogTailer(path, f"log:{path}", self.spool,
                                max_line_bytes=settings.forward_max_line_bytes)
        self.published = 0
        self.loop = _Loop()
        self.nc, self.js = _open(self.loop, url, "--to-nats")

    def run(self) -> int:
        self.loop.run(ensure_stream(self.js, self.stream, _stream_for(self.subject),
                                    self.settings), timeout=30)
        for chunk in self.tailer.chunks(self.stop_event, once=self.once):
            if chunk.skipped:
                result = skipped_line_result(chunk.source, chunk.first_position,
                                             chunk.position_unit, chunk.skipped,
                                             self.settings.forward_max_line_bytes, None)
            else:
                result = process_lines(self.encoder, "log", chunk.source, chunk.body,
                                       chunk.first_position, chunk.position_unit, None)
            if not self._publish(result.events):
                break  # stopped before JetStream acknowledged: the offset stays
            # The offset moves only now, with the chunk's dead letters and counters.
            counters = dict(result.counters, published=len(result.events))
            self.spool.append([], chunk.offset_update, result.dead_letters, counters)
            self.published += len(result.events)
        return int(ExitCode.OK)

    def _publish(self, events: list[tuple[str, bytes]]) -> bool:
        """True once JetStream acknowledged every event; retried until then (or a stop)."""
        wait = 0.2
        warned = False
        while events:
            try:
                self.loop.run(self._publish_all(events), timeout=PUBLISH_TIMEOUT * 4)
                if warned:
                    log.info("publishing to JetStream again")
                return True
            except Exception as exc:  # noqa: BLE001 - an outage: retry the whole chunk
                if not warned:
                    log.warning("publishing to JetStream failed (%s: %s); retrying, the log "
                                "offset stays until it is acknowledged",
                                type(exc).__name__, exc)
                    warned = True
            if self.stop_event.wait(wait):
                return False
            wait = min(wait * 2, 5.0)
        return True

    async def _publish_all(self, events: list[tuple[str, bytes]]) -> None:
        gate = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(txid: str, body: bytes) -> None:
            async with gate:
                await self.js.publish(self.subject, body, timeout=PUBLISH_TIMEOUT,
                                      headers={"Nats-Msg-Id": txid, MAPPED_HEADER: "1"})

        await asyncio.gather(*(one(t, b) for t, b in events))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.nc.close(), timeout=5)
        self.loop.close()
        self.tailer.close()
        self.conn.close()


# --- the forwarder: JetStream -> Moesif Collector ----------------------------------------
class NatsForwarder:
    def __init__(self, settings: Settings, config: ForwardConfig, url: str,
                 stream: str = DEFAULT_STREAM, durable: str = DEFAULT_DURABLE, *,
                 once: bool = False, stop_event: threading.Event | None = None) -> None:
        self.settings, self.url, self.stream, self.durable = settings, url, stream, durable
        self.once = once
        self.stop_event = stop_event or threading.Event()
        self.conn, self.spool, self.encoder = _spool_and_encoder(settings, config)
        self.client = CollectorClient(config.collector_url, config.application_id,
                                      stop_event=self.stop_event, **config.client_options)
        self.source = f"nats:{stream}"
        self.delivered = self.dead_lettered = 0
        self._counts_lock = threading.Lock()
        self.loop = _Loop()
        self.nc, self.js = _open(self.loop, url, "--from-nats")
        self.sub: Any = None

    async def _subscribe(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        await ensure_stream(self.js, self.stream, DEFAULT_SUBJECTS, self.settings)
        try:
            await self.js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await self.js.add_consumer(self.stream, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=float(self.settings.forward_nats_ack_wait_seconds),
                max_ack_pending=4 * self.settings.forward_batch_events, max_deliver=-1))
        return await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    def run(self) -> int:
        """Pull, decode, post, ack. Decoding the next batch overlaps posting the one
        before (a sender thread; one batch waits between them), so the CPU work and
        Moesif's round trip are not added up. Every batch pulled is kept ours (in
        progress) from its decoding to its ack."""
        self.sub = self.loop.run(self._subscribe(), timeout=30)
        age = self.settings.forward_batch_age_seconds
        handoff: queue.Queue[tuple[list[Any], list[tuple[str, bytes]], Any] | None] = \
            queue.Queue(maxsize=1)
        failure: list[BaseException] = []
        sender = threading.Thread(target=self._send_loop, args=(handoff, failure),
                                  name="nats-send", daemon=True)
        sender.start()
        try:
            while not self.stop_event.is_set() and not failure:
                msgs = self._fetch(age)
                if not msgs:
                    if self.once:
                        break
                    continue
                beat = self.loop.submit(self._in_progress(msgs))
                try:
                    events = self._decode_and_record(msgs)
                except BaseException:
                    beat.cancel()
                    raise
                if not self._hand_over(handoff, (msgs, events, beat), failure):
                    beat.cancel()  # not sent: unacknowledged, redelivered after ack_wait
                    break
        finally:
            self._hand_over(handoff, None, failure, wait=True)
            sender.join()
        for exc in failure:
            if isinstance(exc, CollectorConfigError):
                log.error("Moesif refused the configuration: %s", exc)
                return int(ExitCode.CONFIGURATION)
            if not isinstance(exc, DeliveryInterrupted):
                raise exc
        return int(ExitCode.OK)

    def _hand_over(self, handoff: queue.Queue[Any], item: Any, failure: list[BaseException],
                   wait: bool = False) -> bool:
        """Queue `item` for the sender; False once the sender stopped (a failure, or a
        stop while waiting). `wait`: the end marker, which the sender always takes."""
        while not failure:
            if self.stop_event.is_set() and not wait:
                return False
            try:
                handoff.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        if wait:
            with contextlib.suppress(queue.Empty):
                dropped = handoff.get_nowait()  # the sender stopped: room for the marker
                if dropped is not None:
                    dropped[2].cancel()  # unacknowledged: redelivered after ack_wait
            handoff.put(item)
        return False

    def _send_loop(self, handoff: queue.Queue[Any], failure: list[BaseException]) -> None:
        while (item := handoff.get()) is not None:
            msgs, events, beat = item
            if failure or self.stop_event.is_set():
                # Only the batch in hand is finished on a stop; one still waiting is left
                # unacknowledged, redelivered (to any forwarder) after ack_wait.
                beat.cancel()
                continue
            try:
                try:
                    self._send_or_split(events)
                finally:
                    beat.cancel()
                self.loop.run(self._ack(msgs), timeout=30)
            except BaseException as exc:  # noqa: BLE001 - handed to the pulling thread
                failure.append(exc)

    def _decode_and_record(self, msgs: list[Any]) -> list[tuple[str, bytes]]:
        events, dead = self._decode(msgs)
        # Dead letters are recorded (in this host's state file) before anything is acked.
        self.spool.append([], None, dead, {"read": len(msgs), "masked": len(events)})
        self._count(dead_lettered=len(dead))
        return events

    def _count(self, delivered: int = 0, dead_lettered: int = 0) -> None:
        with self._counts_lock:  # the pulling and the sending thread both count
            self.delivered += delivered
            self.dead_lettered += dead_lettered

    def _fetch(self, age: float) -> list[Any]:
        # Back-pressure: at most one batch waits for the sender while the next is pulled.
        try:
            return self.loop.run(self.sub.fetch(self.settings.forward_batch_events,
                                                timeout=max(0.2, age)), timeout=age + 30)
        except TimeoutError:
            return []
        except Exception as exc:  # noqa: BLE001 - NATS restarting: wait and pull again
            log.warning("pulling from JetStream failed (%s); retrying", type(exc).__name__)
            self.stop_event.wait(1.0)
            return []

    def _decode(self, msgs: list[Any]) -> tuple[list[tuple[str, bytes]], list[DeadLetter]]:
        events: list[tuple[str, bytes]] = []
        dead: list[DeadLetter] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            data = bytes(msg.data)
            if (msg.headers or {}).get(MAPPED_HEADER) == "1":
                try:
                    event = orjson.loads(data)
                    if not isinstance(event, dict) or not isinstance(
                            event.get("transaction_id"), str):
                        raise ValueError("not a mapped event")
                    events.append((event["transaction_id"], data))
                    continue
                except ValueError:
                    dead.append(DeadLetter(self.source, f"seq {seq}",
                                           DeadLetterCode.BAD_VALUE.value,
                                           "a Moesif-Event message that is not a mapped event",
                                           self.encoder.fingerprint(data)))
                    continue
            fmt = "jsonl" if data.lstrip().startswith(b"{") else "log"
            result = process_lines(self.encoder, fmt, self.source, [data.rstrip(b"\r\n")],
                                   seq, "seq", None)
            events.extend(result.events)
            dead.extend(result.dead_letters)
        return events, dead

    async def _in_progress(self, msgs: list[Any]) -> None:
        """A long send (Moesif down, retrying): keep the messages ours."""
        every = max(1.0, self.settings.forward_nats_ack_wait_seconds / 3)
        while True:
            await asyncio.sleep(every)
            for msg in msgs:
                await msg.in_progress()

    async def _ack(self, msgs: list[Any]) -> None:
        for msg in msgs:
            await msg.ack()
        await self.nc.flush(timeout=10)

    def _send_or_split(self, batch: list[tuple[str, bytes]]) -> None:
        if not batch:
            return
        try:
            self.client.post_batch(encode_batch([body for _, body in batch]),
                                   stop_event=self.stop_event)
        except BatchRejected as exc:
            if len(batch) == 1:
                detail = f"Moesif answered HTTP {exc.status}: {exc.body_text}"
                letter = DeadLetter(self.source, f"transaction {batch[0][0]}",
                                    REJECTED_BY_COLLECTOR, detail,
                                    batch[0][1][:DEAD_LETTER_KEEP_BYTES])
                self.spool.append([], None, [letter])
                self._count(dead_lettered=1)
                return
            middle = len(batch) // 2
            self._send_or_split(batch[:middle])
            self._send_or_split(batch[middle:])
            return
        self.spool.bump({"delivered": len(batch)})
        self._count(delivered=len(batch))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.nc.close(), timeout=5)
        self.loop.close()
        self.client.close()
        self.conn.close()


# --- entry points ------------------------------------------------------------------------
def run_nats(settings: Settings, *, from_log: Path | None = None, to_nats: str | None = None,
             subject: str | None = None, from_nats: str | None = None,
             stream: str = DEFAULT_STREAM, durable: str = DEFAULT_DURABLE,
             wso2_config_path: Path | None = None, once: bool = False,
             stop_event: threading.Event | None = None,
             client_options: dict[str, Any] | None = None, out: Any = None) -> int:
    """`forward --from-log ... --to-nats ...` or `forward --from-nats ...`; an exit code."""
    import sys

    out = out if out is not None else sys.stderr
    install_secret_filter(settings.secrets())
    stop_event = stop_event or threading.Event()
    started = time.monotonic()
    try:
        config = resolve_config(settings, wso2_config_path, client_options)
        if to_nats is not None:
            if from_log is None or not subject:
                raise ConfigError("--to-nats needs --from-log and --subject "
                                  "(e.g. apim.analytics.<node>)")
            worker: NatsPublisher | NatsForwarder = NatsPublisher(
                settings, config, from_log, to_nats, subject, stream, once=once,
                stop_event=stop_event)
        else:
            assert from_nats is not None
            worker = NatsForwarder(settings, config, from_nats, stream, durable, once=once,
                                   stop_event=stop_event)
    except ConfigError as exc:
        print(f"error: {exc}", file=out)
        return int(ExitCode.CONFIGURATION)
    try:
        with stop_on_signals(stop_event, "the batch in hand is settled, the rest stays in "
                                         "JetStream"):
            code = worker.run()
    finally:
        worker.close()
    if isinstance(worker, NatsPublisher):
        print(f"forward: published={worker.published} exit={code} "
              f"seconds={time.monotonic() - started:.1f}", file=out)
    else:
        print(f"forward: delivered={worker.delivered} dead_lettered={worker.dead_lettered} "
              f"exit={code} seconds={time.monotonic() - started:.1f}", file=out)
    return code


def nats_status(url: str, stream: str = DEFAULT_STREAM,
                durable: str = DEFAULT_DURABLE) -> dict[str, Any]:
    """The stream's size and the durable consumer's pending / redelivered counts."""
    from nats.js.errors import NotFoundError

    loop = _Loop()
    try:
        nc, js = _open(loop, url, "--nats")

        async def read() -> dict[str, Any]:
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return {"stream": stream, "exists": False}
            status: dict[str, Any] = {"stream": stream, "exists": True,
                                      "messages": info.state.messages,
                                      "bytes": info.state.bytes, "consumer": durable}
            try:
                ci = await js.consumer_info(stream, durable)
            except NotFoundError:
                status["consumer_exists"] = False
                return status
            status.update(consumer_exists=True, pending=ci.num_pending,
                          ack_pending=ci.num_ack_pending, redelivered=ci.num_redelivered,
                          waiting=ci.num_waiting)
            return status

        try:
            return loop.run(read(), timeout=30)
        finally:
            with contextlib.suppress(Exception):
                loop.run(nc.close(), timeout=5)
    finally:
        loop.close()
