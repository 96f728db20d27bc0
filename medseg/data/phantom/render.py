"""Image a `ChestModel` on a voxel grid: slice-wise anatomy, painted trees and findings, scanner effects.

Partial volume across thick slices is simulated by rendering sub-planes within the slice profile and
averaging them; the reconstruction kernel is an in-plane Gaussian blur applied together with the noise,
so the noise is spatially correlated like real CT noise. Labels are those of the slice centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.data.phantom.fields import SmoothField
from medseg.data.phantom.model import ChestModel, component_rng
from medseg.data.phantom.shapes import evaluate_points
from medseg.data.phantom.tissues import Tissue
from medseg.data.phantom.trees import Segments
from medseg.data.phantom.tubes import PaintTarget, fill_painter, paint_capsules, splat_segments
from medseg.labels import label_map

__all__ = ["Grid", "PhantomImage", "ScannerSettings", "render"]

_SUB_PLANE_MM = 1.6
_THIN_SLICE_MM = 2.0


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (i, j, k), voxel-to-scanner-RAS affine, slice thickness along k (mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    slice_thickness: float | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


@dataclass(frozen=True)
class ScannerSettings:
    """Image-quality settings: noise SD in HU (after the kernel) and in-plane kernel blur (mm)."""

    noise_sd: float = 20.0
    kernel_sigma_mm: float = 0.4


@dataclass
class PhantomImage:
    """A rendered phantom: HU (int16), lobe labels 0-5, lung labels (1 right, 2 left), tissue codes."""

    hu: np.ndarray
    lobes: np.ndarray
    lungs: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray


ProgressCallback = Callable[[int, int], None]


def _sub_plane_offsets(grid: Grid, enabled: bool) -> np.ndarray:
    """Positions (mm along k) of the sub-planes averaged into each slice: an odd count, centre included."""
    thickness = grid.slice_thickness or grid.spacing[2]
    if not enabled or thickness <= _THIN_SLICE_MM:   # thin slices: the in-plane kernel dominates
        return np.zeros(1)
    count = 2 * math.ceil((thickness / _SUB_PLANE_MM - 1) / 2) + 1
    return (np.arange(count) - (count - 1) / 2) * thickness / count


def _fields(model: ChestModel, grid: Grid) -> tuple[SmoothField, SmoothField | None]:
    rng = component_rng(model.seed, "texture")
    texture = SmoothField(rng, grid.shape, grid.spacing, 18.0)
    needs_patches = any(f.kind in ("emphysema", "consolidation") for f in model.diffuse_findings())
    patches = SmoothField(rng, grid.shape, grid.spacing, 14.0) if needs_patches else None
    return texture, patches


def _render_planes(model: ChestModel, shape: tuple[int, int, int], affine: np.ndarray,
                   fields: tuple, k_shift: float, progress: ProgressCallback | None, done: int, total: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate every slice of a regular grid, then paint tubes, trees and round findings.

    Arrays are stored slice-major, (k, i, j) in memory, and returned as (i, j, k) views.
    """
    body_from_voxel = model.pose.body_from_world() @ affine
    m = body_from_voxel.astype(np.float32)
    ni, nj, nk = shape
    i = np.arange(ni, dtype=np.float32)[:, None]
    j = np.arange(nj, dtype=np.float32)[None, :]
    hu = np.empty((nk, ni, nj), dtype=np.float32)
    tissue = np.empty((nk, ni, nj), dtype=np.uint8)
    lobe = np.empty((nk, ni, nj), dtype=np.uint8)
    texture_field, patch_field = fields
    for k in range(nk):
        x, y, z = (m[c, 0] * i + m[c, 1] * j + (m[c, 2] * k + m[c, 3]) for c in range(3))
        texture = np.float32(14.0) * texture_field.slice(k + k_shift)
        patches = patch_field.slice(k + k_shift) if patch_field is not None else 0.0
        labels = evaluate_points(model, x, y, z, texture, patches)
        hu[k], tissue[k], lobe[k] = labels.hu, labels.tissue, labels.lobe
        if progress is not None:
            progress(done + k + 1, total)
    views = tuple(a.transpose(1, 2, 0) for a in (hu, tissue, lobe))
    target = PaintTarget(hu=views[0], tissue=views[1], lobe=views[2], body_from_voxel=body_from_voxel)
    _paint_structures(model, target)
    return views


def _paint_structures(model: ChestModel, target: PaintTarget) -> None:
    for tube in model.tubes:
        if tube.tissue in (Tissue.AIRWAY_AIR, Tissue.AIRWAY_WALL) and not model.components.airways:
            continue
        paint_capsules(target, tube.segments(), fill_painter(tube.tissue, tube.hu, clear_lobe=True))
    components = model.components
    if components.vessels:
        explicit = max(0.8, 0.9 * float(target.spacing[:2].min()))
        vessel_painter = fill_painter(Tissue.VESSEL, model.hu.blood, only_lung=True)
        for tree in (model.arteries, model.veins):
            if tree is None:
                continue
            thick = tree.radius >= explicit
            paint_capsules(target, tree.where(thick), vessel_painter)
            splat_segments(target, tree.where(~thick), model.hu.blood)
    if components.airways and model.airway_walls is not None:
        paint_capsules(target, model.airway_walls, fill_painter(Tissue.AIRWAY_WALL, 20.0, keep_lobe_only=True))
        paint_capsules(target, model.airway_lumens,
                       fill_painter(Tissue.AIRWAY_AIR, -1000.0, keep_lobe_only=True))
    for sphere in model.spheres():
        ball = Segments(np.array([sphere.centre]), np.array([sphere.centre]), np.array([sphere.radius]))
        paint_capsules(target, ball, fill_painter(sphere.tissue, sphere.hu, keep_lobe_only=True))


def _shifted(affine: np.ndarray, offset_mm: float) -> np.ndarray:
    shifted = affine.copy()
    step = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    shifted[:3, 3] = affine[:3, 3] + step * offset_mm
    return shifted


def _kernel_noise_gain(sigma_px: tuple[float, float]) -> float:
    """How much the in-plane Gaussian kernel scales the SD of white noise."""
    impulse = np.zeros((41, 41), dtype=np.float64)
    impulse[20, 20] = 1.0
    response = ndimage.gaussian_filter(impulse, sigma_px)
    return float(np.sqrt((response**2).sum()))


def _scanner(model: ChestModel, grid: Grid, hu: np.ndarray, scanner: ScannerSettings) -> None:
    """Add correlated noise and the reconstruction kernel's blur in place (`hu` is slice-major)."""
    components = model.components
    sigma_px = tuple(scanner.kernel_sigma_mm / s for s in grid.spacing[:2])
    blur = components.blur and scanner.kernel_sigma_mm > 0
    noise = components.noise and scanner.noise_sd > 0
    rng = component_rng(model.seed, "noise")
    scale = np.float32(scanner.noise_sd / (_kernel_noise_gain(sigma_px) if blur else 1.0) * math.sqrt(12.0))
    for plane in hu:
        if noise:
            plane += (rng.random(plane.shape, dtype=np.float32) - np.float32(0.5)) * scale
        if blur:
            ndimage.gaussian_filter(plane, sigma_px, output=plane)


def render(model: ChestModel, grid: Grid, scanner: ScannerSettings | None = None, *,
           progress: ProgressCallback | None = None, quantize: bool = True) -> PhantomImage:
    """Image `model` on `grid`; HU are rounded to int16 unless `quantize` is False (float32).

    Returned arrays are indexed (i, j, k) but stored slice by slice (views of (k, i, j) buffers).
    """
    scanner = scanner or ScannerSettings()
    offsets = _sub_plane_offsets(grid, model.components.partial_volume)
    fields = _fields(model, grid)
    total = len(offsets) * grid.shape[2]
    accumulated = None
    for n, offset in enumerate(offsets):
        hu, tissue, lobe = _render_planes(model, grid.shape, _shifted(grid.affine, offset), fields,
                                          offset / grid.spacing[2], progress, n * grid.shape[2], total)
        if offset == 0.0:
            centre_tissue, centre_lobe = tissue, lobe
        if accumulated is None:
            accumulated = hu
        else:
            accumulated += hu
    slices = accumulated.transpose(2, 0, 1)           # back to the (k, i, j) buffer
    if len(offsets) > 1:
        slices *= np.float32(1.0 / len(offsets))
    _scanner(model, grid, slices, scanner)
    if quantize:
        stored = np.empty(slices.shape, dtype=np.int16)
        for k, plane in enumerate(slices):
            np.clip(np.rint(plane), -1024, 3071, out=plane)
            stored[k] = plane
        slices = stored
    lungs = _lungs_from_lobes(centre_lobe)
    return PhantomImage(hu=slices.transpose(1, 2, 0), lobes=centre_lobe, lungs=lungs, tissue=centre_tissue,
                        affine=grid.affine.copy())


def _lungs_from_lobes(lobes: np.ndarray) -> np.ndarray:
    """The "lungs" label map (right / left lung) from a "lobes" label map, by each lobe's `part_of`."""
    lungs = label_map("lungs")
    lookup = np.zeros(256, dtype=np.uint8)
    for lobe in label_map("lobes").foreground:
        lookup[lobe.value] = lungs.by_name(lobe.part_of).value  # type: ignore[arg-type, union-attr]
    return lookup[lobes]
