"""The optional position channel of 2.5D CT models: where a slice lies in the lung's height.

A 2.5D model sees a few neighbouring axial slices and must guess from their content alone how high in the
chest they are; which lobe a voxel belongs to depends mostly on that height (the oblique fissures fall from
about T3-T4 posteriorly to the anterior diaphragm). Phantom-trained models guess it from phantom anatomy and
texture and guess wrong on real scans. With `position_channel: true` each input gets one more channel, constant
over the slice: the slice's height in the CT chain's crop (the lung mask's box plus its margin), 0 at the
inferior end, 1 at the superior end. Scans that do not cover the whole lung height (the lung mask touches the
first or last axial slice) get `UNKNOWN_POSITION` instead; training shows the model that value too
(`AugmentationConfig.position_dropout`), so partial scans still segment from image content.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["UNKNOWN_POSITION", "append_position", "covers_lung_height", "slice_positions"]

UNKNOWN_POSITION = -1.0


def slice_positions(depth: int, known: bool = True) -> torch.Tensor:
    """Heights (depth,) float32 of the slices of a model-grid crop (RAS: index grows superior)."""
    if not known:
        return torch.full((depth,), UNKNOWN_POSITION, dtype=torch.float32)
    return torch.linspace(0.0, 1.0, depth, dtype=torch.float32) if depth > 1 else torch.full((1,), 0.5)


def append_position(images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) inputs + (B,) heights -> (B, C + 1, H, W), the height as a constant last channel."""
    plane = positions.to(images.dtype).reshape(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:])
    return torch.cat([images, plane.to(images.device)], dim=1)


def covers_lung_height(mask: np.ndarray, affine: np.ndarray) -> bool:
    """Whether the scan holds the lung's whole height: the mask touches neither end slice of the axis that
    runs closest to head-feet."""
    axis = int(np.argmax(np.abs(np.asarray(affine)[2, :3])))
    mask = np.asarray(mask)
    if not mask.any():
        return False
    ends = (np.take(mask, 0, axis=axis), np.take(mask, mask.shape[axis] - 1, axis=axis))
    return not any(end.any() for end in ends)
