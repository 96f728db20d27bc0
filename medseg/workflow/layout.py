"""Case folders from the output layout, made safe: data never chooses where medseg writes or what it deletes.

- Every value that comes from data (DICOM tags, file names, manifest ids) is made a safe path component
  (`safe_component`): letters, digits, `.`, `_`, `-` only, no leading `.`/`_`/`-`, at most 64 characters, with a short
  hash of the original value appended whenever anything was changed (so `../../x` and `.._.._x` stay apart).
- Layouts take plain fields only (`{patient_id}/{study_uid}`): no format specs, conversions, attributes or
  indexes (`check_layout`); the resolved folder must lie inside the output folder (`case_relpath`).
- Two cases resolving to one folder (`plan_case_folders`) are disambiguated with a hash of each case's source
  (`on_collision: suffix`) or refused with both names (`on_collision: error`).
- Folders medseg creates carry a marker file (`MARKER`); medseg replaces or deletes only folders that have it.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medseg.errors import ConfigError

__all__ = ["LAYOUT_FIELDS", "MARKER", "RESERVED_NAMES", "FolderPlan", "case_relpath", "check_layout", "has_marker",
           "plan_case_folders", "safe_component", "write_marker"]

LAYOUT_FIELDS = ("case_id", "patient_id", "study_uid", "series_uid")
MARKER = ".medseg-case"
"""File inside every case folder medseg wrote; a folder without it is never replaced or deleted."""
RESERVED_NAMES = frozenset({"run.json", "index.html", "review.csv", "predictions.csv", "auc_report", "runs",
                            ".partial", ".medseg.lock", ".medseg-run"})
"""Top-level names of the run folder that belong to the run itself, never to a case."""
MAX_COMPONENT = 64
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def safe_component(value: object, *, fallback: str = "unknown") -> str:
    """`value` as one safe path component; a changed value gets `-<hash of the original>` appended."""
    text = "" if value is None else str(value)
    cleaned = _SAFE.sub("_", text).lstrip("._-").rstrip("_")   # no hidden names, no option-like leading '-'
    if cleaned in ("", ".", ".."):
        cleaned = fallback
    if cleaned == text and len(text) <= MAX_COMPONENT:
        return text
    suffix = f"-{_short_hash(text)}"
    return cleaned[: MAX_COMPONENT - len(suffix)] + suffix


def check_layout(layout: str) -> list[str]:
    """The field names of a layout; `ValueError` for anything that could escape the output folder."""
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ValueError(f"layout {layout!r} is not a valid format string: {exc}") from None
    names, unknown = [], []
    for literal, name, spec, conversion in parsed:
        if "\\" in literal or "\x00" in literal:
            raise ValueError(f"layout {layout!r}: use '/' between folder levels (no backslashes or NUL)")
        if name is None:
            continue
        if name not in LAYOUT_FIELDS:
            unknown.append(name)
            continue
        if spec or conversion:
            raise ValueError(f"layout field '{{{name}}}' has a format spec or conversion "
                             f"('{'!' + conversion if conversion else ''}{':' + spec if spec else ''}'); layouts "
                             "take plain fields only")
        names.append(name)
    if unknown:
        raise ValueError(f"layout field(s) {unknown} unknown; use {', '.join(LAYOUT_FIELDS)} (plain names, no "
                         "attributes or indexes)")
    if not names:
        raise ValueError("layout must contain at least one field, e.g. '{case_id}'")
    if layout.startswith("/"):
        raise ValueError("layout must stay inside output.dir (no absolute path)")
    for part in layout.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"layout {layout!r}: empty, '.' or '..' folder levels are not allowed")
    return names


def case_relpath(layout: str, values: dict[str, object], out: Path) -> str:
    """The case folder (POSIX, relative to `out`) for these field values; every value is made safe first.

    Raises ConfigError if the result would not lie strictly inside `out` (also through symlinks already there).
    """
    check_layout(layout)
    relative = layout.format(**{key: safe_component(values.get(key)) for key in LAYOUT_FIELDS})
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts) or os.path.isabs(relative):
        raise ConfigError(f"case folder {relative!r} would leave the output folder", out)
    root = os.path.realpath(out)
    target = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, target]) != root or target == root:
        raise ConfigError(f"case folder {relative!r} resolves outside the output folder (a symlink?)", out)
    return "/".join(parts)


@dataclass
class FolderPlan:
    folders: dict[str, str]
    """Case key -> folder (relative to the output folder)."""
    renamed: list[str]
    """One line per case whose folder was disambiguated."""


def plan_case_folders(items: Iterable[tuple[str, str, dict[str, object]]], layout: str, out: Path,
                      on_collision: Literal["suffix", "error"] = "suffix") -> FolderPlan:
    """Folders for `(key, identity, layout values)` items, with collisions resolved or refused.

    `identity` is what makes a case unique (its source); colliding cases (same folder, compared without case,
    as case-insensitive file systems do) each get `-<hash of identity>` on their last folder level, so the
    name does not depend on the order in which cases were found. A folder whose first level is one of the run's
    own names (`RESERVED_NAMES`) counts as a collision too.
    """
    items = list(items)
    wanted = {key: case_relpath(layout, values, out) for key, _, values in items}
    identity = {key: ident for key, ident, _ in items}
    groups: dict[str, list[str]] = defaultdict(list)
    for key, folder in wanted.items():
        groups[folder.casefold()].append(key)
    folders, renamed = dict(wanted), []
    for keys in groups.values():
        folder = wanted[keys[0]]
        reserved = folder.split("/")[0] in RESERVED_NAMES
        if len(keys) == 1 and not reserved:
            continue
        if on_collision == "error" and not reserved:
            shown = ", ".join(f"{k} ({identity[k]})" for k in sorted(keys)[:4])
            raise ConfigError(f"{len(keys)} cases resolve to the same case folder '{folder}': {shown}; use a layout "
                              "that tells them apart (e.g. '{patient_id}/{study_uid}') or output.on_collision: "
                              "suffix", out)
        for key in keys:
            folder = wanted[key]   # each keeps its own spelling; only the hash tells them apart
            head, _, last = folder.rpartition("/")
            suffix = f"-{_short_hash(identity[key])}"
            new = f"{head}/{last[: MAX_COMPONENT - len(suffix)]}{suffix}" if head else \
                f"{last[: MAX_COMPONENT - len(suffix)]}{suffix}"
            folders[key] = new
            why = "a name the run folder uses itself" if reserved and len(keys) == 1 else \
                f"{len(keys)} cases share it"
            renamed.append(f"{key}: case folder '{folder}' -> '{folders[key]}' ({why})")
    return FolderPlan(folders, renamed)


def write_marker(folder: Path, case_id: str) -> None:
    (folder / MARKER).write_text(f"medseg case folder: {case_id}\n", encoding="utf-8")


def has_marker(folder: Path) -> bool:
    return (folder / MARKER).is_file() and not (folder / MARKER).is_symlink()
