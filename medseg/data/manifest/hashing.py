"""Files behind a manifest: paths relative to the manifest's folder, sha256 checksums, and `build_case`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from medseg.data.manifest.schema import CaseRecord, Split
from medseg.errors import InputError
from medseg.progress import progress_bar

__all__ = ["PROGRESS_MIN_ITEMS", "build_case", "checksum_paths", "files_under", "progress", "resolve_path",
           "sha256_file"]

PROGRESS_MIN_ITEMS = 50
"""Progress bars appear only for at least this many items (and only on a terminal)."""


def progress(total: int, description: str, *,
             min_items: int = PROGRESS_MIN_ITEMS) -> AbstractContextManager[Callable[..., None]]:
    """`medseg.progress.progress_bar` with the manifest tools' threshold (no bar under `min_items` items), for
    the importers and synthesisers that show their own bars."""
    return progress_bar(total, description, min_items=min_items)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_path(base: str | os.PathLike[str], relative: str) -> Path:
    """A manifest path resolved against the manifest's folder (absolute paths stay as they are)."""
    path = Path(relative)
    return path if path.is_absolute() else Path(base) / path


def _relative(root: Path, path: str | os.PathLike[str]) -> str:
    """`path` as written in a manifest at `root`: relative (POSIX separators) unless on another drive."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.as_posix()


def files_under(root: str | os.PathLike[str], relative: str) -> list[str]:
    """Manifest paths of the files that `relative` stands for: itself, or every file in a folder (sorted)."""
    target = resolve_path(root, relative)
    if not target.is_dir():
        return [relative]
    found = []
    for folder, subfolders, names in os.walk(target):
        subfolders.sort()
        for name in sorted(names):
            inner = Path(folder, name).relative_to(target).as_posix()
            found.append(f"{relative.rstrip('/')}/{inner}")
    return found


def checksum_paths(root: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]], *,
                   show_progress: bool = True) -> dict[str, str]:
    """sha256 of each path (relative to `root`, or absolute); a folder contributes each file in it.

    Keys are the paths as they are written in a manifest at `root` (a folder's files as `folder/file`).
    `show_progress=False` when the caller runs its own progress bar (rich shows one at a time).
    """
    root = Path(root)
    files: list[str] = []
    for path in paths:
        for name in files_under(root, _relative(root, path)):
            if name not in files:
                files.append(name)
    checksums: dict[str, str] = {}
    with progress_bar(len(files) if show_progress else 0, "hashing", min_items=PROGRESS_MIN_ITEMS) as advance:
        for name in files:
            target = resolve_path(root, name)
            if not target.is_file():
                raise InputError("no such file", target)
            checksums[name] = sha256_file(target)
            advance()
    return checksums


def build_case(
    root: str | os.PathLike[str],
    case_id: str,
    *,
    image: str | os.PathLike[str],
    labels: Mapping[str, str | os.PathLike[str] | int | None] | None = None,
    patient_id: str | None = None,
    split: Split | None = None,
    metadata: Mapping[str, Any] | None = None,
    checksums: bool = True,
) -> CaseRecord:
    """A `CaseRecord` for files under `root` (the manifest's folder), with their checksums.

    `image` and path-valued `labels` may be relative to `root` or absolute; they are stored relative to
    `root`. Integer/None label values (classification) are kept as they are. `patient_id` defaults to
    `case_id`. A DICOM-folder image is checksummed file by file.
    """
    root = Path(root)
    image_path = _relative(root, image)
    label_entries: dict[str, str | int | None] = {}
    files = [image_path]
    for name, value in (labels or {}).items():
        if isinstance(value, (str, os.PathLike)):
            label_entries[name] = _relative(root, value)
            files.append(label_entries[name])  # type: ignore[arg-type]
        else:
            label_entries[name] = value
    return CaseRecord(
        case_id=case_id,
        patient_id=patient_id or case_id,
        split=split,
        image=image_path,
        labels=label_entries,
        metadata=dict(metadata or {}),
        checksums=checksum_paths(root, files) if checksums else {},
    )
