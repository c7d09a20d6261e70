"""Map: one WSO2 event validated, masked, mapped and encoded once for the spool.

`EncoderSpec` is the picklable recipe parse workers in other processes build
their own `EventEncoder` from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from connector.errors import DeadLetterCode
from connector.forward.config import ForwardConfig
from connector.forward.errors import MalformedEvent
from connector.forward.masking import MaskConfig, Masker
from connector.moesif.limits import MAX_EVENT_BYTES

# What a dead letter keeps of a masked event (the spool clips it further).
DEAD_LETTER_KEEP_BYTES = 8192



@dataclass(frozen=True)
class EncoderSpec:
    """What it takes to build an EventEncoder, in picklable form (no secret in it), so
    parse workers in other processes can build their own."""

    send_headers: bool
    mask_rules: tuple[tuple[str, str], ...]
    request_headers: tuple[str, ...]
    response_headers: tuple[str, ...]
    unknown_company_values: tuple[str, ...]
    max_line_bytes: int = 1_048_576
    # The installation's key of content-derived transaction ids: goes to parse workers,
    # never into a repr or a log.
    transaction_secret: bytes = field(default=b"", repr=False)

    @classmethod
    def of(cls, config: ForwardConfig, transaction_secret: bytes = b"",
           max_line_bytes: int = 1_048_576) -> EncoderSpec:
        mask = config.mask
        return cls(config.send_headers, tuple((k, str(v)) for k, v in mask.rules.items()),
                   tuple(mask.request_headers), tuple(mask.response_headers),
                   tuple(sorted(config.unknown_company_values)), max_line_bytes,
                   transaction_secret)

    def build(self) -> EventEncoder:
        mask = MaskConfig(rules=dict(self.mask_rules), request_headers=list(self.request_headers),
                          response_headers=list(self.response_headers))
        return EventEncoder(self.send_headers, mask, self.unknown_company_values,
                            transaction_secret=self.transaction_secret or None,
                            max_line_bytes=self.max_line_bytes)



class EventEncoder:
    """Validate, mask and map one WSO2 event, then encode it once for the spool.

    Any failure on one event (a wrong type, a value out of range, nesting deeper than the
    encoder writes, a bug) is a MalformedEvent for that event alone: the stream goes on.
    """

    def __init__(self, send_headers: bool, mask: MaskConfig,
                 unknown_company_values: Iterable[str] = ("UNKNOWN",), *,
                 transaction_secret: bytes | None = None,
                 max_line_bytes: int = 1_048_576) -> None:
        from connector.forward.moesif_event import EventMapper

        self.mask = mask
        self.send_headers = send_headers
        self.max_line_bytes = max_line_bytes
        self._secret = transaction_secret or os.urandom(32)
        self.mapper = EventMapper(send_headers, mask, set(unknown_company_values),
                                  transaction_secret=self._secret)
        # Dead letters are masked like events, and never keep a captured header unless
        # headers may be sent.
        self._dead_masker = Masker(mask.rules, mask.request_headers, mask.response_headers,
                                   drop_headers=not send_headers)

    def __call__(self, raw: dict[str, Any], kind: str | None) -> tuple[str, bytes]:
        try:
            event = self.mapper.process(raw, kind)
            body = orjson.dumps(event)
        except MalformedEvent:
            raise
        except orjson.JSONEncodeError as exc:  # its messages name no value
            raise MalformedEvent(DeadLetterCode.BAD_VALUE,
                                 f"the event cannot be encoded as JSON ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - one event's problem is that event's
            # The type only: an exception's text may quote the (unmasked) value.
            raise MalformedEvent(DeadLetterCode.BAD_VALUE,
                                 f"the event cannot be mapped ({type(exc).__name__})") from None
        # Refused here, never spooled to be refused by Moesif (or dropped unseen) later.
        if len(body) > MAX_EVENT_BYTES:
            raise MalformedEvent(DeadLetterCode.EVENT_TOO_LARGE,
                                 f"the Moesif event would be {len(body)} bytes, over the "
                                 f"Collector's limit of {MAX_EVENT_BYTES} bytes per event")
        return event["transaction_id"], body

    def kept(self, event: Any, line: bytes | None = None) -> bytes:
        """What a dead letter may keep: the event masked by the mask rules when it is an
        object that can be masked; otherwise only a keyed fingerprint and the length of
        its bytes, never the raw text."""
        if isinstance(event, dict):
            try:
                masked = self._dead_masker.apply(event)
                return orjson.dumps(masked, option=orjson.OPT_NON_STR_KEYS)[
                    :DEAD_LETTER_KEEP_BYTES]
            except Exception:  # noqa: BLE001 - masking must never turn a dead letter into a crash
                pass
        if line is None:
            try:
                line = orjson.dumps(event)
            except Exception:  # noqa: BLE001
                line = b""
        return self.fingerprint(line)

    def fingerprint(self, data: bytes) -> bytes:
        """A keyed BLAKE2b (the installation's secret), so a short line cannot be guessed
        back from it, yet the same line always gives the same fingerprint."""
        digest = hashlib.blake2b(data, key=self._secret, digest_size=16).hexdigest()
        return orjson.dumps({"withheld": "not masked, so not stored",
                             "blake2b": digest, "length": len(data)})
