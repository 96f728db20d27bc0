"""Training data for 2.5D volume segmentation: cases cached on the model grid, slices sampled from them.

Each case is read once (DICOM or NIfTI + label map) and put through THE CT chain (`build_ct_chain`: crop to
the classical lung mask plus a margin, RAS, model spacing, int16 HU), exactly as inference does, so a slice's
model input is bit-identical to the one `medseg segment` builds for the same scan. The result is cached as
`.npz` keyed by the source files and the preprocessing, so epochs after the first (and later runs) never
re-read DICOM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.transforms.config import AugmentationConfig, PreprocessingConfig
from medseg.transforms.scanner import ScannerAugment
from medseg.transforms.stack import SliceStack, slice_stack

log = logging.getLogger(__name__)

__all__ = ["CachedCase", "SliceSampler", "cache_case", "fit_to_patch"]

_CACHE_VERSION = 3
"""3: the crop box is the classical lung mask's (as in inference), not the label map's."""


@dataclass
class CachedCase:
    """One case on the model grid, slice-major: image (Z, X, Y) int16 HU, label (Z, X, Y) uint8."""

    case_id: str
    image: np.ndarray
    label: np.ndarray

    def slice_weights(self, boost: Mapping[int, float] | None = None) -> np.ndarray:
        """Sampling weight per slice: labelled area (label `v`'s area counted `boost[v]` times, 1 when not
        given), plus a floor so every slice can be drawn."""
        flat = self.label.reshape(self.label.shape[0], -1)
        area = (flat > 0).mean(axis=1)
        for value, factor in (boost or {}).items():
            area = area + (float(factor) - 1.0) * (flat == value).mean(axis=1)
        return area + 0.1 * max(float(area.mean()), 1e-3)


def _cache_key(image: Path, label: Path, spacing: Sequence[float], margin_mm: float) -> str:
    def stamp(path: Path) -> list:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]

    payload = json.dumps([_CACHE_VERSION, str(image.resolve()), stamp(image), str(label.resolve()), stamp(label),
                          [float(s) for s in spacing], float(margin_mm)])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cache_case(case_id: str, image: Path, label: Path, preprocessing: PreprocessingConfig,
               cache_dir: Path | None) -> CachedCase:
    """Load (or read from the cache) one case resampled onto the model grid."""
    if preprocessing.spacing is None:
        raise ConfigError("segmentation training needs a CT preprocessing config with a target spacing")
    key = _cache_key(image, label, preprocessing.spacing, preprocessing.roi_margin_mm)
    cached = cache_dir / f"{case_id}-{key}.npz" if cache_dir else None
    if cached and cached.exists():
        with np.load(cached) as data:
            return CachedCase(case_id, data["image"], data["label"])
    case = _prepare(case_id, image, label, preprocessing)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_name(f".{cached.name}.tmp-{os.getpid()}.npz")
        np.savez(temporary, image=case.image, label=case.label)
        os.replace(temporary, cached)
    return case


def _prepare(case_id: str, image_path: Path, label_path: Path, preprocessing: PreprocessingConfig) -> CachedCase:
    from medseg.infer.lungmask import lung_mask
    from medseg.io import load_volume
    from medseg.transforms.chains import build_ct_chain, ct_sample
    from medseg.transforms.geometry import model_grid_slices

    image = load_volume(image_path)
    label = load_volume(label_path)
    if image.shape != label.shape or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise InputError(f"label map {label_path} is not on the image's grid ({label.shape} vs {image.shape})",
                         image_path)
    labels = np.asarray(label.array).astype(np.uint8, copy=False)
    box = lung_mask(image)
    if not box.any():  # inference refuses such a scan; train on the labelled box rather than drop the case
        log.warning("%s: the lung mask is empty; cropping to the label map instead", image_path)
        box = labels
    out = build_ct_chain(preprocessing, label_key="label")(ct_sample(image, label=labels, mask=box))
    return CachedCase(case_id, np.ascontiguousarray(model_grid_slices(out["image"]).numpy()),
                      np.ascontiguousarray(model_grid_slices(out["label"]).numpy()))


class SliceSampler:
    """Endless stream of (stack, label) training samples of a fixed size, favouring lung slices."""

    def __init__(self, cases: Sequence[CachedCase], stack: int, patch: Sequence[int], seed: int,
                 augmentation: AugmentationConfig | None = None, boost: Mapping[int, float] | None = None
                 ) -> None:
        if not cases:
            raise ConfigError("no training cases")
        self.cases = list(cases)
        self._stack = SliceStack(stack)
        self._k = int(stack)
        scanner = ScannerAugment(augmentation, np.random.default_rng([seed, 7])) if augmentation else None
        self._scanner = scanner if scanner is not None and scanner.enabled else None
        self.patch = tuple(int(p) for p in patch)
        self.rng = np.random.default_rng(seed)
        weights = [c.slice_weights(boost) for c in self.cases]
        self._weights = [w / w.sum() for w in weights]
        sizes = np.array([c.image.shape[0] for c in self.cases], dtype=np.float64)
        self._case_p = sizes / sizes.sum()

    def draw(self) -> tuple[int, int]:
        """The next (case, slice) to sample."""
        n = int(self.rng.choice(len(self.cases), p=self._case_p))
        return n, int(self.rng.choice(self.cases[n].image.shape[0], p=self._weights[n]))

    def take(self, case_index: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (k, H, W) HU 2.5D stack of one slice (`SliceStack`, as inference; int16, or float32 after the
        scanner-domain augmentation when configured) and its (H, W) labels, fitted to the patch size."""
        case = self.cases[case_index]
        volume = np.moveaxis(case.image, 0, -1)
        if self._scanner is None:
            stack = self._stack(volume, index=index)   # (k, X, Y)
        else:   # scanner effects in HU, from a stack widened for the slice-thickness simulation
            wide = slice_stack(volume, index, self._k + 2 * self._scanner.z_margin)
            stack = self._scanner(wide, self._k)
        return fit_to_patch(stack, case.label[index], self.patch, self.rng)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (k, H, W) int16 HU stack and its (H, W) label slice."""
        return self.take(*self.draw())

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.sample()


def fit_to_patch(stack: np.ndarray, label: np.ndarray, patch: Sequence[int],
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pad (air / background) or crop (random, or centred without `rng`) a stack and label to `patch`."""
    out_stack = np.full((stack.shape[0], *patch), -1024, dtype=stack.dtype)
    out_label = np.zeros(tuple(patch), dtype=label.dtype)
    source, target = [], []
    for axis, size in enumerate(patch):
        have = stack.shape[axis + 1]
        if have <= size:
            offset = (size - have) // 2 if rng is None else int(rng.integers(0, size - have + 1))
            source.append(slice(0, have))
            target.append(slice(offset, offset + have))
        else:
            offset = (have - size) // 2 if rng is None else int(rng.integers(0, have - size + 1))
            source.append(slice(offset, offset + size))
            target.append(slice(0, size))
    out_stack[(slice(None), *target)] = stack[(slice(None), *source)]
    out_label[tuple(target)] = label[tuple(source)]
    return out_stack, out_label
