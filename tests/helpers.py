"""Helpers many test modules share: sandboxes with the test keys, waiting on a condition.

Fixtures live in conftest.py; these are plain functions, imported where used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from connector.sandbox.serve import SyncSandbox, start_sync_sandbox
from tests.conftest import MANAGEMENT_KEY, WRITE_KEY

T = TypeVar("T")


def sync_sandbox(users: int, companies: int, **options: Any) -> SyncSandbox:
    """The Moesif Management and Segment sandboxes, answering to the test keys."""
    return start_sync_sandbox(users, companies, management_key=MANAGEMENT_KEY,
                              write_key=WRITE_KEY, **options)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Return once `condition()` holds; fail the test if it does not before the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        threading.Event().wait(0.01)  # poll interval of a deadline-bounded wait


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """The first truthy value of `predicate()`; fail naming `what` if none comes in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        threading.Event().wait(0.05)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out waiting for {what}")


def identify_ids(sandbox: SyncSandbox) -> set[str]:
    """The user ids Segment's sandbox received identify calls for."""
    return {m["userId"] for m in sandbox.segment.messages if m["type"] == "identify"}
