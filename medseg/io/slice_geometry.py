"""Slice-stack geometry: ordering, spacing and tilt checks, and resampling to a regular grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.errors import GeometryError

__all__ = [
    "StackGeometry",
    "analyse_stack",
    "resample_tilted_to_orthogonal",
    "resample_to_uniform_spacing",
]

DUPLICATE_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_DEG = 0.01


@dataclass
class StackGeometry:
    """Geometry of a sorted slice stack (LPS, mm). `order` sorts the input slices along the normal."""

    order: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    positions: np.ndarray
    """Sorted ImagePositionPatient values, shape (n, 3)."""
    offsets: np.ndarray
    """Sorted positions projected on the normal, shape (n,)."""
    pixel_spacing: tuple[float, float]
    """(row spacing, column spacing) as in DICOM PixelSpacing: dy, dx."""
    default_slice_spacing: float
    tilt_deg: float = 0.0

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def slice_spacing(self) -> float:
        return float(np.median(self.gaps)) if len(self.offsets) > 1 else self.default_slice_spacing

    @property
    def step(self) -> np.ndarray:
        """World displacement between neighbouring slices (along the table when tilted)."""
        if len(self.offsets) < 2:
            return self.normal * self.default_slice_spacing
        if self.tilt_deg > TILT_TOLERANCE_DEG:
            return (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
        return self.normal * (self.offsets[-1] - self.offsets[0]) / (len(self.offsets) - 1)

    def affine_lps(self) -> np.ndarray:
        """Voxel (i: along rows, j: down columns, k: slices) to LPS mm."""
        dy, dx = self.pixel_spacing
        affine = np.eye(4)
        affine[:3, 0] = self.row_dir * dx
        affine[:3, 1] = self.col_dir * dy
        affine[:3, 2] = self.step
        affine[:3, 3] = self.positions[0]
        return affine


def _unit(vector: np.ndarray, what: str, source: str) -> np.ndarray:
    norm = np.linalg.norm(vector)
    if norm < 1e-6:
        raise GeometryError(f"degenerate {what} vector {vector.tolist()}", source)
    return vector / norm


def analyse_stack(
    orientation: np.ndarray,
    positions: np.ndarray,
    pixel_spacing: tuple[float, float],
    default_slice_spacing: float,
    *,
    source: str = "",
    labels: list[str] | None = None,
) -> StackGeometry:
    """Sort slices along their normal; refuse duplicate positions and measure gantry tilt."""
    row_dir = _unit(np.asarray(orientation[:3], float), "row direction", source)
    col_dir = _unit(np.asarray(orientation[3:], float), "column direction", source)
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise GeometryError("ImageOrientationPatient row and column directions are not orthogonal", source)
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    offsets = positions @ normal
    order = np.argsort(offsets, kind="stable")
    positions, offsets = positions[order], offsets[order]
    labels = [labels[i] for i in order] if labels else [str(i) for i in order]

    duplicates = np.flatnonzero(np.diff(offsets) < DUPLICATE_TOLERANCE_MM)
    if duplicates.size:
        first = duplicates[0]
        raise GeometryError(
            f"duplicate slice positions: {labels[first]} and {labels[first + 1]} both lie at "
            f"{np.round(positions[first], 3).tolist()} ({duplicates.size} duplicate(s)); not a single volume "
            "(several acquisitions or phases in one series?)",
            source,
        )

    geometry = StackGeometry(order, row_dir, col_dir, normal, positions, offsets, pixel_spacing,
                             default_slice_spacing)
    if len(positions) > 1:
        travel = positions[-1] - positions[0]
        cosine = float(travel @ normal) / float(np.linalg.norm(travel))
        geometry.tilt_deg = math.degrees(math.acos(min(1.0, cosine)))
        if geometry.tilt_deg > TILT_TOLERANCE_DEG:
            expected = positions[0] + np.outer(offsets - offsets[0], travel / float(travel @ normal))
            if np.abs(positions - expected).max() > 0.05:
                raise GeometryError("slice positions do not lie on a line: not a single volume", source)
    return geometry


def check_uniform_spacing(geometry: StackGeometry, *, relative_tolerance: float = 0.01) -> str | None:
    """Return None when slices are evenly spaced, else a specific description of the problem."""
    gaps = geometry.gaps
    if gaps.size < 2:
        return None
    spacing = float(np.median(gaps))
    tolerance = max(relative_tolerance * spacing, 0.01)
    bad = np.flatnonzero(np.abs(gaps - spacing) > tolerance)
    if bad.size == 0:
        return None
    ratios = gaps[bad] / spacing
    if np.all(np.abs(ratios - np.round(ratios)) < 0.1) and np.all(np.round(ratios) >= 2):
        missing = int(np.sum(np.round(ratios) - 1))
        where = ", ".join(
            f"{geometry.offsets[i]:.2f} to {geometry.offsets[i + 1]:.2f} mm" for i in bad[:5]
        )
        return f"{missing} missing slice(s): gap(s) at {where} along the normal (spacing {spacing:.3f} mm)"
    return (
        f"non-uniform slice spacing: gaps {gaps.min():.3f}-{gaps.max():.3f} mm "
        f"(median {spacing:.3f} mm, {bad.size} irregular)"
    )


def resample_to_uniform_spacing(array: np.ndarray, geometry: StackGeometry) -> tuple[np.ndarray, StackGeometry]:
    """Linearly interpolate an (i, j, k) stack onto evenly spaced slices at the median gap."""
    spacing = geometry.slice_spacing
    length = geometry.offsets[-1] - geometry.offsets[0]
    count = round(length / spacing) + 1
    targets = geometry.offsets[0] + np.arange(count) * (length / (count - 1))
    upper = np.clip(np.searchsorted(geometry.offsets, targets, side="right"), 1, len(geometry.offsets) - 1)
    lower = upper - 1
    weight = (targets - geometry.offsets[lower]) / (geometry.offsets[upper] - geometry.offsets[lower])
    out = np.empty((*array.shape[:2], count), dtype=np.float32)
    for index, (lo, hi, w) in enumerate(zip(lower, upper, weight, strict=False)):
        out[:, :, index] = (1.0 - w) * array[:, :, lo] + w * array[:, :, hi]
    travel = geometry.positions[-1] - geometry.positions[0]
    fractions = (targets - targets[0]) / length
    positions = geometry.positions[0] + np.outer(fractions, travel)
    resampled = StackGeometry(np.arange(count), geometry.row_dir, geometry.col_dir, geometry.normal,
                              positions, targets, geometry.pixel_spacing, geometry.default_slice_spacing,
                              geometry.tilt_deg)
    return _cast_like(out, array.dtype), resampled


def resample_tilted_to_orthogonal(array: np.ndarray, affine_lps: np.ndarray, fill: float
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared (gantry-tilted) stack onto an orthogonal grid stacked along the table.

    The new grid keeps the in-plane pixel size and the table step; its slices are perpendicular to the
    table travel, so the result has an orthonormal direction matrix and covers the whole input.
    """
    from scipy import ndimage

    step = affine_lps[:3, 2]
    dx, dy = np.linalg.norm(affine_lps[:3, 0]), np.linalg.norm(affine_lps[:3, 1])
    axis_k = step / np.linalg.norm(step)
    axis_i = affine_lps[:3, 0] - (affine_lps[:3, 0] @ axis_k) * axis_k
    axis_i /= np.linalg.norm(axis_i)
    axis_j = np.cross(axis_k, axis_i)
    if axis_j @ affine_lps[:3, 1] < 0:
        axis_j = -axis_j
    frame = np.stack([axis_i, axis_j, axis_k], axis=1)
    spacing = np.array([dx, dy, np.linalg.norm(step)])

    shape = np.array(array.shape)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T
    world = corners @ affine_lps[:3, :3].T + affine_lps[:3, 3]
    local = (world - affine_lps[:3, 3]) @ frame
    low, high = local.min(axis=0), local.max(axis=0)
    out_shape = tuple(int(n) for n in np.floor((high - low) / spacing + 1e-6).astype(int) + 1)

    out_affine = np.eye(4)
    out_affine[:3, :3] = frame * spacing
    out_affine[:3, 3] = affine_lps[:3, 3] + frame @ low
    to_input = np.linalg.inv(affine_lps) @ out_affine
    out = ndimage.affine_transform(array.astype(np.float32, copy=False), to_input[:3, :3],
                                   offset=to_input[:3, 3], output_shape=out_shape, order=1,
                                   mode="constant", cval=float(fill))
    return _cast_like(out, array.dtype), out_affine


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return np.rint(values).astype(dtype)
    return values.astype(dtype, copy=False)
