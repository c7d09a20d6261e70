"""Shared fixtures: sandboxes on 127.0.0.1 and settings pointing at them."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from connector.settings import Settings

MANAGEMENT_KEY = "test-mgmt-key-7f3a9c2e1b"
WRITE_KEY = "test-write-key-5d8e2f1a6c"
APP_ID = "test-app-id-9b4c7e2d0a"
ALL_KEYS = (MANAGEMENT_KEY, WRITE_KEY, APP_ID)


@pytest.fixture(scope="module")
def homes(tmp_path_factory, request):
    """A fresh CONNECTOR_HOME on every call: hypothesis runs all its examples in one test
    function, whose tmp_path they would otherwise share."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    counter = itertools.count()
    return lambda: root / f"home{next(counter)}"


@pytest.fixture(autouse=True)
def _no_command_log_handler_left() -> Iterator[None]:
    """A command run in-process (CliRunner) puts the connector's log handler on the root
    logger, writing to a stream the runner closes afterwards: one left behind turns every
    later log line of the session into a '--- Logging error ---' traceback on stderr."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_connector_handler", False)]:
        root.removeHandler(handler)


def make_settings(home: Path, **overrides) -> Settings:
    values = {
        "connector_home": home,
        "moesif_management_api_key": SecretStr(MANAGEMENT_KEY),
        "segment_write_key": SecretStr(WRITE_KEY),
        "moesif_application_id": SecretStr(APP_ID),
        "moesif_page_size": 100,
        "moesif_lookback_seconds": 60,
        "segment_max_retries": 3,
        "moesif_max_retries": 3,
        "segment_timeout_seconds": 5.0,
        "moesif_timeout_seconds": 5.0,
        "mappings_dir": Path(__file__).resolve().parent.parent / "mappings",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings_factory(tmp_path):
    def build(**overrides) -> Settings:
        return make_settings(tmp_path / "home", **overrides)
    return build


@pytest.fixture
def settings(sandbox, settings_factory):
    """Settings pointing at the module's `sandbox` fixture (a module defines which one)."""
    return settings_factory(moesif_api_url=sandbox.moesif_url, segment_host=sandbox.segment_url)


def assert_no_keys_in(text: str) -> None:
    for key in ALL_KEYS:
        assert key not in text, "a key leaked"


def assert_no_keys_in_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for key in ALL_KEYS:
                assert key.encode() not in data, f"a key leaked into {path}"
