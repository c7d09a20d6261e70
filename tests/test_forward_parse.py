"""Parse: a chunk read from a file reaches the parser as one block of bytes (split where
it is parsed, in a worker), and must give exactly what its list of lines gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import DeadLetterCode
from connector.forward.config import resolve_config
from connector.forward.encoder import EncoderSpec, EventEncoder
from connector.forward.parse import process_lines
from connector.forward.sources import LineChunk, split_lines
from connector.sandbox.apim_log import LogGenerator
from connector.settings import Settings

SECRET = b"parse-test-secret-0123456789abcdef"
# Real log lines (metrics, other log lines, malformed metrics) to draw from.
SAMPLE = [line.rstrip("\n").encode() for text in LogGenerator(seed=21).lines(60)
          for line in text.splitlines()]


def _encoder() -> EventEncoder:
    settings = Settings(moesif_application_id="parse-test-app")
    return EncoderSpec.of(resolve_config(settings), SECRET, max_line_bytes=4096).build()


ENCODER = _encoder()
# Lines never hold their terminator; anything else goes: text, garbage, empty, too long.
line_st = st.one_of(
    st.sampled_from(SAMPLE),
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
    st.just(b""),
    st.just(b"x" * 5000),
)


def _outcome(body: list[bytes] | bytes, first: int) -> tuple[object, ...]:
    result = process_lines(ENCODER, "log", "log:/x", body, first, "byte", 7)
    letters = [(d.position, d.reason_code, d.raw) for d in result.dead_letters]
    return result.events, letters, result.counters


@settings(max_examples=60, deadline=None)
@given(st.lists(line_st, min_size=1, max_size=25), st.integers(0, 10**9))
def test_a_block_parses_exactly_like_its_lines(lines: list[bytes], first: int) -> None:
    block = b"\n".join(lines)
    assert split_lines(block) == lines
    assert _outcome(block, first) == _outcome(lines, first)


def test_dead_letters_name_the_byte_offset_of_their_line_in_the_block() -> None:
    good = next(line for line in SAMPLE if b"apim:response" in line)
    lines = [good, b"apimMetrics: apim:response, properties :{broken", good, b"z" * 5000]
    block = b"\n".join(lines)
    result = process_lines(ENCODER, "log", "log:/x", block, 100, "byte", None)
    assert len(result.events) == 2
    offsets = [100 + block.index(lines[1]), 100 + block.rindex(b"z" * 5000)]
    assert [d.position for d in result.dead_letters] == [f"byte {o}" for o in offsets]
    assert result.dead_letters[1].reason_code == DeadLetterCode.LINE_TOO_LONG
    assert result.counters["read"] == 4


def test_a_chunk_read_as_a_block_lists_its_lines_and_positions() -> None:
    chunk = LineChunk("log:/x", b"ab\n\ncde", 10, "byte", None)
    assert chunk.lines == [b"ab", b"", b"cde"]
    assert list(chunk.positions()) == [(10, b"ab"), (13, b""), (14, b"cde")]
