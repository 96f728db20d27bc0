"""Per-lobe volume and density statistics of a CT with a lobe label map, with QC flags.

For every lobe: volume (mL), share of the total lung volume (%), mean / median HU, PD15 (15th HU percentile,
linear interpolation as `np.percentile`), LAA-950 (% of voxels strictly below -950 HU, the emphysema index),
voxel count, 26-connected components and the largest one's volume. Rows for the right lung (RUL+RML+RLL), the
left lung (LUL+LLL) and both lungs ("total") follow the lobes.

QC flags (`Flag.code`, thresholds in `configs/qc/lobes.yaml`), each with a one-line reason:
`missing_lobe`, `volume_out_of_range` (total volume or a share outside its range), `touches_fov_edge`
(partial coverage: the volume is a lower bound), `empty_mask` (no lung at all: statistics are NaN), `not_hu`
(the image is not CT in Hounsfield units: HU statistics are NaN), `unexpected_label` (a label outside the
label map: reported, left out of the lung totals), `non_finite_voxels` (NaN/inf voxels of the image were
replaced by air when it was loaded), and the label-free checks of a segmentation's plausibility:

- `lung_split_failed`: one side holds less than `split_min_percent` of the lung volume (or nothing);
- `lung_outside_body`: more than `outside_body_max_ml` of lung label outside the patient's body
  (`medseg.infer.lungmask.body_mask`, on the slices that hold lung);
- `lobes_out_of_order`: centroids in the wrong anatomical order (RAS from the affine): left-side labels to the
  patient's right of right-side ones; an upper lobe below its lower lobe; the middle lobe above the upper or
  behind the lower lobe (lobe kinds from the registry's SNOMED type codes);
- `lobe_fragmented`: a structure has a second piece (>= `fragment_min_ml` or `fragment_min_percent`) that is
  joined to the rest of the lung through other labels: a wrong boundary between lobes (or lungs);
- `lung_islands` (low severity): pieces of the lung mask detached from the main lungs, >= `island_min_ml`.
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
    """`lobe_fragmented`: a second piece of a structure at least this big (mL) ..."""
    fragment_min_percent: float = Field(5.0, ge=0, le=100)
    """... or at least this share of the structure (%)."""
    island_min_ml: float = Field(1.0, ge=0)
    """`lung_islands`: detached pieces of the lung mask at least this big (mL)."""
    split_min_percent: float = Field(20.0, ge=0, le=50)
    """`lung_split_failed`: a side (right or left lung) below this share of the total lung volume (%)."""
    outside_body_max_ml: float = Field(1.0, ge=0)
    """`lung_outside_body`: more lung label than this (mL) outside the patient's body."""

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


Index = tuple[int, int, int]

_UPPER, _MIDDLE, _LOWER = "45653009", "72481006", "90572001"
"""SNOMED CT codes of the registry's lobe types (`type` in configs/labels/lobes.yaml): upper lobe, middle lobe
of the right lung, lower lobe. `lobes_out_of_order` finds the lobes by these codes, so any label map whose
names the registry knows is checked."""
BODY_PIXEL_MM = 1.5
"""In-plane pixel size the body mask is computed at (finer images are subsampled): the body outline is a
per-slice topology question, and a lung leak outside the body is far bigger than this."""


@dataclass
class _Piece:
    """A 26-connected component of a label other than its largest one."""

    voxels: int
    voxel: Index
    """One of its voxels (index into the label volume)."""
    touches: tuple[int, ...] = ()
    """The other labels next to it (looked up only for pieces big enough to be fragments)."""


@dataclass
class _Part:
    """Voxels of one label: HU values inside it, bounding box, component sizes (voxels, largest first),
    centroid (voxel index), a voxel of the largest component and the other components."""

    values: np.ndarray
    box: tuple[slice, ...] | None
    components: np.ndarray
    centroid: np.ndarray | None = None
    main: Index | None = None
    pieces: list[_Piece] = field(default_factory=list)

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


def _is_fragment(size: int, voxels: int, voxel_ml: float, qc: QcRanges) -> bool:
    """Whether a piece of `size` voxels of a structure of `voxels` is big enough to count as a fragment."""
    return size * voxel_ml >= qc.fragment_min_ml or size * 100.0 >= qc.fragment_min_percent * max(voxels, 1)


def _first(mask: np.ndarray, origin: np.ndarray) -> Index:
    """The first voxel of a non-empty mask, as an index of the volume the mask was cut from at `origin`."""
    found = np.unravel_index(int(np.argmax(mask)), mask.shape)
    return tuple(int(a + b) for a, b in zip(found, origin, strict=True))  # type: ignore[return-value]


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Mean voxel index of a non-empty mask, from two projections."""
    plane = mask.sum(axis=2, dtype=np.int64)
    profiles = (plane.sum(axis=1), plane.sum(axis=0), mask.sum(axis=(0, 1), dtype=np.int64))
    total = float(plane.sum())
    return np.array([np.dot(profile, np.arange(profile.size)) / total for profile in profiles])


def _neighbours(labels: np.ndarray, label: int, piece: np.ndarray, origin: np.ndarray) -> tuple[int, ...]:
    """Labels other than `label` and background in the 26-neighbourhood of a piece cut out at `origin`."""
    low = np.maximum(origin - 1, 0)
    high = np.minimum(origin + piece.shape + 1, labels.shape)
    mask = np.zeros(tuple(high - low), bool)
    mask[tuple(slice(a - b, a - b + n) for a, b, n in zip(origin, low, piece.shape, strict=True))] = piece
    ring = ndimage.binary_dilation(mask, _NEIGHBOURS_26) & ~mask
    found = np.unique(labels[tuple(slice(a, b) for a, b in zip(low, high, strict=True))][ring])
    return tuple(int(value) for value in found if value not in (0, label))


def _measure(hu: np.ndarray, labels: np.ndarray, label: int, box: tuple[slice, ...] | None, voxel_ml: float,
             qc: QcRanges) -> _Part:
    if box is None:
        return _Part(hu[:0, 0, 0], None, np.zeros(0, np.int64))
    mask = labels[box] == label
    components, count = ndimage.label(mask, structure=_NEIGHBOURS_26)
    counts = np.bincount(components.ravel(), minlength=count + 1)[1:]
    origin = np.array([part.start for part in box])
    part = _Part(hu[box][mask], box, np.sort(counts)[::-1], centroid=_centroid(mask) + origin)
    if count == 1:
        part.main = _first(mask, origin)
        return part
    largest, total = int(np.argmax(counts)) + 1, int(counts.sum())
    biggest = components == largest
    part.main = _first(biggest, origin)
    others = np.logical_xor(mask, biggest, out=biggest)      # every component but the largest (in place)
    where = np.nonzero(others)                         # the pieces' voxels only: few, unlike the box
    ids = components[where]
    order = np.argsort(ids, kind="stable")
    points = np.stack(where, axis=1)[order]
    ids = ids[order]
    for group in np.split(np.arange(ids.size), np.flatnonzero(np.diff(ids)) + 1):
        index, found = int(ids[group[0]]), points[group]
        size, low = int(counts[index - 1]), found.min(axis=0)
        touches: tuple[int, ...] = ()
        if _is_fragment(size, total, voxel_ml, qc):
            piece = components[tuple(slice(a, b + 1) for a, b in zip(low, found.max(axis=0), strict=True))] == index
            touches = _neighbours(labels, label, piece, origin + low)
        part.pieces.append(_Piece(size, tuple(int(a) for a in origin + found[0]), touches))  # type: ignore[arg-type]
    return part


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


def _lobe_flags(row: LobeRow, part: _Part, shape: Sequence[int], expected: bool, any_lung: bool) -> list[Flag]:
    flags = []
    if not expected:
        flags.append(Flag("unexpected_label", row.name,
                          f"label {row.label} is not in the label map: reported, but left out of the lung totals"))
    if expected and part.voxels == 0 and any_lung:
        flags.append(Flag("missing_lobe", row.name, f"{_readable(row.name)} (label {row.label}) has no voxels"))
    if part.box is not None and (faces := _edge_faces(part.box, shape)):
        flags.append(Flag("touches_fov_edge", row.name,
                          f"{_readable(row.name)} touches the edge of the field of view ({', '.join(faces)}): "
                          f"partial coverage, so its volume {row.volume_ml:.1f} mL is a lower bound"))
    return flags


def _group_edge_flag(row: LobeRow, members: Sequence[str], touching: set[str]) -> list[Flag]:
    cut = [name for name in members if name in touching]
    if not cut:
        return []
    return [Flag("touches_fov_edge", row.name,
                 f"{_readable(row.name)} includes {_join([_readable(n) for n in cut])}, which "
                 f"{'touches' if len(cut) == 1 else 'touch'} the edge of the "
                 f"field of view: partial coverage, so its volume {row.volume_ml:.1f} mL is a lower bound")]


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
            return [Flag("volume_out_of_range", row.name,
                         f"{_readable(row.name)} is {_beside(row.share_percent, low, high)} % of the total lung "
                         f"volume{note}, outside "
                         f"the plausible {low:g}-{high:g} % (published mean ± 3 SD)")]
    return []


def _beside(value: float, low: float, high: float) -> str:
    """`value` with one decimal, or two where one would print a bound it lies outside of (58.13 vs 58.1)."""
    text = f"{value:.1f}"
    return f"{value:.2f}" if float(text) in (low, high) else text


def _readable(name: str) -> str:
    """A row name as text: right_lung -> right lung, LUL -> LUL."""
    return name.replace("_", " ")


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ml_list(sizes: Sequence[int], voxel_ml: float) -> str:
    """'2.1 mL' or '2.1 + 1.3 = 3.4 mL' (largest first)."""
    sizes = sorted(sizes, reverse=True)
    text = " + ".join(f"{size * voxel_ml:.1f}" for size in sizes)
    return f"{text} mL" if len(sizes) == 1 else f"{text} = {sum(sizes) * voxel_ml:.1f} mL"


def _side_row(resolved: LabelMap, values: Sequence[int], names: Mapping[int, str], rows: set[str]) -> str:
    """The row standing for one side (a lung): the whole its labels are part of (right_lung), the label
    itself (a lung-only map), else the total."""
    for value in values:
        label = resolved[value]
        for name in (label.part_of, names[value]):
            if name in rows:
                return name
    return TOTAL


def _split_flags(resolved: LabelMap, names: Mapping[int, str], parts: Mapping[int, _Part], total: int,
                 qc: QcRanges, rows: set[str]) -> list[Flag]:
    """`lung_split_failed`: a side below `split_min_percent` of the lung volume (maps with both sides only)."""
    sides = {side: [v for v in resolved.side(side) if v in names] for side in ("right", "left")}
    if not total or not all(sides.values()):
        return []
    flags = []
    for side, other in (("right", "left"), ("left", "right")):
        voxels = sum(parts[v].voxels for v in sides[side])
        share = 100.0 * voxels / total
        if share >= qc.split_min_percent:
            continue
        row = _side_row(resolved, sides[side], names, rows)
        normal = qc.share_percent.get(row)
        expected = f"expected {normal[0]:g}-{normal[1]:g} %" if normal else "expected about half"
        if voxels == 0:
            text = (f"no {side} lung: all lung voxels carry {other}-side labels ({expected} on the {side}): the "
                    f"left/right split failed, or the {side} lung is absent (pneumonectomy, total collapse)")
        else:
            text = (f"{side} lung is {share:.1f} % of the total lung volume ({expected}; flagged below "
                    f"{qc.split_min_percent:g} %): the left/right split likely failed")
        flags.append(Flag("lung_split_failed", row, text))
    return flags


def _order_flags(resolved: LabelMap, names: Mapping[int, str], parts: Mapping[int, _Part],
                 affine: np.ndarray) -> list[Flag]:
    """`lobes_out_of_order`: centroids (RAS mm: +x patient right, +y anterior, +z superior) against anatomy."""
    centre = {v: affine[:3, :3] @ parts[v].centroid + affine[:3, 3] for v in names if parts[v].voxels}
    sides = {side: [v for v in resolved.side(side) if v in centre] for side in ("right", "left")}
    flags = []
    if sides["right"] and sides["left"]:
        def mean_x(values: list[int]) -> float:
            return sum(centre[v][0] * parts[v].voxels for v in values) / sum(parts[v].voxels for v in values)

        right, left = mean_x(sides["right"]), mean_x(sides["left"])
        if left >= right:
            lefts, rights = _join([names[v] for v in sides["left"]]), _join([names[v] for v in sides["right"]])
            flags.append(Flag("lobes_out_of_order", TOTAL,
                              f"the left-side labels ({_readable(lefts)}) lie {left - right:.0f} mm to the patient's "
                              f"right of the right-side ones ({_readable(rights)}): left and right are swapped "
                              "(labels or image orientation)"))
        else:
            for lv in sides["left"]:
                for rv in sides["right"]:
                    if centre[lv][0] >= centre[rv][0]:
                        flags.append(Flag("lobes_out_of_order", names[lv],
                                          f"{names[lv]}'s centre lies {centre[lv][0] - centre[rv][0]:.0f} mm to the "
                                          f"patient's right of {names[rv]}'s: a left lobe on the right side"))
    for values in sides.values():
        types = {v: resolved[v].type.value if resolved[v].type is not None else None for v in values}
        kind = {code: [v for v in values if types[v] == code] for code in (_UPPER, _MIDDLE, _LOWER)}
        for up in kind[_UPPER]:
            for low in kind[_LOWER]:
                if centre[up][2] <= centre[low][2]:
                    flags.append(Flag("lobes_out_of_order", names[up],
                                      f"{names[up]}'s centre lies {centre[low][2] - centre[up][2]:.0f} mm below "
                                      f"{names[low]}'s: upper and lower lobe labels look swapped"))
        for mid in kind[_MIDDLE]:
            for up in kind[_UPPER]:
                if centre[mid][2] >= centre[up][2]:
                    flags.append(Flag("lobes_out_of_order", names[mid],
                                      f"{names[mid]}'s centre lies {centre[mid][2] - centre[up][2]:.0f} mm above "
                                      f"{names[up]}'s: the middle lobe belongs below the upper lobe"))
            for low in kind[_LOWER]:
                if centre[mid][1] <= centre[low][1]:
                    flags.append(Flag("lobes_out_of_order", names[mid],
                                      f"{names[mid]}'s centre lies {centre[low][1] - centre[mid][1]:.0f} mm behind "
                                      f"{names[low]}'s: the middle lobe belongs in front of the lower lobe"))
    return flags


def _union_box(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))


def _piece_flags(labels: np.ndarray, resolved: LabelMap, names: Mapping[int, str], parts: Mapping[int, _Part],
                 voxel_ml: float, qc: QcRanges, rows: set[str]) -> list[Flag]:
    """`lobe_fragmented` and `lung_islands` from the pieces of each label (components other than its largest).

    One 26-connected labelling of the whole lung (every label of the map) in the lungs' bounding box tells the
    two apart: a piece in the same lung component as some label's main part is joined to the lung through
    other labels (a wrong boundary); a lung component holding no main part is a detached island. Only run
    when some label has more than one piece.
    """
    present = [v for v in names if parts[v].box is not None]
    pieces = [piece for v in present for piece in parts[v].pieces]
    if (sum(piece.voxels for piece in pieces) * voxel_ml < qc.island_min_ml
            and not any(_is_fragment(piece.voxels, parts[v].voxels, voxel_ml, qc)
                        for v in present for piece in parts[v].pieces)):
        return []                                       # only crumbs: neither an island nor a fragment possible
    box = _union_box([parts[v].box for v in present])  # type: ignore[misc]
    region = labels[box]
    unexpected = any(value not in names and part.voxels for value, part in parts.items())
    lung = np.isin(region, present) if unexpected else region != 0   # unexpected labels are not lung
    components, _ = ndimage.label(lung, structure=_NEIGHBOURS_26)
    origin = [part.start for part in box]

    def component(voxel: Index) -> int:
        return int(components[tuple(a - b for a, b in zip(voxel, origin, strict=True))])

    main = {component(parts[v].main) for v in present if parts[v].main is not None}
    flags = []
    islands: dict[int, dict[int, int]] = {}
    for value in present:
        part, fragments = parts[value], []
        for piece in part.pieces:
            where = component(piece.voxel)
            if where not in main:
                counts = islands.setdefault(where, {})
                counts[value] = counts.get(value, 0) + piece.voxels
            elif _is_fragment(piece.voxels, part.voxels, voxel_ml, qc):
                fragments.append(piece)
        if fragments:
            name = names[value]
            touching = sorted({names.get(v, f"label_{v}") for piece in fragments for v in piece.touches})
            share = 100.0 * sum(piece.voxels for piece in fragments) / part.voxels
            what = "a second piece" if len(fragments) == 1 else f"{len(fragments)} more pieces"
            split = ("lobe split" if resolved[value].part_of else
                     "left/right split" if resolved[value].laterality else "boundary")
            flags.append(Flag("lobe_fragmented", name,
                              f"{_readable(name)} has {what} of {_ml_list([p.voxels for p in fragments], voxel_ml)} "
                              f"({share:.0f} % of it) apart from its main part, inside the lung next to "
                              f"{_join([_readable(t) for t in touching]) or 'other labels'}: the {split} is likely "
                              "wrong there"))
    by_row: dict[str, list[int]] = {}
    for counts in islands.values():                     # an island is made of pieces only: their sum is its size
        size = sum(counts.values())
        if size * voxel_ml >= qc.island_min_ml:
            value = max(counts, key=counts.__getitem__)
            row = _side_row(resolved, [value], names, rows) if resolved[value].laterality else names[value]
            by_row.setdefault(row, []).append(size)
    lung_voxels = sum(parts[v].voxels for v in present)
    for row, found in by_row.items():
        what = "a detached island" if len(found) == 1 else f"{len(found)} detached islands"
        whose = "lung" if row == TOTAL else _readable(row)
        large = 100.0 * max(found) >= qc.fragment_min_percent * lung_voxels
        why = ("a large part of the lung cut off from the rest: check the labels" if large else
               "likely stray pieces (gas, airway, noise) or a small cut-off part of the lung")
        flags.append(Flag("lung_islands", row, f"{what} of {whose} mask ({_ml_list(found, voxel_ml)}) not connected "
                                               f"to the main lungs: {why}; counted in the volumes"))
    return flags


def _body_box(volume: Volume, box: tuple[slice, ...]) -> np.ndarray:
    """The patient's body (`medseg.infer.lungmask.body_mask`) on `box`: computed on the slices the box spans
    only, with in-plane pixels subsampled to about `BODY_PIXEL_MM`, and looked up per voxel of the box."""
    from medseg.infer.lungmask import body_mask

    matrix = volume.affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    axial = int(np.argmax(np.abs(matrix[2]) / spacing))          # the axis closest to superior: slices
    step = [1 if axis == axial else max(1, round(float(BODY_PIXEL_MM / spacing[axis]))) for axis in range(3)]
    start = [box[axis].start if axis == axial else 0 for axis in range(3)]
    crop = tuple(box[axis] if axis == axial else slice(0, volume.shape[axis], step[axis]) for axis in range(3))
    array = volume.array[crop]
    if sorted(array.shape)[1] < 3:                                  # too small to subsample: the whole image
        return body_mask(volume)[box]
    scale = np.diag([*step, 1]).astype(np.float64)
    scale[:3, 3] = start
    body = body_mask(Volume(array, volume.affine @ scale, tags=dict(volume.tags)))
    index = [np.minimum((np.arange(box[a].start, box[a].stop) - start[a] + step[a] // 2) // step[a],
                        body.shape[a] - 1) for a in range(3)]
    return body[np.ix_(*index)]


def _outside_flags(volume: Volume, labels: np.ndarray, names: Mapping[int, str], parts: Mapping[int, _Part],
                   voxel_ml: float, qc: QcRanges) -> list[Flag]:
    """`lung_outside_body`: more than `outside_body_max_ml` of lung labels outside the patient's body."""
    present = [v for v in names if parts[v].box is not None]
    box = _union_box([parts[v].box for v in present])  # type: ignore[misc]
    region = labels[box]
    outside = region[~_body_box(volume, box) & (region != 0)]
    counts = {v: int(np.count_nonzero(outside == v)) for v in present} if outside.size else {}
    total = sum(counts.values())
    if total * voxel_ml <= qc.outside_body_max_ml:
        return []
    detail = ", ".join(f"{names[v]} {n * voxel_ml:.1f} mL" for v, n in sorted(counts.items(), key=lambda i: -i[1])
                       if n)
    return [Flag("lung_outside_body", TOTAL,
                 f"{total * voxel_ml:.1f} mL of lung label lies outside the patient's body ({detail}; tolerated "
                 f"{qc.outside_body_max_ml:g} mL): the segmentation leaked into the air around the patient or the "
                 "table")]


def lobe_statistics(volume: Volume, labels: np.ndarray, label_map: LabelMap | str | Mapping[int, str] = "lobes",
                    qc: QcRanges | None = None, *, labels_source: str = "") -> LobeStatistics:
    """Volume, share and density statistics per lobe, per lung and for both lungs, with QC flags.

    `labels` must lie on the image grid (same shape). `label_map` is a registry name ("lobes", "lungs"), a
    model card's {value: name} or a `medseg.labels.LabelMap`; rows are named by each label's abbreviation
    (LUL) or name, label 0 is background. Right/left lung rows appear when the map holds all their lobes.
    The label-free QC checks (module docstring) need no reference; the outside-the-body check computes the
    patient's body on the slices that hold lung (CT in HU only).
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
    parts = {label: _measure(volume.array, labels, label, boxes[label - 1] if label <= len(boxes) else None,
                             voxel_ml, qc) for label in order}
    total_voxels = sum(parts[label].voxels for label in names)

    rows, flags = [], []
    for label in order:
        row = _row(names.get(label, f"label_{label}"), label, [parts[label]], total_voxels, voxel_ml, hu_ok)
        rows.append(row)
        flags += _lobe_flags(row, parts[label], volume.shape, label in names, total_voxels > 0)
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
        row_names = {row.name for row in rows}
        flags += _split_flags(resolved, names, parts, total_voxels, qc, row_names)
        flags += _order_flags(resolved, names, parts, volume.affine)
        flags += _piece_flags(labels, resolved, names, parts, voxel_ml, qc, row_names)
        if hu_ok:
            flags += _outside_flags(volume, labels, names, parts, voxel_ml, qc)
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
        row.flags = list(dict.fromkeys([flag.code for flag in flags if flag.label == row.name]
                                       + [flag.code for flag in case_flags]))
    flags += case_flags

    return LobeStatistics(rows=rows, flags=flags, voxel_ml=voxel_ml, image_source=volume.source,
                          labels_source=labels_source, shape=volume.shape, spacing_mm=volume.spacing,
                          label_map=names, qc=qc)
