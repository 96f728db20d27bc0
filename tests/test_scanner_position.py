"""Scanner-domain augmentation (HU, before windowing) and the position channel of 2.5D CT models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.infer.predict import predict_volume
from medseg.train.segmentation_data import CachedCase, SliceSampler
from medseg.transforms.config import AugmentationConfig, PreprocessingConfig, preprocessing_config_from_dict
from medseg.transforms.position import UNKNOWN_POSITION, append_position, covers_lung_height, slice_positions
from medseg.transforms.scanner import ScannerAugment

K = 5


def _augment(seed: int = 0, **settings) -> ScannerAugment:
    return ScannerAugment(AugmentationConfig(**settings), np.random.default_rng(seed))


def _step_in_z(margin: int) -> np.ndarray:
    """Air below the middle slice, water from it up: a sharp edge across the stack."""
    stack = np.full((K + 2 * margin, 8, 8), -1000.0, np.float32)
    stack[(K + 2 * margin) // 2:] = 0.0
    return stack


def test_thick_slices_spread_an_edge_over_neighbouring_slices() -> None:
    augment = _augment(scanner_thick_prob=1.0, scanner_thick_factor=(3.0, 3.0))
    wide = _step_in_z(augment.z_margin)
    out = augment(wide, K)
    assert out.shape == (K, 8, 8) and out.dtype == np.float32
    profile = out[:, 4, 4]
    assert np.all(np.diff(profile) >= -1e-3)                          # still monotonic
    between = np.count_nonzero((profile > -990) & (profile < -10))
    assert between >= 2                                               # a ramp, not one sharp step
    sharp = _augment(scanner_thick_prob=0.0)(wide, K)[:, 4, 4]
    assert np.count_nonzero((sharp > -990) & (sharp < -10)) == 0


def test_low_resolution_removes_fine_detail_but_keeps_the_mean() -> None:
    stack = np.tile(np.where(np.indices((32, 32)).sum(0) % 2 == 0, -900.0, 100.0), (K, 1, 1)).astype(np.float32)
    out = _augment(scanner_lowres_prob=1.0, scanner_lowres_factor=(2.0, 2.0))(stack, K)
    assert out.shape == stack.shape
    assert out.std() < 0.2 * stack.std()
    assert abs(out.mean() - stack.mean()) < 10


def test_kernels_and_noise_change_texture_in_the_expected_direction() -> None:
    rng = np.random.default_rng(1)
    stack = (rng.normal(0.0, 20.0, (K, 64, 64))).astype(np.float32)
    stds = {"soft": [], "sharp": []}
    for seed in range(20):                                            # blur or sharpen, 50/50 per draw
        augment = _augment(seed, scanner_kernel_prob=1.0, scanner_blur_sigma=(1.0, 1.0),
                           scanner_sharpen_amount=(1.0, 1.0))
        out = augment(stack, K)
        stds["soft" if out.std() < stack.std() else "sharp"].append(float(out.std()))
    assert stds["soft"] and stds["sharp"]
    assert max(stds["soft"]) < 0.6 * stack.std() < 1.5 * stack.std() < min(stds["sharp"])
    flat = np.zeros((K, 64, 64), np.float32)
    noisy = _augment(scanner_noise_prob=1.0, scanner_noise_hu=40.0)(flat, K)
    assert 0 < noisy.std() <= 40.0 * 1.2


def test_hu_miscalibration_keeps_the_water_air_scale_and_offset_bounded() -> None:
    stack = np.stack([np.full((4, 4), -1000.0), np.zeros((4, 4))] * 3)[:K].astype(np.float32)
    for seed in range(10):
        out = _augment(seed, scanner_hu_prob=1.0, scanner_hu_scale=0.05, scanner_hu_offset=30.0)(stack, K)
        assert abs(out[0, 0, 0] + 1000.0) <= 30.0 + 1e-3                  # air moves by the offset only
        assert abs(out[1, 0, 0] - 0.0) <= 30.0 + 0.05 * 1000.0 + 1e-3


def test_sampler_is_reproducible_and_leaves_labels_alone() -> None:
    rng = np.random.default_rng(0)
    case = CachedCase("c", rng.integers(-1000, 200, (12, 40, 30)).astype(np.int16),
                      rng.integers(0, 6, (12, 40, 30)).astype(np.uint8))
    config = AugmentationConfig(scanner_thick_prob=1.0, scanner_kernel_prob=1.0, scanner_noise_prob=1.0)
    first = SliceSampler([case], K, (48, 32), seed=5, augmentation=config)
    again = SliceSampler([case], K, (48, 32), seed=5, augmentation=config)
    plain = SliceSampler([case], K, (48, 32), seed=5)
    for _ in range(4):
        (a, label_a), (b, label_b), (c, label_c) = first.sample(), again.sample(), plain.sample()
        assert np.array_equal(a, b) and np.array_equal(label_a, label_b)
        assert np.array_equal(label_a, label_c)                      # same slices and crops, labels untouched
        assert not np.array_equal(a, c)


def test_scanner_ranges_are_validated() -> None:
    with pytest.raises(ValueError, match="scanner_thick_factor"):
        AugmentationConfig(scanner_thick_factor=(3.0, 1.5))
    with pytest.raises(ValueError):
        AugmentationConfig(scanner_noise_prob=1.5)


def test_position_values_and_channel() -> None:
    assert torch.allclose(slice_positions(5), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.all(slice_positions(3, known=False) == UNKNOWN_POSITION)
    images = torch.zeros(2, 6, 4, 3)
    out = append_position(images, torch.tensor([0.25, 1.0]))
    assert out.shape == (2, 7, 4, 3)
    assert torch.all(out[0, 6] == 0.25) and torch.all(out[1, 6] == 1.0) and torch.all(out[:, :6] == 0)


def test_lung_height_coverage_follows_the_head_feet_axis() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[3:7, 3:7, 2:8] = True
    assert covers_lung_height(mask, np.eye(4))
    mask[3:7, 3:7, 0] = True                                           # touches the inferior end slice
    assert not covers_lung_height(mask, np.eye(4))
    transposed = np.diag([1.0, 1.0, 1.0, 1.0])[:, [2, 0, 1, 3]]          # head-feet along array axis 1
    assert covers_lung_height(mask, transposed) is True                  # axis 1 is not touched at its ends
    assert not covers_lung_height(np.zeros_like(mask), np.eye(4))


def test_position_channel_counts_as_an_input_and_is_ct_only() -> None:
    config = PreprocessingConfig(modality="ct", windows=[(-600, 1500), (0, 2000)], stack=5, position_channel=True)
    assert config.in_channels == 11
    assert preprocessing_config_from_dict(config.model_dump()).position_channel is True
    with pytest.raises(ConfigError, match="position_channel"):
        preprocessing_config_from_dict({"modality": "xray", "position_channel": True})


class _HeightEcho(nn.Module):
    """Logits [h, -h] from the last input channel: class 1 wins where the height is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x[:, -1:]
        return torch.cat([height, -height], dim=1) * 10


def test_predict_volume_feeds_each_slice_its_own_height() -> None:
    image = torch.full((4, 16, 16), -1000, dtype=torch.int16)
    positions = torch.tensor([0.0, 0.5, 1.0, UNKNOWN_POSITION])
    probs = predict_volume(_HeightEcho(), image, [(-600, 1500)], 3, batch_size=3, positions=positions)
    assert probs.shape == (2, 4, 16, 16)
    winner = probs.argmax(0)[:, 8, 8].tolist()
    assert winner == [0, 0, 0, 1]
    assert probs[0, 1, 8, 8] < probs[0, 2, 8, 8]                      # higher slice, more class-0 evidence
