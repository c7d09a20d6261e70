"""Pasted and hand-edited values: surrounding whitespace stripped, blank = unset, keys
that could never travel in an HTTP header refused at load without repeating them."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import ConfigError, ExitCode, exit_code_for
from connector.settings import Settings, load_settings

KEYS = ("MOESIF_MANAGEMENT_API_KEY", "SEGMENT_WRITE_KEY", "MOESIF_APPLICATION_ID",
        "FORWARD_INGEST_TOKEN")
KEY_CHARS = string.ascii_letters + string.digits + "-_.~+/="
WHITESPACE = st.text(alphabet=" \t\r\n\x0b\x0c", max_size=4)


def _load_env(monkeypatch, **env: str) -> Settings:
    for name in [n.upper() for n in Settings.model_fields]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(_env_file=None)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(KEYS), key=st.text(KEY_CHARS, min_size=1, max_size=60),
       before=WHITESPACE, after=WHITESPACE)
def test_a_pasted_key_loses_its_surrounding_whitespace(name, key, before, after):
    loaded = load_settings(_env_file=None, **{name.lower(): before + key + after})
    assert getattr(loaded, name.lower()).get_secret_value() == key


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(KEYS),
       head=st.text(KEY_CHARS, min_size=1, max_size=20),
       bad=st.one_of(st.sampled_from([" ", "\t", "\r", "\n", "\x00", "\x7f", "é", "…", "\u201c"]),
                     st.characters(min_codepoint=128)),
       tail=st.text(KEY_CHARS, min_size=1, max_size=20))
def test_a_key_that_cannot_be_a_header_is_refused_without_repeating_it(name, head, bad,
                                                                        tail):
    head, tail = f"Hq7{head}", f"{tail}Tz9"  # distinctive, not words of the message
    key = f"{head}{bad}{tail}"
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, **{name.lower(): key})
    text = str(err.value)
    assert name in text and exit_code_for(err.value) == ExitCode.CONFIGURATION
    assert head not in text and tail not in text, "the key was repeated in the error"


@pytest.mark.parametrize("name", KEYS)
@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_quoted_key_is_refused(name, quote):
    with pytest.raises(ConfigError, match=f"{name}: is wrapped in quotes"):
        load_settings(_env_file=None, **{name.lower(): f"{quote}abcdef123456{quote}"})


@pytest.mark.parametrize("name", [n for n in Settings.model_fields
                                  if n not in ("forward_company_unknown_values",
                                               "alert_rules_disabled")])
@pytest.mark.parametrize("blank", ["", "  ", "\n", "\r\n", "\t"])
def test_a_blank_variable_is_the_same_as_an_unset_one(monkeypatch, name, blank):
    loaded = _load_env(monkeypatch, **{name.upper(): blank})
    assert getattr(loaded, name) == getattr(_load_env(monkeypatch), name)


def test_a_blank_connector_home_is_not_the_working_directory(monkeypatch):
    loaded = _load_env(monkeypatch, CONNECTOR_HOME="")
    assert loaded.connector_home != Path(".")


@pytest.mark.parametrize("name", ["CONNECTOR_HOME", "MAPPINGS_DIR", "SYNC_INTERVAL",
                                  "SEGMENT_HOST", "STATE_URL"])
def test_a_trailing_cr_or_newline_is_not_part_of_the_value(monkeypatch, name):
    value = {"SEGMENT_HOST": "https://api.segment.io", "SYNC_INTERVAL": "15m",
             "STATE_URL": "postgresql://db/x"}.get(name, "/var/lib/x")
    loaded = _load_env(monkeypatch, **{name: value + "\r\n"})
    assert str(getattr(loaded, name.lower())) == value


# --- numbers: finite and within a bound the code can use -----------------------------------
NUMERIC = sorted(n for n, f in Settings.model_fields.items() if f.annotation in (int, float))
NUMBER_TEXT = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e3", "1e23", "-0", "NaN", "inf", "-inf", "Infinity", "1_000",
                     "99999999999999999999999", "0x10", "1.5"]))


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(NUMERIC), text=NUMBER_TEXT)
def test_a_number_is_refused_at_load_or_fits_where_the_code_puts_it(name, text):
    """An accepted number is finite, fits an SQLite INTEGER, and as seconds can be added
    to now (a lease expiry, a deadline) and slept on; else exit 2 naming the setting."""
    import datetime
    import sqlite3

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(name.upper(), text)
            loaded = load_settings(_env_file=None)
    except ConfigError as exc:
        assert name.upper() in str(exc) and exit_code_for(exc) == ExitCode.CONFIGURATION
        return
    value = getattr(loaded, name)
    assert value == value and abs(value) < float("inf"), f"{name}={text!r} loaded {value}"
    sqlite3.connect(":memory:").execute("SELECT ?", (int(value),))
    if name.endswith("_seconds"):
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=value)
        assert value <= 10 * 366 * 86400


# --- the .env file ---------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(prefix=st.text(st.characters(max_codepoint=127, exclude_characters="\n\r"),
                     max_size=30).map(str.encode),
       bad=st.sampled_from([b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
def test_an_env_file_that_is_not_utf8_is_one_config_error(tmp_path_factory, prefix, bad):
    path = tmp_path_factory.mktemp("envfile") / ".env"
    path.write_bytes(b"MOESIF_MANAGEMENT_API_KEY=KeyHead" + prefix + bad + b"Tail\n")
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=path)
    assert str(path) in str(err.value) and "UTF-8" in str(err.value)
    assert "KeyHead" not in str(err.value)


def test_the_cli_names_a_broken_env_file_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from connector.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"SEGMENT_WRITE_KEY=abc\xff\xfedef\n")
    monkeypatch.setenv("CONNECTOR_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["check", "sync"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: .env: not UTF-8 text (an invalid byte at offset 21); save it as UTF-8"]


# --- alert settings, checked at start like the others ---------------------------------------
@pytest.mark.parametrize("value", ["hooks.slack.com/services/T/B/X",
                                   "https://ok.example/hook, ftp://x/y", "https://a..b/x"])
def test_a_bad_webhook_url_fails_at_load(value):
    with pytest.raises(ConfigError, match="ALERT_WEBHOOK_URL"):
        load_settings(_env_file=None, alert_webhook_url=value)


def test_webhook_urls_are_kept_trimmed():
    loaded = load_settings(_env_file=None,
                           alert_webhook_url=" https://a.example/h , https://b.example/h ,")
    assert loaded.alert_webhook_url == "https://a.example/h,https://b.example/h"


_WORD = st.text(st.sampled_from("abcXYZ019_.-éü中"), min_size=1, max_size=8).filter(
    lambda w: w != "export")


@settings(max_examples=50, deadline=None)
@given(junk=st.lists(st.lists(_WORD, min_size=2, max_size=4).map(" ".join),
                     min_size=1, max_size=3))
def test_unparsable_env_lines_are_named_with_the_file_not_printed_bare(tmp_path_factory,
                                                                       junk):
    """python-dotenv skips a line it cannot parse and prints a bare warning without the
    file's name; the connector collects them as '<file> line N: ...' instead."""
    import contextlib
    import io

    from connector.settings import ENV_FILE_PROBLEMS

    path = tmp_path_factory.mktemp("env") / ".env"
    lines = ["SYNC_INTERVAL=5m", *[j.strip() for j in junk]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        loaded = load_settings(_env_file=path)
    assert loaded.sync_interval == "5m"
    assert stderr.getvalue() == ""
    expected = {f"{path} line {n}: not NAME=value; ignored" for n in range(2, len(lines) + 1)}
    assert sorted(expected) == ENV_FILE_PROBLEMS


def test_check_lists_unparsable_env_lines_and_json_logs_carry_them(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from connector.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SYNC_INTERVAL=5m\nthis is not a setting\n")
    env = {"CONNECTOR_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    result = CliRunner().invoke(app, ["check", "sync"], env=env)
    assert ".env line 2" in result.stdout and "not NAME=value" in result.stdout
    assert "python-dotenv" not in result.output
    result = CliRunner().invoke(app, ["sync", "--log-format", "json"], env=env)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(line["msg"] == ".env line 2: not NAME=value; ignored" for line in lines)


def teardown_function() -> None:
    import logging

    root = logging.getLogger()  # the CLI's handler wrote to the runner's (closed) stream
    for handler in [h for h in root.handlers if getattr(h, "_connector_handler", False)]:
        root.removeHandler(handler)


@pytest.mark.parametrize("name", ["CONNECTOR_HOME", "MAPPINGS_DIR"])
def test_a_tilde_in_a_directory_setting_is_the_home_directory(monkeypatch, tmp_path, name):
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = _load_env(monkeypatch, **{name: "~/moesif-state"})
    assert getattr(loaded, name.lower()) == tmp_path / "moesif-state"
