"""The one preprocessing chain per modality (MONAI dict `Compose`), built from a `PreprocessingConfig`.

CT: `{"image": (1, X, Y, Z) HU, "mask": lung mask, ["label": label map]}` (MetaTensors with the scan's RAS+
affine, `ct_sample`) -> `CropToMaskd` (box of mask > 0 plus `roi_margin_mm`) -> `ReorientToRASd` (exact axis
permutes/flips) -> `ResampleToSpacingd(config.spacing)` (half-pixel-centred; anti-aliased trilinear for the
image, nearest for the label) -> `RoundHUd` (image rounded to int16 HU in `HU_RANGE`). Output: `(1, X', Y', Z')`
on the model grid, with its affine and the applied operations recorded, so a prediction goes back to the scan
with `Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)` (or `chain.inverse`), and
inference maps probabilities back slab by slab with `ModelGrid.of(image)`. Training (`medseg.train.
segmentation_data`, which caches the int16 result) and inference (`medseg.infer.segment`) both build this chain
from the checkpoint's config, with the same classical lung mask as box; the model input is then
`intensity.window_stacks` of `stack.SliceStack` 2.5D stacks, also shared.

X-ray: `{"image": (1, H, W) float}` (raw detector values, as `read_radiograph` gives) -> min-max scale to
[0, 1] -> resize keeping the aspect ratio so the image fits `image_size` -> CLAHE (before padding, so the
padding does not enter the tile histograms) -> zero-pad (centred) to `image_size` -> rounded to float16 (what
the training set keeps in memory). Output `(1, *image_size)` in [0, 1]. Keeping the aspect ratio (letterbox)
rather than stretching keeps anatomical proportions the same for square (NIH) and portrait (CheXpert)
detectors. `prepare_radiograph` is the single entry for training and inference. Not meant to be inverted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import CastToTyped, Compose, MapTransform, Resize, ScaleIntensityd, SpatialPadd

from medseg.errors import ConfigError, InputError
from medseg.transforms.clahe import CLAHEd
from medseg.transforms.config import PreprocessingConfig
from medseg.transforms.geometry import CropToMaskd, ReorientToRASd, ResampleToSpacingd
from medseg.transforms.intensity import RoundHUd

__all__ = ["FitResized", "build_ct_chain", "build_xray_chain", "ct_sample", "fit_size", "prepare_radiograph"]


def ct_sample(volume: Any, key: str = "image", **others: Any) -> dict[str, MetaTensor]:
    """`{key: (1, X, Y, Z) MetaTensor}` from a `medseg.io.volume.Volume` (array in HU, RAS affine), plus each of
    `others` (arrays on the same grid, e.g. `mask=lung_mask(volume)`) under its own key. No copies."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"a CT volume must be 3D, got shape {array.shape}", getattr(volume, "source", None) or None)
    affine = torch.as_tensor(np.asarray(volume.affine, dtype=np.float64))
    sample = {key: MetaTensor(_tensor(array)[None], affine=affine)}
    for name, other in others.items():
        other = np.asarray(other)
        if other.shape != array.shape:
            raise InputError(f"{name} {other.shape} is not on the volume's grid {array.shape}",
                             getattr(volume, "source", None) or None)
        sample[name] = MetaTensor(_tensor(other)[None], affine=affine.clone())
    return sample


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory where torch allows it (no negative strides, writable)."""
    if array.flags.writeable and all(s >= 0 for s in array.strides):
        return torch.from_numpy(array)
    return torch.from_numpy(np.ascontiguousarray(array))


def build_ct_chain(config: PreprocessingConfig, image_key: str = "image", label_key: str | None = None,
                   box_key: str | None = "mask") -> Compose:
    """Crop to the `box_key` mask's box (+ `roi_margin_mm`; None: no crop), RAS, `config.spacing` (None keeps
    the spacing), int16 HU. `label_key` (optional) follows the image with nearest-neighbour resampling; the box
    key is cropped and reoriented (kept at source resolution)."""
    if config.modality != "ct":
        raise ConfigError(f"build_ct_chain needs a CT config, got modality {config.modality!r}")
    resampled = [image_key] if label_key is None else [image_key, label_key]
    spatial = resampled if box_key is None else [*resampled, box_key]
    chain: list[Any] = []
    if box_key is not None:
        chain.append(CropToMaskd(spatial, box_key, config.roi_margin_mm))
    chain += [
        ReorientToRASd(spatial),
        ResampleToSpacingd(resampled, config.spacing, label_keys=[] if label_key is None else [label_key]),
        RoundHUd(image_key),
    ]
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
    """Min-max scaling to [0, 1], letterbox resize to `config.image_size`, optional CLAHE, float16 (module doc)."""
    if config.modality != "xray":
        raise ConfigError(f"build_xray_chain needs an X-ray config, got modality {config.modality!r}")
    chain: list[Any] = [ScaleIntensityd(image_key, minv=0.0, maxv=1.0)]
    if config.image_size is not None:
        chain.append(FitResized(image_key, config.image_size))
    if config.clahe is not None:
        chain.append(CLAHEd(image_key, config.clahe.clip_limit, config.clahe.tile_grid, config.clahe.bits))
    if config.image_size is not None:
        chain.append(SpatialPadd(image_key, config.image_size, method="symmetric", mode="constant", value=0.0))
    chain.append(CastToTyped(image_key, dtype=torch.float16))
    return Compose(chain)


def prepare_radiograph(source: Any, chain: Compose) -> np.ndarray:
    """`(1, H, W)` float32 model input from a radiograph file path, a `Radiograph` or a 2D array.

    Training (`medseg train`, which keeps the float16 values) and inference (`medseg classify`) both go through
    here, so the two see bit-identical pixels for the same file.
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
