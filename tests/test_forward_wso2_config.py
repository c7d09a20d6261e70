"""API Manager's deployment.toml: defaults, the seed's example, and errors that name the
file and the key but never the key's value."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.forward.masking import MaskRule
from connector.forward.wso2_config import (
    COLLECTOR_BASE_URL,
    DEFAULT_MOESIF_BASE_URL,
    Wso2AnalyticsConfig,
    load_wso2_config,
)
from connector.settings import ConfigError

KEY = "eyJhcHAiOiIxMjM6NDU2Iiwic2VjcmV0IjoidG9wIn0-very-secret"

SEED_EXAMPLE = f"""
[server]
hostname = "localhost"
offset = 0

[apim.analytics]
enable = true
type = "moesif"

[apim.analytics.properties]
moesifKey = "{KEY}"
moesif_base_url = "https://api.moesif.net"
send_headers = false

[apim.analytics.mask]
"userIp" = "IPV4"
"userName" = "EMAIL"
"userId" = "EMAIL"
"userAgent" = "STRING"
"applicationOwner" = "EMAIL"
response_headers = ["Authorization", "X-API-Key"]
request_headers = ["Authorization", "Cookie"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://localhost:9611"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deployment.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_the_seed_example(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_EXAMPLE)
    cfg = load_wso2_config(path)
    assert cfg.enable is True and cfg.type == "moesif"
    assert cfg.moesif_key is not None and cfg.moesif_key.get_secret_value() == KEY
    assert cfg.moesif_base_url == "https://api.moesif.net" and cfg.moesif_base_url_set
    assert cfg.collector_base_url() == "https://api.moesif.net"
    assert cfg.send_headers is False
    assert cfg.mask.rules == {
        "userIp": MaskRule.IPV4,
        "userName": MaskRule.EMAIL,
        "userId": MaskRule.EMAIL,
        "userAgent": MaskRule.STRING,
        "applicationOwner": MaskRule.EMAIL,
    }
    assert cfg.mask.request_headers == ["Authorization", "Cookie"]
    assert cfg.mask.response_headers == ["Authorization", "X-API-Key"]
    assert cfg.source == path


def test_secret_never_in_repr_or_str(tmp_path: Path) -> None:
    cfg = load_wso2_config(write(tmp_path, SEED_EXAMPLE))
    for text in (repr(cfg), str(cfg), repr(cfg.moesif_key), str(cfg.moesif_key)):
        assert KEY not in text


def test_defaults_follow_the_seed_table(tmp_path: Path) -> None:
    for cfg in (
        Wso2AnalyticsConfig.default(),
        load_wso2_config(None),
        load_wso2_config(write(tmp_path, '[server]\nhostname = "x"\n')),
    ):
        assert cfg.enable is True and cfg.type == "moesif"
        assert cfg.moesif_key is None
        assert cfg.moesif_base_url == DEFAULT_MOESIF_BASE_URL == "https://api.moesif.com"
        assert not cfg.moesif_base_url_set
        # The Collector is not at the seed's default host: callers get their own URL.
        assert cfg.collector_base_url() == COLLECTOR_BASE_URL
        assert cfg.collector_base_url("http://127.0.0.1:9/") == "http://127.0.0.1:9"
        assert cfg.send_headers is False
        assert not cfg.mask.active


def test_key_whitespace_trailing_slash_and_elk_type(tmp_path: Path) -> None:
    text = (
        '[apim.analytics]\ntype = "elk"\nenable = false\n'
        '[apim.analytics.properties]\nmoesifKey = "  abcdef123456  "\n'
        'moesif_base_url = "http://127.0.0.1:8080/"\nsend_headers = true\n'
    )
    cfg = load_wso2_config(write(tmp_path, text))
    assert cfg.type == "elk" and cfg.enable is False and cfg.send_headers is True
    assert cfg.moesif_key.get_secret_value() == "abcdef123456"
    assert cfg.moesif_base_url == "http://127.0.0.1:8080"


def test_env_placeholder_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = '[apim.analytics.properties]\nmoesifKey = "$env{MY_MOESIF_KEY}"\n'
    monkeypatch.setenv("MY_MOESIF_KEY", KEY)
    cfg = load_wso2_config(write(tmp_path, text))
    assert cfg.moesif_key.get_secret_value() == KEY and cfg.moesif_key_reference is None
    monkeypatch.delenv("MY_MOESIF_KEY")
    cfg = load_wso2_config(write(tmp_path, text))
    assert cfg.moesif_key is None and cfg.moesif_key_reference == "$env{MY_MOESIF_KEY}"


def test_secure_vault_placeholder_leaves_the_key_unset(tmp_path: Path) -> None:
    text = '[apim.analytics.properties]\nmoesifKey = "$secret{moesif_key}"\n'
    cfg = load_wso2_config(write(tmp_path, text))
    assert cfg.moesif_key is None and cfg.moesif_key_reference == "$secret{moesif_key}"


def test_bad_mask_value_names_file_key_line_and_accepted_values(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_EXAMPLE.replace('"userIp" = "IPV4"', '"userIp" = "IPV5"'))
    with pytest.raises(ConfigError) as caught:
        load_wso2_config(path)
    message = str(caught.value)
    assert str(path) in message and "userIp" in message and "IPV4, IPV6" in message
    assert "[apim.analytics.mask]" in message
    line = SEED_EXAMPLE.splitlines().index('"userIp" = "IPV4"') + 1
    assert f"line {line}" in message
    assert "IPV5" not in message and KEY not in message


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    broken = SEED_EXAMPLE.replace('moesifKey = "', "moesifKey = ").replace(
        "[apim.analytics.mask]", "[apim.analytics.mask"
    )
    path = write(tmp_path, broken)
    with pytest.raises(ConfigError) as caught:
        load_wso2_config(path)
    message = str(caught.value)
    assert str(path) in message and "syntax" in message and "line" in message
    assert KEY not in message


def test_unclosed_key_string_does_not_leak_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_EXAMPLE.replace(f'"{KEY}"', f'"{KEY}'))
    with pytest.raises(ConfigError) as caught:
        load_wso2_config(path)
    assert KEY not in str(caught.value) and str(path) in str(caught.value)


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "deployment.toml"
    with pytest.raises(ConfigError) as caught:
        load_wso2_config(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_wso2_config(tmp_path)  # a directory
    assert str(tmp_path) in str(caught.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_wso2_config(binary)


@pytest.mark.parametrize(
    "old,new,key",
    [
        ("enable = true", 'enable = "yes"', "enable"),
        ('type = "moesif"', "type = 3", "type"),
        (f'moesifKey = "{KEY}"', "moesifKey = 1234567890123", "moesifKey"),
        (f'moesifKey = "{KEY}"', f'moesifKey = ["{KEY}"]', "moesifKey"),
        ("send_headers = false", 'send_headers = "false"', "send_headers"),
        ('moesif_base_url = "https://api.moesif.net"', "moesif_base_url = 1", "moesif_base_url"),
        (
            'moesif_base_url = "https://api.moesif.net"',
            'moesif_base_url = "api.moesif.net"',
            "moesif_base_url",
        ),
        (
            'request_headers = ["Authorization", "Cookie"]',
            'request_headers = "x"',
            "request_headers",
        ),
        ('"userAgent" = "STRING"', '"userAgent" = "EMAIL"', "userAgent"),
    ],
)
def test_wrong_types_name_file_and_key_never_the_value(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    assert old in SEED_EXAMPLE
    path = write(tmp_path, SEED_EXAMPLE.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_wso2_config(path)
    message = str(caught.value)
    assert str(path) in message and f"'{key}'" in message and "(line " in message
    assert KEY not in message and "1234567890123" not in message


def test_tables_of_the_wrong_shape(tmp_path: Path) -> None:
    path = write(tmp_path, 'apim = "off"\n')
    with pytest.raises(ConfigError, match="'apim'.*must be a table"):
        load_wso2_config(path)
    path = write(tmp_path, "[apim]\nanalytics = 1\n")
    with pytest.raises(ConfigError, match=r"\[apim\] 'analytics' \(line 2\) must be a table"):
        load_wso2_config(path)


def test_dotted_keys_at_the_root_are_read_and_located(tmp_path: Path) -> None:
    path = write(tmp_path, "apim.analytics.enable = false\napim.analytics.type = 7\n")
    with pytest.raises(ConfigError, match=r"'type' \(line 2\)"):
        load_wso2_config(path)
    path = write(tmp_path, "apim.analytics.enable = false\n")
    assert load_wso2_config(path).enable is False


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path: Path) -> None:
    # Before: "TOML syntax error: Invalid statement (at line 1, column 1)" for a file
    # saved by an editor that writes a UTF-8 BOM; its mask errors keep their line numbers.
    path = tmp_path / "deployment.toml"
    path.write_bytes(b"\xef\xbb\xbf[apim.analytics.mask]\r\n\"userIp\" = \"IPV4\"\r\n")
    assert load_wso2_config(path).mask.rules == {"userIp": MaskRule.IPV4}
    path.write_bytes(b"\xef\xbb\xbf[apim.analytics.mask]\n\"userIp\" = \"IPV5\"\n")
    with pytest.raises(ConfigError, match=r"'userIp' \(line 2\)"):
        load_wso2_config(path)
