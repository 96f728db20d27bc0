"""Shared pieces of the dataset importers: the result type, CSV reading, class selection, writing."""

from __future__ import annotations

import csv
import difflib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.data.manifest import Manifest, checksum_paths, progress, save_manifest
from medseg.errors import ConfigError, InputError

log = logging.getLogger("medseg.data.importers")


@dataclass
class ImportResult:
    """What an importer wrote: the manifest, where, warnings (skipped cases ...) and counts."""

    manifest: Manifest
    path: Path
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        splits = ", ".join(f"{key} {n}" for key, n in self.manifest.split_counts().items())
        extra = "".join(f", {key.replace('_', ' ')} {value}" for key, value in self.stats.items())
        return f"wrote {self.path}: {len(self.manifest.cases)} cases ({splits}){extra}"


def read_table(path: Path, delimiter: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV file (UTF-8, BOM tolerated) as dicts; the delimiter is sniffed from the header if not given."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header_line = handle.readline()
            if delimiter is None:
                delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
            handle.seek(0)
            if handle.read(1) != "\ufeff":
                handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            rows = [dict(zip(header, (value.strip() for value in row), strict=False)) for row in reader if row]
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"not a readable CSV file ({exc})", path) from exc
    return header, rows


def require_columns(header: Sequence[str], required: Iterable[str], path: Path) -> None:
    """Refuse a table that lacks a required column, naming the close matches that are there."""
    for column in required:
        if column not in header:
            close = difflib.get_close_matches(column, header, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; found {', '.join(header[:12])}"
            raise InputError(f"missing column '{column}'{hint}", path)


def select_classes(all_classes: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The classes to keep, in dataset order; unknown names are refused with a close-match suggestion."""
    if not wanted:
        return list(all_classes)
    for name in wanted:
        if name not in all_classes:
            close = difflib.get_close_matches(name, all_classes, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; choose from {', '.join(all_classes)}"
            raise ConfigError(f"unknown class '{name}'{hint}")
    return [name for name in all_classes if name in wanted]


def relative_to_manifest(manifest_dir: Path, target: Path) -> str:
    """`target` as a manifest path: relative to the manifest's folder, POSIX separators."""
    try:
        return Path(os.path.relpath(target.absolute(), manifest_dir.absolute())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.absolute().as_posix()


def add_checksums(manifest: Manifest, manifest_dir: Path) -> None:
    """Fill in each case's checksums (image file or every file of a DICOM folder, and label files)."""
    with progress(len(manifest.cases), "hashing cases") as advance:
        for case in manifest.cases:
            paths = [case.image, *(value for value in case.labels.values() if isinstance(value, str))]
            case.checksums = checksum_paths(manifest_dir, paths, show_progress=False)
            advance()


def finish(manifest: Manifest, out: Path, *, checksums: bool, warnings: list[str],
           stats: dict[str, Any]) -> ImportResult:
    """Checksum (optionally) and write the manifest atomically; warnings are returned (and debug-logged)."""
    if not manifest.cases:
        raise InputError("no usable cases found" + (f" ({warnings[0]})" if warnings else ""),
                         manifest.provenance.root)
    out.parent.mkdir(parents=True, exist_ok=True)  # manifest paths like ../data resolve through this folder
    if checksums:
        add_checksums(manifest, out.parent)
    save_manifest(manifest, out)
    for warning in warnings:
        log.debug(warning)
    return ImportResult(manifest=manifest, path=out, warnings=warnings, stats=stats)


def default_output(name: str) -> Path:
    """Default manifest location for an importer: `./<name>/manifest.yaml` (never inside the dataset)."""
    return Path(name) / "manifest.yaml"


def number_or_text(value: str) -> int | float | str | None:
    """A CSV cell as int, float or stripped text; empty -> None."""
    value = value.strip()
    if not value:
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
