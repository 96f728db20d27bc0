"""The `Volume` type: a voxel array with its exact place in patient space."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from medseg.errors import GeometryError, InputError

__all__ = ["AIR_HU", "NON_FINITE_NOTE", "Volume", "check_affine", "check_voxel_budget", "lps_to_ras",
           "replace_non_finite"]

AIR_HU = -1024
"""Value given to padding voxels and to voxels outside the scanned field after resampling."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


NON_FINITE_NOTE = "non-finite voxels (NaN/inf) replaced by air"
"""Text in `Volume.notes` (after the count) when `replace_non_finite` replaced voxels; QC looks for it."""


def check_affine(affine: np.ndarray, source: Any = None) -> np.ndarray:
    """`affine` as a float64 4x4 array, or `GeometryError` when it is not finite or its 3x3 part is singular
    (a zero spacing, a zero or repeated direction): such an image cannot be placed in space."""
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise GeometryError(f"affine must be 4x4, got shape {matrix.shape}", source)
    if not np.isfinite(matrix).all():
        raise GeometryError(f"affine is not finite {np.round(matrix[:3], 6).tolist()}: cannot place the image in "
                            "space", source)
    linear = matrix[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    # |det| / product of column lengths is 1 for orthogonal axes and 0 for parallel or zero ones.
    if norms.min() <= 1e-9 or abs(np.linalg.det(linear)) / float(np.prod(norms)) < 1e-6:
        raise GeometryError(f"affine is singular (voxel sizes {np.round(norms, 6).tolist()} mm, axes "
                            f"{np.round(linear, 6).tolist()}): cannot place the image in space", source)
    return matrix


def _si(value: float, unit: str, *, space: str = "") -> str:
    """`85.9 G voxels` (space=" ") or `172 GB`."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{space}{unit}"
    return f"{value:.3g} {unit}"


def check_voxel_budget(shape: Sequence[int], dtype: Any, max_voxels: int, source: Any = None, *,
                       option: str = "ReadOptions.max_voxels / --max-voxels") -> int:
    """Number of voxels of an image of `shape` (from its header), or `InputError` when a dimension is not
    positive or the image exceeds `max_voxels`: checked before any pixel is read or memory allocated."""
    dims = [int(n) for n in shape]
    text = "x".join(str(n) for n in dims)
    if not dims or min(dims) <= 0:
        raise InputError(f"image of {text or 'no'} voxels: a dimension is zero or negative (empty image)", source)
    count = math.prod(dims)
    if count > max_voxels:
        itemsize = np.dtype(dtype).itemsize
        raise InputError(f"image of {text} voxels ({_si(count, 'voxels', space=' ')}, {_si(count * itemsize, 'B')} "
                         f"as {np.dtype(dtype).name}) exceeds the voxel budget of "
                         f"{_si(max_voxels, 'voxels', space=' ')} "
                         f"({option})", source)
    return count


def replace_non_finite(array: np.ndarray, policy: Literal["air", "error"], source: Any = None
                       ) -> tuple[np.ndarray, str | None]:
    """`array` with NaN/inf voxels replaced by `AIR_HU` (policy "air": returns the note to record) or
    `InputError` naming their count (policy "error"). Integer arrays are returned unchanged; the caller
    logs the note and adds it to `Volume.notes`."""
    if array.dtype.kind not in "fc":
        return array, None
    finite = np.isfinite(array)
    if finite.all():
        return array, None
    count = int(finite.size - np.count_nonzero(finite))
    if policy == "error":
        raise InputError(f"{count} non-finite voxel(s) (NaN/inf) in the image (use the 'air' non-finite "
                         "option to replace them by air)", source)
    if not array.flags.writeable:
        array = array.copy()
    array[~finite] = AIR_HU
    return array, f"{count} {NON_FINITE_NOTE} ({AIR_HU} HU)"


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """Convert a 4x4 affine (or 4xN homogeneous points) between DICOM LPS and NIfTI RAS.

    The conversion flips x and y, so it is its own inverse.
    """
    return _LPS_TO_RAS @ matrix


@dataclass
class Volume:
    """A 3D image: `array[i, j, k]` sits at world position `affine @ (i, j, k, 1)` (RAS+, mm).

    For DICOM, i runs along the row direction (columns of the pixel matrix), j along the column
    direction (rows of the pixel matrix) and k along the slice normal. CT volumes hold Hounsfield units.
    """

    array: np.ndarray
    affine: np.ndarray
    tags: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    """Warnings and corrections made while loading, in the order they happened."""
    slice_files: list[str] = field(default_factory=list)
    """DICOM files of slices k = 0, 1, ... (empty when slices were resampled or the source is not DICOM)."""
    slice_frames: list[int] = field(default_factory=list)
    """0-based frame of `slice_files[k]` holding slice k when the slices are frames of one multi-frame
    (enhanced) file; empty for single-frame files."""

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes, e.g. 'LPS' for a standard axial DICOM volume."""
        import nibabel as nib

        return "".join(nib.orientations.aff2axcodes(self.affine))

    @property
    def modality(self) -> str | None:
        return self.tags.get("Modality")

    def world(self, index: np.ndarray) -> np.ndarray:
        """RAS mm position of voxel indices, shape (..., 3)."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def corners(self) -> np.ndarray:
        """RAS positions of the 8 corner voxel centres, shape (8, 3)."""
        extents = [(0, n - 1) for n in self.shape]
        return self.world(np.array(list(itertools.product(*extents))))

    def value_range(self) -> tuple[float, float]:
        return float(self.array.min()), float(self.array.max())

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary of geometry and intensities."""
        low, high = self.value_range()
        return {
            "source": self.source,
            "shape": list(self.shape),
            "spacing_mm": [round(s, 6) for s in self.spacing],
            "orientation": self.orientation,
            "affine_ras": np.round(self.affine, 6).tolist(),
            "dtype": str(self.array.dtype),
            "value_range": [low, high],
            "tags": {k: v for k, v in self.tags.items() if v is not None},
            "notes": list(self.notes),
        }
