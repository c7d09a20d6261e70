"""Read the analytics part of WSO2 API Manager's own `deployment.toml`.

```toml
[apim.analytics]
enable = true                 # default true
type = "moesif"               # default "moesif" ("elk" writes apim_metrics.log)

[apim.analytics.properties]
moesifKey = "..."             # the Collector Application Id (a secret)
moesif_base_url = "https://api.moesif.net"   # default per the seed's table: api.moesif.com
send_headers = false          # default false

[apim.analytics.mask]
"userIp" = "IPV4"
request_headers = ["Authorization"]
```

Every error is a ConfigError naming the file and the key (and the line where it can be
found), never the key's value. The key itself is a SecretStr: it never appears in a repr,
a str or an error. WSO2's `$env{NAME}` placeholder is resolved from the environment;
other placeholders (`$secret{alias}`, `$sys{name}`) cannot be resolved here, so the key
is then left unset and `moesif_key_reference` says which placeholder it was.

The seed's table gives `https://api.moesif.com` as the `moesif_base_url` default, but
the Collector lives at `https://api.moesif.net`: the seed default is kept (and exposed as
DEFAULT_MOESIF_BASE_URL), and `moesif_base_url_set` tells whether the file chose one, so
the caller can fall back to its own Collector URL otherwise (`collector_base_url`).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connector.forward.masking import MaskConfig, mask_entry_problem
from connector.settings import ConfigError

DEFAULT_MOESIF_BASE_URL = "https://api.moesif.com"  # the seed's table
COLLECTOR_BASE_URL = "https://api.moesif.net"  # where Moesif's Collector API actually is

ANALYTICS = ("apim", "analytics")
PROPERTIES = (*ANALYTICS, "properties")
MASK = (*ANALYTICS, "mask")
_PLACEHOLDER = re.compile(r"^\$(env|sys|secret)\{([^}]*)\}$")


class Wso2AnalyticsConfig(BaseModel):
    """`[apim.analytics]`, its `properties` and its `mask`, with the seed's defaults."""

    model_config = ConfigDict(frozen=True)

    enable: bool = True
    type: str = "moesif"
    moesif_key: SecretStr | None = None
    moesif_key_reference: str | None = None
    moesif_base_url: str = DEFAULT_MOESIF_BASE_URL
    moesif_base_url_set: bool = False
    send_headers: bool = False
    mask: MaskConfig = Field(default_factory=MaskConfig)
    source: Path | None = None

    @classmethod
    def default(cls) -> Wso2AnalyticsConfig:
        """The configuration an API Manager without any analytics settings would have."""
        return cls()

    def collector_base_url(self, fallback: str = COLLECTOR_BASE_URL) -> str:
        """The file's `moesif_base_url` when it set one, else `fallback`."""
        return self.moesif_base_url if self.moesif_base_url_set else fallback.rstrip("/")


def load_wso2_config(path: str | Path | None) -> Wso2AnalyticsConfig:
    """Read `path` (a deployment.toml); None gives the defaults."""
    if path is None:
        return Wso2AnalyticsConfig.default()
    path = Path(path)
    text = _read(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message says what and where ("... (at line 3, column 9)"), no content.
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    return _Reader(path, text, document).config()


def _read(path: Path) -> str:
    try:
        # utf-8-sig: a byte order mark (Windows editors write one) is not TOML text.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read WSO2 config: not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{path}: cannot read WSO2 config: {reason}") from None


class _Reader:
    """Walks the parsed document, turning every problem into a ConfigError that names
    the file, the table, the key and (when found) its line."""

    def __init__(self, path: Path, text: str, document: dict[str, Any]) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.document = document

    def config(self) -> Wso2AnalyticsConfig:
        analytics = self._table(ANALYTICS)
        props = self._table(PROPERTIES)
        mask = self._table(MASK)
        key, reference = self._key(props)
        base_url = self._get(props, PROPERTIES, "moesif_base_url", str, "a string")
        if base_url is not None and not base_url.strip().startswith(("http://", "https://")):
            self._fail(PROPERTIES, "moesif_base_url", "must be an http:// or https:// URL")
        return Wso2AnalyticsConfig(
            enable=self._get(analytics, ANALYTICS, "enable", bool, "true or false", True),
            type=self._get(analytics, ANALYTICS, "type", str, "a string", "moesif"),
            moesif_key=key,
            moesif_key_reference=reference,
            moesif_base_url=(base_url or DEFAULT_MOESIF_BASE_URL).strip().rstrip("/"),
            moesif_base_url_set=base_url is not None,
            send_headers=self._get(props, PROPERTIES, "send_headers", bool, "true or false", False),
            mask=self._mask(mask),
            source=self.path,
        )

    def _table(self, dotted: tuple[str, ...]) -> dict[str, Any]:
        node: Any = self.document
        for depth, name in enumerate(dotted):
            node = node.get(name, {})
            if not isinstance(node, dict):
                self._fail(dotted[:depth], name, "must be a table")
        return node

    def _get(
        self,
        table: dict[str, Any],
        where: tuple[str, ...],
        key: str,
        kind: type,
        described: str,
        default: Any = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        if type(value) is not kind:
            self._fail(where, key, f"must be {described}")
        return value

    def _key(self, props: dict[str, Any]) -> tuple[SecretStr | None, str | None]:
        raw = self._get(props, PROPERTIES, "moesifKey", str, "a string")
        if raw is None:
            return None, None
        # Keys pasted with surrounding spaces are the seed's first troubleshooting item.
        value = raw.strip()
        placeholder = _PLACEHOLDER.match(value)
        if placeholder:
            source, name = placeholder.groups()
            resolved = os.environ.get(name, "").strip() if source == "env" else ""
            if not resolved:
                return None, value
            value = resolved
        return (SecretStr(value) if value else None), None

    def _mask(self, table: dict[str, Any]) -> MaskConfig:
        for key, value in table.items():
            problem = mask_entry_problem(key, value)
            if problem:
                self._fail(MASK, key, problem.replace(f"'{key}' ", "", 1))
        try:
            return MaskConfig.from_table(table)
        except ConfigError as exc:  # defensive: the loop above reports the same problems
            raise ConfigError(f"{self.path}: [{'.'.join(MASK)}]: {exc}") from None

    def _fail(self, where: tuple[str, ...], key: str, reason: str) -> None:
        line = self._line_of(where, key)
        at = f" (line {line})" if line else ""
        table = f"[{'.'.join(where)}] " if where else ""
        raise ConfigError(f"{self.path}: {table}'{key}'{at} {reason}")

    def _line_of(self, where: tuple[str, ...], key: str) -> int | None:
        return toml_key_line(self.lines, ".".join(where), key)


def toml_key_line(lines: list[str], table: str, key: str) -> int | None:
    """Best effort: the 1-based line defining `key` inside `[table]` (tomllib keeps no
    positions). Handles quoted keys and `[table]` / `[ "a" . b ]` header spellings."""
    current = ""
    key_pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    dotted = f"{table}." if table else ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.split("#", 1)[0].strip().strip("[]")
            current = current.replace('"', "").replace("'", "").replace(" ", "")
            continue
        if current == table and key_pattern.match(line):
            return number
        at_root = not current and dotted and stripped.startswith(dotted)
        if at_root and key_pattern.match(stripped[len(dotted) :]):
            return number  # a dotted key at the root: apim.analytics.enable = ...
    return None
