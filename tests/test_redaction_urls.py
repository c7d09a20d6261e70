"""Connection URLs: every secret they carry is found and redacted (netloc and query)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.common.redaction import redact, redact_url, url_secrets
from connector.errors import ConfigError
from connector.settings import load_settings
from connector.state.store import PgConnection, state_location

SECRET = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                 min_size=1, max_size=16).map(lambda s: f"Pw7{s}")


@settings(max_examples=300, deadline=None)
@given(password=SECRET, where=st.sampled_from(["netloc", "query", "sslpassword", "both"]),
       extra=st.sampled_from(["", "sslmode=disable", "application_name=x"]))
def test_every_password_of_a_url_is_found_and_redacted(password, where, extra):
    encoded = quote(password, safe="")
    user = f"alice:{encoded}@" if where in ("netloc", "both") else "alice@"
    query = [extra] if extra else []
    if where in ("query", "both"):
        query.append(f"password={encoded}")
    if where == "sslpassword":
        query.append(f"sslpassword={encoded}")
    url = f"postgresql://{user}db.example:5432/state" + ("?" + "&".join(query) if query
                                                         else "")
    shown = redact_url(url)
    assert password not in shown and encoded not in shown and "db.example:5432" in shown
    assert password in url_secrets(url) and encoded in url_secrets(url)
    settings_ = load_settings(_env_file=None, state_url=url)
    assert password in settings_.secrets()
    assert password not in state_location(settings_)
    assert redact(f"x {password} y {encoded}", settings_.secrets()).count("***") == 2


def test_an_unreachable_postgres_names_state_url_without_the_password():
    """A closed port: the one-line error names STATE_URL and never the password."""
    url = "postgresql://connector@127.0.0.1:9/test?password=QueryPassw0rd&connect_timeout=2"
    with pytest.raises(ConfigError) as err:
        PgConnection(url, timeout=2)
    assert "STATE_URL" in str(err.value) and "QueryPassw0rd" not in str(err.value)
