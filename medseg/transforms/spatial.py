"""Exact-geometry spatial steps shared by training and inference.

A source volume goes to the model grid in two steps, both invertible without loss of alignment:

1. `Reorientation`: axis permutation + flips to RAS order (a view; no interpolation).
2. `CropResample`: crop a box (the lungs plus a margin) and resample it to the model's spacing with
   torch's half-pixel-centred interpolation, so that index `d` on the model grid sits at crop index
   `(d + 0.5) * n_src / n_dst - 0.5`, and the inverse interpolation maps back exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["CropResample", "Reorientation", "lung_box"]


@dataclass(frozen=True)
class Reorientation:
    """Transposes and flips that bring an array to RAS axis order (axis 0 towards patient right...)."""

    ornt: np.ndarray
    """nibabel orientation: row n = (output axis, flip) of input axis n."""
    shape: tuple[int, int, int]
    """Shape of the source array."""

    @classmethod
    def to_ras(cls, affine: np.ndarray, shape: Sequence[int]) -> Reorientation:
        from nibabel import orientations

        return cls(orientations.io_orientation(np.asarray(affine)), tuple(int(n) for n in shape))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array in RAS order (a view of `array`; its last 3 axes are the spatial ones)."""
        from nibabel import orientations

        return orientations.apply_orientation(array, self.ornt)

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Inverse of `apply`: a RAS-ordered array back to the source axis order (a view)."""
        from nibabel import orientations

        return orientations.apply_orientation(array, self._inverse())

    def affine(self, affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world affine of the reoriented array."""
        from nibabel import orientations

        return np.asarray(affine) @ orientations.inv_ornt_aff(self.ornt, self.shape)

    def _inverse(self) -> np.ndarray:
        inverse = np.zeros_like(self.ornt)
        for source_axis, (target_axis, flip) in enumerate(self.ornt):
            inverse[int(target_axis)] = (source_axis, flip)
        return inverse


def lung_box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, stop) of the bounding box of `mask` grown by `margin_mm`, clipped to the array."""
    if not mask.any():
        return (0, 0, 0), tuple(int(n) for n in mask.shape)
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        margin = int(np.ceil(margin_mm / spacing[axis]))
        start.append(max(0, int(present[0]) - margin))
        stop.append(min(mask.shape[axis], int(present[-1]) + 1 + margin))
    return tuple(start), tuple(stop)


@dataclass(frozen=True)
class CropResample:
    """A crop box in a (RAS-ordered) array and the model-grid shape it is resampled to."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    out_shape: tuple[int, int, int]

    @classmethod
    def plan(cls, start: Sequence[int], stop: Sequence[int], spacing: Sequence[float],
             target_spacing: Sequence[float]) -> CropResample:
        size = [b - a for a, b in zip(start, stop, strict=True)]
        out = tuple(max(1, round(n * s / t)) for n, s, t in zip(size, spacing, target_spacing, strict=True))
        return cls(tuple(int(a) for a in start), tuple(int(b) for b in stop), out)  # type: ignore[arg-type]

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def scale(self) -> np.ndarray:
        """Source voxels per model-grid voxel along each axis."""
        return np.array(self.crop_shape, dtype=np.float64) / np.array(self.out_shape, dtype=np.float64)

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def affine(self, source_affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world affine of the model grid (exactly what the interpolation does)."""
        scale = self.scale
        index_map = np.eye(4)
        index_map[:3, :3] = np.diag(scale)
        index_map[:3, 3] = np.array(self.start) + 0.5 * scale - 0.5
        return np.asarray(source_affine) @ index_map

    def image(self, array: np.ndarray, smooth: bool = True) -> torch.Tensor:
        """Crop and resample an (X, Y, Z) intensity array (trilinear): a slice-major (Z', X', Y') float32 tensor.

        With `smooth`, in-plane axes shrunk by 1.5x or more are first low-pass filtered (Gaussian,
        sigma = 0.4 x the shrink factor) so downsampling does not alias noise.
        """
        crop = _slice_major(array[self.slices()], np.float32)
        sigma = [0.4 * s if s >= 1.5 else 0.0 for s in self.scale[:2]]
        if smooth and any(sigma):
            _blur_planes(crop, sigma)
        return self._resample(torch.from_numpy(crop), "trilinear")

    def labels(self, array: np.ndarray) -> torch.Tensor:
        """Crop and resample an (X, Y, Z) label map (nearest voxel centre): slice-major (Z', X', Y') uint8."""
        crop = torch.from_numpy(_slice_major(array[self.slices()], np.uint8))
        return self._resample(crop.float(), "nearest-exact").to(torch.uint8)

    def _resample(self, crop: torch.Tensor, mode: str) -> torch.Tensor:
        nx, ny, nz = self.out_shape
        if tuple(crop.shape) == (nz, nx, ny):
            return crop
        kwargs = {} if mode.startswith("nearest") else {"align_corners": False}
        return F.interpolate(crop[None, None], size=(nz, nx, ny), mode=mode, **kwargs)[0, 0]

    def back_slabs(self, grid: torch.Tensor, slab: int = 16) -> Iterator[tuple[int, torch.Tensor]]:
        """Resample a slice-major (C, Z', X', Y') model-grid tensor back onto the crop, a slab at a time.

        Yields (k0, values) with values (C, K, X, Y) for crop slices k0 .. k0+K-1: bilinear in-plane and
        linear across planes, the exact inverse of the forward mapping.
        """
        nx, ny, nz = self.crop_shape
        depth = grid.shape[1]
        position = ((torch.arange(nz, dtype=torch.float64) + 0.5) * (depth / nz) - 0.5).clamp(0, depth - 1)
        below = position.floor().long().clamp(max=depth - 1)
        above = (below + 1).clamp(max=depth - 1)
        weight = (position - below).float()
        for k0 in range(0, nz, slab):
            k1 = min(nz, k0 + slab)
            first, last = int(below[k0]), int(above[k1 - 1])
            planes = grid[:, first:last + 1].transpose(0, 1)                       # (P, C, X', Y')
            planes = F.interpolate(planes, size=(nx, ny), mode="bilinear", align_corners=False)
            low = planes[below[k0:k1] - first]                                      # (K, C, X, Y)
            high = planes[above[k0:k1] - first]
            values = torch.lerp(low, high, weight[k0:k1, None, None, None])
            yield k0, values.transpose(0, 1)


def _slice_major(crop: np.ndarray, dtype: type) -> np.ndarray:
    """(X, Y, Z) array -> C-contiguous (Z, X, Y) copy of the given dtype."""
    return np.ascontiguousarray(np.moveaxis(crop, 2, 0), dtype=dtype)


def _blur_planes(volume: np.ndarray, sigma: Sequence[float]) -> None:
    """In-place Gaussian blur of each (X, Y) plane of a slice-major (Z, X, Y) float32 array."""
    import cv2

    sx, sy = sigma
    for plane in volume:
        # cv2 sees (rows, cols) = (X, Y): sigmaX runs along columns (Y), sigmaY along rows (X)
        cv2.GaussianBlur(plane, (0, 0), sigmaX=max(sy, 1e-3), sigmaY=max(sx, 1e-3), dst=plane,
                         borderType=cv2.BORDER_REPLICATE)
