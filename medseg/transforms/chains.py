"""Whole-image preprocessing chains (MONAI dict `Compose`) built from a `PreprocessingConfig`.

CT: `{"image": (1, H, W, D) MetaTensor in HU with its RAS affine}` -> `Orientationd("RAS")` ->
`Spacingd(config.spacing)` -> `HUWindowd(config.windows)` = `(len(windows), H', W', D')` float32 in [0, 1].
Orientationd and Spacingd are invertible and record themselves on the MetaTensor; `HUWindowd` changes
intensities only and keeps that record. So a prediction made on the chain's grid maps back to the scan with
`Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)` (or `chain.inverse(...)`).
2.5D stacks (`SliceStack(config.stack)`) and ROI cropping (`roi_margin_mm`) happen after this chain.

X-ray: `{"image": (1, H, W) float}` (raw detector values, as `read_radiograph` gives) -> min-max scale to
[0, 1] -> resize keeping the aspect ratio so the image fits `image_size` -> CLAHE (before padding, so the
padding does not enter the tile histograms) -> zero-pad (centred) to `image_size`. Output `(1, *image_size)`
float32 in [0, 1]. Keeping the aspect ratio (letterbox) rather than stretching keeps anatomical proportions
the same for square (NIH) and portrait (CheXpert) detectors. The X-ray chain is not meant to be inverted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Orientationd, Resize, ScaleIntensityd, Spacingd, SpatialPadd

from medseg.errors import ConfigError, InputError
from medseg.transforms.clahe import CLAHEd
from medseg.transforms.config import PreprocessingConfig
from medseg.transforms.intensity import HUWindowd

__all__ = ["RAS_LABELS", "FitResized", "build_ct_chain", "build_xray_chain", "ct_sample", "fit_size",
           "prepare_radiograph"]

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
"""Axis labels for Orientationd: medseg affines are RAS+ (NIfTI convention), as `Volume.affine`."""


def ct_sample(volume: Any, key: str = "image") -> dict[str, MetaTensor]:
    """`{key: (1, H, W, D) MetaTensor}` from a `medseg.io.volume.Volume` (array in HU, RAS affine)."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"a CT volume must be 3D, got shape {array.shape}", getattr(volume, "source", None) or None)
    return {key: MetaTensor(array[None], affine=np.asarray(volume.affine, dtype=np.float64))}


def build_ct_chain(config: PreprocessingConfig, image_key: str = "image", label_key: str | None = None) -> Compose:
    """RAS orientation, resampling to `config.spacing` (skipped when None) and HU windowing.

    The image is resampled bilinearly, a `label_key` (optional, `(1, H, W, D)` on the same grid) with
    nearest neighbour; only the image is windowed.
    """
    if config.modality != "ct":
        raise ConfigError(f"build_ct_chain needs a CT config, got modality {config.modality!r}")
    keys = [image_key] if label_key is None else [image_key, label_key]
    chain: list[Any] = [Orientationd(keys, axcodes="RAS", labels=RAS_LABELS)]
    if config.spacing is not None:
        chain.append(
            Spacingd(
                keys,
                pixdim=config.spacing,
                mode=("bilinear", "nearest")[: len(keys)],
                padding_mode=("border", "zeros")[: len(keys)],
                dtype=np.float32,
            )
        )
    chain.append(HUWindowd(image_key, config.windows))
    return Compose(chain)


def fit_size(shape: Sequence[int], target: Sequence[int]) -> tuple[int, int]:
    """The largest (rows, columns) with the aspect ratio of `shape` that fits in `target`."""
    height, width = (int(n) for n in shape)
    scale = min(target[0] / height, target[1] / width)
    return min(target[0], max(1, round(height * scale))), min(target[1], max(1, round(width * scale)))


class FitResized(MapTransform):
    """Resize `(C, H, W)` images so they fit `size` with their aspect ratio kept (no padding).

    Area averaging when shrinking (anti-aliased), bilinear when enlarging; MONAI `Resize` underneath, so a
    MetaTensor's affine follows the resize.
    """

    def __init__(self, keys: KeysCollection, size: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.ndim != 3:
                raise InputError(f"{key}: an X-ray must be (C, H, W), got shape {tuple(image.shape)}")
            new = fit_size(image.shape[1:], self.size)
            if new != tuple(image.shape[1:]):
                shrink = new[0] * new[1] < image.shape[1] * image.shape[2]
                d[key] = Resize(new, mode="area" if shrink else "bilinear")(image)
        return d


def build_xray_chain(config: PreprocessingConfig, image_key: str = "image") -> Compose:
    """Min-max scaling to [0, 1], letterbox resize to `config.image_size`, optional CLAHE (see module doc)."""
    if config.modality != "xray":
        raise ConfigError(f"build_xray_chain needs an X-ray config, got modality {config.modality!r}")
    chain: list[Any] = [ScaleIntensityd(image_key, minv=0.0, maxv=1.0)]
    if config.image_size is not None:
        chain.append(FitResized(image_key, config.image_size))
    if config.clahe is not None:
        chain.append(CLAHEd(image_key, config.clahe.clip_limit, config.clahe.tile_grid, config.clahe.bits))
    if config.image_size is not None:
        chain.append(SpatialPadd(image_key, config.image_size, method="symmetric", mode="constant", value=0.0))
    return Compose(chain)


def prepare_radiograph(source: Any, chain: Compose) -> np.ndarray:
    """`(1, H, W)` float32 model input from a radiograph file path, a `Radiograph` or a 2D array.

    Training (`medseg train`) and inference (`medseg classify`) both go through here, so the two see the same
    pixels for the same file.
    """
    import os

    if isinstance(source, (str, os.PathLike)):
        from medseg.io.xray import read_radiograph

        source = read_radiograph(source)
    array = np.asarray(getattr(source, "array", source), dtype=np.float32)
    if array.ndim != 2:
        raise InputError(f"a radiograph must be 2D, got shape {array.shape}", getattr(source, "source", None))
    image = chain({"image": array[None]})["image"]
    image = image.as_tensor() if hasattr(image, "as_tensor") else image
    return np.asarray(image, dtype=np.float32)
