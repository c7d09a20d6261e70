"""`moesif-segment check`: every condition, passing and failing, over loopback."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr
from rich.console import Console

from connector.ops.checks import (
    check_mappings,
    check_moesif,
    check_required,
    check_segment,
    check_state_dir,
    run_checks,
)
from tests.conftest import MANAGEMENT_KEY, assert_no_keys_in
from tests.helpers import sync_sandbox


@pytest.fixture(scope="module")
def sandbox():
    with sync_sandbox(50, 5) as sb:
        yield sb


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def render(settings) -> tuple[int, str]:
    console = Console(record=True, width=200)
    code = run_checks(settings, console)
    return code, console.export_text()


def test_all_pass_against_the_sandbox(settings):
    code, text = render(settings)
    assert code == 0, text
    assert "FAIL" not in text and "key accepted" in text
    assert_no_keys_in(text)
    assert MANAGEMENT_KEY[-4:] in text  # keys only as their last four characters


def test_missing_keys_fail_and_are_named(settings):
    results = check_required(settings.model_copy(update={"segment_write_key": None}))
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == ["SEGMENT_WRITE_KEY set"]
    code, _ = render(settings.model_copy(update={"moesif_management_api_key": None}))
    assert code != 0


def test_wrong_management_key_fails(settings):
    wrong = settings.model_copy(update={"moesif_management_api_key": SecretStr("nope-wrong-key")})
    result = check_moesif(wrong)
    assert not result.ok and "MOESIF_MANAGEMENT_API_KEY" in result.detail
    assert "nope-wrong-key" not in result.detail


def test_unreachable_hosts_fail(settings):
    down = settings.model_copy(update={"moesif_api_url": closed_port_url(),
                                       "segment_host": closed_port_url()})
    assert not check_moesif(down).ok
    seg = check_segment(down)
    assert not seg.ok and "unreachable" in seg.detail


def test_refused_write_key_fails(settings):
    wrong = settings.model_copy(update={"segment_write_key": SecretStr("wrong-write-key")})
    result = check_segment(wrong)
    assert not result.ok and "refused" in result.detail


def test_unwritable_state_directory_fails(settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = check_state_dir(settings.model_copy(update={"connector_home": blocker / "home"}))
    assert not result.ok and "CONNECTOR_HOME" in result.detail


def test_broken_mapping_fails_naming_the_file(settings, tmp_path):
    (tmp_path / "users.toml").write_text("[[identify]]\ntarget = 3\n")
    (tmp_path / "companies.toml").write_text("")
    result = check_mappings(settings.model_copy(update={"mappings_dir": tmp_path}))
    assert not result.ok and "users.toml" in result.detail
