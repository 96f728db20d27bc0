"""`medseg info`: what an input holds, which series medseg would use and why."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.io.dicom_series import ReadOptions, read_series
from medseg.io.loader import load_volume, scan_dicom
from medseg.io.series_selection import SelectionRules
from medseg.io.volume import Volume
from medseg.io.volume_files import is_volume_file

__all__ = ["describe_input", "intensity_warnings", "print_report"]


def intensity_warnings(volume: Volume) -> list[str]:
    """Warn when a CT's values do not look like Hounsfield units."""
    modality = (volume.modality or "CT").upper()
    if modality != "CT":
        return []
    low, high = volume.value_range()
    warnings = []
    if low >= 0:
        warnings.append(f"minimum value {low:g} >= 0: looks like stored pixel values, not HU (rescale missing?)")
    if high > 10000 or low < -3100:
        warnings.append(f"value range {low:g}..{high:g} is outside plausible CT HU")
    return warnings


def describe_input(path: str | os.PathLike[str], *, rules: SelectionRules | None = None,
                   options: ReadOptions | None = None) -> dict[str, Any]:
    """Describe `path`; problems land in the report's `error` field instead of being raised."""
    path = Path(path)
    report: dict[str, Any] = {"input": str(path), "warnings": [], "error": None}
    try:
        if path.is_file() and is_volume_file(path):
            report["kind"] = "volume file"
            volume = load_volume(path, options=options)
        else:
            report["kind"] = "dicom"
            study = scan_dicom(path, rules)
            report.update(study.summary())
            volume = read_series(study.selection.chosen, options)
            volume.source = str(path)
    except MedsegError as exc:
        report["error"] = str(exc)
        return report
    report["volume"] = volume.describe()
    report["warnings"] = list(volume.notes) + intensity_warnings(volume)
    return report


def print_report(report: dict[str, Any]) -> None:
    """Render a `describe_input` report as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    console.print(f"[bold]{report['input']}[/]")
    if "image_files" in report:
        console.print(f"{report['image_files']} DICOM image file(s); skipped {report['skipped_non_dicom']} "
                      f"non-DICOM and {report['skipped_non_image_dicom']} non-image DICOM file(s)")
        for item in report["unreadable"]:
            console.print(f"[yellow]unreadable[/] {item['path']}: {item['reason']}")
    if report.get("series"):
        table = Table(title="Series", title_justify="left")
        for column in ("", "modality", "description", "slices", "matrix", "thickness", "verdict"):
            table.add_column(column)
        for series in report["series"]:
            chosen = series["key"] == report.get("selected")
            table.add_row(
                "[green]>[/]" if chosen else "",
                series["modality"] or "?",
                series["description"] or f"({os.path.basename(series['folder'])})",
                str(series["slices"]),
                "x".join(map(str, series["matrix"])),
                f"{series['slice_thickness_mm']:g} mm" if series["slice_thickness_mm"] else "?",
                "; ".join(series["reasons"]),
            )
        console.print(table)
        console.print(f"selected: {report.get('selected')} ({report.get('reason')})")
    volume = report.get("volume")
    if volume:
        low, high = volume["value_range"]
        console.print(
            f"geometry: {'x'.join(map(str, volume['shape']))} voxels, spacing "
            f"{' x '.join(f'{s:.4g}' for s in volume['spacing_mm'])} mm, orientation {volume['orientation']}, "
            f"origin (RAS) {[round(v, 2) for v in (row[3] for row in volume['affine_ras'][:3])]}"
        )
        console.print(f"values: {low:g} .. {high:g} ({volume['dtype']})")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    if report.get("error"):
        console.print(f"[red]error:[/] {report['error']}")
