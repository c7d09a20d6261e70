"""Shape: a user's messages built by the Segment library, trimmed to fit 32 KB."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from connector.segment.sink import MAX_MESSAGE_BYTES, OutMessage, json_size
from connector.sync.records import Candidate, _failure_text, _get_path, _log_unforeseen, _pop_path


class ShapeStage:
    """Shape: a user's messages built by the Segment library, trimmed to fit 32 KB.

    Mixed into `SyncRun` (connector.sync.job), which owns the state used here.
    """

    def _message_id(self, kind: str, c: Candidate) -> str:
        return f"ms-{kind[:3]}-" + hashlib.blake2b(
            f"users|{c.id}|{kind}|{c.hash}|{self.mappings.version}".encode(),
            digest_size=20).hexdigest()

    def _shape_guarded(self, c: Candidate) -> bool:
        """`_shape`, with any unforeseen error (the library, the encoder, sizing) made
        that record's problem."""
        try:
            return self._shape(c)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, reported
            _log_unforeseen("shaping a user's messages", exc)
            c.messages.clear()
            self._mapping_failed("users", c.id,
                                 f"shaping or encoding failed: {_failure_text(exc)}")
            return False

    def _shape(self, c: Candidate) -> bool:
        """Shape every message of a record, trimming to fit 32 KB; False if it cannot."""
        parts = [("identify", c.identify.message, self.identify_trimmable, "identify")]
        if c.group is not None:
            parts.append(("group", c.group.message, self.group_trimmable, "group"))
        for kind, body, trimmable, prefix in parts:
            shaped = self._shape_one(kind, body, c, trimmable, prefix)
            if shaped is None:
                return False
            c.messages.append(shaped)
        if c.trimmed:
            self.report.issue("users", c.id, "OVERSIZE_TRIMMED",
                              f"dropped {', '.join(c.trimmed)} to fit Segment's 32 KB limit")
        return True

    def _shape_one(self, kind: str, body: dict[str, Any], c: Candidate,
                   trimmable: list[tuple[str, tuple[str, ...]]], prefix: str) -> OutMessage | None:
        message_id = self._message_id(kind, c)
        copied = False
        while True:
            try:
                msg = self.sink.shape(kind, body, c.timestamp, message_id)
            except RuntimeError:  # the library's own 32 KB check
                msg = None
            if msg is not None:
                out = OutMessage.of(msg, ("users", c.id))
                if out.library_size <= MAX_MESSAGE_BYTES:
                    return out
            # Too big: drop the largest free-form subtree still present, then retry. Parts
            # of the body may be shared with other users (a company), so trim a copy.
            if not copied:
                body, copied = copy.deepcopy(body), True
            present = [(json_size(v), target, path) for target, path in trimmable
                       if (v := _get_path(body, path)) is not None]
            if not present:
                self.report.issue("users", c.id, "OVERSIZE",
                                  f"{kind} is over 32 KB even without "
                                  f"{', '.join(t for t, _ in trimmable) or 'free-form fields'}")
                return None
            _, target, path = max(present)
            _pop_path(body, path)
            c.trimmed.append(f"{prefix}.{target}")
