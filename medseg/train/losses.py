"""Segmentation and classification losses by name (MONAI implementations)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["SegmentationLossName", "segmentation_loss"]

SegmentationLossName = Literal["dice_ce", "dice", "ce", "focal", "dice_focal"]


def segmentation_loss(name: SegmentationLossName, *, class_weights: list[float] | None = None,
                      label_smoothing: float = 0.0) -> nn.Module:
    """Loss for (B, C, H, W) logits against (B, 1, H, W) integer labels.

    Dice terms are batch Dice over the foreground classes (stable when a slice lacks a class);
    cross-entropy may be class-weighted and label-smoothed.
    """
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss

    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    dice_args = {"to_onehot_y": True, "softmax": True, "include_background": False, "batch": True}
    if name == "dice_ce":
        return DiceCELoss(**dice_args, weight=weight, label_smoothing=label_smoothing)
    if name == "dice":
        return DiceLoss(**dice_args)
    if name == "dice_focal":
        return DiceFocalLoss(**dice_args, weight=weight)
    if name == "focal":
        return FocalLoss(to_onehot_y=True, use_softmax=True, weight=weight)
    if name == "ce":
        return _CrossEntropy(weight, label_smoothing)
    raise ValueError(f"unknown loss {name!r}")


class _CrossEntropy(nn.Module):
    def __init__(self, weight: torch.Tensor | None, label_smoothing: float) -> None:
        super().__init__()
        self.loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target[:, 0].long())
