"""The command line and its presentation: the `moesif-segment` commands (`commands`), the
command boundary that turns errors into one line and an exit code (`errors`), the `alerts`
commands and the progress bars. `python -m connector` and the console script run `main`.

`app` and `main` load `commands` on first use, not with the package: `commands` adds the
`report` sub-commands, whose module itself uses `connector.cli.errors`, so importing the
package eagerly made `import connector.reports.cli` a circular import when it came first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from connector.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
