"""A small, quick chest-like CT volume for the README demo and smoke tests.

Deliberately simple (ellipsoids): the realistic phantoms with lobes, fissures and findings live in
`medseg.data.phantom`. This one only has to look like a chest in a lung window and be fast to make.
"""

from __future__ import annotations

import numpy as np

__all__ = ["demo_chest_volume"]


def demo_chest_volume(size: int = 192, slices: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (hu[i, j, k] int16, RAS affine) of an axial head-first chest: body, lungs, spine, heart.

    The affine is that of a typical axial DICOM series (LPS storage: i to patient left, j to posterior,
    k to superior) with 0.78 mm pixels scaled to `size` and 2.5 mm slices.
    """
    rng = np.random.default_rng(seed)
    pixel = 0.78 * 512 / size
    step = 2.5
    i, j, k = np.meshgrid(np.arange(size), np.arange(size), np.arange(slices), indexing="ij", sparse=True)
    x = (i - size / 2) * pixel          # + towards patient left (LPS x)
    y = (j - size / 2) * pixel          # + towards posterior
    z = (k - slices / 2) * step         # + towards head
    hu = np.full((size, size, slices), -1000.0, dtype=np.float32)
    body = (x / 160) ** 2 + (y / 110) ** 2 <= 1
    hu[np.broadcast_to(body, hu.shape)] = 40
    for side in (-1, 1):
        lung = ((x - side * 70) / 55) ** 2 + ((y + 5) / 75) ** 2 + ((np.maximum(z, -60) + 5) / 72) ** 2 <= 1
        lung &= z > -70 - 8 * side          # right dome (x < 0) higher than left
        hu[lung] = -850
    heart = ((x - 20) / 45) ** 2 + ((y + 25) / 40) ** 2 + ((z + 30) / 45) ** 2 <= 1
    hu[heart] = 45
    spine = (x / 16) ** 2 + ((y - 70) / 16) ** 2 <= 1
    hu[np.broadcast_to(spine, hu.shape)] = 650
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    affine_lps = np.diag([pixel, pixel, step, 1.0])
    affine_lps[:3, 3] = [-size / 2 * pixel, -size / 2 * pixel, -slices / 2 * step]
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine_ras
