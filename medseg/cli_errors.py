"""The CLI's error contract, shared by every command group: expected failures are one line and exit code 2."""

from __future__ import annotations

import sys
from typing import Any

import click

from medseg.errors import MedsegError

__all__ = ["ErrorReportingGroup"]


class ErrorReportingGroup(click.Group):
    """Turns medseg errors (and OS errors) into `medseg: error: <file>: <problem>` and exit code 2.

    `--debug` on the root command (stored in the root context's obj) re-raises for a full traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MedsegError, OSError) as exc:
            root = ctx.find_root().obj
            if isinstance(root, dict) and root.get("debug"):
                raise
            if isinstance(exc, MedsegError):
                message = str(exc)
            else:
                where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
                message = f"{where}{exc.strerror or exc}"
            click.echo(f"medseg: error: {message}", err=True)
            sys.exit(2)
