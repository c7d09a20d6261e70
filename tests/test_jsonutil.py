import orjson
import pytest

from connector.common.jsonutil import dumps, dumps_sorted, loads


def test_round_trip_and_canonical_order():
    value = {"b": [1, 2.5, None, True], "a": "naïve ☃"}
    assert loads(dumps(value)) == value
    assert dumps_sorted(value).startswith(b'{"a"')


def test_lone_surrogate_is_replaced_not_fatal():
    doc = b'{"name": "half an emoji \\ud83d", "ok": "\\ud83d\\ude80"}'
    value = loads(doc)
    assert value["name"] == "half an emoji \ufffd"
    assert value["ok"] == "🚀"
    assert orjson.dumps(value)  # encodable again, so the record can be sent


def test_really_broken_json_still_fails():
    with pytest.raises(orjson.JSONDecodeError):
        loads(b'{"truncated": ')


@pytest.mark.parametrize(("doc", "reason"), [
    (b'{"n": NaN}', "NaN literal"),
    (b'{"n": -Infinity}', "-Infinity literal"),
    (b'{"n": "caf\xe9"}', "invalid UTF-8 at byte 10"),
    (b'{"n": "\\ud800"}', "lone surrogate"),
    (b'{"n": ' + b"9" * 1200 + b"}", "1200-digit integer"),
])
def test_the_fallback_logs_the_real_reason(caplog, doc, reason):
    loads(doc)
    assert reason in caplog.text
    assert "orjson" in caplog.text


def test_invalid_utf8_is_replaced_and_handed_to_the_caller():
    problems = []
    value = loads(b'{"name": "Ann \xff\xfe Lee", "ok": "\xc3\xa9"}', on_problem=problems.append)
    assert value == {"name": "Ann \ufffd\ufffd Lee", "ok": "é"}
    assert problems == ["invalid UTF-8 at byte 14 (replaced with U+FFFD)"]
    assert orjson.dumps(value)


def test_numbers_json_cannot_carry_are_kept_for_the_mapping_to_report():
    problems = []
    value = loads(b'[NaN, 1e400, 123456789012345678901234567890, ' + b"1" * 2000 + b"]",
                  on_problem=problems.append)
    assert value[0] != value[0] and value[1] == float("inf")
    assert value[2] == 123456789012345678901234567890 and value[3] == float("inf")
    assert problems == []  # numbers are not text repairs: the mapping reports them per field


def test_deep_documents_in_the_fallback_do_not_exhaust_the_stack():
    doc = b'{"a": ' * 900 + b'"\\ud800"' + b"}" * 900
    value = loads(doc)
    for _ in range(900):
        value = value["a"]
    assert value == "\ufffd"
