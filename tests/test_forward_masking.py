"""[apim.analytics.mask]: the seed's rules, their edge cases, headers, and config errors."""

from __future__ import annotations

import copy

import pytest

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
