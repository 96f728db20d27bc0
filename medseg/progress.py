"""The progress bar of long-running work (training, batch runs): description, bar, n/total, elapsed, ETA, info."""

from __future__ import annotations

__all__ = ["eta_progress"]


def eta_progress(*, enabled: bool = True):
    """A rich `Progress` on stderr; tasks take an `info` field shown after the ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                    disable=not enabled, transient=False)
