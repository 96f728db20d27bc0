"""Contrast-limited adaptive histogram equalisation (OpenCV) per 2D channel."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Literal

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from medseg.errors import ConfigError, InputError

__all__ = ["CLAHE", "CLAHEd", "clahe"]


def clahe(
    image: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8), bits: Literal[8, 16] = 8
) -> np.ndarray:
    """`cv2.createCLAHE` on each 2D channel of a `(C, H, W)` (or `(H, W)`) numpy array; float32 in [0, 1] out.

    Float input is taken as [0, 1] (values outside are clipped) and quantised to `bits` bits. uint8 / uint16
    input is read on its full dtype range (0..255 / 0..65535) and converted to `bits` bits if that differs.
    `clip_limit` is OpenCV's: the histogram clip height as a multiple of the mean bin count. With `bits=16`
    OpenCV uses 65536 bins, so the clip (clip_limit * tile pixels / 65536) is usually near 1 count: much
    stronger equalisation than 8 bits at the same clip_limit. 8 bits is the usual choice.
    """
    if bits not in (8, 16):
        raise ConfigError(f"CLAHE bits must be 8 or 16, got {bits!r}")
    if not clip_limit > 0:
        raise ConfigError(f"CLAHE clip_limit must be > 0, got {clip_limit!r}")
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(f"CLAHE needs a (C, H, W) or (H, W) array, got shape {array.shape}")
    top = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    if array.dtype == dtype:
        quantised = array
    elif array.dtype in (np.uint8, np.uint16):
        quantised = np.rint(array.astype(np.float32) * (top / np.iinfo(array.dtype).max)).astype(dtype)
    else:
        scaled = np.multiply(array, np.float32(top), dtype=np.float32)
        np.clip(scaled, 0.0, top, out=scaled)
        scaled += np.float32(0.5)  # round half up, then truncate: values are >= 0
        quantised = scaled.astype(dtype)
    planes = quantised if quantised.ndim == 3 else quantised[None]
    worker = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid[1]), int(tile_grid[0])))
    out = np.empty(planes.shape, dtype=np.float32)
    for c, plane in enumerate(planes):
        np.multiply(worker.apply(np.ascontiguousarray(plane)), np.float32(1.0 / top), out=out[c])
    return out if array.ndim == 3 else out[0]


class CLAHE(Transform):
    """Array transform: OpenCV CLAHE on each channel of a `(C, H, W)` image in [0, 1] (or uint8 / uint16).

    `tile_grid` is (rows, columns) of tiles. Returns float32 in [0, 1]; torch input comes back as torch
    (MetaTensor metadata kept), computed on the CPU.
    """

    backend = (TransformBackends.NUMPY,)

    def __init__(self, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8), bits: Literal[8, 16] = 8) -> None:
        if bits not in (8, 16) or not clip_limit > 0 or len(tile_grid) != 2 or min(tile_grid) < 1:
            raise ConfigError(
                f"invalid CLAHE settings: clip_limit={clip_limit!r}, tile_grid={tile_grid!r}, bits={bits!r}"
            )
        self.clip_limit = float(clip_limit)
        self.tile_grid = (int(tile_grid[0]), int(tile_grid[1]))
        self.bits: Literal[8, 16] = bits

    def __call__(self, img: Any) -> Any:
        if isinstance(img, torch.Tensor):
            plain = img.as_tensor() if hasattr(img, "as_tensor") else img
            out = clahe(plain.detach().cpu().numpy(), self.clip_limit, self.tile_grid, self.bits)
            return convert_to_dst_type(out, img, dtype=torch.float32)[0]
        return clahe(img, self.clip_limit, self.tile_grid, self.bits)


class CLAHEd(MapTransform):
    """Dict wrapper of `CLAHE`."""

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        clip_limit: float = 2.0,
        tile_grid: tuple[int, int] = (8, 8),
        bits: Literal[8, 16] = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clahe = CLAHE(clip_limit, tile_grid, bits)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
        return d
