"""Build one synthetic chest: anatomy, fissures solved to published lobe shares, findings and trees.

A `ChestModel` is independent of any voxel grid; `medseg.data.phantom.render` images it. Each realism
component draws from its own random stream (derived from the case seed and the component's name), so
switching one component off leaves every other one unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.data.phantom import findings as fnd
from medseg.data.phantom.anatomy import (
    ChestShape,
    FissureShape,
    Pose,
    TissueHU,
    sample_chest_shape,
    sample_fissures,
    sample_lobe_shares,
    sample_pose,
    sample_tissue_hu,
)
from medseg.data.phantom.shapes import LOBES, lobe_coordinates, lobe_labels, pleural_space
from medseg.data.phantom.tissues import Contrast, Tissue
from medseg.data.phantom.trees import Segments, bronchovascular_tree, grow_tree

__all__ = ["COMPONENTS", "ChestModel", "Components", "Tube", "build_chest_model", "component_rng"]

CALIBRATION_STEP_MM = 3.0


@dataclass(frozen=True)
class Components:
    """Realism components; each can be switched off (`Components(vessels=False)`)."""

    bones: bool = True
    vessels: bool = True
    airways: bool = True
    fissures: bool = True
    texture: bool = True
    findings: bool = True
    partial_volume: bool = True
    noise: bool = True
    blur: bool = True
    pose: bool = True
    contrast: bool = True          # intravenous contrast, when the case asks for it (CT cases)
    surroundings: bool = True      # table, mattress, arms beside the chest, blankets, ECG leads, FOV circle
    artifacts: bool = True         # kernel-shaped non-stationary noise, streaks, beam hardening

    @classmethod
    def without(cls, names: Iterable[str]) -> Components:
        names = list(names)
        unknown = sorted(set(names) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown phantom component(s) {unknown}; choose from {list(COMPONENTS)}")
        return cls(**{name: False for name in names})


COMPONENTS = tuple(f.name for f in fields(Components))


@dataclass(frozen=True)
class Tube:
    """A polyline tube in the body frame (great vessels, trachea, main bronchi, oesophagus)."""

    name: str
    points: tuple[tuple[float, float, float], ...]
    radius: float
    tissue: Tissue
    hu: float

    def segments(self) -> Segments:
        points = np.array(self.points, dtype=float)
        radius = np.full(len(points) - 1, self.radius)
        return Segments(points[:-1], points[1:], radius)


@dataclass
class ChestModel:
    """Everything needed to image one synthetic chest, in the body frame."""

    seed: int
    shape: ChestShape
    fissures: dict[str, FissureShape]
    hu: TissueHU
    pose: Pose
    posture: str
    components: Components
    lobe_shares: dict[str, float]
    findings: list[Any] = field(default_factory=list)
    tubes: list[Tube] = field(default_factory=list)
    arteries: Segments | None = None
    veins: Segments | None = None
    airway_walls: Segments | None = None
    airway_lumens: Segments | None = None
    lung_extent_mm: tuple[np.ndarray, np.ndarray] | None = None
    contrast: Contrast | None = None

    def diffuse_findings(self) -> list[Any]:
        if not self.components.findings:
            return []
        return [f for f in self.findings if hasattr(f, "apply")]

    def spheres(self) -> list[fnd.Sphere]:
        if not self.components.findings:
            return []
        balls = []
        for finding in self.findings:
            balls.extend(getattr(finding, "spheres", ()))
            balls.extend(getattr(finding, "bullae", ()))
        return balls

    def finding_kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings}) if self.components.findings else []


def component_rng(seed: int, name: str) -> np.random.Generator:
    """An independent random stream for one component of one case."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


@dataclass
class _Calibration:
    """Pleural-space points of a coarse body-frame grid, with lobe labels once fissures are solved."""

    grid_shape: tuple[int, int, int]
    origin: np.ndarray
    mask: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    labels: np.ndarray | None = None

    @property
    def voxel_ml(self) -> float:
        return CALIBRATION_STEP_MM**3 / 1000.0

    def label_volume(self) -> np.ndarray:
        volume = np.zeros(self.grid_shape, dtype=np.uint8)
        volume[self.mask] = self.labels
        return volume


def _calibration_grid(model: ChestModel) -> _Calibration:
    s = model.shape
    step = CALIBRATION_STEP_MM
    xs = np.arange(-s.cavity_half_width * 1.1, s.cavity_half_width * 1.1, step)
    ys = np.arange(-s.cavity_back - 5.0, s.cavity_front + 5.0, step)
    zs = np.arange(s.dome_left_z - 1.6 * s.dome_depth - 10.0, s.apex_z + 5.0, step)
    x, y, z = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32), zs.astype(np.float32), indexing="ij")
    mask = pleural_space(model, x, y, z)
    return _Calibration(grid_shape=mask.shape, origin=np.array([xs[0], ys[0], zs[0]]), mask=mask,
                        x=x[mask], y=y[mask], z=z[mask])


def _solve_fissure_offsets(model: ChestModel, grid: _Calibration) -> None:
    """Place the fissures so that the five lobes take the case's sampled volume shares."""
    shares = model.lobe_shares
    heights = lobe_coordinates(model, grid.x, grid.y, grid.z)
    left, right = grid.x < 0, grid.x >= 0
    f = model.fissures
    lower_left = shares["LLL"] / (shares["LLL"] + shares["LUL"])
    f["left_oblique"] = replace(f["left_oblique"], offset=float(np.quantile(heights["left_oblique"][left], lower_left)))
    right_total = shares["RUL"] + shares["RML"] + shares["RLL"]
    offset = float(np.quantile(heights["right_oblique"][right], shares["RLL"] / right_total))
    f["right_oblique"] = replace(f["right_oblique"], offset=offset)
    upper = right & (heights["right_oblique"] >= offset)
    middle = shares["RML"] / (shares["RML"] + shares["RUL"])
    f["right_horizontal"] = replace(f["right_horizontal"],
                                    offset=float(np.quantile(heights["right_horizontal"][upper], middle)))
    grid.labels, _ = lobe_labels(model, grid.x, grid.y, grid.z)


def _pick_point(rng: np.random.Generator, grid: _Calibration, allowed: np.ndarray, min_depth_mm: float
                ) -> np.ndarray | None:
    """A random calibration point in `allowed` at least `min_depth_mm` from its border (or the deepest one)."""
    volume = np.zeros(grid.grid_shape, dtype=bool)
    volume[grid.mask] = allowed
    if not volume.any():
        return None
    depth = ndimage.distance_transform_edt(volume, sampling=CALIBRATION_STEP_MM)[grid.mask]
    candidates = np.flatnonzero(allowed & (depth >= min_depth_mm))
    if not candidates.size:
        candidates = np.array([int(np.argmax(np.where(allowed, depth, -1)))])
    index = int(rng.choice(candidates))
    jitter = rng.uniform(-0.5, 0.5, 3) * CALIBRATION_STEP_MM
    return np.array([grid.x[index], grid.y[index], grid.z[index]]) + jitter


def _pick_border_point(rng: np.random.Generator, grid: _Calibration, allowed: np.ndarray, radius: float
                       ) -> tuple[np.ndarray | None, str | None]:
    """A calibration point in `allowed` close enough to its border for a ball of `radius` to touch it.

    Returns the point and what the ball touches: "fissure" (the nearest point outside is another lobe) or
    "pleura" (chest wall, mediastinum, diaphragm or pleural fluid); (None, None) when no point qualifies.
    """
    volume = np.zeros(grid.grid_shape, dtype=bool)
    volume[grid.mask] = allowed
    if not volume.any():
        return None, None
    depth, nearest = ndimage.distance_transform_edt(volume, sampling=CALIBRATION_STEP_MM, return_indices=True)
    depth = depth - CALIBRATION_STEP_MM / 2                        # the border lies between voxel centres
    inside = np.argwhere(volume & (depth >= max(4.5, 0.3 * radius)) & (depth <= 0.85 * radius))
    if not len(inside):
        return None, None
    point = inside[int(rng.integers(len(inside)))]
    outside = tuple(int(nearest[axis][tuple(point)]) for axis in range(3))
    labels = grid.label_volume()
    abuts = "fissure" if labels[outside] not in (0, labels[tuple(point)]) else "pleura"
    centre = grid.origin + point * CALIBRATION_STEP_MM
    return centre.astype(float), abuts


def _sample_findings(model: ChestModel, grid: _Calibration, kinds: Iterable[str], rng: np.random.Generator
                     ) -> None:
    """Place each requested finding kind with case-specific size, side/lobe and attenuation."""
    kinds = list(kinds)
    free = np.ones(grid.x.shape, dtype=bool)       # calibration points still normal lung
    for kind in ("effusion", "pneumothorax"):
        if kind not in kinds:
            continue
        side = int(rng.choice([-1, 1]))
        on_side = (grid.x >= 0) if side > 0 else (grid.x < 0)
        side_volume = on_side.sum() * grid.voxel_ml
        fraction = rng.uniform(0.06, 0.25) if kind == "effusion" else rng.uniform(0.08, 0.3)
        meniscus = 40.0 if kind == "effusion" else -40.0
        height = fnd.dependent_height(model, grid.x, grid.y, grid.z, side, meniscus)[on_side]
        if kind == "effusion":
            level = float(np.quantile(height, fraction))
            finding = fnd.Effusion(side=side, volume_ml=fraction * side_volume, level=level,
                                   hu=float(rng.uniform(3.0, 22.0)), meniscus=meniscus)
            free &= ~(on_side & (fnd.dependent_height(model, grid.x, grid.y, grid.z, side, meniscus) < level))
        else:
            level = float(np.quantile(height, 1.0 - fraction))
            finding = fnd.Pneumothorax(side=side, volume_ml=fraction * side_volume, level=level, meniscus=meniscus)
            free &= ~(on_side & (fnd.dependent_height(model, grid.x, grid.y, grid.z, side, meniscus) > level - 3))
        model.findings.append(finding)
    if "emphysema" in kinds:
        pattern = str(rng.choice(["lobar", "diffuse"], p=[0.6, 0.4]))
        lobes = (LOBES["LUL"], LOBES["RUL"]) if pattern == "lobar" and rng.uniform() < 0.7 else (
            (int(rng.integers(1, 6)),) if pattern == "lobar" else tuple(LOBES.values()))
        threshold = float("-inf") if rng.uniform() < 0.3 else float(rng.uniform(-0.4, 0.5))
        bullae = []
        for _ in range(int(rng.integers(0, 4))):
            radius = float(rng.uniform(5.0, 18.0))
            centre = _pick_point(rng, grid, free & np.isin(grid.labels, lobes), radius + 3.0)
            if centre is not None:
                bullae.append(fnd.Sphere(tuple(float(v) for v in centre), radius, Tissue.EMPHYSEMA, -995.0))
        model.findings.append(fnd.Emphysema(pattern=pattern, lobes=lobes, patch_threshold=threshold,
                                            hu=float(rng.uniform(-965.0, -945.0)), bullae=tuple(bullae)))
    if "consolidation" in kinds:
        lobe = int(rng.integers(1, 6))
        radius = float(rng.uniform(18.0, 40.0))
        centre = _pick_point(rng, grid, free & (grid.labels == lobe), 8.0)
        if centre is not None:
            model.findings.append(fnd.Consolidation(lobe=lobe, centre=tuple(float(v) for v in centre),
                                                    radius=radius, hu=float(rng.uniform(25.0, 45.0))))
    if "nodule" in kinds:
        placement = component_rng(model.seed, "nodule_placement")   # own stream: other draws stay the same
        for _ in range(int(rng.choice([1, 1, 2, 3]))):
            subtype = "solid" if rng.uniform() < 0.75 else "ground_glass"
            low, high = (4.0, 30.0) if subtype == "solid" else (8.0, 25.0)
            diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            lobe = int(rng.choice(list(LOBES.values()), p=_lobe_probabilities(model)))
            centre, abuts = None, None
            if placement.uniform() < 0.4:           # juxtapleural / perifissural tumours, sometimes large masses
                if subtype == "solid" and placement.uniform() < 0.3:
                    diameter = float(placement.uniform(30.0, 55.0))
                diameter = max(diameter, 10.0)
                centre, abuts = _pick_border_point(placement, grid, free & (grid.labels == lobe), diameter / 2)
            if centre is None:
                centre = _pick_point(rng, grid, free & (grid.labels == lobe), diameter / 2 + 4.0)
            if centre is not None:
                model.findings.append(fnd.nodule(rng, lobe, centre, subtype, diameter, abuts=abuts))
    if "cardiomegaly" in kinds:
        model.findings.append(fnd.Cardiomegaly(heart_scale=model.shape.heart_scale))


def _lobe_probabilities(model: ChestModel) -> list[float]:
    shares = np.array([model.lobe_shares[name] for name in LOBES])
    return list(shares / shares.sum())


def _mediastinal_tubes(model: ChestModel) -> list[Tube]:
    """Trachea, main bronchi, oesophagus, aorta, pulmonary arteries and superior vena cava."""
    s, hu = model.shape, model.hu
    top = s.apex_z + 150.0
    tracheal_y = s.spine_y + 40.0
    cx, cy, cz = s.heart_centre
    r = s.aorta_radius
    spine_y = s.spine_y
    aorta = ((cx + 18.0, cy - 5.0, cz + 35.0), (8.0, 12.0, 25.0), (-2.0, -2.0, 42.0),
             (-18.0, spine_y + 22.0, 32.0), (-22.0, spine_y + 18.0, 0.0), (-16.0, spine_y + 16.0, -400.0))
    trunk = ((cx + 5.0, cy + 20.0, cz + 30.0), (-8.0, 6.0, -12.0))
    return [
        Tube("trachea wall", ((0.0, tracheal_y, top), (0.0, tracheal_y, 0.0)), 11.0, Tissue.AIRWAY_WALL, 30.0),
        Tube("trachea", ((0.0, tracheal_y, top), (0.0, tracheal_y, 0.0)), 8.5, Tissue.AIRWAY_AIR, -1000.0),
        Tube("right main bronchus wall", ((0.0, tracheal_y, 0.0), (24.0, tracheal_y, -17.0)), 8.5,
             Tissue.AIRWAY_WALL, 30.0),
        Tube("right main bronchus", ((0.0, tracheal_y, 0.0), (24.0, tracheal_y, -17.0)), 6.5,
             Tissue.AIRWAY_AIR, -1000.0),
        Tube("left main bronchus wall", ((0.0, tracheal_y, 0.0), (-36.0, tracheal_y - 3.0, -32.0)), 8.0,
             Tissue.AIRWAY_WALL, 30.0),
        Tube("left main bronchus", ((0.0, tracheal_y, 0.0), (-36.0, tracheal_y - 3.0, -32.0)), 6.0,
             Tissue.AIRWAY_AIR, -1000.0),
        Tube("oesophagus", ((-4.0, spine_y + 23.0, top), (-12.0, spine_y + 23.0, s.dome_left_z - 10.0)), 8.0,
             Tissue.MUSCLE, hu.muscle - 10.0),
        Tube("aorta", aorta, r, Tissue.BLOOD, hu.blood),
        Tube("pulmonary trunk", trunk, 13.0, Tissue.BLOOD, hu.blood),
        Tube("right pulmonary artery", ((-8.0, 6.0, -12.0), (40.0, 0.0, -20.0)), 10.0, Tissue.BLOOD, hu.blood),
        Tube("left pulmonary artery", ((-8.0, 6.0, -12.0), (-38.0, -8.0, -10.0)), 10.0, Tissue.BLOOD, hu.blood),
        Tube("superior vena cava", ((27.0, 10.0, top), (24.0, 8.0, cz + 40.0)), 10.0, Tissue.BLOOD, hu.blood),
    ]


def _territory_points(rng: np.random.Generator, grid: _Calibration, lobe: int, allowed: np.ndarray,
                      count: int) -> np.ndarray:
    candidates = np.flatnonzero(allowed & (grid.labels == lobe))
    if not candidates.size:
        return np.zeros((0, 3))
    chosen = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    points = np.stack([grid.x[chosen], grid.y[chosen], grid.z[chosen]], axis=1).astype(float)
    return points + rng.uniform(-0.5, 0.5, points.shape) * CALIBRATION_STEP_MM


def _grow_trees(model: ChestModel, grid: _Calibration, rng: np.random.Generator, points_per_litre: float) -> None:
    """Pulmonary arteries with bronchi from each hilum, and veins from the left atrium, per lobe."""
    allowed = np.ones(grid.x.shape, dtype=bool)
    for finding in model.diffuse_findings():
        if finding.kind in ("effusion", "pneumothorax"):
            codes = np.full(grid.x.shape, Tissue.LUNG, dtype=np.uint8)
            labels = grid.labels.copy()
            finding.apply(model, grid.x, grid.y, grid.z, labels, codes, np.zeros(grid.x.shape, np.float32),
                          np.zeros(grid.x.shape, np.float32))
            allowed &= labels > 0
    s = model.shape
    tracheal_y = s.spine_y + 40.0
    cx, cy, cz = s.heart_centre
    arteries, veins, walls, lumens = [], [], [], []
    lungs = {1: (LOBES["RUL"], LOBES["RML"], LOBES["RLL"]), -1: (LOBES["LUL"], LOBES["LLL"])}
    for side, lobes in lungs.items():
        volumes = [np.count_nonzero(grid.labels == lobe) * grid.voxel_ml / 1000.0 for lobe in lobes]
        artery_points = [_territory_points(rng, grid, lobe, allowed, max(8, int(points_per_litre * litres)))
                         for lobe, litres in zip(lobes, volumes, strict=True)]
        vein_points = [_territory_points(rng, grid, lobe, allowed, max(8, int(0.8 * points_per_litre * litres)))
                       for lobe, litres in zip(lobes, volumes, strict=True)]
        bronchus_end = np.array([24.0, tracheal_y, -17.0]) if side > 0 else np.array([-36.0, tracheal_y - 3.0, -32.0])
        artery_end = np.array([40.0, 0.0, -20.0]) if side > 0 else np.array([-38.0, -8.0, -10.0])
        hilum = 0.5 * (bronchus_end + artery_end) + np.array([side * 10.0, 0.0, -8.0])
        separation = artery_end - bronchus_end
        half = float(np.linalg.norm(separation)) / 2.0
        a, w, lu = bronchovascular_tree(hilum, separation / (2 * half), half, artery_points, root_radius=7.5)
        arteries.append(a)
        walls.append(w)
        lumens.append(lu)
        atrium = np.array([cx + side * 28.0 + 10.0, cy - 30.0, cz + 18.0])
        vein = grow_tree(atrium, vein_points, root_radius=6.5, min_radius=0.45)
        veins.append(Segments(vein.start, vein.end, vein.radius))
    model.arteries = Segments.concat(arteries)
    model.veins = Segments.concat(veins)
    model.airway_walls = Segments.concat(walls)
    model.airway_lumens = Segments.concat(lumens)


def build_chest_model(seed: int, *, findings: Iterable[str] = (), posture: str = "supine",
                      components: Components | None = None, vessel_density: float = 1500.0,
                      contrast: Contrast | None = None, extra_fat_mm: float = 0.0) -> ChestModel:
    """Sample one chest for `seed` with the given finding kinds (see `findings.FINDING_KINDS`).

    `posture` is "supine" (CT: fluid posterior, air anterior) or "upright" (PA radiograph: fluid at the
    bases, air at the apex). `vessel_density` is tree end points per litre of lung (more = finer vessels).
    `contrast` sets the blood attenuation (`tissues.sample_contrast`; None: no contrast) and `extra_fat_mm`
    thickens the subcutaneous fat (a heavier patient; the thoracic cavity and lungs stay the same).
    """
    kinds = list(findings)
    unknown = sorted(set(kinds) - set(fnd.FINDING_KINDS))
    if unknown:
        raise ValueError(f"unknown finding kind(s) {unknown}; choose from {list(fnd.FINDING_KINDS)}")
    if posture not in ("supine", "upright"):
        raise ValueError(f"posture must be 'supine' or 'upright', not {posture!r}")
    components = components or Components()
    anatomy_rng = component_rng(seed, "anatomy")
    # drawn from their own streams, so the same seed gives the same patient with or without these findings
    heart_scale = float(component_rng(seed, "cardiomegaly").uniform(1.33, 1.55)) if "cardiomegaly" in kinds else None
    hyperinflation = float(component_rng(seed, "hyperinflation").uniform(0.3, 1.0)) if "emphysema" in kinds else 0.0
    shape = sample_chest_shape(anatomy_rng, heart_scale=heart_scale, hyperinflation=hyperinflation)
    if extra_fat_mm > 0:
        shape = _with_extra_fat(shape, extra_fat_mm)
    fissure_list = sample_fissures(component_rng(seed, "fissures"), shape)
    names = ("left_oblique", "right_oblique", "right_horizontal")
    model = ChestModel(
        seed=seed, shape=shape, fissures=dict(zip(names, fissure_list, strict=True)),
        hu=sample_tissue_hu(component_rng(seed, "tissue_hu")),
        pose=sample_pose(component_rng(seed, "pose")) if components.pose else Pose(),
        posture=posture, components=components, lobe_shares=sample_lobe_shares(component_rng(seed, "lobe_shares")),
    )
    grid = _calibration_grid(model)
    _solve_fissure_offsets(model, grid)
    points = np.stack([grid.x, grid.y, grid.z], axis=1)
    model.lung_extent_mm = (points.min(axis=0), points.max(axis=0))
    if kinds:
        _sample_findings(model, grid, kinds, component_rng(seed, "findings"))
    model.tubes = _mediastinal_tubes(model)
    if contrast is not None and components.contrast and contrast.phase != "none":
        _enhance(model, contrast)
    if components.vessels or components.airways:
        _grow_trees(model, grid, component_rng(seed, "trees"), vessel_density)
    return model


def _with_extra_fat(shape: ChestShape, extra: float) -> ChestShape:
    """The same chest under `extra` mm more subcutaneous fat (more at the sides and front than the back)."""
    return replace(shape, fat=shape.fat + extra, body_half_width=shape.body_half_width + 1.15 * extra,
                   body_front=shape.body_front + extra, body_back=shape.body_back + 0.6 * extra)


_CONTRAST_TUBES = {"aorta": "aorta", "pulmonary trunk": "pulmonary_artery",
                   "right pulmonary artery": "pulmonary_artery", "left pulmonary artery": "pulmonary_artery",
                   "superior vena cava": "vena_cava"}


def _enhance(model: ChestModel, contrast: Contrast) -> None:
    """Blood, heart, great vessels, liver and spleen as they look after an intravenous contrast injection."""
    model.contrast = contrast
    model.hu = replace(model.hu, blood=contrast.heart, liver=model.hu.liver + contrast.liver_boost,
                       spleen=model.hu.spleen + contrast.spleen_boost)
    model.tubes = [replace(tube, hu=getattr(contrast, _CONTRAST_TUBES[tube.name]))
                   if tube.name in _CONTRAST_TUBES else tube for tube in model.tubes]
