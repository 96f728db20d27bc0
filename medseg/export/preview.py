"""Axial / coronal / sagittal preview PNGs in radiological convention, with true aspect ratio."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume

__all__ = ["LUNG_WINDOW", "canonical_ras", "orthogonal_views", "save_orthogonal_views"]

LUNG_WINDOW = (-600.0, 1500.0)


def canonical_ras(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reordered so that i, j, k run towards +x (patient right), +y (anterior), +z (superior).

    Returns the reoriented array and its voxel spacing; only axis permutations and flips are applied.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.affine)
    array = nib.orientations.apply_orientation(volume.array, ornt)
    spacing = tuple(float(volume.spacing[int(axis)]) for axis in ornt[:, 0])
    return array, spacing  # type: ignore[return-value]


def _window(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = window
    low = centre - width / 2
    return (np.clip((image - low) / width, 0, 1) * 255).astype(np.uint8)


def orthogonal_views(volume: Volume, window: tuple[float, float] = LUNG_WINDOW, height: int = 256
                     ) -> np.ndarray:
    """Mid-volume axial, coronal and sagittal slices side by side (uint8), each `height` pixels tall.

    Radiological convention: patient right on the viewer's left, anterior up in axial, superior up in
    coronal and sagittal, anterior on the left in sagittal.
    """
    from PIL import Image

    ras, (sx, sy, sz) = canonical_ras(volume)
    ci, cj, ck = (n // 2 for n in ras.shape)
    views = [
        (ras[::-1, ::-1, ck].T, sy, sx),   # rows: A->P, columns: R->L
        (ras[::-1, cj, ::-1].T, sz, sx),   # rows: S->I, columns: R->L
        (ras[ci, ::-1, ::-1].T, sz, sy),   # rows: S->I, columns: A->P
    ]
    tiles = []
    for image, row_mm, col_mm in views:
        rows, cols = image.shape
        width = max(1, round(height * (cols * col_mm) / (rows * row_mm)))
        tile = Image.fromarray(_window(image.astype(np.float32), window)).resize((width, height),
                                                                                Image.Resampling.BILINEAR)
        tiles.append(np.asarray(tile))
    gap = np.zeros((height, 4), np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


def save_orthogonal_views(volume: Volume, path: str | os.PathLike[str],
                          window: tuple[float, float] = LUNG_WINDOW) -> Path:
    """Write `orthogonal_views` as a PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(orthogonal_views(volume, window)).save(temporary, format="PNG")
    return Path(path)
