import base64
import io
import logging

from connector.common.redaction import SecretFilter, last4, redact


def test_redact_removes_plain_and_basic_auth_forms():
    key = "wk_live_ABCDEFGHIJKLMNOPQRSTUV"
    basic = base64.b64encode(f"{key}:".encode()).decode()
    text = redact(f"key={key} header=Basic {basic}", [key])
    assert key not in text and basic not in text and text.count("***") == 2


def test_filter_scrubs_messages_and_tracebacks():
    key = "mgmt-secret-0123456789"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter([key]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    try:
        logger.error("calling with %s", key)
        try:
            raise RuntimeError(f"boom {key}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert key not in out and "boom ***" in out and "calling with ***" in out


def test_last4_shows_only_the_tail():
    assert last4("abcdefghijkl") == "…ijkl"
    assert last4(None) == "(not set)"
    assert "abc" not in last4("abcdef")


def test_traceback_is_scrubbed_by_a_later_filter_too():
    """Two filters on one handler, each knowing a different key (forward + sync)."""
    first, second = "first-secret-aaaaaaaa", "second-secret-bbbbbbbb"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter([first]))
    handler.addFilter(SecretFilter([second]))
    logger = logging.getLogger("test.redaction.two")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"{first} and {second}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert first not in out and second not in out and "*** and ***" in out
