"""MixUp and CutMix on a training batch: images (B, C, H, W), float targets (B, K) (one-hot or multi-hot).

Each sample i is paired with sample perm[i] of a random permutation and gets its own lam ~ Beta(alpha, alpha).
MixUp blends images and targets by lam; CutMix pastes a box of area ~(1-lam) from the partner (clipped at the
border, Yun et al. 2019) and mixes the targets by the area actually pasted. All draws come from one
`torch.Generator`, so a seeded generator reproduces a batch exactly.

MONAI's `MixUp`/`CutMix` (monai.transforms) are not used: MixUp rejects (B, K) label tensors, CutMix's
label path returns the partner's labels instead of mixing them by area, and both draw from a NumPy RandomState.
"""

from __future__ import annotations

from typing import Literal

import torch
from scipy.special import betaincinv

from medseg.errors import ConfigError, InputError

__all__ = ["BatchMixer", "MixMode", "mix_batch"]

MixMode = Literal["mixup", "cutmix"]


def _uniform(count: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(count, generator=generator, device=device, dtype=torch.float64).cpu()


def _beta(alpha: float, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Beta(alpha, alpha) draws by inverse CDF (torch's Beta sampler takes no generator); float64, CPU."""
    return torch.from_numpy(betaincinv(alpha, alpha, _uniform(count, generator).numpy()))


def _cutmix_masks(lam: torch.Tensor, height: int, width: int,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) boolean masks of the pasted boxes and the kept-area fraction of each sample."""
    ratio = torch.sqrt(1 - lam)
    box_h, box_w = (height * ratio).round().long(), (width * ratio).round().long()
    centre_y = (_uniform(len(lam), generator) * height).long()
    centre_x = (_uniform(len(lam), generator) * width).long()
    y0, y1 = (centre_y - box_h // 2).clamp(0, height), (centre_y + box_h - box_h // 2).clamp(0, height)
    x0, x1 = (centre_x - box_w // 2).clamp(0, width), (centre_x + box_w - box_w // 2).clamp(0, width)
    rows, cols = torch.arange(height), torch.arange(width)
    in_rows = (rows >= y0[:, None]) & (rows < y1[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < x1[:, None])
    masks = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    kept = 1 - ((y1 - y0) * (x1 - x0)).double() / (height * width)
    return masks, kept


def mix_batch(images: torch.Tensor, targets: torch.Tensor, mode: MixMode, alpha: float = 0.4,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch: (mixed images, mixed targets); rows of one-hot targets keep summing to 1."""
    if mode not in ("mixup", "cutmix"):
        raise ConfigError(f"mixing mode must be 'mixup' or 'cutmix', got {mode!r}")
    if not alpha > 0:
        raise ConfigError(f"mixing alpha must be > 0, got {alpha}")
    if images.ndim != 4 or targets.ndim != 2 or images.shape[0] != targets.shape[0]:
        raise InputError(f"mixing needs images (B, C, H, W) and targets (B, K) with the same B, got "
                         f"{tuple(images.shape)} and {tuple(targets.shape)}")
    if not targets.is_floating_point():
        raise InputError(f"mixing needs float (one-hot or multi-hot) targets, got {targets.dtype}")
    batch = images.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(batch, generator=generator, device=device).to(images.device)
    lam = _beta(alpha, batch, generator)
    if mode == "mixup":
        weight = lam.to(images.device, images.dtype).view(-1, 1, 1, 1)
        mixed = weight * images + (1 - weight) * images[perm]
    else:
        masks, lam = _cutmix_masks(lam, images.shape[2], images.shape[3], generator)
        mixed = torch.where(masks.to(images.device), images[perm], images)
    lam = lam.to(targets.device, targets.dtype)[:, None]
    return mixed, lam * targets + (1 - lam) * targets[perm]


class BatchMixer:
    """`(images, targets) -> (images, targets)`: mixes a batch with probability `prob`.

    `mode` "both" picks MixUp or CutMix with equal odds per mixed batch; "none" passes batches through.
    Seeded by `seed` (or a given `generator`): the same seed reproduces the same sequence of batches.
    """

    def __init__(self, mode: Literal["none", "mixup", "cutmix", "both"] = "both", alpha: float = 0.4,
                 prob: float = 1.0, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        if mode not in ("none", "mixup", "cutmix", "both"):
            raise ConfigError(f"mixing mode must be none, mixup, cutmix or both, got {mode!r}")
        if not alpha > 0:
            raise ConfigError(f"mixing alpha must be > 0, got {alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"mixing prob must be in [0, 1], got {prob}")
        self.mode, self.alpha, self.prob = mode, alpha, prob
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        self.generator = generator

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "none":
            return images, targets
        apply, pick = _uniform(2, self.generator).tolist()
        if apply >= self.prob:
            return images, targets
        mode: MixMode = ("mixup" if pick < 0.5 else "cutmix") if self.mode == "both" else self.mode
        return mix_batch(images, targets, mode, self.alpha, self.generator)
