"""medseg.train.class_losses (weights, losses, balanced sampling) and medseg.transforms.mixing (MixUp/CutMix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medseg.errors import ConfigError, InputError
from medseg.train.class_losses import (
    class_balanced_sample_weights,
    class_weights_from_counts,
    classification_loss,
    pos_weight_from_counts,
)
from medseg.transforms.mixing import BatchMixer, mix_batch

# ------------------------------------------------------------------------------------- weights from counts


def test_class_weight_formulas():
    assert class_weights_from_counts([10, 90], 100, "inverse") == pytest.approx([1.8, 0.2])
    assert class_weights_from_counts([16, 64], 80, "inverse_sqrt") == pytest.approx([4 / 3, 2 / 3])
    counts = [5, 50, 500]
    inverse = class_weights_from_counts(counts, 1000, "inverse")
    assert class_weights_from_counts(counts, 1000, "effective_number", beta=1 - 1e-9) == pytest.approx(inverse)
    assert class_weights_from_counts(counts, 1000, "effective_number", beta=0.0) == pytest.approx([1, 1, 1])
    middle = class_weights_from_counts(counts, 1000, "effective_number", beta=0.99)
    assert np.mean(middle) == pytest.approx(1.0)
    assert 1 < middle[0] < inverse[0] and middle[0] > middle[1] > middle[2]  # between uniform and inverse


def test_class_weight_errors():
    with pytest.raises(ConfigError, match="class 1 has no positive samples"):
        class_weights_from_counts([10, 0, 5], 100, "inverse")
    with pytest.raises(ConfigError, match="beta"):
        class_weights_from_counts([10, 5], 100, "effective_number", beta=1.0)
    with pytest.raises(ConfigError, match="unknown class weighting"):
        class_weights_from_counts([10, 5], 100, "log")
    with pytest.raises(ConfigError, match="total=10"):
        class_weights_from_counts([10, 50], 10, "inverse")


def test_pos_weight_is_negatives_over_positives_clipped():
    assert pos_weight_from_counts([10, 50, 1, 0], 100, max_weight=50) == pytest.approx([9, 1, 50, 50])


# -------------------------------------------------------------------------------------- multi-label losses


def _multilabel_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 3, generator=generator)
    target = (torch.rand(8, 3, generator=generator) < 0.4).float()
    return logits, target


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_multilabel_bce_equals_torch(name):
    logits, target = _multilabel_batch()
    pos_weight, weights = [3.0, 1.0, 7.0], [0.5, 1.0, 2.0]
    loss = classification_loss(name, multilabel=True, pos_weight=pos_weight, class_weights=weights)
    expected = nn.BCEWithLogitsLoss(weight=torch.tensor(weights), pos_weight=torch.tensor(pos_weight))
    torch.testing.assert_close(loss(logits, target), expected(logits, target))
    plain = classification_loss(name, multilabel=True)
    torch.testing.assert_close(plain(logits, target), F.binary_cross_entropy_with_logits(logits, target))


def _grad_share(loss: nn.Module, logits: torch.Tensor, target: torch.Tensor, rare: int) -> float:
    logits = logits.clone().requires_grad_(True)
    loss(logits, target).backward()
    per_class = logits.grad.abs().sum(dim=0)
    return float(per_class[rare] / per_class.sum())


def test_class_weights_raise_the_rare_class_gradient():
    logits, target = _multilabel_batch()
    weights = class_weights_from_counts([50, 50, 2], 100, "inverse")
    for name in ("bce", "focal"):
        plain = _grad_share(classification_loss(name, multilabel=True), logits, target, rare=2)
        weighted = _grad_share(classification_loss(name, multilabel=True, class_weights=weights), logits, target, 2)
        assert weighted > 2 * plain, name
    labels = torch.tensor([0, 1, 2, 2, 0, 1, 2, 0])
    multi = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    for name in ("ce", "focal"):
        plain = _grad_share(classification_loss(name, multilabel=False), multi, labels, rare=1)
        weighted = _grad_share(classification_loss(name, multilabel=False, class_weights=[1, 10, 1]), multi, labels, 1)
        assert weighted > 1.3 * plain, name


def test_label_smoothing_moves_targets_as_specified():
    logits, target = _multilabel_batch()
    smoothed = classification_loss("bce", multilabel=True, label_smoothing=0.2)
    torch.testing.assert_close(smoothed(logits, target),
                               F.binary_cross_entropy_with_logits(logits, target * 0.8 + 0.1))
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1])
    multi = classification_loss("focal", multilabel=False, gamma=0.0, label_smoothing=0.3)
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(multi(logits, labels), F.cross_entropy(logits, one_hot * 0.7 + 0.1))


def test_sigmoid_focal_loss():
    logits, target = _multilabel_batch()
    weights, pos_weight = [2.0, 0.5, 1.0], [4.0, 1.0, 1.0]
    focal0 = classification_loss("focal", multilabel=True, gamma=0.0, class_weights=weights, pos_weight=pos_weight)
    bce = classification_loss("bce", multilabel=True, class_weights=weights, pos_weight=pos_weight)
    torch.testing.assert_close(focal0(logits, target), bce(logits, target))
    # gamma > 0: torchvision's formula (alpha off), element by element
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    expected = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (1 - p_t) ** 2).mean()
    torch.testing.assert_close(classification_loss("focal", multilabel=True)(logits, target), expected)
    # easy examples are down-weighted: focal < BCE
    assert classification_loss("focal", multilabel=True, gamma=2.0)(logits, target) < bce(logits, target)


# ------------------------------------------------------------------------------------- multi-class losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.5]])
def test_softmax_focal_with_gamma_zero_equals_cross_entropy(weights, smoothing):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=generator)
    labels = torch.tensor([0, 1, 2, 2, 1, 1])
    soft = torch.softmax(torch.randn(6, 3, generator=generator), dim=1)  # e.g. after MixUp
    focal = classification_loss("focal", multilabel=False, gamma=0.0, class_weights=weights, label_smoothing=smoothing)
    ce = classification_loss("ce", multilabel=False, class_weights=weights, label_smoothing=smoothing)
    reference = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights),
                                    label_smoothing=smoothing)
    for target in (labels, soft):
        torch.testing.assert_close(ce(logits, target), reference(logits, target))
        torch.testing.assert_close(focal(logits, target), reference(logits, target))
    assert classification_loss("focal", multilabel=False, gamma=2.0)(logits, labels) < ce(logits, labels)


def test_loss_argument_errors():
    with pytest.raises(ConfigError, match="'bce' is for multi-label"):
        classification_loss("bce", multilabel=False)
    with pytest.raises(ConfigError, match="pos_weight is for multi-label"):
        classification_loss("ce", multilabel=False, pos_weight=[1.0, 2.0])
    with pytest.raises(ConfigError, match="unknown classification loss"):
        classification_loss("dice", multilabel=True)
    with pytest.raises(ConfigError, match="label_smoothing"):
        classification_loss("ce", multilabel=True, label_smoothing=1.0)
    with pytest.raises(ConfigError, match="class_weights has 2 entries but pos_weight has 3"):
        classification_loss("bce", multilabel=True, class_weights=[1, 2], pos_weight=[1, 2, 3])
    logits, target = _multilabel_batch()
    with pytest.raises(ConfigError, match="pos_weight has 2 entries but the logits have 3 classes"):
        classification_loss("bce", multilabel=True, pos_weight=[1, 2])(logits, target)
    for name in ("ce", "focal"):
        with pytest.raises(ConfigError, match="class_weights has 4 entries but the logits have 3 classes"):
            classification_loss(name, multilabel=False, class_weights=[1, 2, 3, 4])(logits, target.argmax(1))
        with pytest.raises(InputError, match="multi-class targets"):
            classification_loss(name, multilabel=False)(logits, target[:, :2])
    with pytest.raises(InputError, match="multi-label targets"):
        classification_loss("bce", multilabel=True)(logits, target[:, 0])


# ---------------------------------------------------------------------------------- class-balanced sampling


def test_balanced_sample_weights_multiclass():
    labels = np.array([0] * 90 + [1] * 9 + [2])
    weights = class_balanced_sample_weights(labels, multilabel=False)
    assert weights.sum() == pytest.approx(1.0)
    expected = [weights[labels == c].sum() for c in range(3)]
    assert expected == pytest.approx([1 / 3] * 3)


def test_balanced_sample_weights_multilabel_equalise_classes():
    rng = np.random.default_rng(0)
    prevalence = np.array([0.30, 0.10, 0.03, 0.01])
    labels = (rng.random((4000, 4)) < prevalence).astype(np.int64)
    weights = class_balanced_sample_weights(labels, multilabel=True)
    assert weights.shape == (4000,) and weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    before = labels.mean(axis=0)
    after = weights @ labels  # expected share of drawn samples showing each class
    assert before.max() / before.min() > 20
    # max over a sample's classes: the common class still rides along with rare ones (exact only without overlap)
    assert after.max() / after.min() < 2
    no_finding = weights[labels.sum(axis=1) == 0].sum()
    assert no_finding == pytest.approx(after.mean(), rel=0.5)
    with pytest.raises(InputError, match="0/1"):
        class_balanced_sample_weights(labels * 0.5, multilabel=True)


# ------------------------------------------------------------------------------------------ MixUp / CutMix


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 20, 30).clone()  # image i == i
    targets = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    return images, targets


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_batch_keeps_shapes_and_label_mass_and_is_deterministic(mode):
    images, targets = _batch()
    mixed, mixed_targets = mix_batch(images, targets, mode, alpha=0.4, generator=torch.Generator().manual_seed(7))
    assert mixed.shape == images.shape and mixed_targets.shape == targets.shape
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(6))
    again = mix_batch(images, targets, mode, alpha=0.4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], mixed_targets)
    other = mix_batch(images, targets, mode, alpha=0.4, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other[1], mixed_targets)


def test_mixup_mixes_images_and_targets_alike():
    images, _ = _batch()
    values = torch.arange(6, dtype=torch.float32)[:, None]  # target = the image's own value
    mixed, mixed_targets = mix_batch(images, values, "mixup", alpha=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mixed[:, 0, 0, 0], mixed_targets[:, 0])
    assert not torch.equal(mixed, images)


def test_cutmix_targets_follow_the_pasted_area():
    images, targets = _batch()
    for seed in range(5):
        mixed, mixed_targets = mix_batch(images, targets, "cutmix", alpha=1.0,
                                         generator=torch.Generator().manual_seed(seed))
        for i in range(6):
            own = images[i, 0, 0, 0]
            kept = float((mixed[i] == own).float().mean())  # the partner's value elsewhere (or itself)
            partner = mixed[i][mixed[i] != own]
            assert partner.numel() == 0 or bool((partner == partner[0]).all())  # one partner, pasted whole
            if partner.numel():
                j = int(partner[0])
                expected = targets[i] * kept + targets[j] * (1 - kept)
                torch.testing.assert_close(mixed_targets[i], expected)
                box = (mixed[i, 0] != own).nonzero()
                height, width = box.max(0).values - box.min(0).values + 1
                assert int(height * width) == partner.numel() // 2  # a rectangle, same in both channels


def test_batch_mixer():
    images, targets = _batch()
    assert BatchMixer("none")(images, targets)[0] is images
    never = BatchMixer("both", prob=0.0, seed=0)
    assert never(images, targets)[1] is targets
    first, second = BatchMixer("both", seed=3), BatchMixer("both", seed=3)
    for _ in range(4):
        a, b = first(images, targets), second(images, targets)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ConfigError, match="mixing mode"):
        BatchMixer("mosaic")
    with pytest.raises(ConfigError, match="alpha"):
        mix_batch(images, targets, "mixup", alpha=0.0)
    with pytest.raises(InputError, match="float"):
        mix_batch(images, targets.long(), "mixup")
