"""The real PostgreSQL and NATS servers the scale tests use, isolated per test.

Addresses come from TEST_POSTGRES_URL / TEST_NATS_URL (the local servers by default). An
unreachable server skips the test with the reason on a developer's machine, and fails it
under CI (`CI=true`), where the servers are part of the environment.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the server must be there)")
    pytest.skip(reason)


def postgres_or_skip() -> str:
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at TEST_POSTGRES_URL is unreachable: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
    return POSTGRES_URL


def with_search_path(url: str, schema: str) -> str:
    """The URL with libpq's `options=-csearch_path=...`: every connection uses `schema`."""
    sep = "&" if urlsplit(url).query else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


def pg_schema() -> Iterator[str]:
    """A fresh schema with a random name; its STATE_URL; dropped afterwards."""
    import psycopg

    base = postgres_or_skip()
    schema = f"t_{secrets.token_hex(5)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema()


def nats_or_skip() -> str:
    parts = urlsplit(NATS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 3).close()
    except OSError as exc:
        unavailable(f"NATS at TEST_NATS_URL is unreachable: {exc}")
    return NATS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
