"""Hounsfield-unit windowing: one [0, 1] channel per CT window."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from medseg.errors import ConfigError

__all__ = ["HU_RANGE", "HUWindow", "HUWindowd", "RoundHUd", "WindowLike", "window_bounds", "window_channels",
           "window_stacks"]

HU_RANGE = (-1024, 3071)
"""The HU values a model grid holds: resampled HU are rounded to integers and clamped to this (12-bit) range."""

WindowLike = Any
"""A `WindowConfig` (anything with `.center` and `.width`), or a `(center, width)` pair."""


def window_bounds(windows: Sequence[WindowLike]) -> list[tuple[float, float]]:
    """`(low, width)` per window, where low = center - width / 2; refuses empty lists and widths <= 0."""
    if isinstance(windows, Mapping) or hasattr(windows, "center") or not len(windows):
        raise ConfigError("windows must be a non-empty list of windows (WindowConfig or (center, width))")
    bounds = []
    for window in windows:
        if hasattr(window, "center"):
            center, width = float(window.center), float(window.width)
        else:
            center, width = (float(v) for v in window)
        if not width > 0:
            raise ConfigError(f"window width must be > 0, got {width:g}")
        bounds.append((center - width / 2.0, width))
    return bounds


def window_channels(hu: Any, windows: Sequence[WindowLike], *, channel_first: bool | None = None) -> Any:
    """Map Hounsfield units to float32 in [0, 1], one output block of channels per window.

    Each window maps `center - width/2` to 0 and `center + width/2` to 1, linearly, clipped outside.
    With a channel axis, input `(K, *spatial)` gives `(len(windows) * K, *spatial)`, ordered window-major:
    `out[w * K + k]` is window `w` applied to input channel `k`. `channel_first=None` (auto) treats a 0-2D
    input as having no channel axis (it gets one: `(H, W)` -> `(len(windows), H, W)`) and the first axis of a
    3D or higher input as the channel axis; pass `channel_first=False` for a bare `(H, W, D)` volume.
    numpy in -> numpy out; torch (and MetaTensor, metadata kept) in -> torch out on the same device.
    """
    bounds = window_bounds(windows)
    if isinstance(hu, torch.Tensor):
        src = hu.as_tensor() if hasattr(hu, "as_tensor") else hu
        src = src if src.dtype in (torch.float32, torch.float64) else src.to(torch.float32)
    else:
        src = np.asarray(hu)
        src = src if src.dtype in (np.float32, np.float64) else src.astype(np.float32)
    has_channel = src.ndim >= 3 if channel_first is None else channel_first
    if not has_channel:
        src = src[None]
    n_in = src.shape[0]
    shape = (len(bounds) * n_in, *src.shape[1:])
    if isinstance(src, torch.Tensor):
        out_t = torch.empty(shape, dtype=torch.float32, device=src.device)
        for w, (low, width) in enumerate(bounds):
            block = out_t[w * n_in : (w + 1) * n_in]
            torch.sub(src, low, out=block)
            block.div_(width).clamp_(0.0, 1.0)
        return convert_to_dst_type(out_t, hu, dtype=torch.float32)[0] if hasattr(hu, "as_tensor") else out_t
    out = np.empty(shape, dtype=np.float32)
    for w, (low, width) in enumerate(bounds):
        block = out[w * n_in : (w + 1) * n_in]
        np.subtract(src, np.float32(low) if src.dtype == np.float32 else low, out=block, casting="unsafe")
        np.divide(block, np.float32(width), out=block)
        np.clip(block, 0.0, 1.0, out=block)
    return out


class HUWindow(Transform):
    """Array transform: `window_channels(img, windows)`; keeps numpy/torch type (and MetaTensor metadata)."""

    backend = (TransformBackends.TORCH, TransformBackends.NUMPY)

    def __init__(self, windows: Sequence[WindowLike], channel_first: bool | None = None) -> None:
        window_bounds(windows)  # validate now, not on the first image
        self.windows = list(windows)
        self.channel_first = channel_first

    def __call__(self, img: Any) -> Any:
        return window_channels(img, self.windows, channel_first=self.channel_first)


class HUWindowd(MapTransform):
    """Dict wrapper of `HUWindow`. Not invertible (intensity only); geometry metadata is kept, so
    MONAI's `Invertd` / `Compose.inverse` still undo the spatial transforms around it."""

    backend = HUWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        windows: Sequence[WindowLike],
        channel_first: bool | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = HUWindow(windows, channel_first)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.window(d[key])
        return d


def window_stacks(stacks: torch.Tensor, windows: Sequence[WindowLike]) -> torch.Tensor:
    """THE model input of a CT model: (B, k, X, Y) HU 2.5D stacks -> (B, len(windows) * k, X, Y) in [0, 1],
    window-major within each sample (`out[b, w * k + j]` is window w of slice j). Training and inference both
    call this, so the same HU give bit-identical inputs."""
    return window_channels(stacks.transpose(0, 1), windows).transpose(0, 1)


class RoundHUd(MapTransform):
    """Round resampled HU to integers and clamp them to `HU_RANGE`: int16 out (metadata kept).

    The last step of the CT chain, so that the training cache (int16 on disk) and inference hold the same values.
    """

    backend = (TransformBackends.TORCH,)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            d[key] = torch.round(torch.as_tensor(value)).clamp_(*HU_RANGE).to(torch.int16)
        return d
