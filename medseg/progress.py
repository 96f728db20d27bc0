"""The one progress bar of long-running work: description, bar, n/total, elapsed, ETA and an info field.

Bars go to stderr and are shown only on a terminal (so logs, pipes and tests stay clean) unless forced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["eta_progress", "progress_bar"]


def eta_progress(*, enabled: bool = True, transient: bool = False):
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
                    disable=not enabled, transient=transient)


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, min_items: int = 1,
                 transient: bool = True) -> Iterator[Callable[..., None]]:
    """Context yielding `advance(n=1, info="")`; a no-op when disabled, not a terminal, or under `min_items`."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or total < min_items or not console.is_terminal:
        yield lambda n=1, info="": None
        return
    with eta_progress(transient=transient) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "") -> None:
            bar.update(task, advance=n, info=info)

        yield advance
