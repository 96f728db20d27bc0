"""CT acquisition geometry and image quality for one synthetic case.

Pixel spacing follows the field of view (0.55-0.9 mm at 512x512), slices are 0.625-5 mm, patients lie
head-first or feet-first supine, the noise level varies by case, and now and then the field of view is
truncated (body sides cut, or the lung apex or base just outside the scanned range).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medseg.data.phantom.model import ChestModel
from medseg.data.phantom.render import Grid, ScannerSettings

__all__ = ["Acquisition", "sample_acquisition"]

_SPACINGS = (0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_SPACING_WEIGHTS = (0.08, 0.08, 0.14, 0.14, 0.1, 0.12, 0.14, 0.08, 0.12)
_OVERLAPPED_THICKNESS = {0.625: 1.25, 0.8: 1.0, 1.0: 1.25, 1.25: 2.5, 2.5: 5.0}


@dataclass(frozen=True)
class Acquisition:
    """How a case was scanned: matrix, spacings, thickness, patient position, truncation, image quality."""

    size: int
    slices: int
    pixel_spacing: float
    slice_spacing: float
    slice_thickness: float
    patient_position: str            # "HFS" or "FFS"
    truncation: str | None           # None, "lateral", "apex" or "base"
    noise_sd: float
    kernel_sigma_mm: float
    affine: tuple[tuple[float, ...], ...]

    @property
    def grid(self) -> Grid:
        return Grid((self.size, self.size, self.slices), np.array(self.affine), self.slice_thickness)

    @property
    def scanner(self) -> ScannerSettings:
        return ScannerSettings(noise_sd=self.noise_sd, kernel_sigma_mm=self.kernel_sigma_mm)

    def describe(self) -> dict[str, Any]:
        info = asdict(self)
        info.pop("affine")
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in info.items()}


def _world_box(model: ChestModel, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    world = corners @ model.pose.rotation.T + model.pose.translation
    return world.min(axis=0), world.max(axis=0)


def sample_acquisition(rng: np.random.Generator, model: ChestModel, *, size: int = 512,
                       slices: int | None = None, truncation_probability: float = 0.15) -> Acquisition:
    """Choose a scan of `model`: covers both lungs with margins unless this case is truncated."""
    s = model.shape
    lung_low, lung_high = _world_box(model, *model.lung_extent_mm)
    body_low, body_high = _world_box(model, np.array([-s.body_half_width, -s.body_back, 0.0]),
                                     np.array([s.body_half_width, s.body_front, 0.0]))
    truncation = None
    if rng.uniform() < truncation_probability:
        truncation = str(rng.choice(["lateral", "apex", "base"], p=[0.5, 0.3, 0.2]))
    body_width = float(max(body_high[0] - body_low[0], body_high[1] - body_low[1]))
    lung_width = float(lung_high[0] - lung_low[0])
    if truncation == "lateral":
        fov = max(body_width * rng.uniform(0.8, 0.93), lung_width + 6.0)
    else:
        fov = body_width + rng.uniform(15.0, 70.0)
    scale = 512.0 / size
    pixel = float(np.clip(fov / size, 0.55 * scale, 0.9 * scale))
    z_start = lung_low[2] - rng.uniform(8.0, 30.0)
    z_end = lung_high[2] + rng.uniform(8.0, 30.0)
    if truncation == "apex":
        z_end = lung_high[2] - rng.uniform(4.0, 14.0)
    elif truncation == "base":
        z_start = lung_low[2] + rng.uniform(4.0, 12.0)
    coverage = z_end - z_start
    if slices is None:
        spacing = float(rng.choice(_SPACINGS, p=_SPACING_WEIGHTS))
        slices = round(coverage / spacing) + 1
        thickness = _OVERLAPPED_THICKNESS.get(spacing, spacing) if rng.uniform() < 0.25 else spacing
    else:
        if slices < 2:
            raise ValueError(f"slices must be at least 2, got {slices}")
        spacing = coverage / (slices - 1)
        thickness = float(np.clip(spacing * rng.choice([1.0, 1.0, 1.25, 1.5]), 0.625, 5.0))
        thickness = max(thickness, spacing)
    position = "FFS" if rng.uniform() < 0.25 else "HFS"
    centre = 0.5 * (body_low + body_high) + np.array([rng.uniform(-12, 12), rng.uniform(-12, 12), 0.0])
    half = pixel * (size - 1) / 2.0
    if position == "HFS":        # rows run to the patient's left, slices upwards (RAS: -x, -y, +z)
        affine = np.diag([-pixel, -pixel, spacing, 1.0])
        affine[:3, 3] = [centre[0] + half, centre[1] + half, z_start]
    else:                        # feet first: the image is mirrored left-right and slices run downwards
        affine = np.diag([pixel, -pixel, -spacing, 1.0])
        affine[:3, 3] = [centre[0] - half, centre[1] + half, z_start + spacing * (slices - 1)]
    noise = rng.uniform(45.0, 70.0) if rng.uniform() < 0.1 else rng.uniform(10.0, 40.0)
    return Acquisition(size=size, slices=slices, pixel_spacing=pixel, slice_spacing=float(spacing),
                       slice_thickness=float(thickness), patient_position=position, truncation=truncation,
                       noise_sd=float(noise), kernel_sigma_mm=float(rng.uniform(0.3, 0.6)),
                       affine=tuple(tuple(float(v) for v in row) for row in affine))
