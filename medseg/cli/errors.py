"""The CLI's error contract, shared by every command group: every failure is one line and exit code 2.

- `MedsegError` (and its subclasses): the message names the file and the problem.
- `OSError` (disk full, permission denied, ...): the file and the system's reason.
- `MemoryError`: said as such, with what to try.
- Anything else is a bug in medseg or a library it calls; it is still one line (`internal error: ...`) that
  names the exception, and `--debug` shows the traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from medseg.errors import INTERNAL_ERROR, MedsegError, one_line_reason

__all__ = ["ErrorReportingGroup"]


class ErrorReportingGroup(click.Group):
    """Turns every failure into `medseg: error: <file>: <problem>` and exit code 2.

    `--debug` on the root command (stored in the root context's obj) re-raises for a full traceback.
    Click's own usage errors and `SystemExit` pass through unchanged.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit,
                KeyboardInterrupt):
            raise
        except Exception as exc:
            root = ctx.find_root().obj
            if isinstance(root, dict) and root.get("debug"):
                raise
            message = str(exc) if isinstance(exc, MedsegError) else one_line_reason(exc)   # schema errors list lines
            if message.startswith(INTERNAL_ERROR):
                message += " (a bug: please report it with the output of --debug)"
            click.echo(f"medseg: error: {message}", err=True)
            sys.exit(2)
