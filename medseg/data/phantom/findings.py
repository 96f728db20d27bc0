"""Findings placed in the phantom: nodules, pleural effusion, pneumothorax, emphysema, consolidation.

Each finding is a frozen dataclass. Diffuse ones (`apply`) change tissue, HU and lobe labels of the
pleural-space points they cover; round ones (`spheres`) are painted in 3D. Positions are in the body
frame (mm, RAS, origin at the carina); volumes asked for are solved on the model's calibration grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.data.phantom.tissues import Tissue
from medseg.labels import label_map

if TYPE_CHECKING:
    from medseg.data.phantom.model import ChestModel

__all__ = ["FINDING_KINDS", "Consolidation", "Effusion", "Emphysema", "Nodule", "Pneumothorax", "Sphere",
           "parse_finding_kinds"]

FINDING_KINDS = ("nodule", "effusion", "pneumothorax", "emphysema", "consolidation", "cardiomegaly")


def parse_finding_kinds(value: str) -> list[str] | str | None:
    """A `--findings` / `synthesize.findings` value: `random` -> None (each kind at its rate), `balanced` (kept,
    see `ct_case.balanced_findings`), `none` -> [], else the comma-listed kinds; ValueError names unknown ones."""
    if value == "random":
        return None
    if value == "balanced":
        return value
    kinds = [] if value == "none" else [part.strip() for part in value.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in FINDING_KINDS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; use random, balanced, none or a comma list of "
                         f"{', '.join(FINDING_KINDS)}")
    return kinds


_LOBE_NAMES = label_map("lobes").short_names()
_LUNG_CODES = (Tissue.LUNG, Tissue.FISSURE)


@dataclass(frozen=True)
class Sphere:
    """A ball painted in 3D: centre (body frame, mm), radius (mm), tissue code and HU."""

    centre: tuple[float, float, float]
    radius: float
    tissue: Tissue
    hu: float


def side_name(side: int) -> str:
    return "right" if side > 0 else "left"


def dependent_height(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: int,
                     meniscus: float = 0.0) -> np.ndarray:
    """Height against gravity (mm): y when supine (fluid lies posteriorly), z when upright.

    `meniscus` > 0 lowers the height laterally (fluid climbs the chest wall); < 0 raises it (air
    collects laterally and at the apex).
    """
    lateral = np.clip((side * x) / model.shape.cavity_half_width, 0.0, 1.0)
    if model.posture == "supine":               # fluid follows the curved posterior chest wall
        return y - meniscus * 1.5 * (lateral - 0.45) ** 2
    return z - meniscus * lateral


@dataclass(frozen=True)
class Effusion:
    """Free pleural fluid in the dependent part of one pleural space (transudate ~5, exudate ~15 HU)."""

    side: int
    volume_ml: float
    level: float
    hu: float
    meniscus: float = 40.0
    kind: str = "effusion"

    def region(self, model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        same_side = (x >= 0) if self.side > 0 else (x < 0)
        return same_side & (dependent_height(model, x, y, z, self.side, self.meniscus) < self.level)

    def apply(self, model: ChestModel, x, y, z, labels, codes, values, patches) -> None:
        inside = self.region(model, x, y, z)
        codes[inside] = Tissue.EFFUSION
        values[inside] = self.hu
        labels[inside] = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "side": side_name(self.side), "requested_volume_ml": round(self.volume_ml, 1),
                "hu": round(self.hu, 1), "fluid_level_mm": round(self.level, 1)}


@dataclass(frozen=True)
class Pneumothorax:
    """Air between the chest wall and a retracted lung, in the non-dependent part of one pleural space."""

    side: int
    volume_ml: float
    level: float
    meniscus: float = -40.0
    kind: str = "pneumothorax"

    def apply(self, model: ChestModel, x, y, z, labels, codes, values, patches) -> None:
        same_side = (x >= 0) if self.side > 0 else (x < 0)
        height = dependent_height(model, x, y, z, self.side, self.meniscus)
        air = same_side & (height > self.level)
        pleura = same_side & (height > self.level - 1.2) & ~air & (labels > 0)
        values[pleura] += 300.0                                    # visceral pleural line
        codes[air] = Tissue.PNEUMOTHORAX
        values[air] = -1000.0
        labels[air] = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "side": side_name(self.side), "requested_volume_ml": round(self.volume_ml, 1),
                "air_boundary_mm": round(self.level, 1)}


@dataclass(frozen=True)
class Emphysema:
    """Low-attenuation lung near -950 HU, in chosen lobes or diffusely; patchy unless panlobular."""

    pattern: str                   # "lobar" or "diffuse"
    lobes: tuple[int, ...]
    patch_threshold: float         # -inf: the whole region; else patches above it
    hu: float
    bullae: tuple[Sphere, ...] = ()
    kind: str = "emphysema"

    def apply(self, model: ChestModel, x, y, z, labels, codes, values, patches) -> None:
        region = np.isin(labels, self.lobes) & np.isin(codes, _LUNG_CODES)
        if np.isfinite(self.patch_threshold):
            region &= patches > self.patch_threshold
        codes[region] = Tissue.EMPHYSEMA
        values[region] = self.hu + 0.25 * (values[region] - model.hu.lung)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "lobes": [_LOBE_NAMES[lobe] for lobe in self.lobes],
                "hu": round(self.hu, 1), "bullae": len(self.bullae)}


@dataclass(frozen=True)
class Consolidation:
    """Airless lung (+25..45 HU) filling part of one lobe, with a ground-glass rim; airways stay visible."""

    lobe: int
    centre: tuple[float, float, float]
    radius: float
    hu: float
    kind: str = "consolidation"

    def apply(self, model: ChestModel, x, y, z, labels, codes, values, patches) -> None:
        cx, cy, cz = self.centre
        distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (self.radius * (1.0 + 0.2 * patches))
        in_lobe = (labels == self.lobe) & np.isin(codes, (*_LUNG_CODES, Tissue.EMPHYSEMA))
        rim = in_lobe & (distance >= 1.0) & (distance < 1.25)
        core = in_lobe & (distance < 1.0)
        codes[rim] = Tissue.GROUND_GLASS
        values[rim] = np.maximum(values[rim], -600.0 + 40.0 * patches[rim])
        codes[core] = Tissue.CONSOLIDATION
        values[core] = self.hu

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "lobe": _LOBE_NAMES[self.lobe], "centre_body_mm": [round(v, 1) for v in self.centre],
                "radius_mm": round(self.radius, 1), "hu": round(self.hu, 1)}


@dataclass(frozen=True)
class Nodule:
    """A solid (soft tissue) or ground-glass nodule, lobulated as a cluster of overlapping balls."""

    subtype: str                   # "solid" or "ground_glass"
    lobe: int
    centre: tuple[float, float, float]
    diameter_mm: float
    hu: float
    lobules: tuple[Sphere, ...]
    abuts: str | None = None       # "pleura" or "fissure" for a tumour touching it, else None
    kind: str = "nodule"

    @property
    def spheres(self) -> tuple[Sphere, ...]:
        return self.lobules

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "subtype": self.subtype, "lobe": _LOBE_NAMES[self.lobe],
                "centre_body_mm": [round(v, 1) for v in self.centre], "diameter_mm": round(self.diameter_mm, 1),
                "hu": round(self.hu, 1), "abuts": self.abuts}


@dataclass(frozen=True)
class Cardiomegaly:
    """An enlarged heart (scale 1.33-1.55: cardiothoracic ratio above 0.5 on a PA film)."""

    heart_scale: float
    kind: str = "cardiomegaly"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "heart_scale": round(self.heart_scale, 3)}


def nodule(rng: np.random.Generator, lobe: int, centre: np.ndarray, subtype: str, diameter: float, *,
           abuts: str | None = None) -> Nodule:
    """A lobulated nodule of about `diameter` mm centred at `centre` (`abuts`: what it touches, if anything)."""
    hu = rng.uniform(20.0, 60.0) if subtype == "solid" else rng.uniform(-680.0, -480.0)
    tissue = Tissue.NODULE if subtype == "solid" else Tissue.GROUND_GLASS
    radius = diameter / 2.0
    lobules = [Sphere(tuple(float(v) for v in centre), radius * 0.85, tissue, hu)]
    for _ in range(int(rng.integers(1, 4))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = centre + direction * radius * rng.uniform(0.3, 0.5)
        lobules.append(Sphere(tuple(float(v) for v in offset), radius * rng.uniform(0.45, 0.65), tissue, hu))
    return Nodule(subtype=subtype, lobe=lobe, centre=tuple(float(v) for v in centre), diameter_mm=diameter,
                  hu=hu, lobules=tuple(lobules), abuts=abuts)
