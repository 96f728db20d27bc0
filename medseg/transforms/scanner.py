"""Scanner-domain augmentation of CT training stacks, in HU before windowing.

Phantoms come from one simulated scanner; real series differ in what no phantom models exactly: slice
thickness (0.6-8 mm, resampled to the model grid by interpolation), in-plane resolution (down to 64 px
images), reconstruction kernel (soft kernels blur, sharp ones overshoot edges and carry fine-grained noise),
noise level and texture, and HU calibration. `ScannerAugment` randomises each of these on a 2.5D stack
`(k, H, W)` of HU, with its own probability per effect (settings in `AugmentationConfig`, `scanner_*` keys).

Thick slices need neighbours beyond the stack: the sampler takes `z_margin` extra slices on each side, this
class averages them with a slice profile of the drawn thickness, samples the coarse slices at a random phase
and interpolates back to the model's slice positions (what resampling a thick-slice series does), then
returns the central `k` slices. Labels are untouched: nothing here moves anatomy.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from medseg.transforms.config import AugmentationConfig

__all__ = ["ScannerAugment"]


class ScannerAugment:
    """Random scanner effects on `(k + 2 * z_margin, H, W)` HU stacks -> `(k, H, W)` float32 HU."""

    def __init__(self, config: AugmentationConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng

    @property
    def enabled(self) -> bool:
        c = self.config
        return any(p > 0 for p in (c.scanner_thick_prob, c.scanner_lowres_prob, c.scanner_kernel_prob,
                                   c.scanner_noise_prob, c.scanner_hu_prob))

    @property
    def z_margin(self) -> int:
        """Extra slices needed on each side of the stack (for the thickest simulated slices)."""
        if self.config.scanner_thick_prob <= 0:
            return 0
        return int(np.ceil(1.5 * self.config.scanner_thick_factor[1]))

    def __call__(self, stack: np.ndarray, k: int) -> np.ndarray:
        c, rng = self.config, self.rng
        out = stack.astype(np.float32)
        margin = (out.shape[0] - k) // 2
        if c.scanner_thick_prob > 0 and rng.random() < c.scanner_thick_prob:
            out = self._thick(out, float(rng.uniform(*c.scanner_thick_factor)))
        out = out[margin:margin + k]
        if c.scanner_lowres_prob > 0 and rng.random() < c.scanner_lowres_prob:
            out = self._low_resolution(out, float(rng.uniform(*c.scanner_lowres_factor)))
        if c.scanner_kernel_prob > 0 and rng.random() < c.scanner_kernel_prob:
            if rng.random() < 0.5:
                sigma = float(rng.uniform(*c.scanner_blur_sigma))
                out = ndimage.gaussian_filter(out, (0, sigma, sigma))
            else:
                amount = float(rng.uniform(*c.scanner_sharpen_amount))
                out = out + amount * (out - ndimage.gaussian_filter(out, (0, 1.0, 1.0)))
        if c.scanner_noise_prob > 0 and rng.random() < c.scanner_noise_prob:
            out = out + self._noise(out.shape, float(rng.uniform(0.0, c.scanner_noise_hu)))
        if c.scanner_hu_prob > 0 and rng.random() < c.scanner_hu_prob:
            scale = 1.0 + float(rng.uniform(-c.scanner_hu_scale, c.scanner_hu_scale))
            offset = float(rng.uniform(-c.scanner_hu_offset, c.scanner_hu_offset))
            out = (out + 1000.0) * scale - 1000.0 + offset     # scaled about water-air, as a miscalibration
        return out

    def _thick(self, stack: np.ndarray, factor: float) -> np.ndarray:
        """Slices `factor` times thicker and further apart, interpolated back to the stack's positions."""
        if factor <= 1.05:
            return stack
        profile = ndimage.uniform_filter1d(stack, size=max(1, round(factor)), axis=0, mode="nearest")
        depth = stack.shape[0]
        phase = float(self.rng.uniform(0.0, factor))
        coarse = np.arange(phase - factor, depth + factor, factor)
        coarse = coarse[(coarse >= 0) & (coarse <= depth - 1)]
        if coarse.size < 2:
            return profile
        lower = np.floor(coarse).astype(int)
        upper = np.minimum(lower + 1, depth - 1)
        w = (coarse - lower)[:, None, None].astype(np.float32)
        sampled = (1 - w) * profile[lower] + w * profile[upper]
        position = np.interp(np.arange(depth), coarse, np.arange(coarse.size))
        low = np.clip(np.floor(position).astype(int), 0, coarse.size - 1)
        high = np.minimum(low + 1, coarse.size - 1)
        t = (position - low)[:, None, None].astype(np.float32)
        return (1 - t) * sampled[low] + t * sampled[high]

    def _low_resolution(self, stack: np.ndarray, factor: float) -> np.ndarray:
        """Coarser pixels: area-average to 1/factor and back (linear), as a low-resolution series resampled up."""
        if factor <= 1.05:
            return stack
        h, w = stack.shape[1:]
        size = (max(2, round(w / factor)), max(2, round(h / factor)))
        return np.stack([cv2.resize(cv2.resize(plane, size, interpolation=cv2.INTER_AREA), (w, h),
                                    interpolation=cv2.INTER_LINEAR) for plane in stack])

    def _noise(self, shape: tuple[int, ...], std_hu: float) -> np.ndarray:
        """Gaussian noise of `std_hu` with a random in-plane correlation (white = sharp, blotchy = soft)."""
        noise = self.rng.standard_normal(shape).astype(np.float32)
        correlation = float(self.rng.uniform(0.0, 1.5))
        if correlation > 0.3:
            noise = ndimage.gaussian_filter(noise, (0, correlation, correlation))
            noise /= max(float(noise.std()), 1e-6)
        return std_hu * noise
