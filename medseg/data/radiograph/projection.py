"""PA chest radiograph geometry: HU to linear attenuation, coronal projection grid, divergent-beam line integrals.

The phantom is rendered on a grid of coronal slabs (k runs posterior to anterior, towards the detector). Each
slab's attenuation is integrated over its thickness and magnified about the central ray by SID / (source to
slab distance) onto the detector, so posterior structures (spine, scapulae) are magnified more than anterior
ones, as on a real PA film. Oblique rays get the longer path 1 / cos(angle) through every slab.

Slabs are sampled without partial volume (for speed), so the in-plane sampling drifts from slab to slab
(11 voxels in x and 11 x golden ratio in z over the whole depth, an affine shear): every few slabs each
sub-voxel phase occurs once, so summed along the beam the staircases of sharp edges average out to an
area-sampled (anti-aliased) projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from medseg.data.phantom import ChestModel, Grid

__all__ = ["AttenuationModel", "PaGeometry", "attenuation_from_hu", "detector_positions", "project_pa",
           "projection_grid"]

_SHIFT_VOXELS = (11.0, 11.0 * (1.0 + math.sqrt(5.0)) / 2.0)
"""In-plane drift (x, z) of the last slab relative to the first, in voxels (anti-aliasing, see above)."""


@dataclass(frozen=True)
class AttenuationModel:
    """Bilinear HU -> linear attenuation (1/mm) at the radiograph's effective energy.

    Below 0 HU tissue is a water/air mix: mu = mu_water * (1 + HU / 1000). Above 0 HU it is a water/bone mix
    scaled so that `hu_bone` (cortical bone at the CT's effective energy) gets `mu_bone`: bone attenuates
    relatively more at the lower radiographic energy (Kinahan et al., Med Phys 1998;25:2046, the bilinear
    model of CT-based attenuation correction). Defaults: 60 keV effective (120 kVp with filtration); NIST
    XCOM mass attenuation water 0.2059 cm2/g, ICRU-44 cortical bone 0.3148 cm2/g x 1.92 g/cm3; cortical
    bone ~1590 HU at the CT's ~70 keV (water 0.1937, bone 0.2616 cm2/g there).
    """

    mu_water: float = 0.02059
    mu_bone: float = 0.06044
    hu_bone: float = 1590.0

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        return attenuation_from_hu(hu, self)


def attenuation_from_hu(hu: np.ndarray, model: AttenuationModel | None = None) -> np.ndarray:
    """Linear attenuation (1/mm, float32, >= 0) of HU values with the bilinear `model`."""
    model = model or AttenuationModel()
    hu = np.asarray(hu, dtype=np.float32)
    low = np.float32(model.mu_water / 1000.0)
    high = np.float32((model.mu_bone - model.mu_water) / model.hu_bone)
    mu = np.float32(model.mu_water) + hu * np.where(hu > 0, high, low)
    return np.maximum(mu, np.float32(0.0), out=mu)


@dataclass(frozen=True)
class PaGeometry:
    """Posterior-anterior geometry in scanner RAS mm: source behind the patient, detector plane y = detector_y.

    The central ray runs along +y through (`centre_x`, `centre_z`) and hits the detector's centre; detector
    columns run from the patient's right to left and rows from head to feet (PatientOrientation L\\F).
    """

    sid_mm: float = 1800.0
    detector_y: float = 120.0
    centre_x: float = 0.0
    centre_z: float = -60.0
    detector_mm: float = 430.0

    @property
    def source_y(self) -> float:
        return self.detector_y - self.sid_mm

    def magnification(self, y: np.ndarray | float) -> np.ndarray | float:
        """Detector magnification of a point at scanner y (SID / source-to-point distance)."""
        return self.sid_mm / (np.asarray(y) - self.source_y)


def projection_grid(model: ChestModel, geometry: PaGeometry, spacing_mm: float = 1.5, slab_mm: float = 6.0,
                    margin_mm: float = 8.0) -> Grid:
    """A coronal-slab grid covering the posed body and the beam: i right->left, j head->feet, k back->front."""
    s = model.shape
    world_from_body = np.linalg.inv(model.pose.body_from_world())
    xs, ys = np.meshgrid([-s.body_half_width, s.body_half_width], [-s.body_back, s.body_front])
    centre_z = (model.pose.body_from_world() @ np.array([geometry.centre_x, 0.0, geometry.centre_z, 1.0]))[2]
    reach = 0.5 * geometry.detector_mm + margin_mm                # body heights the beam can reach
    corners = np.concatenate([np.stack([xs.ravel(), ys.ravel(), np.full(4, centre_z + dz), np.ones(4)])
                              for dz in (-reach, reach)], axis=1)
    world = world_from_body @ corners
    x_low, x_high = world[0].min() - margin_mm, world[0].max() + margin_mm
    y_low, y_high = world[1].min() - margin_mm, min(world[1].max() + margin_mm, geometry.detector_y)
    half_height = 0.5 * geometry.detector_mm / float(geometry.magnification(y_high)) + margin_mm
    z_high = geometry.centre_z + half_height
    nk = math.ceil((y_high - y_low) / slab_mm)
    nx = math.ceil((x_high - x_low) / spacing_mm + _SHIFT_VOXELS[0]) + 2
    nz = math.ceil(2.0 * half_height / spacing_mm + _SHIFT_VOXELS[1]) + 2
    shift_x, shift_z = (voxels * spacing_mm / max(nk - 1, 1) for voxels in _SHIFT_VOXELS)
    affine = np.eye(4)
    affine[:3, 0] = (-spacing_mm, 0.0, 0.0)
    affine[:3, 1] = (0.0, 0.0, -spacing_mm)
    affine[:3, 2] = (shift_x, slab_mm, shift_z)
    affine[:3, 3] = (x_high, y_low + 0.5 * slab_mm, z_high)
    return Grid((nx, nz, nk), affine, slab_mm)


def _interpolation(positions: np.ndarray, start: float, step: float, count: int) -> sparse.csr_matrix:
    """Sparse linear-interpolation weights (len(positions) x count) for samples at `start + step * n`."""
    index = (positions - start) / step
    lower = np.floor(index).astype(np.int64)
    weight = (index - lower).astype(np.float32)
    rows = np.arange(len(positions))
    entries = []
    for offset, w in ((0, 1.0 - weight), (1, weight)):
        column = lower + offset
        ok = (column >= 0) & (column < count) & (w > 0)
        entries.append((rows[ok], column[ok], w[ok]))
    r, c, w = (np.concatenate(parts) for parts in zip(*entries, strict=True))
    return sparse.csr_matrix((w, (r, c)), shape=(len(positions), count), dtype=np.float32)


def detector_positions(geometry: PaGeometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scanner x of each detector column and z of each row (pixel centres), for a `size` x `size` detector."""
    pitch = geometry.detector_mm / size
    offsets = ((size - 1) / 2.0 - np.arange(size)) * pitch
    return geometry.centre_x + offsets, geometry.centre_z + offsets


def project_pa(mu: np.ndarray, grid: Grid, geometry: PaGeometry, size: int) -> np.ndarray:
    """Line integrals of `mu` (1/mm, (i, j, k) on `grid`) on a `size` x `size` detector, (rows, columns).

    `grid` must come from `projection_grid`: axis-aligned in-plane steps, coronal slabs (any in-plane shift).
    """
    affine = grid.affine
    spacing = float(-affine[0, 0])
    slab = float(affine[1, 2])
    nx, nz, nk = mu.shape
    det_x, det_z = detector_positions(geometry, size)
    total = np.zeros((size, size), dtype=np.float32)
    for k in range(nk):
        x0, y0, z0 = (float(v) for v in affine[:3, 3] + k * affine[:3, 2])
        magnification = float(geometry.magnification(y0))
        xs = geometry.centre_x + (det_x - geometry.centre_x) / magnification
        zs = geometry.centre_z + (det_z - geometry.centre_z) / magnification
        across = _interpolation(-xs, -x0, spacing, nx)          # columns <- i
        down = _interpolation(-zs, -z0, spacing, nz)            # rows <- j
        plane = np.ascontiguousarray(mu[:, :, k])               # (i, j)
        total += down @ np.asarray(across @ plane).T
    total *= np.float32(slab)
    distance2 = (det_x - geometry.centre_x)[None, :] ** 2 + (det_z - geometry.centre_z)[:, None] ** 2
    total *= np.sqrt(1.0 + distance2 / geometry.sid_mm**2).astype(np.float32)
    return total
