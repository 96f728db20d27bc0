"""One synthetic PA chest radiograph: phantom -> coronal-slab render -> attenuation -> projection -> detector."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.data.phantom import ChestModel, Components, Grid, PhantomImage, ScannerSettings, build_chest_model, render
from medseg.data.phantom.model import component_rng
from medseg.data.radiograph.ctr import CardiothoracicRatio, measure_ctr
from medseg.data.radiograph.detector import Exposure, expose, process, sample_exposure, to_stored, window
from medseg.data.radiograph.projection import AttenuationModel, PaGeometry, project_pa, projection_grid

__all__ = ["PHANTOM_COMPONENTS", "RenderSettings", "SyntheticCxr", "render_projection", "sample_geometry",
           "synthesize_radiograph"]

PHANTOM_COMPONENTS = Components(partial_volume=False, noise=False, blur=False)
"""Phantom components for radiographs: no CT partial volume (slabs are anti-aliased instead), CT noise or blur."""
_ANATOMY_LINE_INTEGRAL = 1.0   # line integral above which a pixel is behind the chest (lungs ~1.5), for windowing


@dataclass(frozen=True)
class RenderSettings:
    """Speed/quality knobs: in-plane voxel (x, z), coronal slab thickness along the beam, vessel tree density."""

    spacing_mm: float = 1.5
    slab_mm: float = 2.0
    vessel_density: float = 300.0
    attenuation: AttenuationModel = field(default_factory=AttenuationModel)

    @classmethod
    def for_size(cls, size: int, detector_mm: float = 430.0) -> RenderSettings:
        """Defaults, with the phantom voxel coarsened for small images: 0.75 of the detector pixel, >= 1.5 mm.

        Sizes from about 215 px up render exactly as the defaults; a 128 px image renders ~3x faster.
        """
        spacing = max(cls.spacing_mm, 0.75 * detector_mm / size)
        return cls(spacing_mm=spacing, slab_mm=max(cls.slab_mm, spacing))


@dataclass
class SyntheticCxr:
    """A synthetic radiograph: 12-bit stored values (MONOCHROME2: bone bright) and the 8-bit display image."""

    stored: np.ndarray                 # uint16 (rows, columns), 0..4095
    display: np.ndarray                # uint8 (rows, columns): `stored` through the display window
    findings: tuple[str, ...]
    ctr: CardiothoracicRatio
    geometry: PaGeometry
    exposure: Exposure
    magnification: float               # at the heart (mid-chest) plane, for PixelSpacing calibration
    line_integral: np.ndarray          # float32 (rows, columns): noise-free attenuation line integrals
    seed: int
    finding_details: list[dict[str, Any]] = field(default_factory=list)   # each finding's `describe()`

    @property
    def pixel_mm(self) -> float:
        """Detector pixel pitch (ImagerPixelSpacing)."""
        return self.geometry.detector_mm / self.stored.shape[0]


def sample_geometry(rng: np.random.Generator, model: ChestModel) -> PaGeometry:
    """Source-image distance ~180 cm, detector against the anterior chest, central ray at mid-lung (about T7)."""
    s, t = model.shape, model.pose.translation
    mid_lung = 0.5 * (s.apex_z + s.dome_right_z)
    return PaGeometry(
        sid_mm=float(rng.uniform(1750.0, 1850.0)),
        detector_y=float(t[1] + s.body_front + rng.uniform(10.0, 40.0)),
        centre_x=float(t[0] + rng.uniform(-12.0, 12.0)),
        centre_z=float(t[2] + mid_lung + rng.uniform(-20.0, 15.0)),
    )


def _upsample(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    return ndimage.zoom(image, size / image.shape[0], order=1, mode="nearest", grid_mode=True)[:size, :size]


def render_projection(model: ChestModel, geometry: PaGeometry, settings: RenderSettings
                      ) -> tuple[np.ndarray, PhantomImage, Grid]:
    """Noise-free line integrals on a detector sampled about as finely as the render grid, with the render."""
    grid = projection_grid(model, geometry, settings.spacing_mm, settings.slab_mm)
    image = render(model, grid, ScannerSettings(noise_sd=0.0, kernel_sigma_mm=0.0), quantize=False)
    mu = settings.attenuation(image.hu)
    samples = math.ceil(2.0 * geometry.detector_mm / settings.spacing_mm)
    return project_pa(mu, grid, geometry, samples), image, grid


def synthesize_radiograph(seed: int, findings: Sequence[str] = (), *, size: int = 1024,
                          settings: RenderSettings | None = None) -> SyntheticCxr:
    """A PA chest radiograph of the phantom for `seed` with `findings` (phantom finding kinds), `size` pixels square.

    Everything random (anatomy, pose, findings, geometry, exposure, noise) follows from `seed`.
    """
    settings = settings or RenderSettings.for_size(size)
    findings = tuple(sorted(findings))
    model = build_chest_model(seed, findings=findings, posture="upright", components=PHANTOM_COMPONENTS,
                              vessel_density=settings.vessel_density)
    rng = component_rng(seed, "radiograph")
    geometry = sample_geometry(rng, model)
    exposure = sample_exposure(rng)
    coarse, image, grid = render_projection(model, geometry, settings)
    ctr = measure_ctr(image, model, grid)
    line_integral = _upsample(coarse, size)
    np.maximum(line_integral, 0.0, out=line_integral)
    pixel_mm = geometry.detector_mm / size
    signal = expose(line_integral, exposure, pixel_mm, component_rng(seed, "quantum noise"))
    processed = process(signal, exposure, pixel_mm)
    stored = to_stored(processed, line_integral > _ANATOMY_LINE_INTEGRAL, exposure)
    display = np.rint(window(stored) * 255.0).astype(np.uint8)
    heart_y = float(np.linalg.inv(model.pose.body_from_world())[1] @ np.array([*model.shape.heart_centre, 1.0]))
    return SyntheticCxr(stored=stored, display=display, findings=findings, ctr=ctr, geometry=geometry,
                        exposure=exposure, magnification=float(geometry.magnification(heart_y)),
                        line_integral=line_integral, seed=seed,
                        finding_details=[finding.describe() for finding in model.findings])
