"""Imbalance-aware classification losses, class weights from label counts, class-balanced sampling weights.

    weights = class_weights_from_counts(positives, total, "effective_number")
    loss = classification_loss("focal", multilabel=True, class_weights=weights)
    loss(logits, targets)  # logits (B, C); multi-label targets (B, C) in [0, 1]

Multi-label losses are per-class sigmoid losses averaged over batch and classes (like `BCEWithLogitsLoss`);
multi-class losses follow `CrossEntropyLoss`'s conventions (class-weighted mean for index targets, batch mean
for soft targets), so a focal loss with `gamma=0` equals the corresponding cross-entropy exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medseg.errors import ConfigError, InputError

__all__ = [
    "ClassLossName",
    "MultiClassFocalLoss",
    "MultiLabelLoss",
    "WeightMethod",
    "class_balanced_sample_weights",
    "class_weights_from_counts",
    "classification_loss",
    "pos_weight_from_counts",
]

log = logging.getLogger(__name__)

ClassLossName = Literal["ce", "bce", "focal"]
WeightMethod = Literal["inverse", "inverse_sqrt", "effective_number"]

_EPS = 1e-12  # floor of (1 - p_t) before the focal power: keeps its gradient finite for 0 < gamma < 1


# ------------------------------------------------------------------------------------ weights from counts


def _counts(positives: Sequence[int], total: int) -> np.ndarray:
    counts = np.asarray(positives, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ConfigError(f"positives must be a non-empty list of per-class counts, got {positives!r}")
    if (counts < 0).any() or total < 1 or (counts > total).any():
        raise ConfigError(f"class counts must lie in [0, total={total}], got {counts.astype(int).tolist()}")
    return counts


def class_weights_from_counts(positives: Sequence[int], total: int, method: WeightMethod,
                              beta: float = 0.999) -> list[float]:
    """Per-class loss weights from positive counts, normalised to mean 1.

    "inverse": 1/n_c; "inverse_sqrt": 1/sqrt(n_c); "effective_number": (1-beta)/(1-beta**n_c) (Cui et al. 2019,
    uniform for beta=0, -> inverse as beta -> 1). `ConfigError` for a class without positives.
    """
    counts = _counts(positives, total)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ConfigError(f"class {int(empty[0])} has no positive samples (counts {counts.astype(int).tolist()}); "
                          "its weight would be infinite: drop the class or add examples")
    if method == "inverse":
        weights = 1.0 / counts
    elif method == "inverse_sqrt":
        weights = 1.0 / np.sqrt(counts)
    elif method == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta must be in [0, 1), got {beta}")
        # (1 - beta) / (1 - beta**n) via expm1, accurate for beta close to 1.
        weights = np.ones_like(counts) if beta == 0 else np.expm1(math.log(beta)) / np.expm1(counts * math.log(beta))
    else:
        raise ConfigError(f"unknown class weighting {method!r}; choose inverse, inverse_sqrt or effective_number")
    return (weights / weights.mean()).tolist()


def pos_weight_from_counts(positives: Sequence[int], total: int, max_weight: float = 100.0) -> list[float]:
    """Per-class negatives/positives for `BCEWithLogitsLoss(pos_weight=...)`, clipped to `max_weight`.

    A class without positives gets `max_weight` (its positive term never occurs) and a warning.
    """
    if max_weight <= 0:
        raise ConfigError(f"max_weight must be > 0, got {max_weight}")
    counts = _counts(positives, total)
    if (counts == 0).any():
        log.warning("classes %s have no positive samples; pos_weight set to max_weight=%g",
                    np.flatnonzero(counts == 0).tolist(), max_weight)
    with np.errstate(divide="ignore"):
        ratio = (total - counts) / counts
    return np.minimum(ratio, max_weight).tolist()


def class_balanced_sample_weights(labels: np.ndarray, multilabel: bool) -> np.ndarray:
    """Per-sample weights (sum 1) for `WeightedRandomSampler` that draw every class about equally often.

    Multi-class (N,) integer labels: 1/count(class). Multi-label (N, C) 0/1: the largest 1/count(class) over the
    sample's positive classes; samples without a positive get 1/count(rows without a positive).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise InputError("no labels to weight")
    if multilabel:
        if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
            raise InputError(f"multi-label labels must be an (N, C) array of 0/1, got shape {labels.shape}")
        positive = labels.astype(bool)
        counts = positive.sum(axis=0)
        inverse = np.divide(1.0, counts, out=np.zeros(counts.shape), where=counts > 0)
        weights = (positive * inverse).max(axis=1)
        none = ~positive.any(axis=1)
        weights[none] = 1.0 / max(int(none.sum()), 1)
    else:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"multi-class labels must be an (N,) integer array, got {labels.dtype} {labels.shape}")
        _, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[index.reshape(-1)]
    return weights / weights.sum()


# ------------------------------------------------------------------------------------------------- losses


def _vector(name: str, values: Sequence[float] | None) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(list(values), dtype=torch.float32)
    if tensor.ndim != 1 or tensor.numel() == 0 or not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise ConfigError(f"{name} must be a non-empty list of finite values >= 0, got {list(values)}")
    return tensor


def _check_classes(logits: torch.Tensor, **vectors: torch.Tensor | None) -> int:
    if logits.ndim != 2:
        raise InputError(f"classification logits must be (B, C), got shape {tuple(logits.shape)}")
    classes = logits.shape[1]
    for name, vector in vectors.items():
        if vector is not None and vector.numel() != classes:
            raise ConfigError(f"{name} has {vector.numel()} entries but the logits have {classes} classes")
    return classes


class MultiLabelLoss(nn.Module):
    """Per-class binary cross-entropy with logits, or sigmoid focal loss (`gamma`), mean over batch and classes.

    `class_weights` multiply each class's term, `pos_weight` each positive term (as in `BCEWithLogitsLoss`);
    targets (B, C) in [0, 1] (soft targets allowed) are smoothed to t*(1-eps) + eps/2.
    """

    def __init__(self, class_weights: torch.Tensor | None = None, pos_weight: torch.Tensor | None = None,
                 gamma: float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights)
        self.register_buffer("pos_weight", pos_weight)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_classes(logits, class_weights=self.class_weights, pos_weight=self.pos_weight)
        if target.shape != logits.shape:
            raise InputError(f"multi-label targets must match the logits {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        logits = logits.float()
        target = target.to(logits.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight, reduction="none")
        if self.gamma is not None:  # torchvision's sigmoid_focal_loss factor, p_t generalised to soft targets
            prob = torch.sigmoid(logits)
            p_t = prob * target + (1 - prob) * (1 - target)
            loss = loss * (1 - p_t).clamp_min(_EPS) ** self.gamma
        if self.class_weights is not None:
            loss = loss * self.class_weights
        return loss.mean()


class MultiClassFocalLoss(nn.Module):
    """Softmax focal loss: -sum_c w_c t_c (1-p_c)^gamma log p_c, reduced like `CrossEntropyLoss`.

    Targets: (B,) class indices or (B, C) soft labels; smoothing t*(1-eps) + eps/C. Index targets with class
    weights are averaged by the summed weights of the targets, otherwise by the batch size (torch's rule).
    """

    def __init__(self, class_weights: torch.Tensor | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = _check_classes(logits, class_weights=self.class_weights)
        indices = _is_index_target(logits, target)
        log_p = F.log_softmax(logits.float(), dim=1)
        soft = F.one_hot(target.long(), classes).to(log_p.dtype) if indices else target.to(log_p.dtype)
        if self.label_smoothing:
            soft = soft * (1 - self.label_smoothing) + self.label_smoothing / classes
        loss = -soft * (1 - log_p.exp()).clamp_min(_EPS) ** self.gamma * log_p
        if self.class_weights is not None:
            loss = loss * self.class_weights
        denominator = self.class_weights[target.long()].sum() if indices and self.class_weights is not None \
            else logits.shape[0]
        return loss.sum() / denominator


class _CrossEntropy(nn.CrossEntropyLoss):
    """`CrossEntropyLoss` with medseg's shape checks (index or soft targets)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_classes(logits, class_weights=self.weight)
        if _is_index_target(logits, target):
            return super().forward(logits.float(), target.long())
        return super().forward(logits.float(), target.float())


def _is_index_target(logits: torch.Tensor, target: torch.Tensor) -> bool:
    if target.ndim == 1 and target.shape[0] == logits.shape[0] and not target.is_floating_point():
        return True
    if target.shape == logits.shape:
        return False
    raise InputError(f"multi-class targets must be (B,) integer class indices or (B, C) soft labels matching the "
                     f"logits {tuple(logits.shape)}, got {target.dtype} {tuple(target.shape)}")


def classification_loss(
    name: ClassLossName,
    *,
    multilabel: bool,
    class_weights: Sequence[float] | None = None,
    pos_weight: Sequence[float] | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> nn.Module:
    """Loss module called as `loss(logits (B, C), target)`.

    Multi-label (target (B, C) in [0, 1]): "ce"/"bce" = per-class BCE with logits, "focal" = sigmoid focal loss.
    Multi-class (target (B,) indices or (B, C) soft labels): "ce" = `CrossEntropyLoss`, "focal" = softmax focal
    loss; "bce" and `pos_weight` are refused. Bad options raise `ConfigError`.
    """
    if name not in ("ce", "bce", "focal"):
        raise ConfigError(f"unknown classification loss {name!r}; choose ce, bce or focal")
    if gamma < 0:
        raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    weights, positive = _vector("class_weights", class_weights), _vector("pos_weight", pos_weight)
    if weights is not None and positive is not None and weights.numel() != positive.numel():
        raise ConfigError(f"class_weights has {weights.numel()} entries but pos_weight has {positive.numel()}")
    if multilabel:
        return MultiLabelLoss(weights, positive, gamma if name == "focal" else None, label_smoothing)
    if positive is not None:
        raise ConfigError("pos_weight is for multi-label (per-class sigmoid) losses; multi-class losses take "
                          "class_weights")
    if name == "bce":
        raise ConfigError("loss 'bce' is for multi-label targets; multi-class classification uses 'ce' or 'focal'")
    if name == "focal":
        return MultiClassFocalLoss(weights, gamma, label_smoothing)
    return _CrossEntropy(weight=weights, label_smoothing=label_smoothing)
