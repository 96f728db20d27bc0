"""Exact-geometry math of the CT chain: RAS reorientation, the mask box and the half-pixel-centred resample.

A source volume goes to the model grid in three steps, each invertible without loss of alignment (the MONAI
transforms around this math are in `medseg.transforms.geometry`):

1. crop to `lung_box` (the lungs plus a margin in mm): index slicing, no interpolation;
2. `Reorientation`: axis permutation + flips to RAS order, no interpolation;
3. `Resampling`: resample to the model's spacing with torch's half-pixel-centred interpolation, so that index
   `d` on the model grid sits at source index `(d + 0.5) * n_src / n_dst - 0.5`, and the inverse interpolation
   maps back exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["Reorientation", "Resampling", "lung_box"]


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
        """The array in RAS order (a view of `array`; its first 3 axes are the spatial ones)."""
        from nibabel import orientations

        return orientations.apply_orientation(array, self.ornt)

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Inverse of `apply`: a RAS-ordered array (first 3 axes spatial) back to the source axis order (a view)."""
        from nibabel import orientations

        return orientations.apply_orientation(array, self._inverse())

    def undo_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`undo` for a torch tensor whose last 3 axes are spatial (flips copy: torch has no negative strides)."""
        inverse = self._inverse()                # row r: (source axis, flip) of RAS axis r
        lead = tensor.ndim - 3
        flips = [lead + ras_axis for ras_axis, (_, flip) in enumerate(inverse) if flip < 0]
        if flips:
            tensor = tensor.flip(flips)
        order = [0, 0, 0]
        for ras_axis, (source_axis, _) in enumerate(inverse):
            order[int(source_axis)] = ras_axis
        return tensor.permute(*range(lead), *(lead + axis for axis in order))

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
class Resampling:
    """An (X, Y, Z) grid resampled to `out_shape` (the model grid); each grid spans the same box."""

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]

    @classmethod
    def plan(cls, shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float] | None
             ) -> Resampling:
        """The model grid of a `shape` array with voxel `spacing` at `target_spacing` (None: unchanged)."""
        target = spacing if target_spacing is None else target_spacing
        out = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))
        return cls(tuple(int(n) for n in shape), out)  # type: ignore[arg-type]

    @property
    def scale(self) -> np.ndarray:
        """Source voxels per model-grid voxel along each axis."""
        return np.array(self.in_shape, dtype=np.float64) / np.array(self.out_shape, dtype=np.float64)

    def index_map(self) -> np.ndarray:
        """4x4 map from model-grid indices to source indices (exactly what the interpolation does)."""
        scale = self.scale
        index_map = np.eye(4)
        index_map[:3, :3] = np.diag(scale)
        index_map[:3, 3] = 0.5 * scale - 0.5
        return index_map

    def affine(self, source_affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world affine of the model grid."""
        return np.asarray(source_affine) @ self.index_map()

    def image(self, slices: torch.Tensor, smooth: bool = True) -> torch.Tensor:
        """Resample a slice-major (Z, X, Y) intensity tensor (trilinear): (Z', X', Y') float32.

        With `smooth`, in-plane axes shrunk by 1.5x or more are first low-pass filtered (Gaussian,
        sigma = 0.4 x the shrink factor) so downsampling does not alias noise. The input is not modified.
        """
        source = slices.numpy() if isinstance(slices, torch.Tensor) else np.asarray(slices)
        sigma = [0.4 * s if s >= 1.5 else 0.0 for s in self.scale[:2]]
        if smooth and any(sigma):
            crop = np.array(source, dtype=np.float32, order="C")   # a float32 copy of our own, blurred in place
            _blur_planes(crop, sigma)
        else:
            crop = np.ascontiguousarray(source, np.float32)
        return self._resample(torch.from_numpy(crop), "trilinear")

    def labels(self, slices: torch.Tensor) -> torch.Tensor:
        """Resample a slice-major (Z, X, Y) label map (nearest voxel centre): (Z', X', Y') uint8."""
        return self._resample(torch.as_tensor(slices).float(), "nearest-exact").to(torch.uint8)

    def _resample(self, crop: torch.Tensor, mode: str) -> torch.Tensor:
        nx, ny, nz = self.out_shape
        if tuple(crop.shape) == (nz, nx, ny):
            return crop
        kwargs = {} if mode.startswith("nearest") else {"align_corners": False}
        return F.interpolate(crop[None, None], size=(nz, nx, ny), mode=mode, **kwargs)[0, 0]

    def back_labels(self, grid: torch.Tensor) -> torch.Tensor:
        """A slice-major (C, Z', X', Y') model-grid label tensor back on the source grid (nearest voxel centre):
        (C, Z, X, Y), same dtype."""
        nx, ny, nz = self.in_shape
        if tuple(grid.shape[1:]) == (nz, nx, ny):
            return grid
        back = F.interpolate(grid[None].float(), size=(nz, nx, ny), mode="nearest-exact")[0]
        return back.to(grid.dtype)

    def back_slabs(self, grid: torch.Tensor, slab: int = 16) -> Iterator[tuple[int, torch.Tensor]]:
        """Resample a slice-major (C, Z', X', Y') model-grid tensor back onto the source grid, a slab at a time.

        Yields (k0, values) with values (C, K, X, Y) for source slices k0 .. k0+K-1: bilinear in-plane and
        linear across planes, the exact inverse of the forward mapping.
        """
        nx, ny, nz = self.in_shape
        grid = grid.float()
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


def _blur_planes(volume: np.ndarray, sigma: Sequence[float]) -> None:
    """In-place Gaussian blur of each (X, Y) plane of a slice-major (Z, X, Y) float32 array."""
    import cv2

    sx, sy = sigma
    for plane in volume:
        # cv2 sees (rows, cols) = (X, Y): sigmaX runs along columns (Y), sigmaY along rows (X)
        cv2.GaussianBlur(plane, (0, 0), sigmaX=max(sy, 1e-3), sigmaY=max(sx, 1e-3), dst=plane,
                         borderType=cv2.BORDER_REPLICATE)
