"""The progress bar draws on its own (stderr) console; log lines print above it."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from connector.cli.progress import SyncProgress
from connector.ops.logsetup import setup_logging


def test_bar_on_its_console_logs_above_it_and_no_final_frame_left():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80)
    handler = setup_logging("INFO", "text", [], stream=buf)
    try:
        with SyncProgress(True, console=console) as bar:
            bar("total", entity="users", total=10)
            bar("fetched", entity="users", n=5)
            logging.getLogger("connector.test").info("a line while the bar is live")
            bar("fetched", entity="users", n=5)
        out = buf.getvalue()
        assert out.count("a line while the bar is live") == 1
        assert "users fetched" in out
        # Transient: the last thing written erases the bar (the summary is the last frame).
        assert out.rstrip().endswith("\x1b[2K")
        assert handler.stream is buf  # the log handler got its stream back
    finally:
        logging.getLogger().removeHandler(handler)


def test_disabled_progress_draws_nothing():
    buf = io.StringIO()
    with SyncProgress(False, console=Console(file=buf)) as bar:
        bar("total", entity="users", total=3)
        bar("fetched", entity="users", n=3)
    assert buf.getvalue() == ""
