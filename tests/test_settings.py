"""Settings load: URL settings are checked at start (issue 7 item 5)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import ConfigError, ExitCode, exit_code_for
from connector.settings import load_settings

URL_SETTINGS = ("moesif_api_url", "segment_host", "moesif_collector_url")


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize(("value", "reason"), [
    ("api.segment.io", "scheme must be http or https"),
    ("ftp://api.segment.io", "scheme must be http or https"),
    ("https//api.segment.io", "scheme must be http or https"),
    ("http://", "a host must be present"),
    ("https://:443", "a host must be present"),
    ("http://exa mple.com", "spaces"),
    ("http://127.0.0.1:99999", "not a URL"),
    ("http://[::1", "not a URL"),
    ("https://a..b", "empty label"),
    ("https://api.segment.io/?x=1", "query"),
])
def test_unusable_urls_fail_at_load_naming_the_setting(name, value, reason):
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, **{name: value})
    assert name.upper() in str(err.value) and reason in str(err.value)
    assert exit_code_for(err.value) == ExitCode.CONFIGURATION


@pytest.mark.parametrize("value", ["https://api.segment.io", "http://127.0.0.1:8080/",
                                   "https://events.eu1.segmentapis.com", "http://[::1]:9000",
                                   "https://proxy.example.com/moesif/"])
def test_usable_urls_load_without_the_trailing_slash(value):
    loaded = load_settings(_env_file=None, segment_host=value)
    assert loaded.segment_host == value.rstrip("/")


def test_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("MOESIF_COLLECTOR_URL", "api.moesif.net")
    with pytest.raises(ConfigError, match="MOESIF_COLLECTOR_URL"):
        load_settings(_env_file=None)


def test_new_settings_defaults():
    loaded = load_settings(_env_file=None)
    assert loaded.segment_max_failed_batches == 3 and loaded.segment_max_retries == 5


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=40),
    st.builds(lambda scheme, rest: f"{scheme}{rest}",
              st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "", "//"]),
              st.text(alphabet=st.characters(codec="utf-8"), max_size=30))))
def test_any_value_is_refused_at_load_or_usable(value):
    """Whatever the value: a ConfigError naming the setting, or a URL that requests can
    use (never an error found only when the first request is retried)."""
    try:
        loaded = load_settings(_env_file=None, segment_host=value)
    except ConfigError as exc:
        assert "SEGMENT_HOST" in str(exc)
        return
    parts = urlsplit(loaded.segment_host)
    assert parts.scheme.lower() in ("http", "https") and parts.hostname
    requests.Request("POST", loaded.segment_host + "/v1/batch").prepare()


URL_SECRET = st.text(st.sampled_from("abcXYZ0129-._~%!$&'()*+,;="), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(URL_SETTINGS + ("alert_webhook_url",)),
       user=URL_SECRET, password=URL_SECRET,
       rest=st.sampled_from(["api.example.com", "127.0.0.1:8080/x", "h:99999", "h:abc",
                             "[::1]:1", "a..b/", "h:0"]))
def test_credentials_in_a_url_are_refused_and_never_repeated(name, user, password, rest):
    """A URL setting is printed by `check` and in logs: user:pass@ is refused at load (the
    webhook's when it is read), without echoing either part."""
    from connector.alerts.webhook import webhook_urls

    user, password = f"Uq7{user}", f"Pz9{password}"
    url = f"https://{user}:{password}@{rest}"
    with pytest.raises(ConfigError) as err:
        webhook_urls(load_settings(_env_file=None, **{name: url}))
    text = str(err.value)
    assert name.upper() in text and password not in text and user not in text
    if not (name == "alert_webhook_url" and "," in url):  # a comma splits the list
        assert "user name or password" in text
