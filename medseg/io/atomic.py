"""Atomic file writing: outputs appear complete or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_atomically"]


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target` (same suffixes); rename it onto `target` on success.

    The temporary name keeps the target's suffixes so writers that pick a format by extension
    (e.g. `.nii.gz` => gzip) behave as for the target itself. On failure the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_atomically(target: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result onto `target`."""
    with atomic_path(target) as temporary:
        write(temporary)
    return Path(target)
