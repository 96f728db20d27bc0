"""Classical lung mask (no trained weights): 0 background, 1 right lung, 2 left lung.

A Hu et al. (2001)-style pipeline, made fast by doing the topology on a coarse copy (voxels of about
`work_spacing_mm`) and re-thresholding only the boundary band at full resolution:

1. body per axial slice: the largest tissue component (opened at fine pixels only); everything that air at
   the image border cannot reach without crossing it is inside. Border regions are outside when gas-dark
   at the border, inside when within the convex hull of the wall (extended beyond the border where the wall
   is cut: lungs cut by a cropped field of view), otherwise decided by the neighbouring slices (the CT table,
   its foam core and the gap under the patient, lung-dense through partial volume at coarse pixels, stay out);
2. air (< `air_threshold_hu`) inside the body is the lung candidate;
3. trachea and extrapulmonary bronchi: round, central, gas-filled tubes surrounded by tissue, tracked slice
   by slice with a leak guard (size, air around them), dilated a little and removed; at coarse pixels the
   lumen is found through partial volume (air components with a dark core, stepwise stricter thresholds);
4. 3D components: small ones, pure-gas ones (bowel, stomach, pneumothorax-like pockets), ones lying under
   a bigger one (gas below the diaphragm) and ones mostly along the image border (outside air in the corners
   of a cropped field of view) are dropped;
5. left / right: separate components, or erosion until touching lungs fall apart and geodesic regrowth;
   the side comes from the affine (RAS +x points to the patient's right);
6. per lung and slice: closing and hole filling (vessels inside the lungs are lung), and filling of dents
   against the chest wall (tumours, nodules, consolidation at the pleura; not the mediastinum or the
   diaphragm dome);
7. full resolution: the coarse labels are upsampled, their interior (and filled dents) kept and the
   boundary band re-thresholded at full resolution.

Volumes with fewer than `min_slices_3d` slices (single slices, slice pairs) are done slice by slice in 2D.
Axis order and direction come from the affine, so any orientation (LPS, RAS, flipped, transposed) works.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from medseg.errors import InputError
from medseg.io.volume import Volume
from medseg.labels import label_map

__all__ = ["BACKGROUND", "LEFT_LUNG", "RIGHT_LUNG", "LungMaskSettings", "body_mask", "lung_mask"]

log = logging.getLogger(__name__)

BACKGROUND = 0
RIGHT_LUNG = label_map("lungs").by_name("right_lung").value  # type: ignore[union-attr]
LEFT_LUNG = label_map("lungs").by_name("left_lung").value  # type: ignore[union-attr]
_OTHER_AIR = 255
"""Coarse label of air that is not lung (kept out of the full-resolution boundary band)."""
_SOLID = 4
"""Added to a coarse lung label where a dent against the chest wall was filled: kept as is at full resolution
(the tumour's edge against the chest wall is not re-thresholded away)."""

Box = tuple[slice, slice, slice]
Seed = tuple[np.ndarray, float]
"""A lung seed mask and the RAS x of its centre."""


@dataclass(frozen=True)
class LungMaskSettings:
    """Thresholds and sizes of the classical lung mask (HU, mm, mL)."""

    air_threshold_hu: float = -400.0
    """Lung parenchyma is darker than this."""
    body_threshold_hu: float = -500.0
    """Body tissue (fat included) is brighter than this."""
    body_opening_mm: float = 5.0
    """Opening that detaches the table, blankets and cables from the body wall (skipped at coarser pixels)."""
    body_extension_mm: float = 150.0
    """Where the body wall touches the image border, the body is taken to go on this far beyond it."""
    gas_hu: float = -950.0
    """Coarse voxels darker than this are pure gas (outside air, airway lumen, bowel gas)."""
    pneumothorax_hu: float = -985.0
    """Smoothed coarse HU below which air in the lung candidate is pure gas (pneumothorax, bulla)."""
    min_pneumothorax_ml: float = 20.0
    """Smaller pure-gas pockets at the chest wall stay in the lung."""
    pneumothorax_wall_fraction: float = 0.2
    """A pure-gas pocket is pleural air when more than this fraction of a 2-voxel rim around it is not lung."""
    max_gas_ml: float = 500.0
    """Air components whose interior is mostly pure gas are bowel or stomach gas if smaller than this."""
    max_gas_area_cm2: float = 40.0
    """The same in slice-by-slice (2D) mode."""
    airway_hu: float = -900.0
    """Strict threshold for the airway lumen on the coarse grid."""
    max_mean_hu: float = -600.0
    """Air components with a brighter mean are partial-volume rims or noise, not lung."""
    min_lung_volume_ml: float = 15.0
    """Smaller 3D air components are dropped."""
    min_lung_area_cm2: float = 3.0
    """Smaller air components are dropped in slice-by-slice (2D) mode."""
    edge_margin_mm: float = 10.0
    max_edge_fraction: float = 0.5
    """Air components with more than this fraction within `edge_margin_mm` of the image border are outside air
    the body mask could not close off (corners of a cropped field of view, the gap under the back)."""
    trachea_diameter_mm: tuple[float, float] = (9.0, 32.0)
    """Lumen diameters accepted for a tracheal seed."""
    min_bronchus_diameter_mm: float = 6.0
    """In 2D mode (no tracking) central gas tubes down to this diameter are airway (main bronchi)."""
    max_bronchus_mm: float = 50.0
    """The airway is followed at most this far below the carina."""
    work_spacing_mm: float = 2.0
    """Target in-plane and slice spacing of the coarse working grid."""
    closing_mm: float = 6.0
    """Diameter of the per-slice closing that takes in vessels at the lung border."""
    max_vessel_cm2: float = 10.0
    """Holes in the lung wider than this (in some slice) and open at an end are not filled (diaphragm dome)."""
    max_pleural_fill_mm: float = 25.0
    """Dents of a lung against the chest wall up to this deep are filled (tumours, nodules, consolidation)."""
    max_split_erosion_mm: float = 30.0
    """Deepest erosion tried when separating touching lungs."""
    min_slices_3d: int = 3
    """Volumes with fewer slices are segmented slice by slice in 2D."""


@dataclass(frozen=True)
class _Layout:
    """Working axis order (slice, row, column) of the array and what each axis means in patient space."""

    perm: tuple[int, int, int]
    spacing: tuple[float, float, float]
    superior: int
    """+1 when the slice index grows towards the head, -1 towards the feet, 0 if the slices are not axial."""
    lateral: np.ndarray
    """RAS x (mm, +x = patient right) gained per step along each working axis."""
    lateral_axis: int
    """The in-plane working axis (1 or 2) closest to left-right."""


@dataclass(frozen=True)
class _Grid:
    """The coarse working grid: one coarse voxel is `step` slices by `factor` x `factor` pixels."""

    factor: int
    step: int
    spacing: tuple[float, float, float]
    lateral: np.ndarray
    """RAS x gained per coarse step along each axis."""
    lateral_axis: int
    superior: int


def lung_mask(volume: Volume, settings: LungMaskSettings | None = None) -> np.ndarray:
    """Label the lungs of a CT volume: uint8 array shaped like `volume.array`, 1 right lung, 2 left lung.

    A volume without lungs (or without air, e.g. MR) gives an all-zero mask. Raises `InputError` for input
    that is not a 3D `Volume` with numeric voxels and an invertible affine.
    """
    settings = settings or LungMaskSettings()
    array = _check_input(volume)
    start = time.perf_counter()
    layout = _layout(volume, array, settings)
    work = np.transpose(array, layout.perm)
    out = np.zeros(work.shape, np.uint8)
    if _has_air(work, settings):
        planar = work.shape[0] < settings.min_slices_3d
        grid = _grid(layout, settings, planar)
        hu = _downsample(work, grid)
        if planar:
            labels = np.concatenate([_segment_coarse(hu[j:j + 1], grid, settings, planar) for j in range(len(hu))])
        else:
            labels = _segment_coarse(hu, grid, settings, planar)
        _refine_full(work, labels, grid, settings, out)
    else:
        log.warning("lung mask: %s lacks air (< %g HU) or body tissue (> %g HU); returning an empty mask",
                    volume.source or "the volume", settings.air_threshold_hu, settings.body_threshold_hu)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("lung mask %s: %.2f s, right %d, left %d voxels", work.shape, time.perf_counter() - start,
                  np.count_nonzero(out == RIGHT_LUNG), np.count_nonzero(out == LEFT_LUNG))
    return np.transpose(out, np.argsort(layout.perm))


def body_mask(volume: Volume, settings: LungMaskSettings | None = None) -> np.ndarray:
    """The patient's body (bool array shaped like `volume.array`): per axial slice, everything outside air
    cannot reach without crossing the body wall, so the CT table, blankets and the air around the patient
    are outside, while lungs cut by a cropped field of view stay inside (see `_body_mask`). The same rules the
    lung mask starts from, at the volume's own resolution (used by QC to find lung outside the body)."""
    settings = settings or LungMaskSettings()
    array = _check_input(volume)
    layout = _layout(volume, array, settings)
    work = np.maximum(np.nan_to_num(np.transpose(array, layout.perm).astype(np.float32), nan=-1024.0), -1024.0)
    return np.transpose(_body_mask(work, min(layout.spacing[1:]), settings), np.argsort(layout.perm))


# --- input, geometry, coarse grid ---------------------------------------------------------------------


def _check_input(volume: Volume) -> np.ndarray:
    if not isinstance(volume, Volume):
        raise InputError(f"lung mask needs a medseg Volume, got {type(volume).__name__}")
    source = volume.source or None
    array = np.asarray(volume.array)
    if array.ndim != 3 or array.size == 0:
        raise InputError(f"lung mask needs a non-empty 3D image, got shape {array.shape}", source)
    if array.dtype.kind not in "iuf":
        raise InputError(f"lung mask needs numeric voxels, got {array.dtype}", source)
    matrix = np.asarray(volume.affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-9:
        raise InputError("lung mask needs an invertible affine", source)
    modality = (volume.modality or "").upper()
    if modality and modality != "CT":
        log.warning("lung mask: %s is %s, not CT; the HU thresholds may not apply", source, modality)
    return array


def _layout(volume: Volume, array: np.ndarray, settings: LungMaskSettings) -> _Layout:
    """Slice axis: the one closest to superior (or a thin one); in-plane axes in memory order (no copies)."""
    matrix = volume.affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    cosines = matrix / spacing
    superior_axis = int(np.argmax(np.abs(cosines[2])))
    thin = [axis for axis in range(3) if array.shape[axis] < settings.min_slices_3d]
    slice_axis = superior_axis if not thin or superior_axis in thin else thin[0]
    rest = sorted((axis for axis in range(3) if axis != slice_axis), key=lambda axis: -abs(array.strides[axis]))
    perm = (slice_axis, rest[0], rest[1])
    lateral = np.array([matrix[0, axis] for axis in perm])
    return _Layout(perm=perm, spacing=(float(spacing[perm[0]]), float(spacing[perm[1]]), float(spacing[perm[2]])),
                   superior=int(np.sign(cosines[2, slice_axis])) if slice_axis == superior_axis else 0,
                   lateral=lateral, lateral_axis=1 if abs(lateral[1]) >= abs(lateral[2]) else 2)


def _has_air(work: np.ndarray, settings: LungMaskSettings) -> bool:
    """Cheap check on a subsample: both air and body tissue are present (MR and empty images are not)."""
    sample = work[:: max(1, work.shape[0] // 16), ::4, ::4]
    return bool(np.any(sample < settings.air_threshold_hu)) and bool(np.any(sample > settings.body_threshold_hu))


def _grid(layout: _Layout, settings: LungMaskSettings, planar: bool) -> _Grid:
    factor = max(1, int(np.ceil(0.75 * settings.work_spacing_mm / min(layout.spacing[1:]))))
    step = 1 if planar else max(1, int(np.ceil(0.75 * settings.work_spacing_mm / layout.spacing[0])))
    scale = np.array([step, factor, factor], dtype=np.float64)
    return _Grid(factor=factor, step=step, spacing=tuple(float(v) for v in np.array(layout.spacing) * scale),
                 lateral=layout.lateral * scale, lateral_axis=layout.lateral_axis, superior=layout.superior)


def _downsample(work: np.ndarray, grid: _Grid) -> np.ndarray:
    """Coarse float32 copy: block means in-plane (cv2 INTER_AREA) of the middle slice of every `step`."""
    n_slices, rows, cols = work.shape
    factor, step = grid.factor, grid.step
    coarse_rows, coarse_cols = -(-rows // factor), -(-cols // factor)
    sampled = np.minimum(np.arange(-(-n_slices // step)) * step + step // 2, n_slices - 1)
    hu = np.empty((len(sampled), coarse_rows, coarse_cols), np.float32)
    for j, k in enumerate(sampled):
        image = np.maximum(np.nan_to_num(work[k].astype(np.float32), nan=-1024.0), -1024.0)
        if factor > 1:
            image = cv2.copyMakeBorder(image, 0, coarse_rows * factor - rows, 0, coarse_cols * factor - cols,
                                       cv2.BORDER_REPLICATE)
            image = cv2.resize(image, (coarse_cols, coarse_rows), interpolation=cv2.INTER_AREA)
        hu[j] = image
    return hu


# --- coarse segmentation ------------------------------------------------------------------------------


def _segment_coarse(hu: np.ndarray, grid: _Grid, settings: LungMaskSettings, planar: bool) -> np.ndarray:
    """Coarse labels: 1 right, 2 left (plus `_SOLID` in filled dents), `_OTHER_AIR` for air that is not lung,
    0 elsewhere."""
    labels = np.zeros(hu.shape, np.uint8)
    body = _body_mask(hu, min(grid.spacing[1:]), settings)
    air = (hu < settings.air_threshold_hu) & body
    box = _bbox(air, margin=2)
    if box is not None:
        middle, half = _midline(body, grid.lateral_axis)
        offset = np.array([part.start for part in box])
        hu_box, air_box = hu[box], air[box]
        airway = _airway(hu_box, air_box, (middle[box[0]], half[box[0]]), offset, grid, settings, planar)
        candidate = air_box & ~_dilate_inplane(airway, 1)
        lungs = _select_components(candidate, hu_box, grid, settings, planar, _edge(hu.shape, grid, settings)[box[1:]])
        lungs &= ~_pneumothorax(lungs, hu_box, grid, settings)
        centre = float(np.nanmean(middle)) if np.isfinite(middle).any() else 0.0
        sides = _smooth(_split_sides(lungs, centre, offset, grid, settings), grid, settings)
        labels[box] = _fill_pleural(sides, air_box & (sides == 0), grid, settings)
    labels[(hu < settings.air_threshold_hu) & (labels == 0)] = _OTHER_AIR
    return labels


def _bbox(mask: np.ndarray, margin: int = 0) -> Box | None:
    """Bounding box of a mask, grown by `margin` voxels in-plane and one slice, clipped to the array."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(other for other in range(3) if other != axis)))
        grow = min(margin, 1) if axis == 0 else margin
        box.append(slice(max(0, int(present[0]) - grow), min(mask.shape[axis], int(present[-1]) + grow + 1)))
    return box[0], box[1], box[2]


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Mean index of a non-empty 3D mask, from its projections."""
    total = float(np.count_nonzero(mask))
    return np.array([np.dot(mask.sum(axis=tuple(other for other in range(3) if other != axis)),
                            np.arange(mask.shape[axis])) / total for axis in range(3)])


def _body_mask(hu: np.ndarray, pixel_mm: float, settings: LungMaskSettings) -> np.ndarray:
    """Per slice: what outside air cannot reach without crossing the body wall.

    The wall is the largest tissue component after an opening of about `body_opening_mm` (none at coarse
    pixels, where it would cut a thin chest wall). Regions off the wall that do not touch the image border are
    inside. One that touches it is outside when its border pixels are mostly gas, inside when it lies mostly in
    the convex hull of the wall (a lung cut by a cropped field of view; at coarse pixels the hull is taken of
    the wall opened by a 3x3 cross, so that a table touching the body is not in it), otherwise undecided: the CT
    table, its foam core and the air gap under the patient look lung-dense at coarse pixels, but so does a lung
    whose chest wall the field of view has cut into pieces. Undecided regions are inside when a neighbouring
    slice's inside mostly covers them (see `_settle`), else outside.
    """
    size = int(settings.body_opening_mm / pixel_mm + 0.5)
    size -= 1 - size % 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)) if size >= 3 else None
    cross = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    reach = round(settings.body_extension_mm / pixel_mm)
    interior = np.zeros(hu.shape, bool)
    outside = np.zeros(hu.shape, bool)
    undecided: list[tuple[int, tuple[slice, slice], np.ndarray]] = []
    for j, image in enumerate(hu):
        wall = (image > settings.body_threshold_hu).astype(np.uint8)
        if kernel is not None:
            wall = cv2.morphologyEx(wall, cv2.MORPH_OPEN, kernel)
        count, parts, stats, _ = cv2.connectedComponentsWithStats(wall, connectivity=4)
        if count < 2:
            outside[j] = True
            continue
        wall = (parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        count, open_parts, stats, _ = cv2.connectedComponentsWithStats(1 - wall, connectivity=4)
        edge, values = _border(open_parts), _border(image)
        state = np.ones(count, np.uint8)  # 0 wall or undecided, 1 inside, 2 outside
        state[0] = 0
        touching = []  # regions at the border that are not gas there
        for index in np.unique(edge[edge > 0]):
            if np.median(values[edge == index]) < settings.gas_hu:
                state[index] = 2
            else:
                touching.append(index)
        if touching:  # the hull only where needed (most slices have just the outside air at the border)
            inside = np.bincount(open_parts[_wall_hull(wall if kernel is not None else _largest(
                cv2.morphologyEx(wall, cv2.MORPH_OPEN, cross), wall), reach)], minlength=count)
            for index in touching:
                if inside[index] < 0.5 * stats[index, cv2.CC_STAT_AREA]:
                    state[index] = 0
                    x, y, w, h = (int(v) for v in stats[index, :4])
                    box = (slice(y, y + h), slice(x, x + w))
                    undecided.append((j, box, open_parts[box] == index))
        labels = state[open_parts]
        interior[j] = labels == 1
        outside[j] = labels == 2
    _settle(undecided, interior, outside)
    return ~outside


def _largest(mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a uint8 plane (`fallback` when it is empty)."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if count < 2:
        return fallback
    return (parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)


def _settle(undecided: list[tuple[int, tuple[slice, slice], np.ndarray]], interior: np.ndarray,
            outside: np.ndarray) -> None:
    """Undecided regions (slice, box, mask in the box) mostly covered by `interior` in a neighbouring slice
    become interior; sweeps up and down until nothing changes (so a lung travels through the slices where
    its wall is cut to pieces); the rest goes outside (a table whose core is enclosed in one slice does not
    pull in the rest of the table)."""
    changed = True
    while undecided and changed:
        changed = False
        for backwards in (False, True):
            left = []
            for j, box, region in undecided[::-1] if backwards else undecided:
                area = np.count_nonzero(region)
                if any(np.count_nonzero(interior[n][box][region]) >= 0.5 * area
                       for n in (j - 1, j + 1) if 0 <= n < len(interior)):
                    interior[j][box] |= region
                    changed = True
                else:
                    left.append((j, box, region))
            undecided = left[::-1] if backwards else left
    for j, box, region in undecided:
        outside[j][box] |= region


def _wall_hull(wall: np.ndarray, reach: int) -> np.ndarray:
    """Convex hull (bool) of the body wall, which goes on beyond the image where it touches the border: each
    edge's outermost contacts are carried `reach` pixels outwards (a lung cut by the border at a corner of
    the image is inside, the table under the patient is not)."""
    contours, _ = cv2.findContours(wall, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    points = [np.concatenate(contours).reshape(-1, 2)]
    rows, cols = wall.shape
    for line, fixed, horizontal in ((wall[0], -reach, True), (wall[-1], rows - 1 + reach, True),
                                    (wall[:, 0], -reach, False), (wall[:, -1], cols - 1 + reach, False)):
        touched = np.flatnonzero(line)
        if touched.size:
            ends = touched[[0, -1]]
            points.append(np.stack([ends, [fixed, fixed]] if horizontal else [[fixed, fixed], ends], axis=1))
    hull = np.zeros(wall.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(points).astype(np.int32)), 1)
    return hull > 0


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _midline(body: np.ndarray, lateral_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: middle and half-width of the body along the lateral in-plane axis (NaN without body)."""
    present = body.any(axis=3 - lateral_axis)
    middle = np.full(body.shape[0], np.nan)
    half = np.full(body.shape[0], np.nan)
    rows = np.flatnonzero(present.any(axis=1))
    if rows.size:
        first = np.argmax(present[rows], axis=1)
        last = present.shape[1] - 1 - np.argmax(present[rows, ::-1], axis=1)
        middle[rows], half[rows] = (first + last) / 2, (last - first) / 2
    return middle, half


class _AirwayFinder:
    """Trachea and extrapulmonary bronchi on the coarse grid (see `_airway`)."""

    def __init__(self, hu: np.ndarray, air: np.ndarray, midline: tuple[np.ndarray, np.ndarray],
                 offset: np.ndarray, grid: _Grid, settings: LungMaskSettings, planar: bool) -> None:
        self.strict = (hu < settings.airway_hu) & air
        self.dark = (hu < (settings.airway_hu + settings.air_threshold_hu) / 2) & air
        self.hu = hu
        self.air = air
        self.midline = midline
        self.shift = offset[grid.lateral_axis]
        self.grid = grid
        spacing = grid.spacing
        smallest, largest = settings.trachea_diameter_mm
        if planar:  # no tracking in 2D: main bronchi must be seeds themselves
            smallest = min(smallest, settings.min_bronchus_diameter_mm)
        self.low, self.high = (np.pi / 4 * d**2 / (spacing[1] * spacing[2]) for d in (smallest, largest))
        self.ring = max(2, round(5.0 / min(spacing[1:])))
        # Pixels finer than about a third of the narrowest lumen leave the lumen dark: strict gas separates it
        # from the lung. At coarser pixels partial volume lifts a narrow lumen above `airway_hu`: it is taken
        # as an air component, or where that leaks into the lung, at stepwise stricter thresholds.
        self.coarse = min(spacing[1:]) > settings.trachea_diameter_mm[0] / 3
        self.thresholds = (np.linspace(settings.air_threshold_hu, settings.airway_hu, 6) if self.coarse
                           else np.array([settings.airway_hu]))
        self.max_depth = max(1, round(settings.max_bronchus_mm / spacing[0]))
        # slices much thicker than a pixel: an oblique bronchus moves and lengthens more from slice to slice
        thick = spacing[0] / min(spacing[1:])
        self.spread = max(1, round(0.5 * thick))
        self.growth = 1.5 if thick <= 2.0 else 2.0
        self._parts: dict[tuple[int, bool], tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}

    def components(self, j: int, envelope: bool = False) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """8-connected components of the strict gas mask, or of the air mask (`envelope`), of slice j."""
        key = (j, envelope)
        if key not in self._parts:
            mask = self.air[j] if envelope else self.strict[j]
            self._parts[key] = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        return self._parts[key]

    def seeds(self, j: int) -> np.ndarray:
        """Round gas components of tracheal size near the left-right middle, surrounded mostly by tissue.

        Candidates are strict-gas components and, at coarse pixels, also air components with a dark core
        (halfway between `airway_hu` and `air_threshold_hu`): there partial volume leaves little or nothing of
        a narrow lumen below `airway_hu`, while the air component keeps about its true size.
        """
        found = np.zeros(self.air[j].shape, bool)
        dark = self.dark[j]
        for envelope in (False, True) if self.coarse else (False,):
            count, parts, stats, centroids = self.components(j, envelope)
            cores = np.unique(parts[dark]) if envelope else range(1, count)
            for index in cores:
                if index == 0:
                    continue
                position = centroids[index][1 if self.grid.lateral_axis == 1 else 0] + self.shift
                if (self.low <= stats[index, cv2.CC_STAT_AREA] <= self.high
                        and _round(stats[index], self.grid.spacing)
                        and abs(position - self.midline[0][j]) <= 0.3 * self.midline[1][j]
                        and _surrounding_air(parts == index, self.air[j], stats[index], self.ring) <= 0.4):
                    found |= parts == index
        return found

    def follow(self, j: int, previous: np.ndarray, reference: float, spread: int = 1) -> np.ndarray:
        """Components within `spread` pixels of the airway of a nearby slice that do not leak into the lung.

        A component may be at most 1.5 times (2 times with slices thicker than two pixels) the larger of the
        previous airway and the tracheal `reference`, and must be surrounded mostly by tissue. Components are of
        the strict gas mask; at coarse pixels of the air mask (the lumen with its partial-volume rim), and where
        one of those leaks into the lung, its parts below stepwise stricter thresholds (down to `airway_hu`).
        """
        reach = cv2.dilate(previous.astype(np.uint8), np.ones((2 * spread + 1, 2 * spread + 1), np.uint8)) > 0
        limit = min(self.growth * max(np.count_nonzero(previous), reference), 1.5 * self.high)
        _, envelopes, stats, _ = self.components(j, envelope=self.coarse)
        found = np.zeros(envelopes.shape, bool)
        for index in np.unique(envelopes[reach & (envelopes > 0)]):
            x, y, w, h = (int(v) for v in stats[index, :4])
            box = (slice(y, y + h), slice(x, x + w))
            pieces = [(envelopes[box] == index, 0)]
            while pieces:
                piece, level = pieces.pop()
                _, parts, part_stats, _ = cv2.connectedComponentsWithStats(piece.astype(np.uint8), connectivity=8)
                for part in np.unique(parts[reach[box] & (parts > 0)]):
                    mask = parts == part
                    if part_stats[part, cv2.CC_STAT_AREA] <= limit:
                        x0, y0, w0, h0 = (int(v) for v in part_stats[part, :4])
                        full = np.zeros(envelopes.shape, bool)
                        full[box] = mask
                        if _surrounding_air(full, self.air[j], np.array([x + x0, y + y0, w0, h0]), self.ring) <= 0.5:
                            found |= full
                            continue
                    if level + 1 < len(self.thresholds):  # leaks: try its darker core
                        pieces.append((mask & (self.hu[j][box] < self.thresholds[level + 1]), level + 1))
        return found

    def tracheal(self, found: np.ndarray, j: int, reference: float) -> bool:
        """The airway found in slice j is still the trachea: one component that is a seed; at coarse pixels
        (where partial volume with the lung apex spoils the seed tests) one round, central component of half
        to twice the area `reference` of the trachea higher up (below the carina the bronchi are narrower)."""
        count, _, stats, centroids = cv2.connectedComponentsWithStats(found.astype(np.uint8), connectivity=8)
        if count != 2:
            return False
        if not self.coarse:
            return bool((found & self.seeds(j)).any())
        position = centroids[1][1 if self.grid.lateral_axis == 1 else 0] + self.shift
        return bool(0.5 * reference <= stats[1, cv2.CC_STAT_AREA] <= 2.0 * reference
                    and _round(stats[1], self.grid.spacing)
                    and abs(position - self.midline[0][j]) <= 0.3 * self.midline[1][j])

    def trachea_start(self, down: list[int]) -> tuple[int, np.ndarray] | None:
        """Highest slice whose seed continues as overlapping seeds for about 15 mm: (position in `down`, mask)."""
        need = min(len(down), max(2, round(15.0 / self.grid.spacing[0])))
        for position, j in enumerate(down[: len(down) - need + 1]):
            seed = self.seeds(j)
            if not seed.any():
                continue
            chain, current = 1, seed
            while chain < need:
                below = self.seeds(down[position + chain])
                current = below & (cv2.dilate(current.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
                if not current.any():
                    break
                chain += 1
            if chain >= need:
                return position, seed
        return None


def _airway(hu: np.ndarray, air: np.ndarray, midline: tuple[np.ndarray, np.ndarray], offset: np.ndarray,
            grid: _Grid, settings: LungMaskSettings, planar: bool) -> np.ndarray:
    """Trachea and extrapulmonary bronchi, to be removed from the lung candidate.

    Seed: a round, central, tracheal-size gas component surrounded mostly by tissue that continues for about
    15 mm. From there components overlapping the airway of the previous slice are followed up and down
    (bridging gaps of up to 6 mm, e.g. partial volume at the carina), unless they grow by more than half, are
    surrounded by lung (the bronchus has entered the lung) or lie more than `max_bronchus_mm` below the last
    slice where the airway was still the trachea (one seed-like piece, above the first split: the carina).
    At coarse pixels narrow lumens are found through partial volume (see `_AirwayFinder`). In 2D mode only
    the seeds are taken (down to `min_bronchus_diameter_mm`).
    """
    finder = _AirwayFinder(hu, air, midline, offset, grid, settings, planar)
    airway = np.zeros(hu.shape, bool)
    if planar:
        for j in range(hu.shape[0]):
            airway[j] = finder.seeds(j)
        return airway
    down = list(range(hu.shape[0]))[:: -1 if grid.superior >= 0 else 1]
    start = finder.trachea_start(down)
    if start is None:
        return airway
    position, seed = start
    reference = float(np.count_nonzero(seed))
    airway[down[position]] = seed
    gap = max(1, round(6.0 / grid.spacing[0]))
    for direction in (1, -1):
        previous, last_trachea, missed, split, tracheal_area = seed, position, 0, False, reference
        step = position + direction
        while 0 <= step < len(down) and missed <= gap:
            if direction > 0 and step - last_trachea > finder.max_depth:
                break
            found = finder.follow(down[step], previous, reference, spread=finder.spread + missed)
            if found.any():
                airway[down[step]] = previous = found
                missed = 0
                if direction > 0 and not split:
                    split = _split_airway(found, reference)
                    if not split and finder.tracheal(found, down[step], tracheal_area):
                        last_trachea, tracheal_area = step, float(np.count_nonzero(found))
            else:
                missed += 1
            step += direction
    return airway


def _split_airway(found: np.ndarray, reference: float) -> bool:
    """The airway has split into the main bronchi (two or more pieces of at least a quarter of the tracheal
    area): below here no single piece is the trachea any more, so a main bronchus is not followed as one."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(found.astype(np.uint8), connectivity=8)
    return int(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= 0.25 * reference)) >= 2


def _round(stat: np.ndarray, spacing: tuple[float, float, float]) -> bool:
    height_mm, width_mm = stat[cv2.CC_STAT_HEIGHT] * spacing[1], stat[cv2.CC_STAT_WIDTH] * spacing[2]
    fill = stat[cv2.CC_STAT_AREA] / float(stat[cv2.CC_STAT_HEIGHT] * stat[cv2.CC_STAT_WIDTH])
    return fill >= 0.45 and max(height_mm, width_mm) <= 2.2 * min(height_mm, width_mm)


def _surrounding_air(part: np.ndarray, air: np.ndarray, stat: np.ndarray, ring: int) -> float:
    """Fraction of a ring 2..`ring` pixels around the component that is air (lung around a bronchus)."""
    x, y, w, h = (int(v) for v in stat[:4])
    box = (slice(max(0, y - ring - 1), y + h + ring + 1), slice(max(0, x - ring - 1), x + w + ring + 1))
    piece = part[box].astype(np.uint8)
    inner = cv2.dilate(piece, np.ones((3, 3), np.uint8)) > 0
    outer = cv2.dilate(piece, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))) > 0
    band = outer & ~inner
    return float(air[box][band].mean()) if band.any() else 1.0


def _edge(shape: tuple[int, ...], grid: _Grid, settings: LungMaskSettings) -> np.ndarray:
    """In-plane mask of the image's margin, `edge_margin_mm` wide (at least a pixel)."""
    width = max(1, round(settings.edge_margin_mm / min(grid.spacing[1:])))
    edge = np.ones(shape[1:], bool)
    edge[width:-width, width:-width] = False
    return edge


def _select_components(candidate: np.ndarray, hu: np.ndarray, grid: _Grid, settings: LungMaskSettings,
                       planar: bool, edge: np.ndarray | None = None) -> np.ndarray:
    """Keep air components that are big enough, lung-dense, not lying under a bigger one and not mostly in
    `edge` (an in-plane mask of the image's margin, see `_edge`).

    Gas (bowel, stomach): more than half of the component's interior (one pixel in from its edge) is darker
    than `gas_hu`. Emphysematous lungs can be that dark too, so gas components of `max_gas_ml` (2D:
    `max_gas_area_cm2`) or more are kept (big bowel gas in a chest CT then goes by the lying-under rule).
    """
    parts, count = ndimage.label(candidate)
    if count == 0:
        return candidate
    inside = parts > 0
    interior = inside & ~_dilate_inplane(~inside, 1)
    sizes = np.bincount(parts[inside], minlength=count + 1)
    means = np.bincount(parts[inside], weights=hu[inside], minlength=count + 1) / np.maximum(sizes, 1)
    core = np.bincount(parts[interior], minlength=count + 1)
    gas = np.where(core > 0, np.bincount(parts[interior], weights=hu[interior] < settings.gas_hu,
                                         minlength=count + 1) / np.maximum(core, 1),
                   np.bincount(parts[inside], weights=hu[inside] < settings.gas_hu, minlength=count + 1)
                   / np.maximum(sizes, 1))
    spacing = grid.spacing
    if planar:
        area_cm2 = sizes * spacing[1] * spacing[2] / 100.0
        big = area_cm2 >= settings.min_lung_area_cm2
        gas_like = (gas > 0.5) & (area_cm2 < settings.max_gas_area_cm2)
    else:
        volume_ml = sizes * float(np.prod(spacing)) / 1000.0
        big = volume_ml >= settings.min_lung_volume_ml
        gas_like = (gas > 0.5) & (volume_ml < settings.max_gas_ml)
    keep = big & ~gas_like & (means <= settings.max_mean_hu)
    if edge is not None:  # outside air in the corners of a cropped field of view, or under the body
        keep &= np.bincount(parts[inside & edge[None]], minlength=count + 1) <= settings.max_edge_fraction * sizes
    keep[0] = False
    if not planar and np.count_nonzero(keep) > 1 and grid.superior != 0:
        keep &= ~_under_bigger(parts, keep, sizes, grid.superior)
    return keep[parts]


def _pneumothorax(lungs: np.ndarray, hu: np.ndarray, grid: _Grid, settings: LungMaskSettings) -> np.ndarray:
    """Pleural air: pockets of pure gas (smoothed HU < `pneumothorax_hu`) in the lung candidate that are big
    and lie against the chest wall (much of a rim around them is not lung). Bullae inside the lung are kept."""
    removed = np.zeros(lungs.shape, bool)
    if not lungs.any():
        return removed
    kernel = np.ones((3, 3), np.uint8)
    pure = np.zeros(lungs.shape, bool)
    for j in np.flatnonzero(lungs.any(axis=(1, 2))):
        smooth = cv2.blur(hu[j], (3, 3))
        pure[j] = cv2.morphologyEx(((smooth < settings.pneumothorax_hu) & lungs[j]).astype(np.uint8),
                                   cv2.MORPH_OPEN, kernel) > 0
    parts, count = ndimage.label(pure)
    if count == 0:
        return removed
    sizes = np.bincount(parts.ravel(), minlength=count + 1) * float(np.prod(grid.spacing)) / 1000.0
    for index, box in enumerate(ndimage.find_objects(parts), start=1):
        if sizes[index] < settings.min_pneumothorax_ml:
            continue
        grown = (slice(max(0, box[0].start - 1), box[0].stop + 1),
                 *(slice(max(0, part.start - 3), part.stop + 3) for part in box[1:]))
        piece = parts[grown] == index
        rim = _dilate6(_dilate_inplane(piece, 2)) & ~piece
        wall = np.count_nonzero(rim & ~lungs[grown]) / max(1, np.count_nonzero(rim))
        log.debug("pure gas pocket %.1f mL, %.2f of its rim outside the lung", sizes[index], wall)
        if wall > settings.pneumothorax_wall_fraction:
            removed[grown] |= piece
    if removed.any():
        gas = lungs & (hu < settings.gas_hu)
        for _ in range(2):
            removed |= _dilate6(removed) & gas
        log.debug("pleural air removed: %.0f mL", np.count_nonzero(removed) * float(np.prod(grid.spacing)) / 1000)
    return removed


def _under_bigger(parts: np.ndarray, keep: np.ndarray, sizes: np.ndarray, superior: int) -> np.ndarray:
    """Kept components lying mostly below (feet-wards of) a bigger kept one: gas under the diaphragm."""
    indices = sorted(np.flatnonzero(keep), key=lambda index: -sizes[index])
    objects = ndimage.find_objects(parts)
    extents = {index: _vertical_extent(parts, index, objects[index - 1], superior) for index in indices}
    under = np.zeros(keep.shape, bool)
    for rank, index in enumerate(indices[1:], start=1):
        box, footprint, top, _ = extents[index]
        for bigger in indices[:rank]:
            other_box, other_footprint, _, bottom = extents[bigger]
            overlap = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, other_box, strict=True)]
            if any(part.start >= part.stop for part in overlap):
                continue
            mine = tuple(slice(o.start - a.start, o.stop - a.start) for o, a in zip(overlap, box, strict=True))
            theirs = tuple(slice(o.start - a.start, o.stop - a.start) for o, a in zip(overlap, other_box, strict=True))
            covered = footprint[mine] & other_footprint[theirs] & (bottom[theirs] > top[mine])
            if np.count_nonzero(covered) > 0.5 * np.count_nonzero(footprint):
                under[index] = True
                break
    return under


def _vertical_extent(parts: np.ndarray, index: int, box: tuple[slice, ...], superior: int
                     ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """In-plane box, footprint, and per-column top and bottom height (slice index times `superior`)."""
    mask = parts[box] == index
    heights = (np.arange(box[0].start, box[0].stop) * superior).astype(np.float32)[:, None, None]
    top = np.where(mask, heights, -np.inf).max(axis=0)
    bottom = np.where(mask, heights, np.inf).min(axis=0)
    return (box[1], box[2]), mask.any(axis=0), top, bottom


def _split_sides(lungs: np.ndarray, centre: float, offset: np.ndarray, grid: _Grid,
                 settings: LungMaskSettings) -> np.ndarray:
    """Right (1) / left (2): separate components, or erosion until two cores appear, then regrowth.

    `centre` is the body's middle along the lateral axis, for deciding the side of a single lung.
    """
    labels = np.zeros(lungs.shape, np.uint8)
    if not lungs.any():
        return labels
    seeds = _two_seeds(lungs, offset, grid, settings)
    if seeds is None:
        axis = grid.lateral_axis
        towards_right = (_centroid(lungs)[axis] + offset[axis] - centre) * grid.lateral[axis]
        labels[lungs] = RIGHT_LUNG if towards_right >= 0 else LEFT_LUNG
        return labels
    (first, first_x), (second, second_x) = seeds
    labels[first] = RIGHT_LUNG if first_x > second_x else LEFT_LUNG
    labels[second] = LEFT_LUNG if first_x > second_x else RIGHT_LUNG
    _grow(labels, lungs, (first_x + second_x) / 2, offset, grid)
    return labels


def _two_seeds(lungs: np.ndarray, offset: np.ndarray, grid: _Grid, settings: LungMaskSettings
               ) -> tuple[Seed, Seed] | None:
    """Two big pieces on different sides: the components themselves, or increasingly eroded cores.

    Erosion runs on the lungs with their small holes (vessels) filled, so that it does not cut through
    the lung along vessels before it opens the junction between the lungs.
    """
    seeds = _two_largest(lungs, offset, grid)
    if seeds is not None:
        return seeds
    max_hole = int(settings.max_vessel_cm2 * 100.0 / (grid.spacing[1] * grid.spacing[2]))
    distance = np.stack([cv2.distanceTransform(_fill_small_holes(plane.astype(np.uint8), max_hole), cv2.DIST_L2, 3)
                         for plane in lungs])
    pixel = min(grid.spacing[1:])
    for depth in np.arange(1.0, settings.max_split_erosion_mm / pixel + 1.0):
        core = distance > depth
        if not core.any():
            break
        seeds = _two_largest(core, offset, grid)
        if seeds is not None:
            log.debug("touching lungs separated by a %.1f mm erosion", depth * pixel)
            return seeds
    return None


def _two_largest(mask: np.ndarray, offset: np.ndarray, grid: _Grid, min_share: float = 0.04,
                 min_gap_mm: float = 20.0, max_across: float = 0.1) -> tuple[Seed, Seed] | None:
    """The two largest components with their RAS x centres, if both are big and side by side.

    Side by side: centres at least `min_gap_mm` apart in x, and neither has more than `max_across` of its
    voxels beyond the plane halfway between the centres (a piece still bridging both lungs has).
    """
    parts, count = ndimage.label(mask)
    if count < 2:
        return None
    sizes = np.bincount(parts.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if sizes[order[1]] < min_share * sizes[order[0]]:
        return None
    pieces = [parts == index for index in order[:2] + 1]
    first_x, second_x = (float((_centroid(piece) + offset) @ grid.lateral) for piece in pieces)
    if abs(first_x - second_x) < min_gap_mm:
        return None
    axis = grid.lateral_axis
    middle = (first_x + second_x) / 2
    for piece, x in ((pieces[0], first_x), (pieces[1], second_x)):
        profile = piece.sum(axis=tuple(other for other in range(3) if other != axis))
        positions = (np.arange(piece.shape[axis]) + offset[axis]) * grid.lateral[axis]
        positions += x - float(np.dot(profile, positions) / profile.sum())  # other axes' share of x
        if profile[(positions - middle) * (x - middle) < 0].sum() > max_across * profile.sum():
            return None
    return (pieces[0], first_x), (pieces[1], second_x)


def _grow(labels: np.ndarray, lungs: np.ndarray, middle: float, offset: np.ndarray, grid: _Grid) -> None:
    """Geodesic regrowth of the two seeds inside `lungs`; ties and unreachable pieces go by the bisector."""
    right, left = labels == RIGHT_LUNG, labels == LEFT_LUNG
    remaining = lungs & ~right & ~left
    while remaining.any():
        grow_right = _dilate6(right) & remaining
        grow_left = _dilate6(left) & remaining
        if not (grow_right.any() or grow_left.any()):
            break
        tie = grow_right & grow_left
        if tie.any():
            points = np.argwhere(tie)
            on_right = (points + offset) @ grid.lateral >= middle
            grow_left[tuple(points[on_right].T)] = False
            grow_right[tuple(points[~on_right].T)] = False
        right |= grow_right
        left |= grow_left
        remaining &= ~(grow_right | grow_left)
    labels[right] = RIGHT_LUNG
    labels[left] = LEFT_LUNG
    if remaining.any():
        points = np.argwhere(remaining)
        labels[remaining] = np.where((points + offset) @ grid.lateral >= middle, RIGHT_LUNG, LEFT_LUNG)


def _smooth(labels: np.ndarray, grid: _Grid, settings: LungMaskSettings) -> np.ndarray:
    """Per lung and slice: closing (vessels at the border) and hole filling (vessels, nodules inside).

    A hole is not filled when it belongs to a 3D stack of holes that is wide somewhere and open at an end
    (not capped by lung): that is the diaphragm dome or the heart seen through the lung, not a vessel.
    """
    size = max(3, 2 * round(settings.closing_mm / (2 * min(grid.spacing[1:]))) + 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    pad = size // 2 + 1
    out = labels.copy()
    for side in (RIGHT_LUNG, LEFT_LUNG):
        mask = (labels == side).astype(np.uint8)
        closed = np.zeros(mask.shape, bool)
        filled = np.zeros(mask.shape, bool)
        for j in np.flatnonzero(mask.any(axis=(1, 2))):
            plane = cv2.copyMakeBorder(mask[j], pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
            plane = cv2.morphologyEx(plane, cv2.MORPH_CLOSE, kernel)
            closed[j] = plane[pad:-pad, pad:-pad] > 0
            filled[j] = _fill_holes(plane)[pad:-pad, pad:-pad] > 0
        holes = filled & ~closed
        if holes.any() and mask.shape[0] > 1:
            filled &= ~_open_wide_holes(holes, closed, grid, settings)
        out[filled & (out == 0)] = side
    return out


def _fill_pleural(labels: np.ndarray, blocked: np.ndarray, grid: _Grid, settings: LungMaskSettings) -> np.ndarray:
    """Fill dents of each lung against the chest wall (tumours, nodules and consolidation touching the pleura),
    not the mediastinum or the diaphragm dome.

    Per slice with both lungs, a dent is a connected piece of the lung's convex hull outside the lung, at most
    `max_pleural_fill_mm` deep, whose rim off the lung lies mostly outside the convex hull of both lungs (the
    chest wall side; the heart, hilum and spine lie between the lungs, inside it) and that holds no air that
    is not lung (`blocked`: airway, bowel gas, outside air). A 3D stack of dents is filled when lung mostly
    caps it above and below (the liver or spleen dome under a crescent of lung base is capped only above).
    Filled voxels get the side plus `_SOLID`.
    """
    out = labels.copy()
    depth_limit = settings.max_pleural_fill_mm / min(grid.spacing[1:])
    both = np.flatnonzero((labels == RIGHT_LUNG).any(axis=(1, 2)) & (labels == LEFT_LUNG).any(axis=(1, 2)))
    if labels.shape[0] < 3 or both.size == 0:
        return out
    unions = {j: _convex_fill((labels[j] > 0).astype(np.uint8)) for j in both}
    kernel = np.ones((3, 3), np.uint8)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        lung = labels == side
        dents = np.zeros(labels.shape, bool)
        for j in both:
            x, y, w, h = cv2.boundingRect(lung[j].astype(np.uint8))
            box = (slice(max(0, y - 1), y + h + 1), slice(max(0, x - 1), x + w + 1))
            here = lung[j][box]
            hull = _convex_fill(here.astype(np.uint8))
            candidates = hull & (labels[j][box] == 0)
            if not candidates.any():
                continue
            count, parts = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=4)
            depth = cv2.distanceTransform(hull.astype(np.uint8), cv2.DIST_L2, 3)
            inside = parts > 0
            area = np.bincount(parts[inside], minlength=count)
            deepest = np.zeros(count, np.float32)
            np.maximum.at(deepest, parts[inside], depth[inside])
            gas = np.bincount(parts[inside & blocked[j][box]], minlength=count)
            # rim off the lung: pixels next to a dent (labelled by a 3x3 dilation of the label image)
            grown = cv2.dilate(parts.astype(np.float32), kernel).astype(np.int32)
            rim = ~inside & ~here & (grown > 0)
            rim_all = np.bincount(grown[rim], minlength=count)
            rim_out = np.bincount(grown[rim & ~unions[j][box]], minlength=count)
            keep = (deepest <= depth_limit) & (gas <= 0.1 * area) & (rim_out > 0.5 * rim_all)
            keep[0] = False
            if keep.any():
                dents[j][box] = keep[parts]
        if not dents.any():
            continue
        stacks, count = ndimage.label(dents)
        capped = np.ones(count + 1, bool)
        for shift in (1, -1):  # the voxels just above / below each stack, by the stack they cap
            ends = np.zeros_like(stacks)
            if shift > 0:
                ends[1:] = stacks[:-1]
            else:
                ends[:-1] = stacks[1:]
            ends[stacks > 0] = 0
            total = np.bincount(ends[ends > 0], minlength=count + 1)  # none at the first or last slice
            capped &= (total > 0) & (np.bincount(ends[(ends > 0) & lung], minlength=count + 1) >= 0.5 * total)
        capped[0] = False
        out[capped[stacks]] = side | _SOLID
    return out


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """Convex hull (bool) of the foreground of a uint8 plane."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros(mask.shape, np.uint8)
    if contours:
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    return hull > 0


def _open_wide_holes(holes: np.ndarray, lung: np.ndarray, grid: _Grid, settings: LungMaskSettings) -> np.ndarray:
    """3D stacks of per-slice holes that are wider than a vessel somewhere and not capped by lung."""
    parts, count = ndimage.label(holes)
    z, _, _ = np.nonzero(holes)
    per_slice = np.bincount(z * (count + 1) + parts[holes], minlength=holes.shape[0] * (count + 1))
    widest = per_slice.reshape(holes.shape[0], count + 1).max(axis=0) * grid.spacing[1] * grid.spacing[2] / 100.0
    wide = np.flatnonzero(widest > settings.max_vessel_cm2)
    result = np.zeros(holes.shape, bool)
    objects = ndimage.find_objects(parts)
    for index in wide:
        if index == 0:
            continue
        box = objects[index - 1]
        grown = (max(0, box[0].start - 1), min(holes.shape[0], box[0].stop + 1))
        region = (slice(*grown), box[1], box[2])
        piece = parts[region] == index
        ends = np.zeros_like(piece)
        ends[1:] |= piece[:-1]
        ends[:-1] |= piece[1:]
        ends &= ~piece
        if np.any(ends & ~lung[region] & ~holes[region]):
            result[region] |= piece
    return result


def _fill_holes(plane: np.ndarray) -> np.ndarray:
    """Binary uint8 plane with its holes filled (flood fill from the corner of a zero-padded copy)."""
    flood = cv2.copyMakeBorder(plane, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(flood, None, (0, 0), 2)
    return (flood[1:-1, 1:-1] != 2).astype(np.uint8)


def _fill_small_holes(plane: np.ndarray, max_area: int) -> np.ndarray:
    """Binary uint8 plane with its holes of at most `max_area` pixels filled."""
    holes = (_fill_holes(plane) > 0) & (plane == 0)
    if not holes.any():
        return plane
    _, parts, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= max_area)
    return (plane | np.isin(parts, small[small > 0])).astype(np.uint8)


def _dilate_inplane(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return np.stack([cv2.dilate(plane.astype(np.uint8), kernel) > 0 for plane in mask])


def _dilate6(mask: np.ndarray) -> np.ndarray:
    """Binary dilation with the 6-neighbourhood, by shifted ORs."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


# --- full resolution ----------------------------------------------------------------------------------


def _refine_full(work: np.ndarray, labels: np.ndarray, grid: _Grid, settings: LungMaskSettings,
                 out: np.ndarray) -> None:
    """Upsample the coarse labels into `out`: their interior as is, the boundary band re-thresholded."""
    lungs = (labels != _OTHER_AIR) & ((labels & 3) > 0)
    box = _bbox(lungs, margin=1)
    if box is None:
        return
    lungs = lungs[box]
    solid = lungs & ((labels[box] & _SOLID) > 0)
    labels = np.where(lungs, labels[box] & 3, labels[box])
    planar = grid.step == 1 and work.shape[0] < settings.min_slices_3d
    interior = (lungs & ~(_dilate_inplane(~lungs, 1) if planar else _dilate6(~lungs))) | solid
    grown = _dilate_labels(np.where(lungs, labels, 0).astype(np.uint8), planar)
    reach = np.where(lungs, labels, np.where(labels == _OTHER_AIR, 0, grown)).astype(np.uint8)
    code = reach | (interior.astype(np.uint8) << 2)  # bits 0-1: side, bit 2: interior
    factor, step = grid.factor, grid.step
    n_slices, rows, cols = work.shape
    row_part = slice(box[1].start * factor, min(rows, box[1].stop * factor))
    col_part = slice(box[2].start * factor, min(cols, box[2].stop * factor))
    height, width = row_part.stop - row_part.start, col_part.stop - col_part.start
    size = (code.shape[2] * factor, code.shape[1] * factor)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    for k in range(box[0].start * step, min(n_slices, box[0].stop * step)):
        plane = code[min(k // step - box[0].start, code.shape[0] - 1)]
        if not plane.any():
            continue
        if factor > 1:
            plane = cv2.resize(plane, size, interpolation=cv2.INTER_NEAREST)[:height, :width]
        side = plane & 3
        keep = (((plane & 4) > 0) | (work[k, row_part, col_part] < settings.air_threshold_hu)) & (side > 0)
        keep |= (cv2.morphologyEx(keep.astype(np.uint8), cv2.MORPH_CLOSE, kernel) > 0) & (side > 0)
        out[k, row_part, col_part] = np.where(keep, side, 0)


def _dilate_labels(labels: np.ndarray, planar: bool) -> np.ndarray:
    """Grey dilation of a label image: 3x3 in-plane, plus one slice up and down unless planar."""
    kernel = np.ones((3, 3), np.uint8)
    grown = np.stack([cv2.dilate(plane, kernel) for plane in labels])
    if not planar:
        grown[1:] = np.maximum(grown[1:], labels[:-1])
        grown[:-1] = np.maximum(grown[:-1], labels[1:])
    return grown
