"""The command boundary: every failure becomes one line on stderr and its exit code.

`ConnectorError` -> `error: <message>` and `exit_code_for(exc)` (2 for configuration and
usage, 1 for the rest); a state-home failure SQLite or the OS reports -> the
ConfigError it stands for (exit 2); anything unexpected -> one line and exit 1, its
traceback logged at DEBUG only.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from connector.errors import ConnectorError, ExitCode, exit_code_for
from connector.state.store import state_error

log = logging.getLogger("connector")

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: ExitCode = ExitCode.CONFIGURATION) -> NoReturn:
    """One line, one prefix for every command, then the exit code. With JSON logs the
    line is a JSON log line too (nothing plain on stderr then)."""
    from connector.common.redaction import redact, remembered_secrets
    from connector.ops.logsetup import fields, json_mode

    message = redact(message, remembered_secrets())  # whoever wrote the text
    if json_mode():
        log.error("error: %s", message, extra=fields(event="error", exit_code=int(code)))
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(int(code))


def fail_with(exc: BaseException) -> NoReturn:
    if isinstance(exc, ConnectorError):
        fail(str(exc), exit_code_for(exc))
    log.debug("unexpected error", exc_info=exc)
    fail(f"unexpected {type(exc).__name__}: {exc} (run with --log-level DEBUG for the "
         "traceback)", ExitCode.FAILED)


def _click_exception_base() -> type[Exception]:
    """click's ClickException (usage errors), wherever typer takes click from: recent typer
    releases vendor it, so importing `click` itself would name other classes (and need a
    package the product does not depend on)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


_CLICK_EXCEPTION = _click_exception_base()


def usage_exception_base() -> type[Exception]:
    """The class of click's usage and parameter errors (see `_click_exception_base`)."""
    return _CLICK_EXCEPTION


def command_boundary(fn: F) -> F:
    """Wrap a command so nothing escapes it as a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, _CLICK_EXCEPTION):
            raise
        except (sqlite3.Error, OSError) as exc:
            fail_with(state_error(exc, None) or exc)
        except Exception as exc:  # noqa: BLE001 - the boundary: one line, never a traceback
            fail_with(exc)

    return wrapper  # type: ignore[return-value]
