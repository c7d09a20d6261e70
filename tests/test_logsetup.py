"""Log lines: text and JSON formats, run id on every line, secrets never printed."""

from __future__ import annotations

import io
import json
import logging
import re
import threading

import pytest

from connector.ops.logsetup import get_run_id, run_context, set_run_id, setup_logging

SECRET = "wk_live_0123456789abcdef"


@pytest.fixture
def stream():
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "segment", "apscheduler")}
    buffer = io.StringIO()
    yield buffer
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_connector_handler", False):
            root.removeHandler(handler)
    set_run_id(None)


def ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, "_connector_handler", False)]


def test_text_lines_carry_time_level_and_run_id(stream):
    setup_logging("INFO", "text", stream=stream)
    log = logging.getLogger("connector.test")
    log.info("before any run")
    with run_context("20261122T053000Z-1a2b3c"):
        log.warning("fetched %d users", 3)
    log.debug("hidden at INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO before any run", lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING "
                        r"\[run 20261122T053000Z-1a2b3c\] fetched 3 users", lines[1])


def test_json_lines_have_the_documented_keys(stream):
    setup_logging("DEBUG", "json", stream=stream)
    with run_context("run-42"):
        logging.getLogger("connector.sync").debug("page %s", 7)
    record = json.loads(stream.getvalue().splitlines()[0])
    assert set(record) == {"ts", "level", "logger", "run_id", "msg"}
    assert record["level"] == "DEBUG" and record["logger"] == "connector.sync"
    assert record["run_id"] == "run-42" and record["msg"] == "page 7"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


def test_secrets_never_reach_a_line_in_either_format(stream):
    for fmt in ("text", "json"):
        setup_logging("INFO", fmt, secrets=[SECRET], stream=stream)
        log = logging.getLogger("connector.test")
        log.info("sending with key %s", SECRET)
        try:
            raise RuntimeError(f"auth failed for {SECRET}")
        except RuntimeError:
            log.exception("request failed")
    output = stream.getvalue()
    assert SECRET not in output
    assert output.count("***") >= 4 and "auth failed for ***" in output


def test_segment_library_debug_bodies_are_silenced(stream):
    setup_logging("DEBUG", "text", secrets=[SECRET], stream=stream)
    logging.getLogger("segment").debug('{"writeKey": "%s"}', SECRET)
    assert stream.getvalue() == ""
    assert logging.getLogger("segment").level == logging.WARNING


def test_setup_is_idempotent(stream):
    root = logging.getLogger()
    setup_logging("INFO", "text", stream=stream)
    setup_logging("INFO", "json", stream=stream)
    assert len(ours(root)) == 1
    logging.getLogger("connector.test").info("once")
    assert len(stream.getvalue().splitlines()) == 1
    assert json.loads(stream.getvalue())["msg"] == "once"


def test_run_id_reaches_threads_a_library_starts(stream):
    setup_logging("INFO", "json", stream=stream)
    with run_context("run-thread"):
        worker = threading.Thread(target=lambda: logging.getLogger("segment.x").warning("hi"))
        worker.start()
        worker.join()
    assert json.loads(stream.getvalue())["run_id"] == "run-thread"
    assert get_run_id() is None


def test_bad_format_is_refused():
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml")
