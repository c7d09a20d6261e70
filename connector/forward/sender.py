"""Sink: batches claimed from the spool in order and posted to Moesif's Collector;
acked on 201, split on 400 until the refused events are alone (dead letters).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from connector.errors import DeadLetterCode
from connector.forward.config import ForwardConfig
from connector.forward.spool import Spool
from connector.moesif.collector import (
    BatchRejected,
    CollectorClient,
    CollectorConfigError,
    DeliveryInterrupted,
    encode_batch,
)
from connector.settings import Settings

# The logger keeps its name from before the forwarder was split by stage.
log = logging.getLogger("connector.forward.pipeline")


REJECTED_BY_COLLECTOR = DeadLetterCode.REJECTED_BY_COLLECTOR.value



class _Slot:
    """One sending thread: its own Collector client and the batch it has in flight."""

    def __init__(self) -> None:
        self.seqs: list[int] = []



class BatchSender:
    """Threads that claim batches from the spool and post them to Moesif.

    Batches are claimed in sequence order (each thread takes the next events after the
    last claimed one), so several can be in flight at once: one thread gzips and posts
    while another waits for Moesif's answer. A batch leaves the spool only on 201 (ack)
    or, event by event, when Moesif refuses it (400: split in halves until the refused
    events are alone, which go to the dead letters with Moesif's answer).
    """

    def __init__(self, spool: Spool, config: ForwardConfig, settings: Settings,
                 stop_event: threading.Event, inputs_done: threading.Event,
                 on_fatal: Callable[[BaseException], None], threads: int = 2) -> None:
        self.spool = spool
        self.config = config
        self.batch_events = settings.forward_batch_events
        self.batch_bytes = settings.forward_batch_bytes
        self.batch_age = settings.forward_batch_age_seconds
        self.stop_event = stop_event
        self.inputs_done = inputs_done
        self.on_fatal = on_fatal
        self.rejected = 0               # events Moesif refused in this run
        self._claim_lock = threading.Lock()
        self._claimed_upto = 0          # highest sequence number handed to a thread
        self._inflight_events = 0
        self._inflight_bytes = 0
        self._wake = threading.Condition()
        self._generation = 0            # bumped by every wake(): no wake-up is lost
        self._threads = [threading.Thread(target=self._loop, name=f"forward-sender-{i}",
                                          daemon=True) for i in range(max(1, threads))]
        self._running = len(self._threads)
        self.done = threading.Event()   # set when every sending thread has stopped

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    # -- one thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        slot = _Slot()
        client = CollectorClient(self.config.collector_url, self.config.application_id,
                                 on_retry=lambda attempt, reason: self._on_retry(slot),
                                 **self.config.client_options)
        try:
            while (batch := self._claim()) is not None:
                try:
                    self._send_or_split(client, slot, batch)
                finally:
                    self._release(batch)
        except DeliveryInterrupted:
            log.info("stopped while Moesif was unreachable; the batch stays spooled")
        except CollectorConfigError as exc:
            log.error("%s", exc)
            self.on_fatal(exc)
        except Exception as exc:
            log.exception("sending to Moesif failed")
            self.on_fatal(exc)
        finally:
            client.close()
            with self._claim_lock:
                self._running -= 1
                if self._running == 0:
                    self.done.set()

    def _claim(self) -> list[tuple[int, str, bytes]] | None:
        """The next due batch (by count, bytes, age, or because inputs are done), or None
        when this thread should stop."""
        while True:
            with self._wake:
                seen = self._generation
            with self._claim_lock:
                if self.stop_event.is_set():
                    return None
                available = self.spool.depth() - self._inflight_events
                draining = self.inputs_done.is_set()
                if available <= 0:
                    if draining:
                        return None
                    wait = 1.0
                else:
                    wait = self._due_in(available, draining)
                    if wait <= 0:
                        batch = self.spool.peek_batch(self.batch_events, self.batch_bytes,
                                                      after_seq=self._claimed_upto)
                        if batch:
                            self._claimed_upto = batch[-1][0]
                            self._inflight_events += len(batch)
                            self._inflight_bytes += sum(len(b) for _, _, b in batch)
                            return batch
                        wait = 0.05
            with self._wake:
                self._wake.wait_for(lambda seen=seen: self._generation != seen
                                    or self.stop_event.is_set(), timeout=wait)

    def _due_in(self, available: int, draining: bool) -> float:
        unclaimed_bytes = self.spool.spooled_bytes() - self._inflight_bytes
        if (draining or available >= self.batch_events or unclaimed_bytes >= self.batch_bytes
                or self.spool.is_full()):  # full: readers wait for us, nothing more comes
            return 0.0
        oldest = self.spool.oldest_enqueued_at(after_seq=self._claimed_upto)
        if oldest is None:
            return 0.05
        return oldest + self.batch_age - time.time()

    def _release(self, batch: list[tuple[int, str, bytes]]) -> None:
        with self._claim_lock:
            self._inflight_events -= len(batch)
            self._inflight_bytes -= sum(len(b) for _, _, b in batch)
        self.wake()

    def _send_or_split(self, client: CollectorClient, slot: _Slot,
                       batch: list[tuple[int, str, bytes]]) -> None:
        seqs = [seq for seq, _, _ in batch]
        slot.seqs = seqs
        try:
            # Stored bytes are sent as they are: joined into an array, never re-encoded.
            client.post_batch(encode_batch([body for _, _, body in batch]),
                              stop_event=self.stop_event)
        except BatchRejected as exc:
            if len(batch) == 1:
                detail = f"Moesif answered HTTP {exc.status}: {exc.body_text}"
                self.spool.dead_letter(seqs, REJECTED_BY_COLLECTOR, detail)
                self.rejected += 1
                log.warning("Moesif refused event %s (HTTP %d); moved to the dead letters",
                            batch[0][1], exc.status)
                return
            # Isolate the refused event(s): everything else still gets delivered.
            middle = len(batch) // 2
            self._send_or_split(client, slot, batch[:middle])
            self._send_or_split(client, slot, batch[middle:])
            return
        finally:
            slot.seqs = []
        self.spool.ack(seqs)

    def _on_retry(self, slot: _Slot) -> None:
        self.spool.mark_attempt(slot.seqs)
