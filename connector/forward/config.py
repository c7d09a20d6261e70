"""The forwarder's configuration: the environment over WSO2's deployment.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connector.forward.masking import MaskConfig
from connector.settings import ConfigError, Settings


@dataclass(frozen=True)
class ForwardConfig:
    """What the forwarder needs, resolved from the environment and deployment.toml."""

    application_id: SecretStr
    collector_url: str
    send_headers: bool
    mask: MaskConfig
    unknown_company_values: frozenset[str]
    client_options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the id
        return f"ForwardConfig(collector_url={self.collector_url!r}, application_id='**')"



def resolve_config(settings: Settings, wso2_config_path: Path | None = None,
                   client_options: dict[str, Any] | None = None) -> ForwardConfig:
    """Environment over deployment.toml: MOESIF_APPLICATION_ID over `moesifKey`, and
    MOESIF_COLLECTOR_URL (when set explicitly) over `moesif_base_url`."""
    from connector.forward.wso2_config import Wso2AnalyticsConfig, load_wso2_config

    try:
        wso2 = (load_wso2_config(wso2_config_path) if wso2_config_path is not None
                else Wso2AnalyticsConfig.default())
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--wso2-config: cannot read {wso2_config_path}: "
                          f"{type(exc).__name__}") from None
    if not wso2.enable:
        raise ConfigError(f"{wso2.source}: analytics is disabled there ([apim.analytics] "
                          "enable = false): set enable = true, or forward without "
                          "--wso2-config")
    app_id = settings.moesif_application_id
    if app_id is None or not app_id.get_secret_value().strip():
        app_id = wso2.moesif_key
    if app_id is None or not app_id.get_secret_value().strip():
        if wso2.moesif_key_reference is not None:
            # Only the placeholder's kind is named: an alias or variable name is no secret,
            # but there is no need to echo the value either.
            kind = wso2.moesif_key_reference.split("{", 1)[0]
            raise ConfigError(
                f"{wso2.source}: moesifKey under [apim.analytics.properties] is a "
                f"{kind}{{...}} placeholder, which only WSO2 can resolve (its secure vault or "
                "environment): set MOESIF_APPLICATION_ID to the Collector Application Id")
        raise ConfigError("missing required setting MOESIF_APPLICATION_ID (or moesifKey "
                          "under [apim.analytics.properties] in deployment.toml)")
    # Settings has a default URL: only an explicitly set MOESIF_COLLECTOR_URL beats the file.
    url = settings.moesif_collector_url
    if "moesif_collector_url" not in settings.model_fields_set:
        url = wso2.collector_base_url(settings.moesif_collector_url)
    unknown = frozenset(v.strip() for v in settings.forward_company_unknown_values.split(",")
                        if v.strip())
    return ForwardConfig(SecretStr(app_id.get_secret_value().strip()), url,
                         bool(wso2.send_headers), wso2.mask, unknown, dict(client_options or {}))
