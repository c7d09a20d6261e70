"""Every setting of the connector, read from the environment (and an optional `.env`).

Secrets are `SecretStr`: their repr is masked, and nothing in the code base calls
`get_secret_value()` except the HTTP layer that puts the key on the wire.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connector.common.headers import header_text_problem
from connector.common.redaction import remember_secrets, url_secrets
from connector.errors import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings"]


# Keys that go into HTTP headers (or are compared with one, the ingest token).
_HEADER_SECRETS = ("moesif_management_api_key", "segment_write_key", "moesif_application_id",
                   "forward_ingest_token")
# Free-form lists where an empty value means "none" rather than "the default".
_EMPTY_IS_A_VALUE = frozenset({"forward_company_unknown_values", "alert_rules_disabled"})


# Upper bounds: a number past them is a typo (or 1e23), and would otherwise overflow a
# timestamp, an SQLite INTEGER or a sleep deep inside a run instead of failing at load.
_HOUR, _DAY = 3600, 86400
_MONTH, _YEAR = 31 * _DAY, 366 * _DAY


class Settings(BaseSettings):
    # allow_inf_nan=False: `inf` is not a timeout (NaN already fails every bound).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True,
                                      allow_inf_nan=False)

    # --- Moesif Management API (sync source) ---
    moesif_management_api_key: SecretStr | None = None
    moesif_api_url: str = "https://api.moesif.com"
    moesif_page_size: int = Field(1000, ge=1, le=10_000)
    moesif_lookback_seconds: int = Field(600, ge=0, le=_MONTH)
    moesif_timeout_seconds: float = Field(30.0, gt=0, le=_HOUR)
    moesif_max_retries: int = Field(8, ge=0, le=1000)

    # --- Segment (sync destination) ---
    segment_write_key: SecretStr | None = None
    segment_host: str = "https://api.segment.io"
    segment_batch_messages: int = Field(500, ge=1, le=2500)
    segment_batch_bytes: int = Field(475_000, ge=10_000, le=500_000)
    segment_timeout_seconds: float = Field(15.0, gt=0, le=_HOUR)
    # 5 retries (waits of ~0.5+1+2+4+8 s at most, equal jitter) keep an outage's
    # SEGMENT_MAX_FAILED_BATCHES (3) failed batches within about a minute (≤ ~47 s of waits).
    segment_max_retries: int = Field(5, ge=0, le=1000)
    segment_max_failed_batches: int = Field(3, ge=1, le=1_000_000)
    sync_send_group_calls: bool = True
    sync_max_attempts: int = Field(5, ge=1, le=1_000_000)

    # --- where state, reports and mappings live ---
    connector_home: Path = Field(default_factory=lambda: default_home())
    mappings_dir: Path | None = None
    report_keep_runs: int = Field(50, ge=1, le=1_000_000)

    # --- schedule ---
    sync_interval: str | None = None
    sync_cron: str | None = None
    lease_seconds: int = Field(900, ge=10, le=7 * _DAY)

    # --- forwarder (WSO2 APIM -> Moesif Collector) ---
    moesif_application_id: SecretStr | None = None
    moesif_collector_url: str = "https://api.moesif.net"
    forward_ingest_token: SecretStr | None = None
    forward_batch_events: int = Field(1000, ge=1, le=10_000)
    forward_batch_bytes: int = Field(5_000_000, ge=10_000, le=40_000_000)
    forward_batch_age_seconds: float = Field(1.0, gt=0, le=_HOUR)
    forward_spool_max_events: int = Field(1_000_000, ge=100, le=10**12)
    forward_max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    forward_max_line_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    forward_dead_letters_max: int = Field(100_000, ge=100, le=100_000_000)
    forward_company_unknown_values: str = "UNKNOWN"

    # --- alerts and schema drift (see connector/alerts, connector/schema_drift.py) ---
    # Every threshold: 0 switches its rule off. ALERT_RULES_DISABLED also switches rules
    # off by name (comma-separated, e.g. "runtime,count_deviation").
    alert_webhook_url: str | None = None  # comma-separated for several receivers
    alert_webhook_secret: SecretStr | None = None
    alert_webhook_max_seconds: float = Field(10.0, gt=0, le=_HOUR)  # the bound on one delivery pass
    alert_rules_disabled: str = ""
    alert_rejected_pct: float = Field(5.0, ge=0, le=100)
    alert_count_deviation_pct: float = Field(80.0, ge=0, le=1_000_000)
    alert_count_deviation_runs: int = Field(5, ge=0, le=10_000)
    alert_runtime_seconds: float = Field(3600.0, ge=0, le=_YEAR)
    alert_stale_seconds: float = Field(86400.0, ge=0, le=_YEAR)
    alert_backlog_age_seconds: float = Field(900.0, ge=0, le=_YEAR)
    alert_delivery_stalled_seconds: float = Field(600.0, ge=0, le=_YEAR)
    schema_drift_policy: Literal["report", "alert", "stop"] = "report"
    schema_drift_min_records: int = Field(50, ge=1, le=10**12)

    # --- state backend (issue 11) ---
    # Unset: the SQLite file in CONNECTOR_HOME. `postgresql://user@host:5432/db`: cursors,
    # hashes, failures, reports and the lease in PostgreSQL, shared by replicas.
    state_url: str | None = None
    # JetStream path of the forwarder: redelivery after this long without an ack (a send in
    # progress keeps extending it), and the limits of a stream the forwarder creates.
    forward_nats_ack_wait_seconds: float = Field(30.0, ge=1, le=_DAY)
    forward_nats_stream_max_bytes: int = Field(1 << 30, ge=1 << 20, le=1 << 50)
    forward_nats_stream_max_age_seconds: int = Field(7 * 86400, ge=60, le=10 * _YEAR)

    # --- Moesif query budget (issue 12) ---
    # The 24-hour activity rollups (last24HourAggResults): one usermetrics query a page.
    sync_user_metrics: bool = True
    # Client-side limit per calendar minute, below Moesif's 500 so a sync never meets a 429.
    moesif_queries_per_minute: int = Field(450, ge=1, le=10_000_000)
    # The users pass's per-record work (inventory, map, hash, shape, encode) in a second
    # process: auto = for 10,000 users or more on a machine with 2+ cores.
    sync_map_process: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: object) -> object:
        """Surrounding whitespace is never meant (a pasted key's line break, a stray CR
        from a Windows-edited .env): it is stripped from every value, and a value that
        is then empty counts as unset (its default), like pydantic-settings'
        `env_ignore_empty`. Only the free-form lists keep an empty value as given."""
        if not isinstance(data, dict):
            return data
        cleaned: dict[object, object] = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = value.strip()
                if not value and str(key).lower() not in _EMPTY_IS_A_VALUE:
                    continue
            cleaned[key] = value
        return cleaned

    @field_validator(*_HEADER_SECRETS, mode="before")
    @classmethod
    def _check_key(cls, value: object) -> object:
        """A key travels in an HTTP header: text that cannot be one would fail on every
        request (and `requests` would quote the key in its error). Refused at load; the
        message never repeats the value."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            return value
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            raise ValueError("is wrapped in quotes; set it without them")
        if not text:
            return None
        problem = header_text_problem(text)
        if problem:
            raise ValueError(f"contains {problem}")
        return text

    @field_validator("state_url")
    @classmethod
    def _check_state_url(cls, value: str | None) -> str | None:
        text = (value or "").strip()
        if not text:
            return None
        if urlsplit(text).scheme.lower() not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL (or unset for the SQLite file)")
        return text

    @field_validator("connector_home", "mappings_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        """`~/...` from a .env file or a systemd Environment= line reaches us unexpanded
        (no shell did it): without this the state went into a directory named '~'."""
        return value.expanduser() if value is not None else None

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook_urls(cls, value: str | None) -> str | None:
        """Each comma-separated receiver a usable URL, checked at start like the other
        URL settings (a typo would otherwise surface only when an alert fires)."""
        urls = [u.strip() for u in (value or "").split(",") if u.strip()]
        for url in urls:
            check_url(url)
        return ",".join(urls) or None

    @field_validator("moesif_api_url", "segment_host", "moesif_collector_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return check_url(value).rstrip("/")

    @property
    def state_path(self) -> Path:
        return self.connector_home / "state.sqlite3"

    def secrets(self) -> list[str]:
        """Every secret value, for the log filter that scrubs them."""
        values = [
            self.moesif_management_api_key,
            self.segment_write_key,
            self.moesif_application_id,
            self.forward_ingest_token,
            self.alert_webhook_secret,
        ]
        found = [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]
        return found + url_secrets(self.state_url)

    def require(self, *names: str) -> None:
        """Fail with a ConfigError naming each missing required setting."""
        missing = [n.upper() for n in names if not _has_value(getattr(self, n))]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")


def check_url(value: str) -> str:
    """A URL setting must be usable as it is: http or https, a host, nothing `requests`
    refuses. Checked at load, so a typo fails at start (exit 2) instead of being retried
    as if it were an outage."""
    import requests

    text = value.strip()
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if "@" in parts.netloc:
        # Checked first, and never quoted: the URL is shown in `check`, logs and errors,
        # and the key has its own setting.
        raise ValueError("must not contain a user name or password (user:pass@); the "
                         "key has its own setting")
    try:
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:
        # Not urllib's text: it quotes the port part, which may be a piece of a secret.
        raise ValueError("not a URL (the port must be a number in 1..65535)") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("the scheme must be http or https (e.g. https://api.example.com)")
    if not parts.hostname:
        raise ValueError("a host must be present (e.g. https://api.example.com)")
    host = parts.hostname
    if not host.startswith("[") and ":" not in host and "" in host.rstrip(".").split("."):
        raise ValueError("the host has an empty label (e.g. 'a..b')")
    if port == 0:
        raise ValueError("port 0 cannot be connected to")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query (?...) or fragment (#...)")
    try:
        requests.Request("GET", text.rstrip("/") + "/v1/batch").prepare()
    except (requests.RequestException, ValueError, UnicodeError) as exc:
        raise ValueError(f"not a usable URL ({type(exc).__name__})") from None
    return text


LEGACY_HOME = Path(".moesif-segment")


def default_home() -> Path:
    """CONNECTOR_HOME when it is not set: the per-user data directory (the same from cron,
    systemd or any working directory), unless an older `./.moesif-segment` is in the
    working directory: that one is still used (the CLI notes it)."""
    if (LEGACY_HOME / "state.sqlite3").is_file():
        return LEGACY_HOME
    from platformdirs import user_data_path

    return user_data_path("moesif-segment", appauthor=False)


def _has_value(value: object) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value().strip())
    return value not in (None, "")


# What the last load found wrong in the .env file: lines python-dotenv could not parse
# (it skips them). Logged by the commands once logging is set up, listed by `check`.
ENV_FILE_PROBLEMS: list[str] = []


@contextlib.contextmanager
def dotenv_problems(env_file: object, into: list[str]) -> Iterator[None]:
    """Collect python-dotenv's "could not parse statement starting at line N" as
    "<file> line N: not NAME=value; ignored" instead of letting it print a bare line
    (without the file's name, and plain text among JSON logs) on stderr."""
    logger = logging.getLogger("dotenv.main")

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            line = re.search(r"line (\d+)", record.getMessage())
            where = f"{env_file} line {line.group(1)}" if line else str(env_file)
            into.append(f"{where}: not NAME=value; ignored")

    handler, propagate, level = _Collect(), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)  # whatever --log-level made of the root's level
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


_BOUND_WORDS = (("Input should be greater than or equal to", "must be at least"),
                ("Input should be less than or equal to", "must be at most"),
                ("Input should be greater than", "must be more than"),
                ("Input should be less than", "must be less than"),
                ("Input should be", "must be"),
                (", unable to parse string as an integer", ""),
                (", unable to parse string as a number", ""))


def plain_bound(message: str) -> str:
    """pydantic's 'Input should be less than or equal to 604800' as 'must be at most
    604800': the same fact, short enough for an 80-column error line."""
    for long, short in _BOUND_WORDS:
        if message.startswith(long):
            message = short + message[len(long):]
        message = message.replace(long, short) if long.startswith(",") else message
    return message


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning pydantic's validation error into a ConfigError naming the field."""
    from pydantic import ValidationError

    env_file = overrides.get("_env_file", Settings.model_config.get("env_file"))
    problems: list[str] = []
    try:
        with dotenv_problems(env_file, problems):
            settings = Settings(**overrides)
    except UnicodeDecodeError as exc:
        # The byte itself is not shown: it may be part of a key.
        raise ConfigError(f"{env_file}: not UTF-8 text (an invalid byte at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{env_file}: cannot be read ({exc.strerror or exc}); fix its "
                          "permissions or remove it") from None
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper()}: "
            f"{plain_bound(e['msg'].removeprefix('Value error, '))}" for e in exc.errors()
        )
        raise ConfigError(f"invalid setting(s): {reasons}") from None
    remember_secrets(settings.secrets())  # so a command's last line is scrubbed of them
    ENV_FILE_PROBLEMS[:] = sorted(set(problems))
    return settings
