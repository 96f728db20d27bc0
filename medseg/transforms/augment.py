"""Training augmentation for 2D `(C, H, W)` segmentation samples, and a label-aware left-right flip.

Why flips are special: a chest is not left-right symmetric. Mirroring puts left structures on the right,
so side-specific labels must be swapped with the image. For lung sides (1 right, 2 left) the swap
`LUNG_SIDE_SWAP` is exact. For lobes it cannot be: the mirrored right lung becomes a "left" lung with three
lobes, and the right middle lobe (4) has no left counterpart. `lobe_swap_map()` swaps LUL<->RUL and
LLL<->RLL and leaves RML as 4 (now inside the mirrored left lung), which keeps every label on its side but
yields anatomy that does not exist. Lobe flips are therefore off by default and `PreprocessingConfig` refuses
`flip_lr` for lobe (or lung-side) labels unless a swap map is given explicitly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    Flip,
    MapTransform,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.transforms.spatial.array import RandAffineGrid

from medseg.errors import ConfigError
from medseg.transforms.config import LOBE_SWAP, LUNG_SIDE_SWAP, AugmentationConfig

__all__ = [
    "LUNG_SIDE_SWAP",
    "RandFlipSwapLabelsd",
    "SingleThreadCompose",
    "lobe_swap_map",
    "remap_labels",
    "segmentation_augmentation",
]

log = logging.getLogger("medseg.transforms")


def lobe_swap_map() -> dict[int, int]:
    """The registry's lobe swap (`{1: 3, 3: 1, 2: 5, 5: 2}`): LUL<->RUL, LLL<->RLL; RML maps to itself.

    Not label-exact (see the module docstring): after a flip RML lies in the mirrored left lung. Use it only
    when that is acceptable; the default lobe configuration does not flip.
    """
    return dict(LOBE_SWAP)


def remap_labels(label: Any, swap: Mapping[int, int]) -> Any:
    """Replace label values by `swap` ({from: to}, all at once, so 1<->2 swaps work); same type out."""
    if not swap:
        return label
    if isinstance(label, torch.Tensor):
        out = label.clone()
        for src, dst in swap.items():
            out[label == src] = dst
        return out
    label = np.asarray(label)
    out = label.copy()
    for src, dst in swap.items():
        out[label == src] = dst
    return out


class RandFlipSwapLabelsd(RandomizableTransform, MapTransform):
    """With probability `prob`, flip every key along `spatial_axis`, then remap `label_key`'s values by `swap`.

    `spatial_axis` counts spatial axes only (0 = H of a `(C, H, W)` array). `swap` should be its own inverse
    (e.g. `LUNG_SIDE_SWAP`). The label is flipped even if missing from `keys`. Works on numpy, torch and
    MetaTensor (MONAI's `Flip` updates the affine).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None,
        spatial_axis: int,
        prob: float = 0.5,
        swap: Mapping[int, int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        if label_key is not None and label_key not in keys:
            keys.append(label_key)
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.swap = dict(swap or {})
        broken = [f"{a}->{b}" for a, b in self.swap.items() if self.swap.get(b, b) != a]
        if broken:
            raise ConfigError(f"swap must be its own inverse; not so for {', '.join(broken)}")
        self.flipper = Flip(spatial_axis=spatial_axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.flipper(d[key])
            if key == self.label_key:
                d[key] = remap_labels(d[key], self.swap)
        return d


class _IsotropicRandAffineGrid(RandAffineGrid):
    """RandAffineGrid whose random scale is the same on every axis (a zoom, not a stretch)."""

    def randomize(self, data: Any | None = None) -> None:
        super().randomize(data)
        if self.scale_params:
            self.scale_params = [self.scale_params[0]] * len(self.scale_params)


def _isotropic(owner: Any) -> None:
    grid = owner.rand_affine_grid
    iso = _IsotropicRandAffineGrid(
        rotate_range=grid.rotate_range,
        shear_range=grid.shear_range,
        translate_range=grid.translate_range,
        scale_range=grid.scale_range,
        device=grid.device,
        dtype=grid.dtype,
    )
    iso.R = grid.R
    owner.rand_affine_grid = iso


class SingleThreadCompose(Compose):
    """`Compose` that runs with one torch intra-op thread and restores the caller's setting afterwards.

    Per-sample tensors (~60k values) gain nothing from intra-op parallelism, and on a busy 2-core machine the
    thread hand-offs made the chain ~20x slower (100+ ms instead of ~5 ms per sample) in the training loop's
    own process. Switching the thread count costs microseconds; inside DataLoader workers it is a no-op.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        if threads == 1:
            return super().__call__(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)


def segmentation_augmentation(
    config: AugmentationConfig, image_key: str = "image", label_key: str | None = "label"
) -> Compose:
    """The random training transforms for dicts of 2D `(C, H, W)` samples; `(1, H, W)` labels.

    Order: optional flip (+ label swap), one spatial resample (rotation + isotropic scale, elastic when
    enabled; image bilinear with border padding, label nearest with zero padding, so label values stay exact),
    intensity scale, shift, gamma (RandAdjustContrastd), Gaussian noise, image only. Operations whose range is
    zero are left out. Output values are MONAI tensors (float32); intensities are not re-clipped to [0, 1].
    `Compose.set_random_state(seed)` makes the sequence of draws reproducible. The returned Compose runs with
    one torch thread (see `SingleThreadCompose`).
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ("bilinear", "nearest")[: len(keys)]
    pads = ("border", "zeros")[: len(keys)]
    chain: list[Any] = []
    if config.flips:
        swap = config.swap or {}
        chain.append(RandFlipSwapLabelsd(keys, label_key, int(config.flip_axis or 0), config.flip_prob, swap))
    rotate = math.radians(config.rotate_degrees)
    scale = (config.scale[0] - 1.0, config.scale[1] - 1.0)
    spatial_kwargs: dict[str, Any] = {
        "keys": keys,
        "prob": config.spatial_prob,
        "rotate_range": (rotate,),
        "scale_range": (scale, scale),
        "mode": modes,
        "padding_mode": pads,
    }
    if config.elastic and config.spatial_prob > 0:
        elastic = Rand2DElasticd(
            spacing=config.elastic_spacing, magnitude_range=config.elastic_magnitude, **spatial_kwargs
        )
        _isotropic(elastic.rand_2d_elastic)
        chain.append(elastic)
    elif config.spatial_prob > 0 and (rotate > 0 or scale != (0.0, 0.0)):
        affine = RandAffined(**spatial_kwargs)
        _isotropic(affine.rand_affine)
        chain.append(affine)
    if config.intensity_scale > 0 and config.intensity_prob > 0:
        chain.append(RandScaleIntensityd(image_key, factors=config.intensity_scale, prob=config.intensity_prob))
    if config.intensity_shift > 0 and config.intensity_prob > 0:
        chain.append(RandShiftIntensityd(image_key, offsets=config.intensity_shift, prob=config.intensity_prob))
    if tuple(config.gamma) != (1.0, 1.0) and config.gamma_prob > 0:
        chain.append(RandAdjustContrastd(image_key, gamma=tuple(config.gamma), prob=config.gamma_prob))
    if config.noise_std > 0 and config.noise_prob > 0:
        chain.append(RandGaussianNoised(image_key, prob=config.noise_prob, std=config.noise_std))
    log.debug("segmentation augmentation: %s", ", ".join(type(t).__name__ for t in chain) or "identity")
    return SingleThreadCompose(chain)
