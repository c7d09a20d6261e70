from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.common.timeutil import iso_utc, parse_own_iso, parse_timestamp, to_iso


@pytest.mark.parametrize(("raw", "expected"), [
    ("2023-07-27T21:52:58.0990000Z", "2023-07-27T21:52:58.099Z"),   # 7 fractional digits
    ("2023-07-27T21:55:19.464", "2023-07-27T21:55:19.464Z"),         # no zone means UTC
    ("2023-07-27T21:55:19Z", "2023-07-27T21:55:19.000Z"),
    ("2023-07-27T23:55:19+02:00", "2023-07-27T21:55:19.000Z"),
    (1690494919464, "2023-07-27T21:55:19.464Z"),                       # epoch millis
    (1690494919, "2023-07-27T21:55:19.000Z"),                          # epoch seconds
])
def test_moesif_shapes_become_iso_utc(raw, expected):
    assert iso_utc(raw) == expected


@pytest.mark.parametrize("raw", ["not-a-date", "", None, True, {"a": 1}, "2023-13-45T00:00:00Z"])
def test_garbage_is_refused(raw):
    with pytest.raises(ValueError):
        parse_timestamp(raw)


def test_naive_datetime_is_taken_as_utc():
    assert parse_timestamp(datetime(2024, 1, 1)).tzinfo == UTC


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), 1e300, 10**40, -(10**40),
                                 "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                 [1], 2**70])
def test_out_of_range_values_are_value_errors_only(raw):
    with pytest.raises(ValueError):
        parse_timestamp(raw)


def test_early_years_keep_four_digits():
    assert iso_utc("0099-05-01T00:00:00Z") == "0099-05-01T00:00:00.000Z"
    assert iso_utc(parse_timestamp("0005-01-02T03:04:05.678+00:00")) == \
        "0005-01-02T03:04:05.678Z"


@settings(max_examples=300, deadline=None)
@given(value=st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
       | st.datetimes().map(lambda d: d.isoformat() + "Z")
       | st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds"))
       | st.integers(min_value=0, max_value=253_402_300_799_000)
       | st.text(max_size=30))
def test_iso_utc_output_is_a_fixed_point(value):
    """The sync hashes the mapped timestamp text as it is: it must already be what
    `to_iso(parse_timestamp(...))` gives, for every value the conversion accepts."""
    try:
        text = iso_utc(value)
    except ValueError:
        return
    assert to_iso(parse_timestamp(text)) == text
    assert iso_utc(text) == text
    fast = parse_own_iso(text)
    assert fast == parse_timestamp(text) and fast.tzinfo is UTC
    assert fast.isoformat(timespec="milliseconds") == \
        parse_timestamp(text).isoformat(timespec="milliseconds")


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=40) | st.datetimes().map(lambda d: d.isoformat() + "+05:30"))
def test_parse_own_iso_answers_as_the_lenient_parser(value):
    try:
        expected = parse_timestamp(value)
    except ValueError:
        with pytest.raises(ValueError):
            parse_own_iso(value)
        return
    assert parse_own_iso(value) == expected


_DIGIT = st.characters(categories=("Nd",))  # any Unicode digit: `\d` matches them all


@given(date=st.datetimes(), fraction=st.text(st.sampled_from("0123456789") | _DIGIT,
                                             max_size=9),
       zone=st.sampled_from(["", "Z", "z"]), odd=st.lists(st.tuples(st.integers(0, 18),
                                                                    _DIGIT), max_size=2))
def test_iso_utc_fast_path_answers_as_the_lenient_parser(date, fraction, zone, odd):
    """Moesif's shapes take the slicing path; its answer (or its refusal) is the
    lenient parser's: same text out, or a ValueError from both."""
    text = list(f"{date.year:04d}" + date.strftime("-%m-%dT%H:%M:%S"))
    for at, digit in odd:  # an impossible date, or digits from another script
        if text[at].isdigit():
            text[at] = digit
    value = "".join(text) + (f".{fraction}" if fraction else "") + zone
    try:
        expected = to_iso(parse_timestamp(value))
    except ValueError:
        with pytest.raises(ValueError):
            iso_utc(value)
        return
    assert iso_utc(value) == expected
    assert expected.isascii()


def test_another_scripts_digits_never_reach_the_output():
    with pytest.raises(ValueError):
        iso_utc("2026-11-30T12:34:56.\u0663\u0663Z")
