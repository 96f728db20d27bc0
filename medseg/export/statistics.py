"""Per-lobe volume and density statistics of a CT with a lobe label map, with QC flags.

For every lobe: volume (mL), share of the total lung volume (%), mean / median HU, PD15 (15th HU percentile,
linear interpolation as `np.percentile`), LAA-950 (% of voxels strictly below -950 HU, the emphysema index),
voxel count, 26-connected components and the largest one's volume. Rows for the right lung (RUL+RML+RLL), the
left lung (LUL+LLL) and both lungs ("total") follow the lobes.

QC flags (`Flag.code`): `missing_lobe`, `volume_out_of_range` (ranges in `configs/qc/lobes.yaml`),
`touches_fov_edge` (partial coverage: the volume is a lower bound), `fragmented`, `empty_mask` (no lung at all:
statistics are NaN), `not_hu` (the image is not CT in Hounsfield units: HU statistics are NaN),
`unexpected_label` (a label outside the label map: reported, left out of the lung totals) and `non_finite_voxels`
(NaN/inf voxels of the image were replaced by air when it was loaded: volumes and densities may be off).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage

from medseg.configfile import load_config
from medseg.errors import InputError
from medseg.io.atomic import write_atomically
from medseg.io.volume import NON_FINITE_NOTE, Volume
from medseg.jsonable import dumps_json, finite_json
from medseg.labels import LabelMap, resolve_label_map

__all__ = [
    "CSV_COLUMNS",
    "Flag",
    "LobeRow",
    "LobeStatistics",
    "QcRanges",
    "label_volumes",
    "load_qc_ranges",
    "lobe_statistics",
    "write_statistics",
]

TOTAL = "total"
LAA_THRESHOLD_HU = -950.0
PD_PERCENTILE = 15.0
_NEIGHBOURS_26 = np.ones((3, 3, 3), dtype=bool)

Pair = tuple[float, float]

_DEFAULT_SHARES: dict[str, Pair] = {
    "RUL": (10.7, 25.1), "RML": (4.5, 14.1), "RLL": (18.7, 34.3), "LUL": (16.8, 29.4), "LLL": (16.0, 30.4),
    "right_lung": (49.1, 58.1), "left_lung": (41.9, 50.9),
}


def _check_pair(value: Pair, name: str) -> Pair:
    low, high = value
    if not 0 <= low <= high:
        raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, got {list(value)}")
    return value


class QcRanges(BaseModel):
    """Plausible ranges (`configs/qc/lobes.yaml`; the defaults match that file)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    total_ml: Pair = (500.0, 8300.0)
    share_percent: dict[str, Pair] = Field(default_factory=lambda: dict(_DEFAULT_SHARES))
    """Row name (lobe abbreviation, `right_lung`, `left_lung`) -> share of total lung volume, %."""
    fragment_min_ml: float = Field(1.0, ge=0)
    fragment_min_percent: float = Field(5.0, ge=0, le=100)

    @field_validator("total_ml")
    @classmethod
    def _total(cls, value: Pair) -> Pair:
        return _check_pair(value, "total_ml")

    @field_validator("share_percent")
    @classmethod
    def _shares(cls, value: dict[str, Pair]) -> dict[str, Pair]:
        for name, pair in value.items():
            _check_pair(pair, f"share_percent.{name}")
        return value


def load_qc_ranges(path: str | os.PathLike[str]) -> QcRanges:
    """Read and validate a QC ranges file; unknown keys are a `ConfigError` naming the key."""
    return load_config(QcRanges, path, "QC ranges")


@dataclass(frozen=True)
class Flag:
    """One QC finding; `label` is the row name it concerns, None for the whole case."""

    code: str
    label: str | None
    message: str


@dataclass
class LobeRow:
    """Statistics of one lobe or lobe group; NaN where undefined, None where not computed (aggregates)."""

    name: str
    label: int | None
    voxels: int
    volume_ml: float
    share_percent: float
    mean_hu: float
    median_hu: float
    pd15_hu: float
    laa950_percent: float
    n_components: int | None
    largest_component_ml: float | None
    flags: list[str] = field(default_factory=list)


CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LobeRow))


@dataclass
class LobeStatistics:
    """Rows (lobes, then right_lung, left_lung, total), case flags and where the numbers came from."""

    rows: list[LobeRow]
    flags: list[Flag]
    voxel_ml: float
    image_source: str = ""
    labels_source: str = ""
    shape: tuple[int, int, int] = (0, 0, 0)
    spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    label_map: dict[int, str] = field(default_factory=dict)
    qc: QcRanges = field(default_factory=QcRanges)

    def row(self, name: str) -> LobeRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def flagged(self, code: str) -> set[str | None]:
        """Row names (None: the whole case) carrying flag `code`."""
        return {flag.label for flag in self.flags if flag.code == code}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes None."""
        return finite_json({
            "image": self.image_source,
            "labels": self.labels_source,
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "voxel_ml": self.voxel_ml,
            "label_map": {str(k): v for k, v in self.label_map.items()},
            "qc_ranges": self.qc.model_dump(mode="json"),
            "rows": [asdict(row) for row in self.rows],
            "flags": [asdict(flag) for flag in self.flags],
        })

    def to_json(self, indent: int | None = 2) -> str:
        return dumps_json(self.as_dict(), indent=indent)

    def rows_for_csv(self) -> list[dict[str, Any]]:
        """One dict per row with `CSV_COLUMNS`: NaN/None as empty cells, floats to 4 decimals, flags `;`-joined."""
        out = []
        for row in self.rows:
            record: dict[str, Any] = {}
            for name, value in asdict(row).items():
                if value is None or (isinstance(value, float) and not math.isfinite(value)):
                    value = ""
                elif isinstance(value, float):
                    value = round(value, 4)
                elif isinstance(value, list):
                    value = ";".join(value)
                record[name] = value
            out.append(record)
        return out


def label_volumes(labels: Volume, names: Mapping[int, str]) -> dict[str, float]:
    """Millilitres per named label of a label map (background 0 left out), rounded to 0.1 ml."""
    voxel_ml = float(abs(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    counts = np.bincount(np.asarray(labels.array).ravel(), minlength=max(names, default=0) + 1)
    return {name: round(float(counts[value]) * voxel_ml, 1) for value, name in names.items() if value}


def write_statistics(stats: LobeStatistics, csv_path: str | os.PathLike[str],
                     json_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the CSV table and the JSON report, each atomically."""
    def write_csv(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows(stats.rows_for_csv())

    text = stats.to_json()
    csv_out = write_atomically(csv_path, write_csv)
    json_out = write_atomically(json_path, lambda path: path.write_text(text + "\n", encoding="utf-8"))
    return csv_out, json_out


# --- computation ---------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """Voxels of one label: HU values inside it, bounding box, component sizes (voxels, largest first)."""

    values: np.ndarray
    box: tuple[slice, ...] | None
    components: np.ndarray

    @property
    def voxels(self) -> int:
        return int(self.values.size)


def _check_labels(labels: np.ndarray, volume: Volume, source: str) -> np.ndarray:
    labels = np.asarray(labels)
    where = source or None
    if labels.shape != volume.shape:
        raise InputError(f"label map shape {labels.shape} does not match the image shape {volume.shape}", where)
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(labels, np.rint(labels)):
            raise InputError(f"label map must hold whole numbers, got dtype {labels.dtype} with fractions", where)
        labels = labels.astype(np.int32)
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise InputError("label map holds negative labels", where)
    return labels


def _voxel_ml(volume: Volume) -> float:
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    if not voxel_ml > 0:
        raise InputError("the image affine is singular (zero voxel volume)", volume.source or None)
    return voxel_ml


def _hu_problem(volume: Volume) -> str | None:
    """Why the image does not look like CT in HU, or None."""
    if volume.modality not in (None, "", "CT"):
        return f"modality is {volume.modality}, not CT"
    low, high = volume.value_range()
    if low > -500 or high < 0:
        return f"values {low:g}..{high:g} do not look like Hounsfield units (lung below -500, tissue above 0)"
    return None


def _measure(hu: np.ndarray, labels: np.ndarray, label: int, box: tuple[slice, ...] | None) -> _Part:
    if box is None:
        return _Part(hu[:0, 0, 0], None, np.zeros(0, np.int64))
    mask = labels[box] == label
    components, _ = ndimage.label(mask, structure=_NEIGHBOURS_26)
    sizes = np.sort(np.bincount(components.ravel())[1:])[::-1]
    return _Part(hu[box][mask], box, sizes)


def _density(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return dict.fromkeys(("mean_hu", "median_hu", "pd15_hu", "laa950_percent"), math.nan)
    pd15, median = np.percentile(values, [PD_PERCENTILE, 50.0])
    return {"mean_hu": float(values.mean(dtype=np.float64)), "median_hu": float(median), "pd15_hu": float(pd15),
            "laa950_percent": 100.0 * int(np.count_nonzero(values < LAA_THRESHOLD_HU)) / values.size}


def _edge_faces(box: tuple[slice, ...], shape: Sequence[int]) -> list[str]:
    faces = []
    for axis, (part, size) in enumerate(zip(box, shape, strict=True)):
        name = "ijk"[axis]
        if part.start == 0:
            faces.append(f"{name}=0")
        if part.stop == size:
            faces.append(f"{name}={size - 1}")
    return faces


def _row(name: str, label: int | None, parts: Sequence[_Part], total_voxels: int, voxel_ml: float,
         hu_ok: bool) -> LobeRow:
    voxels = sum(part.voxels for part in parts)
    empty = total_voxels == 0
    values = parts[0].values if len(parts) == 1 else np.concatenate([part.values for part in parts])
    density = _density(values if hu_ok else values[:0])
    components = parts[0].components if label is not None else None
    return LobeRow(
        name=name, label=label, voxels=voxels,
        volume_ml=math.nan if empty else voxels * voxel_ml,
        share_percent=math.nan if empty else 100.0 * voxels / total_voxels,
        **density,
        n_components=None if components is None else int(components.size),
        largest_component_ml=None if components is None else (
            float(components[0]) * voxel_ml if components.size else (math.nan if empty else 0.0)),
    )


def _lobe_flags(row: LobeRow, part: _Part, shape: Sequence[int], voxel_ml: float, qc: QcRanges,
                expected: bool, any_lung: bool) -> list[Flag]:
    flags = []
    if not expected:
        flags.append(Flag("unexpected_label", row.name,
                          f"label {row.label} is not in the label map: reported, but left out of the lung totals"))
    if expected and part.voxels == 0 and any_lung:
        flags.append(Flag("missing_lobe", row.name, f"{row.name} (label {row.label}) has no voxels"))
    if part.box is not None and (faces := _edge_faces(part.box, shape)):
        flags.append(Flag("touches_fov_edge", row.name,
                          f"{row.name} touches the edge of the field of view ({', '.join(faces)}): partial coverage, "
                          f"so its volume {row.volume_ml:.1f} mL is a lower bound"))
    big = part.components[(part.components * voxel_ml >= qc.fragment_min_ml)
                          | (part.components * 100.0 >= qc.fragment_min_percent * max(part.voxels, 1))]
    if big.size > 1:
        sizes = ", ".join(f"{size * voxel_ml:.1f}" for size in big)
        flags.append(Flag("fragmented", row.name,
                          f"{row.name} has {big.size} separate parts of at least {qc.fragment_min_ml:g} mL or "
                          f"{qc.fragment_min_percent:g} % of the lobe ({sizes} mL)"))
    return flags


def _group_edge_flag(row: LobeRow, members: Sequence[str], touching: set[str]) -> list[Flag]:
    cut = [name for name in members if name in touching]
    if not cut:
        return []
    return [Flag("touches_fov_edge", row.name,
                 f"{row.name} includes {', '.join(cut)}, which touch the edge of the field of view: partial "
                 f"coverage, so its volume {row.volume_ml:.1f} mL is a lower bound")]


def _range_flags(row: LobeRow, qc: QcRanges, partial: bool) -> list[Flag]:
    """`volume_out_of_range` for the total volume or a share; `partial`: some lobe touches the FOV edge."""
    if row.name == TOTAL:
        low, high = qc.total_ml
        note = " (a lower bound: partial coverage)" if partial else ""
        if not low <= row.volume_ml <= high:
            return [Flag("volume_out_of_range", row.name, f"total lung volume {row.volume_ml:.0f} mL{note} is "
                                                          f"outside the plausible {low:g}-{high:g} mL")]
        return []
    if row.name in qc.share_percent and row.voxels > 0:
        low, high = qc.share_percent[row.name]
        note = " (unreliable: partial coverage)" if partial else ""
        if not low <= row.share_percent <= high:
            return [Flag("volume_out_of_range", row.name, f"{row.name} is {row.share_percent:.1f} % of the lung "
                                                          f"volume{note}, outside the plausible {low:g}-{high:g} %")]
    return []


def lobe_statistics(volume: Volume, labels: np.ndarray, label_map: LabelMap | str | Mapping[int, str] = "lobes",
                    qc: QcRanges | None = None, *, labels_source: str = "") -> LobeStatistics:
    """Volume, share and density statistics per lobe, per lung and for both lungs, with QC flags.

    `labels` must lie on the image grid (same shape). `label_map` is a registry name ("lobes", "lungs"), a
    model card's {value: name} or a `medseg.labels.LabelMap`; rows are named by each label's abbreviation
    (LUL) or name, label 0 is background. Right/left lung rows appear when the map holds all their lobes.
    """
    resolved = resolve_label_map(label_map, labels_source or None)
    names = resolved.short_names()
    qc = qc or QcRanges()
    labels = _check_labels(labels, volume, labels_source)
    voxel_ml = _voxel_ml(volume)
    hu_problem = _hu_problem(volume)
    hu_ok = hu_problem is None
    boxes = ndimage.find_objects(labels)
    present = [index + 1 for index, box in enumerate(boxes) if box is not None]
    order = list(names) + [label for label in present if label not in names]
    parts = {label: _measure(volume.array, labels, label, boxes[label - 1] if label <= len(boxes) else None)
             for label in order}
    total_voxels = sum(parts[label].voxels for label in names)

    rows, flags = [], []
    for label in order:
        row = _row(names.get(label, f"label_{label}"), label, [parts[label]], total_voxels, voxel_ml, hu_ok)
        rows.append(row)
        flags += _lobe_flags(row, parts[label], volume.shape, voxel_ml, qc, label in names, total_voxels > 0)
    touching = {flag.label for flag in flags if flag.code == "touches_fov_edge"}

    by_name = {name: label for label, name in names.items()}
    groups = dict(resolved.parts())
    groups[TOTAL] = tuple(names.values())
    for group, members in groups.items():
        row = _row(group, None, [parts[by_name[m]] for m in members], total_voxels, voxel_ml, hu_ok)
        rows.append(row)
        flags += _group_edge_flag(row, members, touching)
    if total_voxels:
        flags += [flag for row in rows if row.label is None or row.label in names
                  for flag in _range_flags(row, qc, bool(touching))]
    position = {row.name: index for index, row in enumerate(rows)}
    flags.sort(key=lambda flag: position[flag.label])

    case_flags = []
    if total_voxels == 0:
        case_flags.append(Flag("empty_mask", None, "no lung voxels in the label map: all statistics are undefined "
                                                   "(NaN)"))
    if hu_problem:
        case_flags.append(Flag("not_hu", None, f"the image is not CT in HU ({hu_problem}): HU statistics not "
                                               "reported"))
    replaced = [note for note in volume.notes if NON_FINITE_NOTE in note]
    if replaced:
        case_flags.append(Flag("non_finite_voxels", None, f"{replaced[0]} when the image was loaded: volumes and "
                                                          "densities near them may be wrong"))
    for row in rows:
        row.flags = [flag.code for flag in flags if flag.label == row.name] + [flag.code for flag in case_flags]
    flags += case_flags

    return LobeStatistics(rows=rows, flags=flags, voxel_ml=voxel_ml, image_source=volume.source,
                          labels_source=labels_source, shape=volume.shape, spacing_mm=volume.spacing,
                          label_map=names, qc=qc)
