"""2.5D input: each axial slice with its neighbours along the last (slice) axis as channels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from monai.utils import TransformBackends

from medseg.errors import ConfigError, InputError

__all__ = ["SliceStack", "slice_stack", "slice_stack_indices"]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1 or k % 2 == 0:
        raise ConfigError(f"the 2.5D stack size must be an odd integer >= 1, got {k!r}")
    return int(k)


def slice_stack_indices(index: int, k: int, depth: int) -> list[int]:
    """Slice indices `index - k//2 .. index + k//2`, clamped to `[0, depth - 1]` (edge slices replicated)."""
    k = _check_k(k)
    if not 0 <= index < depth:
        raise InputError(f"slice index {index} is outside a volume of {depth} slices")
    return [min(max(i, 0), depth - 1) for i in range(index - k // 2, index + k // 2 + 1)]


def slice_stack(volume: Any, index: int, k: int) -> Any:
    """The 2.5D stack of slice `index`: `(H, W, D)` -> `(k, H, W)`; `(C, H, W, D)` -> `(C * k, H, W)`.

    Slices `index - k//2 .. index + k//2` along the last axis, clamped at the volume edges; the centre channel
    (`k // 2`) is slice `index` itself. With C channels the output is channel-major: `out[c * k + j]`.
    numpy in -> numpy out, torch in -> torch out (a copy in both cases).
    """
    if volume.ndim not in (3, 4):
        raise InputError(f"slice_stack needs an (H, W, D) or (C, H, W, D) volume, got shape {tuple(volume.shape)}")
    idx = slice_stack_indices(int(index), k, int(volume.shape[-1]))
    picked = volume[..., idx]  # (H, W, k) or (C, H, W, k)
    if isinstance(picked, torch.Tensor):
        out = torch.movedim(picked, -1, -3)
        return out.reshape(-1, *out.shape[-2:]).contiguous()
    out = np.moveaxis(picked, -1, -3)
    return np.ascontiguousarray(out.reshape(-1, *out.shape[-2:]))


class SliceStack(Transform):
    """2.5D stacks for every slice of a volume, without copying the volume k times.

    `SliceStack(k)(volume)` takes `(H, W, D)` or `(C, H, W, D)` and returns `(D, C * k, H, W)` where
    `out[i] == slice_stack(volume, i, k)`. For numpy and C == 1 the result is a read-only strided view of
    one edge-padded copy of the volume (D + k - 1 slices); for torch it is an `unfold` view of that copy.
    C > 1 needs a real reshape (a copy, k times the volume). `SliceStack(k)(volume, index=i)` returns one
    stack, as `slice_stack`. Metadata of a MetaTensor is dropped: stacks are per-slice training inputs.
    """

    backend = (TransformBackends.TORCH, TransformBackends.NUMPY)

    def __init__(self, k: int) -> None:
        self.k = _check_k(k)

    def __call__(self, volume: Any, index: int | None = None) -> Any:
        if index is not None:
            return slice_stack(volume, index, self.k)
        if volume.ndim not in (3, 4):
            raise InputError(f"SliceStack needs an (H, W, D) or (C, H, W, D) volume, got shape {tuple(volume.shape)}")
        half = self.k // 2
        vol = volume if volume.ndim == 4 else volume[None]
        if isinstance(vol, torch.Tensor):
            vol = vol.as_tensor() if hasattr(vol, "as_tensor") else vol
            padded = torch.cat([vol[..., :1]] * half + [vol] + [vol[..., -1:]] * half, dim=-1) if half else vol
            windows = padded.unfold(-1, self.k, 1)  # (C, H, W, D, k)
            stacks = windows.permute(3, 0, 4, 1, 2)  # (D, C, k, H, W)
        else:
            vol = np.asarray(vol)
            padded = np.pad(vol, [(0, 0)] * 3 + [(half, half)], mode="edge") if half else vol
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.k, axis=-1)  # (C, H, W, D, k)
            stacks = windows.transpose(3, 0, 4, 1, 2)
        n_slices, channels, k, height, width = stacks.shape
        if channels == 1:
            return stacks[:, 0]
        return stacks.reshape(n_slices, channels * k, height, width)
