"""Exposure, scatter, quantum and electronic noise, detector blur, log transform and image processing.

The detector sees primary photons I0 * exp(-L) plus scatter; scatter is modelled as single scatter,
proportional to L * exp(-L) (the primary that interacted once and still reached the detector), spread by a
broad Gaussian kernel (the convolution scatter models of Boone & Seibert, Med Phys 1988;15:713) and scaled
per case for the anti-scatter grid and patient size. Counts are Poisson, drawn in the Gaussian limit
(variance = mean; much faster); the scintillator's light spread blurs them (so the noise is correlated),
then electronic noise is added. The processed image is the log of the flat-field-normalised signal with
mild dynamic-range compression and edge enhancement (a two-band version of the multiscale processing of
clinical systems, e.g. Vuylsteke & Schoeters, SPIE 1994).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DISPLAY_WINDOW", "Exposure", "expose", "process", "sample_exposure", "to_stored", "window"]

STORED_MAX = 4095
DISPLAY_WINDOW = (2048.0, 3584.0)
"""(centre, width) of the display window of the 12-bit stored values (DICOM linear VOI function)."""
_LOW_RES = 128


@dataclass(frozen=True)
class Exposure:
    """Per-image acquisition and processing settings."""

    photons: float = 20000.0           # unattenuated quanta per detector pixel (dose, after detector efficiency)
    scatter: float = 0.2               # scatter-to-primary per unit line integral (grid, patient size)
    scatter_sigma_mm: float = 40.0     # width of the scatter kernel at the detector
    blur_mm: float = 0.2               # scintillator light spread (Gaussian sigma)
    electronic_noise: float = 3.0      # additive noise SD (quanta)
    compression: float = 0.45          # share of the large-scale contrast removed by processing
    enhancement: float = 0.5           # gain on detail finer than `band_mm`
    band_mm: float = 25.0              # scale separating large-scale contrast from detail
    window_low: float = 0.5            # percentiles of the processed body region mapped to the window edges
    window_high: float = 99.6


def sample_exposure(rng: np.random.Generator) -> Exposure:
    """Case-to-case variation of dose, scatter, detector and processing."""
    return Exposure(
        photons=float(np.exp(rng.uniform(np.log(8000.0), np.log(60000.0)))),
        scatter=float(rng.uniform(0.12, 0.3)),
        scatter_sigma_mm=float(rng.uniform(30.0, 50.0)),
        blur_mm=float(rng.uniform(0.12, 0.25)),
        electronic_noise=float(rng.uniform(1.0, 5.0)),
        compression=float(rng.uniform(0.35, 0.55)),
        enhancement=float(rng.uniform(0.2, 0.6)),
        band_mm=float(rng.uniform(18.0, 30.0)),
        window_low=float(rng.uniform(0.2, 1.0)),
        window_high=float(rng.uniform(99.3, 99.8)),
    )


def _low_pass(image: np.ndarray, sigma_mm: float, pixel_mm: float) -> np.ndarray:
    """Gaussian low-pass of a large-scale quantity, computed on a coarse copy and interpolated back."""
    factor = max(1, image.shape[0] // _LOW_RES)
    if factor > 1:
        coarse = image[: image.shape[0] // factor * factor, : image.shape[1] // factor * factor]
        coarse = coarse.reshape(coarse.shape[0] // factor, factor, coarse.shape[1] // factor, factor).mean(axis=(1, 3))
    else:
        coarse = image
    coarse = ndimage.gaussian_filter(coarse.astype(np.float32), sigma_mm / (pixel_mm * factor), mode="nearest")
    if factor == 1:
        return coarse
    zoom = (image.shape[0] / coarse.shape[0], image.shape[1] / coarse.shape[1])
    return ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)[: image.shape[0], : image.shape[1]]


def expose(line_integral: np.ndarray, exposure: Exposure, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Detected signal (quanta per pixel, float32) for line integrals `line_integral` (rows, columns)."""
    primary = np.exp(-line_integral) * np.float32(exposure.photons)
    scatter = _low_pass(primary * line_integral, exposure.scatter_sigma_mm, pixel_mm) * np.float32(exposure.scatter)
    mean = primary + scatter
    counts = mean + np.sqrt(mean) * rng.standard_normal(mean.shape, dtype=np.float32)   # Poisson, Gaussian limit
    if exposure.blur_mm > 0:
        counts = ndimage.gaussian_filter(counts, exposure.blur_mm / pixel_mm, truncate=3.0)
    counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(exposure.electronic_noise)
    return counts


def process(signal: np.ndarray, exposure: Exposure, pixel_mm: float) -> np.ndarray:
    """Log transform (higher = more attenuation) with dynamic-range compression and edge enhancement."""
    log = -np.log(np.maximum(signal, np.float32(0.5)) / np.float32(exposure.photons))
    base = _low_pass(log, exposure.band_mm, pixel_mm)
    detail = log - base
    return np.float32(1.0 - exposure.compression) * base + np.float32(1.0 + exposure.enhancement) * detail


def to_stored(processed: np.ndarray, body: np.ndarray, exposure: Exposure) -> np.ndarray:
    """12-bit stored values (uint16): the percentile range of `processed` within `body` fills the display window.

    Values outside the window (direct exposure beside the patient, the densest bone) keep some headroom
    in the 12-bit range before they are clipped.
    """
    low, high = np.percentile(processed[body] if body.any() else processed, [exposure.window_low,
                                                                            exposure.window_high])
    centre, width = DISPLAY_WINDOW
    bottom = centre - 0.5 - (width - 1) / 2
    scaled = bottom + (processed - low) * ((width - 1) / max(float(high - low), 1e-6))
    return np.clip(np.rint(scaled), 0, STORED_MAX).astype(np.uint16)


def window(stored: np.ndarray, centre: float = DISPLAY_WINDOW[0], width: float = DISPLAY_WINDOW[1]) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to 0..1 (float64)."""
    value = (np.asarray(stored, dtype=np.float64) - (centre - 0.5)) / (width - 1) + 0.5
    return np.clip(value, 0.0, 1.0)
