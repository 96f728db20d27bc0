"""Choose the series to process from a study, with a reason for every choice."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.dicom_discovery import Series

__all__ = ["Selection", "SelectionRules", "SeriesVerdict", "obliquity_deg", "select_series"]

_RANKINGS = ("axial", "original", "most_slices", "thinnest")


@dataclass(frozen=True)
class SelectionRules:
    """Which series qualify and how the qualifying ones are ranked (first key wins)."""

    modalities: tuple[str, ...] | None = ("CT",)
    """Accepted modalities; None accepts any. A missing Modality tag is accepted with a note."""
    exclude_image_types: tuple[str, ...] = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCREEN SAVE")
    near_axial_deg: float = 30.0
    """Series whose slice normal is within this angle of the head-foot axis count as axial."""
    max_obliquity_deg: float | None = None
    """Refuse series tilted further than this from axial; None keeps them (ranked after axial ones)."""
    min_slices: int = 1
    rank_by: tuple[str, ...] = ("axial", "most_slices", "thinnest", "original")

    def __post_init__(self) -> None:
        unknown = [key for key in self.rank_by if key not in _RANKINGS]
        if unknown:
            raise ValueError(f"unknown ranking key(s) {unknown}; choose from {list(_RANKINGS)}")


@dataclass
class SeriesVerdict:
    series: Series
    eligible: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**self.series.summary(), "eligible": self.eligible, "reasons": self.reasons}


@dataclass
class Selection:
    chosen: Series
    reason: str
    verdicts: list[SeriesVerdict]

    def summary(self) -> dict[str, Any]:
        return {
            "selected": self.chosen.key,
            "reason": self.reason,
            "series": [v.summary() for v in self.verdicts],
        }


def obliquity_deg(series: Series) -> float | None:
    """Angle in degrees between the slice normal and the head-foot (z) axis."""
    iop = series.first.orientation
    if iop is None:
        return None
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm == 0:
        return None
    return math.degrees(math.acos(min(1.0, abs(normal[2]) / norm)))


def _judge(series: Series, rules: SelectionRules) -> SeriesVerdict:
    reasons: list[str] = []
    modality = (series.modality or "").upper()
    if rules.modalities is not None:
        if not modality:
            reasons.append("Modality tag missing: accepted")
        elif modality not in rules.modalities:
            return SeriesVerdict(series, False, [f"modality {modality} is not {'/'.join(rules.modalities)}"])
    excluded = set(series.image_type) & set(rules.exclude_image_types)
    if excluded:
        return SeriesVerdict(series, False, [f"image type {'/'.join(sorted(excluded))} (scout/localizer)"])
    if series.slice_count < rules.min_slices:
        return SeriesVerdict(series, False, [f"{series.slice_count} slices < minimum {rules.min_slices}"])
    angle = obliquity_deg(series)
    if angle is None:
        return SeriesVerdict(series, False, ["no ImageOrientationPatient"])
    if rules.max_obliquity_deg is not None and angle > rules.max_obliquity_deg:
        return SeriesVerdict(
            series, False, [f"not axial: slice normal {angle:.1f} deg from head-foot axis"]
        )
    plane = "axial" if angle <= rules.near_axial_deg else "not axial"
    reasons.append(f"{series.slice_count} slices, {plane} ({angle:.1f} deg from axial)")
    return SeriesVerdict(series, True, reasons)


def _rank_key(series: Series, rules: SelectionRules) -> tuple[float, ...]:
    keys: list[float] = []
    for name in rules.rank_by:
        if name == "axial":
            angle = obliquity_deg(series)
            keys.append(0 if angle is not None and angle <= rules.near_axial_deg else 1)
        elif name == "most_slices":
            keys.append(-series.slice_count)
        elif name == "thinnest":
            keys.append(series.slice_thickness if series.slice_thickness else math.inf)
        elif name == "original":
            keys.append(0 if "ORIGINAL" in series.image_type else 1)
    return tuple(keys)


def select_series(series: list[Series], rules: SelectionRules | None = None, *, source: str = "") -> Selection:
    """Pick the best series under `rules`; raise `InputError` listing why each one was refused."""
    rules = rules or SelectionRules()
    if not series:
        raise InputError("no DICOM image series found", source)
    verdicts = [_judge(s, rules) for s in series]
    eligible = [v for v in verdicts if v.eligible]
    if not eligible:
        why = "; ".join(f"{v.series.description or v.series.key}: {v.reasons[0]}" for v in verdicts)
        raise InputError(f"no series qualifies ({why})", source)
    ranked = sorted(eligible, key=lambda v: _rank_key(v.series, rules))
    best = ranked[0]
    reason = ", ".join(best.reasons)
    if len(ranked) > 1:
        reason += f"; ranked first of {len(ranked)} eligible series by {', '.join(rules.rank_by)}"
    best.reasons.append("selected")
    return Selection(best.series, reason, verdicts)
