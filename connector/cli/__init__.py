"""The command line and its presentation: the `moesif-segment` commands (`commands`), the
command boundary that turns errors into one line and an exit code (`errors`), the `alerts`
commands and the progress bars. `python -m connector` and the console script run `main`."""

from connector.cli.commands import app, main

__all__ = ["app", "main"]
