"""connector.common.compression: ISA-L gzip that the standard library reads back."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.common.compression import MAX_LEVEL, MIN_LEVEL, gzip_body


@given(st.binary(max_size=200_000), st.integers(MIN_LEVEL, MAX_LEVEL))
def test_any_body_round_trips_through_the_standard_library(data: bytes, level: int) -> None:
    packed = gzip_body(data, level)
    assert gzip.decompress(packed) == data
    # One member, nothing after it: what the sandboxes' streaming decoders insist on.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflater.decompress(packed) == data
    assert inflater.eof and not inflater.unused_data


def test_the_same_body_gzips_to_the_same_bytes() -> None:
    body = b'[{"request":{"uri":"/pets"}}]' * 1000
    assert gzip_body(body) == gzip_body(body)  # no timestamp in the header
    assert len(gzip_body(body)) < len(body) // 20


@pytest.mark.parametrize("level", [-1, 4, 9])
def test_a_level_isal_does_not_have_is_refused(level: int) -> None:
    with pytest.raises(ValueError, match="gzip level must be 0-3"):
        gzip_body(b"x", level)


def test_the_collector_client_refuses_a_level_when_built_not_per_batch() -> None:
    from pydantic import SecretStr

    from connector.moesif.collector import CollectorClient

    with pytest.raises(ValueError, match="gzip level must be 0-3"):
        CollectorClient("http://127.0.0.1:9", SecretStr("app-id"), compresslevel=6)
