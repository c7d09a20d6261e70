"""[apim.analytics.mask]: the seed's rules, their edge cases, headers, and config errors."""

from __future__ import annotations

import copy

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from connector.forward.masking import (
    MASK,
    MaskConfig,
    MaskRule,
    mask_event,
    mask_headers,
    mask_ip,
    mask_value,
)
from connector.settings import ConfigError


@pytest.mark.parametrize(
    "value,rule,expected",
    [
        # the seed's own examples
        ("192.168.1.98", "IPV4", "192.168.***.98"),
        (
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "IPV6",
            "2001:0db8:85a3:****:****:****:****:7334",
        ),
        ("john.doe@gmail.com", "EMAIL", "*****@gmail.com"),
        ("JohnDoe", "STRING", "*****"),
        # compressed IPv6 (WSO2's own code throws on these)
        ("2001:db8::1", "IPV6", "2001:0db8:0000:****:****:****:****:0001"),
        ("::1", "IPV6", "0000:0000:0000:****:****:****:****:0001"),
        ("2001:db8::", "IPV6", "2001:0db8:0000:****:****:****:****:0000"),
        ("::", "IPV6", "0000:0000:0000:****:****:****:****:0000"),
        ("2001:DB8:85A3::8A2E:370:7334", "IPV6", "2001:0db8:85a3:****:****:****:****:7334"),
        ("fe80::1%eth0", "IPV6", "fe80:0000:0000:****:****:****:****:0001"),  # zone dropped
        # IPv4-mapped IPv6: masked as the IPv4 address it carries
        ("::ffff:1.2.3.4", "IPV6", "::ffff:1.2.***.4"),
        ("::ffff:1.2.3.4", "IPV4", "::ffff:1.2.***.4"),
        # the address family decides, not the rule's name
        ("10.0.0.7", "IPV6", "10.0.***.7"),
        ("2001:db8::1", "IPV4", "2001:0db8:0000:****:****:****:****:0001"),
        (" 10.0.0.7 ", "IPV4", "10.0.***.7"),
        # unparsable under an IP rule: masked whole, never passed through
        ("unknown", "IPV4", MASK),
        ("256.1.1.1", "IPV4", MASK),
        ("1.2.3", "IPV4", MASK),
        ("1.2.3.4:8080", "IPV4", MASK),
        ("1.2.3.4, 5.6.7.8", "IPV4", MASK),
        ("2001:db8::1::2", "IPV6", MASK),
        ("[2001:db8::1]", "IPV6", MASK),
        ("１.２.３.４", "IPV4", MASK),
        # EMAIL edge cases
        ("no-at-sign", "EMAIL", MASK),
        ("@example.com", "EMAIL", "*****@example.com"),
        ("john@example.com@tenant.org", "EMAIL", "*****@tenant.org"),
        # case-insensitive rule names
        ("192.168.1.98", "ipv4", "192.168.***.98"),
        ("a@b.c", "email", "*****@b.c"),
        # nothing to hide
        ("", "STRING", ""),
        (None, "EMAIL", None),
        # non-strings: masked whole
        (12345, "STRING", MASK),
        (True, "EMAIL", MASK),
        ({"ip": "1.2.3.4"}, "IPV4", MASK),
        (["a@b.c"], "EMAIL", MASK),
    ],
)
def test_mask_value(value: object, rule: str, expected: object) -> None:
    assert mask_value(value, rule) == expected


def test_mask_rule_enum_values_are_accepted() -> None:
    assert mask_value("1.2.3.4", MaskRule.IPV4) == "1.2.***.4"
    assert mask_ip("1.2.3.4") == "1.2.***.4"


def test_headers_are_matched_case_insensitively_and_keep_their_names() -> None:
    headers = {"authorization": "Bearer abc", "X-API-KEY": "k", "Accept": "*/*"}
    masked = mask_headers(headers, ["Authorization", "x-api-key"])
    assert masked == {"authorization": MASK, "X-API-KEY": MASK, "Accept": "*/*"}
    assert headers["authorization"] == "Bearer abc"  # input untouched
    assert mask_headers(headers, []) == headers and mask_headers(headers, []) is not headers


SEED_MASK = {
    "userIp": "IPV4",
    "userName": "EMAIL",
    "userId": "EMAIL",
    "userAgent": "STRING",
    "applicationOwner": "EMAIL",
    "response_headers": ["Authorization", "X-API-Key"],
    "request_headers": ["Authorization", "Cookie"],
}


def sample_event() -> dict:
    return {
        "userIp": "192.168.1.98",
        "userName": "john.doe@gmail.com",
        "userId": "u-77",
        "userAgent": "Mozilla/5.0",
        "applicationOwner": "owner@corp.com",
        "apiName": "PizzaShackAPI",
        "proxyResponseCode": 200,
        "requestHeaders": {
            "AUTHORIZATION": "Bearer abc",
            "cookie": "sid=1",
            "User-Agent": "Mozilla/5.0",
            "X-Forwarded-For": "203.0.113.9, 10.0.0.1",
            "Accept": "*/*",
        },
        "responseHeaders": {"x-api-key": "k", "Content-Type": "application/json"},
        "properties": {
            "userName": "john.doe@gmail.com",
            "apiContext": "/pizza",
            "aiMetadata": {"userName": "nested@x.io", "model": "gpt"},
            "requestHeaders": {"Cookie": "c"},
            "items": [{"userIp": "10.1.2.3"}, "plain"],
        },
    }


def test_mask_event_applies_every_rule_everywhere() -> None:
    cfg = MaskConfig.from_table(SEED_MASK)
    event = sample_event()
    original = copy.deepcopy(event)
    masked = mask_event(event, cfg)
    assert event == original  # never mutates its input
    assert masked["userIp"] == "192.168.***.98"
    assert masked["userName"] == "*****@gmail.com"
    assert masked["userId"] == MASK
    assert masked["userAgent"] == MASK
    assert masked["applicationOwner"] == "*****@corp.com"
    assert masked["apiName"] == "PizzaShackAPI" and masked["proxyResponseCode"] == 200
    request = masked["requestHeaders"]
    assert request["AUTHORIZATION"] == MASK and request["cookie"] == MASK
    assert request["Accept"] == "*/*"
    # headers repeating a masked field follow that field's rule
    assert request["User-Agent"] == MASK
    assert request["X-Forwarded-For"] == "203.0.***.9, 10.0.***.1"
    assert masked["responseHeaders"] == {"x-api-key": MASK, "Content-Type": "application/json"}
    props = masked["properties"]
    assert props["userName"] == "*****@gmail.com" and props["apiContext"] == "/pizza"
    assert props["aiMetadata"] == {"userName": "*****@x.io", "model": "gpt"}
    assert props["requestHeaders"] == {"Cookie": MASK}
    assert props["items"] == [{"userIp": "10.1.***.3"}, "plain"]


def test_response_header_list_does_not_mask_request_headers_and_vice_versa() -> None:
    cfg = MaskConfig(request_headers=["Cookie"], response_headers=["Set-Cookie"])
    masked = cfg.apply(
        {
            "requestHeaders": {"Cookie": "a", "Set-Cookie": "b"},
            "responseHeaders": {"Cookie": "c", "Set-Cookie": "d"},
        }
    )
    assert masked["requestHeaders"] == {"Cookie": MASK, "Set-Cookie": "b"}
    assert masked["responseHeaders"] == {"Cookie": "c", "Set-Cookie": MASK}


def test_unchanged_event_and_empty_config() -> None:
    event = {"apiName": "x", "properties": {"a": 1}}
    assert MaskConfig().apply(event) is event
    assert not MaskConfig().active
    copied = mask_event(event, MaskConfig())
    assert copied == event and copied is not event
    cfg = MaskConfig.from_table(SEED_MASK)
    assert cfg.active and cfg.apply(event) is event  # copy-on-write: nothing to mask


def test_ipv6_rule_on_the_seed_table() -> None:
    cfg = MaskConfig.from_table({"userIp": "IPV6"})
    assert cfg.apply({"userIp": "2001:db8::8a2e:370:7334"})["userIp"] == (
        "2001:0db8:0000:****:****:****:****:7334"
    )


def test_unknown_fields_may_use_any_rule() -> None:
    cfg = MaskConfig.from_table({"apiCreator": "string", "destination": "IPV4", "x": "Email"})
    assert cfg.rules == {
        "apiCreator": MaskRule.STRING,
        "destination": MaskRule.IPV4,
        "x": MaskRule.EMAIL,
    }
    assert cfg.apply({"apiCreator": "admin"}) == {"apiCreator": MASK}


@pytest.mark.parametrize(
    "table,key,accepted",
    [
        ({"userIp": "IPV5"}, "userIp", "IPV4, IPV6"),
        ({"userIp": "STRING"}, "userIp", "IPV4, IPV6"),
        ({"userName": "IPV4"}, "userName", "EMAIL, STRING"),
        ({"userId": "PHONE"}, "userId", "EMAIL, STRING"),
        ({"userAgent": "EMAIL"}, "userAgent", "STRING"),
        ({"applicationOwner": "IPV6"}, "applicationOwner", "EMAIL, STRING"),
        ({"customField": "HASH"}, "customField", "IPV4, IPV6, EMAIL, STRING"),
        ({"userIp": 4}, "userIp", "IPV4, IPV6"),
    ],
)
def test_bad_rule_values_name_the_key_and_accepted_values(
    table: dict, key: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        MaskConfig.from_table(table)
    message = str(caught.value)
    assert key in message and accepted in message
    assert str(table[key]) not in message.replace(accepted, "")


@pytest.mark.parametrize(
    "table",
    [{"request_headers": "Authorization"}, {"response_headers": ["ok", 3]}],
)
def test_bad_header_lists(table: dict) -> None:
    with pytest.raises(ConfigError, match="must be a list of header names"):
        MaskConfig.from_table(table)


def test_configs_compare_by_content_and_survive_pickling() -> None:
    import pickle

    cfg = MaskConfig.from_table(SEED_MASK)
    assert cfg == MaskConfig.from_table(dict(SEED_MASK, userIp="ipv4"))
    assert cfg != MaskConfig.from_table(dict(SEED_MASK, userIp="IPV6"))
    clone = pickle.loads(pickle.dumps(cfg))  # parse workers in other processes
    assert clone == cfg
    assert clone.apply(sample_event()) == cfg.apply(sample_event())


# --- IPv6: every spelling (issue 7, item 12) -------------------------------------------------
_octet = st.integers(0, 255)


def _spellings(a: int, b: int, c: int, d: int) -> list[str]:
    """IPv6 addresses that carry the IPv4 address a.b.c.d, in the ways it is written."""
    v4 = f"{a}.{b}.{c}.{d}"
    hi, lo = f"{a * 256 + b:x}", f"{c * 256 + d:x}"
    inverted_lo = f"{(c * 256 + d) ^ 0xFFFF:x}"
    return [
        f"::ffff:{v4}", f"::FFFF:{v4}", f"::ffff:{hi}:{lo}", f"0:0:0:0:0:ffff:{v4}",
        f"::{v4}", f"::{hi}:{lo}", f"64:ff9b::{v4}", f"64:ff9b::{hi}:{lo}",
        f"64:ff9b:1::{hi}:{lo}",                     # NAT64 local use
        f"2002:{hi}:{lo}::1",                        # 6to4
        f"2001:0:4136:e378:8000:63bf:{(a * 256 + b) ^ 0xFFFF:x}:{inverted_lo}",  # Teredo
        f"fe80::5efe:{v4}", f"fe80::200:5efe:{hi}:{lo}",  # ISATAP
        f"2001:db8::{v4}",                           # any prefix, written with a dotted tail
        f"::ffff:{v4}%eth0", f"64:ff9b::{v4}%1",
    ]


@given(a=_octet, b=_octet, c=_octet, other=_octet, d=_octet,
       rule=st.sampled_from(["IPV4", "IPV6"]))
@settings(max_examples=60, deadline=None)
def test_ipv4_in_ipv6_never_reveals_the_octet_the_ipv4_rule_hides(
        a: int, b: int, c: int, other: int, d: int, rule: str) -> None:
    # `::` and `::1` (0.0.0.0 and 0.0.0.1 in the compatible form) are the unspecified and
    # loopback addresses, not IPv4-compatible ones (RFC 4291 2.5.5.1): they keep the IPv6
    # rule's shape, which tells only that the address is one of those two.
    assume(not (a == b == 0 and d in (0, 1) and 0 in (c, other)))
    for first, second in zip(_spellings(a, b, c, d), _spellings(a, b, other, d), strict=True):
        masked = mask_value(first, rule)
        # The output cannot depend on the hidden octet: two addresses differing only
        # there mask alike.
        assert masked == mask_value(second, rule), first
        assert masked != first


def test_ipv4_embedded_forms_read_as_the_ipv4_rule_masks_them() -> None:
    assert mask_ip("::ffff:10.20.30.40") == "::ffff:10.20.***.40"
    assert mask_ip("64:ff9b::10.20.30.40") == "64:ff9b::10.20.***.40"
    assert mask_ip("::10.20.30.40") == "::10.20.***.40"
    assert mask_ip("2002:a14:1e28::1") == "2002:0a14:****:****:****:****:****:0001"
    assert mask_ip("::1") == "0000:0000:0000:****:****:****:****:0001"  # loopback stays


@given(zone=st.text(min_size=0, max_size=20),
       address=st.sampled_from(["fe80::1", "2001:db8::1", "::ffff:1.2.3.4", "::1"]))
@settings(max_examples=60, deadline=None)
def test_a_zone_suffix_is_never_passed_through(zone: str, address: str) -> None:
    masked = mask_value(f"{address}%{zone}", "IPV6")
    assert "%" not in masked
    assert masked == mask_value(address, "IPV6")


def test_without_send_headers_captured_headers_are_dropped_at_any_depth() -> None:
    from connector.forward.masking import Masker

    masker = Masker({"userIp": MaskRule.IPV4}, [], [], drop_headers=True)
    event = {"userIp": "1.2.3.4", "requestHeaders": {"X-A": "secret-a"},
             "properties": {"responseHeaders": "secret-b",
                            "nested": [{"requestHeaders": {"k": "secret-c"}, "keep": 1}]}}
    original = copy.deepcopy(event)
    masked = masker.apply(event)
    assert "secret" not in repr(masked)
    assert masked["properties"]["nested"][0] == {"keep": 1}
    assert masked["userIp"] == "1.2.***.4"
    assert event == original  # the input is never mutated


# Captured headers that are no object: with send_headers = true a dead letter keeps the
# event's masked form, so these must be masked too (before: kept verbatim, Authorization
# value included, because only an object's header names were matched).
_HEADER_SHAPES = [
    [["Authorization", "Bearer SECRET-TOKEN"]],
    "Authorization: Bearer SECRET-TOKEN",
    [{"name": "Authorization", "value": "Bearer SECRET-TOKEN"}],
    ["Bearer SECRET-TOKEN"],
    42,
]


@pytest.mark.parametrize("shape", _HEADER_SHAPES)
@pytest.mark.parametrize("field", ["requestHeaders", "responseHeaders"])
def test_captured_headers_that_are_no_object_are_masked_whole(field: str, shape: object) -> None:
    from connector.forward.encoder import EventEncoder

    cfg = MaskConfig.from_table({"request_headers": ["Authorization"],
                                 "response_headers": ["Set-Cookie"]})
    masked = cfg.apply({"requestTimestamp": "2025-01-01T00:00:00Z", field: shape,
                        "properties": {field: shape}})
    assert masked[field] == MASK and masked["properties"][field] == MASK
    # The dead letter of such an event (BAD_TYPE) keeps no header value.
    encoder = EventEncoder(True, cfg)
    kept = encoder.kept({"requestTimestamp": "2025-01-01T00:00:00Z", field: shape})
    assert b"SECRET" not in kept and b"42" not in kept
    # Without a rule on that side nothing is masked: there is nothing to hide.
    other = "responseHeaders" if field == "requestHeaders" else "requestHeaders"
    bare = MaskConfig.from_table({other.replace("Headers", "_headers"): ["X"]})
    assert bare.apply({field: shape}) == {field: shape}


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(shape=_json, name=st.sampled_from(["Authorization", "authorization", "AUTHORIZATION"]),
       wrap=st.sampled_from(["pairs", "block", "list", "dict"]))
def test_no_authorization_value_survives_any_header_shape(shape: object, name: str,
                                                          wrap: str) -> None:
    secret = "Bearer SECRET-TOKEN"
    headers = {"pairs": [[name, secret], shape], "block": f"{name}: {secret}",
               "list": [shape, {name: secret}], "dict": {name: secret, "x": shape}}[wrap]
    cfg = MaskConfig.from_table({"request_headers": ["Authorization"]})
    masked = cfg.apply({"requestHeaders": headers, "nested": [{"requestHeaders": headers}]})
    assert "SECRET-TOKEN" not in repr(masked)
