"""The `Volume` type: a voxel array with its exact place in patient space."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AIR_HU", "Volume", "lps_to_ras"]

AIR_HU = -1024
"""Value given to padding voxels and to voxels outside the scanned field after resampling."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
