"""WSO2's `[apim.analytics.mask]` rules, applied to an event before anything touches disk.

Rules (seed + reference page), for the event fields named in the configuration, wherever
the field appears (top level, `properties`, nested objects such as `aiMetadata`):

* `IPV4`  third octet -> `***`              `192.168.1.98` -> `192.168.***.98`
* `IPV6`  groups 4-7 -> `****`, after expanding `::` to eight zero-padded groups
          `2001:db8::1` -> `2001:0db8:0000:****:****:****:****:0001`
          (WSO2's own code throws on compressed forms.) A zone (`%eth0`) is dropped.
          An address that carries an IPv4 address never shows the octet the IPv4 rule
          hides: IPv4-mapped, NAT64 and IPv4-compatible forms are masked as the IPv4
          address they carry (`::ffff:1.2.3.4` -> `::ffff:1.2.***.4`,
          `64:ff9b::1.2.3.4` -> `64:ff9b::1.2.***.4`); in other forms the groups that
          hold it are masked too (a dotted tail, ISATAP, Teredo: group 8; 6to4: group 3).
  Either IP rule masks by the address's actual family; a value that is no IP address
  (`unknown`, `1.2.3.4:80`, a list) is masked whole: never passed through.
* `EMAIL` local part -> `*****` (split at the last `@`: domains hold no `@`);
          a value without `@` is masked whole.
* `STRING` whole value -> `*****`.
* `request_headers` / `response_headers`: header names matched case-insensitively in
  `requestHeaders` / `responseHeaders`; the name stays, the value becomes `*****`.
  Captured headers that are no object (a list of pairs, a raw `Name: value` block)
  cannot be matched by name: with any header rule on their side they are masked whole.

Beyond WSO2: a header that repeats a masked field is masked by that field's rule too, so
nothing a rule names leaks through captured headers: `User-Agent` under the `userAgent`
rule, `X-Forwarded-For` / `X-Real-IP` / `Forwarded` / `True-Client-IP` under the
`userIp` rule (each comma-separated address masked).

`None` and empty strings are left as they are (nothing to hide); any other non-string
value under a rule is masked whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from connector.settings import ConfigError

MASK = "*****"
_OCTET_MASK = "***"
_GROUP_MASK = "****"


class MaskRule(StrEnum):
    IPV4 = "IPV4"
    IPV6 = "IPV6"
    EMAIL = "EMAIL"
    STRING = "STRING"


_STRING, _EMAIL = MaskRule.STRING, MaskRule.EMAIL
ALL_RULES: tuple[MaskRule, ...] = tuple(MaskRule)
# The seed's "Accepted Values" column; a field it does not list may use any rule.
ACCEPTED_RULES: dict[str, tuple[MaskRule, ...]] = {
    "userIp": (MaskRule.IPV4, MaskRule.IPV6),
    "userName": (MaskRule.EMAIL, MaskRule.STRING),
    "userId": (MaskRule.EMAIL, MaskRule.STRING),
    "userAgent": (MaskRule.STRING,),
    "applicationOwner": (MaskRule.EMAIL, MaskRule.STRING),
}
HEADER_LIST_KEYS = ("request_headers", "response_headers")
REQUEST_HEADERS_FIELD = "requestHeaders"
RESPONSE_HEADERS_FIELD = "responseHeaders"
_HEADER_FIELDS = frozenset({REQUEST_HEADERS_FIELD, RESPONSE_HEADERS_FIELD})
# Request headers that repeat a masked field's value (lower-case names).
FIELD_HEADERS: dict[str, tuple[str, ...]] = {
    "userAgent": ("user-agent",),
    "userIp": ("x-forwarded-for", "x-real-ip", "forwarded", "true-client-ip"),
}


def mask_entry_problem(field: str, value: object) -> str | None:
    """Why `field = value` is not a valid mask entry (None when it is). Never echoes the
    value: it names the field and what it accepts."""
    if field in HEADER_LIST_KEYS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"'{field}' must be a list of header names (strings)"
        return None
    accepted = ACCEPTED_RULES.get(field, ALL_RULES)
    names = ", ".join(accepted)
    if not isinstance(value, str):
        return f"'{field}' must be a string, one of {names}"
    if value.strip().upper() not in accepted:
        return f"'{field}' has an unsupported value; accepted values: {names}"
    return None


class MaskConfig(BaseModel):
    """The `[apim.analytics.mask]` table: field rules plus header lists.

    Invalid entries raise ConfigError (not a pydantic error) naming the key and the
    accepted values. Lookups are precomputed once; `apply` is the hot path.
    """

    model_config = ConfigDict(frozen=True)

    rules: dict[str, MaskRule] = Field(default_factory=dict)
    request_headers: list[str] = Field(default_factory=list)
    response_headers: list[str] = Field(default_factory=list)

    _masker: Masker = PrivateAttr()

    @field_validator("rules", mode="before")
    @classmethod
    def _check_rules(cls, value: Any) -> dict[str, MaskRule]:
        if not isinstance(value, Mapping):
            raise ConfigError("mask rules must be a table of field = rule")
        rules: dict[str, MaskRule] = {}
        for field, rule in value.items():
            problem = mask_entry_problem(str(field), rule)
            if problem is None and str(field) in HEADER_LIST_KEYS:
                problem = f"'{field}' is a header list, not a field rule"
            if problem:
                # ConfigError is not a ValueError: pydantic lets it through unchanged.
                raise ConfigError(f"mask rule {problem}")
            rules[str(field)] = MaskRule(str(rule).strip().upper())
        return rules

    @field_validator("request_headers", "response_headers", mode="before")
    @classmethod
    def _check_headers(cls, value: Any, info: Any) -> list[str]:
        problem = mask_entry_problem(info.field_name, value)
        if problem:
            raise ConfigError(f"mask {problem}")
        return list(value)

    def model_post_init(self, __context: Any) -> None:
        self._masker = Masker(self.rules, self.request_headers, self.response_headers)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> MaskConfig:
        """Build from the TOML table (`"userIp" = "IPV4"`, `request_headers = [...]`)."""
        rules = {k: v for k, v in table.items() if k not in HEADER_LIST_KEYS}
        return cls(
            rules=rules,
            request_headers=table.get("request_headers", []),
            response_headers=table.get("response_headers", []),
        )

    @property
    def masker(self) -> Masker:
        """The precompiled masker. Hot paths keep a reference to it: reading a pydantic
        private attribute costs more than masking a small event."""
        return self._masker

    @property
    def active(self) -> bool:
        return self._masker.active

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """See Masker.apply."""
        return self._masker.apply(event)


class Masker:
    """A MaskConfig compiled into plain look-ups (no pydantic on the hot path)."""

    __slots__ = ("rules", "rule_items", "request_header_rules", "response_header_rules",
                 "active", "drop_headers")

    def __init__(
        self,
        rules: Mapping[str, MaskRule],
        request_headers: Iterable[str],
        response_headers: Iterable[str],
        drop_headers: bool = False,
    ) -> None:
        self.rules = dict(rules)
        self.rule_items = tuple(self.rules.items())
        request = {name.strip().lower(): MaskRule.STRING for name in request_headers}
        for field, headers in FIELD_HEADERS.items():
            rule = self.rules.get(field)
            if rule is not None:
                for header in headers:
                    request.setdefault(header, rule)
        self.request_header_rules = request
        self.response_header_rules = {
            name.strip().lower(): MaskRule.STRING for name in response_headers
        }
        # With `send_headers = false` no captured header value may be kept anywhere:
        # `requestHeaders` / `responseHeaders` are removed at any depth.
        self.drop_headers = drop_headers
        self.active = bool(self.rules or request or self.response_header_rules or drop_headers)

    def __eq__(self, other: object) -> bool:
        # MaskConfig equality compares its private attributes: compare what masks.
        if not isinstance(other, Masker):
            return NotImplemented
        return (self.rules, self.request_header_rules, self.response_header_rules,
                self.drop_headers) == (
            other.rules,
            other.request_header_rules,
            other.response_header_rules,
            other.drop_headers,
        )

    __hash__ = None  # type: ignore[assignment]

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """Copy-on-write masking: returns `event` itself when nothing needed masking, else
        a new dict in which only the changed containers are new (unchanged nested
        objects are shared with the input; the input is never mutated)."""
        if not self.active:
            return event
        return self._walk(event)

    def mask_request_headers(self, headers: dict[str, Any]) -> dict[str, Any]:
        return _mask_header_values(headers, self.request_header_rules)

    def mask_response_headers(self, headers: dict[str, Any]) -> dict[str, Any]:
        return _mask_header_values(headers, self.response_header_rules)

    def _walk(self, obj: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] | None = None
        if self.drop_headers and (REQUEST_HEADERS_FIELD in obj or RESPONSE_HEADERS_FIELD in obj):
            obj = out = {k: v for k, v in obj.items() if k not in _HEADER_FIELDS}
        for field, rule in self.rule_items:
            value = obj.get(field)
            if value is not None:
                new = mask_value(value, rule)
                if new is not value:
                    if out is None:
                        out = dict(obj)
                    out[field] = new
        rules = self.rules
        for key, value in obj.items():
            kind = type(value)
            if kind is dict:
                if key == REQUEST_HEADERS_FIELD:
                    new = _mask_header_values(value, self.request_header_rules)
                elif key == RESPONSE_HEADERS_FIELD:
                    new = _mask_header_values(value, self.response_header_rules)
                elif key in rules:
                    continue  # masked whole above
                else:
                    new = self._walk(value)
            elif key in _HEADER_FIELDS:
                # Captured headers that are no object (a list of pairs, a raw header
                # block): names cannot be matched, so with any header rule on that side
                # the whole value is masked (only a dead letter can hold such an event).
                side = (self.request_header_rules if key == REQUEST_HEADERS_FIELD
                        else self.response_header_rules)
                if not side or value is None or value == "":
                    continue
                new = MASK
            elif kind is list and key not in rules:
                new = self._walk_list(value)
            else:
                continue
            if new is not value:
                if out is None:
                    out = dict(obj)
                out[key] = new
        return obj if out is None else out

    def _walk_list(self, items: list[Any]) -> list[Any]:
        out: list[Any] | None = None
        for index, item in enumerate(items):
            if type(item) is dict:
                new: Any = self._walk(item)
            elif type(item) is list:
                new = self._walk_list(item)
            else:
                continue
            if new is not item:
                if out is None:
                    out = list(items)
                out[index] = new
        return items if out is None else out


def mask_event(raw: dict[str, Any], cfg: MaskConfig) -> dict[str, Any]:
    """A masked copy of an event (a new top-level dict; the input is never mutated;
    nested objects nothing was masked in are shared with the input)."""
    masked = cfg.apply(raw)
    return dict(masked) if masked is raw else masked


def mask_value(value: Any, rule: MaskRule | str) -> Any:
    """One value under one rule (see the module docstring)."""
    if value is None or value == "":
        return value
    if not isinstance(value, str):
        return MASK
    rule = MaskRule(rule.upper()) if not isinstance(rule, MaskRule) else rule
    if rule is _STRING:
        return MASK
    if rule is _EMAIL:
        _, at, domain = value.rpartition("@")
        return f"{MASK}@{domain}" if at else MASK
    return mask_ip(value)


@lru_cache(maxsize=65_536)
def mask_ip(value: str) -> str:
    """Mask an IPv4 or IPv6 address by its own family; anything else is masked whole.

    Cached: a gateway sees the same client addresses over and over."""
    text = value.strip()
    if ":" in text:
        return _mask_ipv6(text)
    parts = text.split(".")
    if len(parts) != 4:
        return MASK
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()) or int(part) > 255:
            return MASK
    return f"{parts[0]}.{parts[1]}.{_OCTET_MASK}.{parts[3]}"


def _mask_ipv6(text: str) -> str:
    # A zone (`fe80::1%eth0`, any text after `%`) names an interface of the client's
    # machine: it is never passed through.
    address = text.partition("%")[0]
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        return MASK
    embedded = _embedded_ipv4(parsed)
    if embedded is not None:
        prefix, ipv4 = embedded
        return prefix + mask_ip(str(ipv4))
    groups = parsed.exploded.split(":")
    groups[3:7] = (_GROUP_MASK,) * 4
    for index in _ipv4_groups(parsed, "." in address):
        groups[index] = _GROUP_MASK
    return ":".join(groups)


# Translation prefixes whose last 32 bits ARE an IPv4 address (RFC 4291, RFC 6052).
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(parsed: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """(prefix, IPv4) for the forms written as a prefix plus an IPv4 address, which are
    then masked by the IPv4 rule: `::ffff:a.b.c.d`, `64:ff9b::a.b.c.d`, `::a.b.c.d`."""
    low32 = ipaddress.IPv4Address(int(parsed) & 0xFFFFFFFF)
    if parsed in _IPV4_MAPPED:
        return "::ffff:", low32
    if parsed in _NAT64:
        return "64:ff9b::", low32
    if parsed in _COMPATIBLE and int(parsed) > 1:  # `::` and `::1` are no client address
        return "::", low32
    return None


def _ipv4_groups(parsed: ipaddress.IPv6Address, dotted: bool) -> tuple[int, ...]:
    """Groups outside 4-7 that carry (part of) an IPv4 address the IPv4 rule would hide:
    the last group when the address embeds an IPv4 at its end (written dotted, ISATAP,
    Teredo's obfuscated client, NAT64 local use), the third for 6to4 (2002:aabb:ccdd::)."""
    if parsed in _SIX_TO_FOUR:
        return (2,)
    isatap = (int(parsed) >> 32) & 0xFDFFFFFF == 0x00005EFE
    if dotted or isatap or parsed in _TEREDO or parsed in _NAT64_LOCAL:
        return (7,)
    return ()


def mask_headers(headers: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of `headers` with the value of every header in `names` (any case) masked."""
    rules = {name.strip().lower(): MaskRule.STRING for name in names}
    return dict(_mask_header_values(headers, rules))


def _mask_header_values(headers: dict[str, Any], rules: dict[str, MaskRule]) -> dict[str, Any]:
    if not rules:
        return headers
    out: dict[str, Any] | None = None
    for name, value in headers.items():
        rule = rules.get(name.lower()) if isinstance(name, str) else None
        if rule is None:
            continue
        if out is None:
            out = dict(headers)
        out[name] = _mask_header_value(value, rule)
    return headers if out is None else out


def _mask_header_value(value: Any, rule: MaskRule) -> Any:
    if rule in (MaskRule.IPV4, MaskRule.IPV6) and isinstance(value, str) and value:
        # X-Forwarded-For: "client, proxy1, proxy2": mask each address.
        return ", ".join(mask_value(part.strip(), rule) for part in value.split(","))
    if value is None or value == "":
        return value
    return MASK
