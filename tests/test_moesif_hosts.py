"""A wrong MOESIF_API_URL is a configuration error naming it, not an outage retried.

A host name that does not resolve and https spoken to a plain-http port fail at once; an
address where nothing listens (refused on every attempt, never answered) after its
retries. Once the address answered, refused connections stay an outage.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from connector.moesif.management import (
    BackoffPolicy,
    MoesifEndpointError,
    MoesifManagementClient,
    MoesifUnavailable,
)
from connector.sandbox.moesif_management import MoesifManagementSandbox
from connector.sync.job import run_sync
from tests.conftest import MANAGEMENT_KEY, make_settings
from tests.helpers import sync_sandbox
from tests.test_segment_sink_hosts import NO_SUCH_HOST, free_port, resolver_answers


def client(url: str) -> MoesifManagementClient:
    return MoesifManagementClient(url, SecretStr(MANAGEMENT_KEY), max_retries=2,
                                  backoff=BackoffPolicy(base=0.01, cap=0.02), timeout=5)


@pytest.mark.skipif(not resolver_answers(), reason="no resolver to say 'no such name'")
def test_a_host_name_that_does_not_resolve_fails_at_once_naming_the_setting():
    c = client(f"http://{NO_SUCH_HOST}")
    with pytest.raises(MoesifEndpointError, match="MOESIF_API_URL"):
        c.search("users", {"size": 1})
    assert c.requests_made == 1 and c.retries == 0


def test_https_to_a_plain_http_port_fails_at_once_naming_the_setting():
    with sync_sandbox(3, 1) as sb:
        c = client(sb.moesif_url.replace("http://", "https://"))
        with pytest.raises(MoesifEndpointError, match="MOESIF_API_URL"):
            c.search("users", {"size": 1})
    assert c.retries == 0


def test_nothing_listening_is_a_configuration_error_after_the_retries():
    c = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MoesifEndpointError, match="nothing listens.*MOESIF_API_URL"):
        c.search("users", {"size": 1})
    assert c.requests_made == 3


def test_refused_after_the_address_answered_is_an_outage():
    with sync_sandbox(3, 1) as sb:
        moesif = MoesifManagementSandbox(sb.dataset, MANAGEMENT_KEY)
        server = moesif.server().start()
        c = client(server.url)
        assert len(c.search("users", {"size": 2}).hits) == 2
        server.stop()
        c.session.close()  # (a kept-alive connection's handler thread would still answer)
        with pytest.raises(MoesifUnavailable):
            c.search("users", {"size": 2})


def test_a_run_with_nothing_listening_at_moesif_api_url_exits_2(tmp_path):
    with sync_sandbox(3, 1) as sb:
        outcome = run_sync(make_settings(tmp_path / "home",
                                         moesif_api_url=f"http://127.0.0.1:{free_port()}",
                                         segment_host=sb.segment_url, moesif_max_retries=1))
    assert outcome.exit_code == 2 and "MOESIF_API_URL" in outcome.report["error"]


@pytest.mark.parametrize("where", ["refused", "404"])
def test_a_key_pasted_into_moesif_api_url_never_shows_in_errors_or_logs(where, caplog):
    with sync_sandbox(3, 1) as sb:
        base = sb.moesif_url if where == "404" else f"http://127.0.0.1:{free_port()}"
        c = client(f"{base}/{MANAGEMENT_KEY}")
        with caplog.at_level("DEBUG"), pytest.raises(MoesifEndpointError) as err:
            c.search("users", {"size": 1})
    assert "MOESIF_API_URL" in str(err.value) and MANAGEMENT_KEY not in str(err.value)
    assert all(MANAGEMENT_KEY not in r.getMessage() for r in caplog.records
               if r.name.startswith("connector"))
