"""Batched 2.5D slice inference on a model grid: HU volume in, class probabilities out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medseg.errors import InputError
from medseg.transforms.intensity import HU_RANGE, window_stacks
from medseg.transforms.position import append_position
from medseg.transforms.stack import SliceStack

__all__ = ["FlipTTA", "dice_per_class", "predict_volume"]

PAD_MULTIPLE = 32
"""The in-plane size the network needs (its total downsampling factor)."""


class FlipTTA:
    """Left-right flip test-time augmentation with a label correspondence.

    `groups` maps each class to the group it belongs to on its own side and `mirror` maps groups to their
    mirror groups (e.g. the right upper+middle lobes mirror the left upper lobe, whose lingula is the
    middle lobe's counterpart). The flipped view's group totals are averaged with the direct view's, and
    each group's total is split among its classes as in the direct view, so classes without an exact
    mirror (the right middle lobe) keep their direct-view share.
    """

    def __init__(self, groups: Sequence[int], mirror: dict[int, int], axis: int = -2) -> None:
        self.groups = torch.as_tensor(list(groups))
        self.mirror = mirror
        self.axis = axis

    def combine(self, direct: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """Merge (B, C, H, W) probabilities of the direct view and of the (already un-flipped) mirrored view."""
        result = direct.clone()
        for group in torch.unique(self.groups).tolist():
            members = (self.groups == group).nonzero().flatten()
            mirror_members = (self.groups == self.mirror[group]).nonzero().flatten()
            total = direct[:, members].sum(1, keepdim=True)
            mirrored_total = flipped[:, mirror_members].sum(1, keepdim=True)
            share = direct[:, members] / total.clamp_min(1e-6)
            result[:, members] = share * (total + mirrored_total) / 2
        return result


@torch.inference_mode()
def predict_volume(model: nn.Module, image: torch.Tensor, windows: Sequence[tuple[float, float]], stack: int,
                   *, batch_size: int = 16, device: str | torch.device = "cpu", tta: FlipTTA | None = None,
                   progress=None, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax probabilities (C, Z, X, Y) float32 for a slice-major (Z, X, Y) HU volume on the model grid.

    Slice z is predicted from `window_stacks` of its 2.5D stack (`SliceStack`: the `stack` slices around it,
    edges clamped), the model input training builds too. In-plane the volume is padded with air (the lowest
    HU, as training pads its patches) up to a multiple of 32, and the output cropped back. `progress(done,
    total)` is called after each batch. `positions` (Z,): the slices' heights for a model with a position
    channel (`medseg.transforms.position`), appended after the windows.
    """
    model.eval()
    device = torch.device(device)
    image = torch.as_tensor(image)
    depth, height, width = image.shape
    if depth == 0:
        raise InputError("predict_volume needs a volume with at least one slice")
    padded = F.pad(image, (0, (-width) % PAD_MULTIPLE, 0, (-height) % PAD_MULTIPLE), value=HU_RANGE[0])
    stacks = SliceStack(stack)(padded.permute(1, 2, 0))                                  # (Z, k, X, Y) view
    output: torch.Tensor | None = None
    use_autocast = device.type == "cuda"
    for start in range(0, depth, batch_size):
        stop = min(depth, start + batch_size)
        batch = window_stacks(stacks[start:stop], windows)                                # (B, n*k, X, Y)
        if positions is not None:
            batch = append_position(batch, positions[start:stop])
        batch = batch.to(device)
        with torch.autocast(device.type, enabled=use_autocast):
            probs = torch.softmax(model(batch).float(), dim=1)
            if tta is not None:
                flipped = torch.softmax(model(batch.flip(tta.axis)).float(), dim=1).flip(tta.axis)
                probs = tta.combine(probs, flipped)
        probs = probs[..., :height, :width].cpu()
        if output is None:
            output = torch.empty((probs.shape[1], depth, height, width), dtype=torch.float32)
        output[:, start:stop] = probs.transpose(0, 1)
        if progress is not None:
            progress(stop, depth)
    assert output is not None  # depth > 0
    return output


def dice_per_class(prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor,
                   classes: Sequence[int]) -> dict[int, float]:
    """Dice of each class (NaN where absent from both)."""
    prediction = torch.as_tensor(prediction)
    reference = torch.as_tensor(reference)
    scores = {}
    for value in classes:
        p, r = prediction == value, reference == value
        denominator = int(p.sum() + r.sum())
        scores[value] = float("nan") if denominator == 0 else 2.0 * int((p & r).sum()) / denominator
    return scores
