import orjson
import pytest

from connector.jsonutil import dumps, dumps_sorted, loads


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
