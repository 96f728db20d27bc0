"""`predict_volume` (batched 2.5D inference on the model grid) and `FlipTTA`, tested directly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import InputError
from medseg.infer.predict import FlipTTA, predict_volume

WINDOWS = [(-600.0, 1500.0), (0.0, 2000.0)]
STACK = 3


def _conv(out_channels: int, kernel: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(len(WINDOWS) * STACK, out_channels, kernel, padding=kernel // 2)


def _volume(depth: int = 9, height: int = 20, width: int = 30, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-1024, 400, (depth, height, width), generator=generator, dtype=torch.int16)


class _Recorder(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.inputs: list[torch.Tensor] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.inputs.append(batch.clone())
        return torch.zeros(batch.shape[0], self.out_channels, *batch.shape[2:])


def test_probabilities_have_the_volume_shape_and_sum_to_one() -> None:
    volume = _volume()
    probs = predict_volume(_conv(4), volume, WINDOWS, STACK, batch_size=4)
    assert probs.shape == (4, *volume.shape) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(volume.shape), atol=1e-5, rtol=0)
    assert float(probs.std()) > 0.01  # not a constant output


def test_batch_size_does_not_change_the_result() -> None:
    volume, model = _volume(), _conv(4)
    reference = predict_volume(model, volume, WINDOWS, STACK, batch_size=1)
    for batch_size in (2, 4, 64):
        torch.testing.assert_close(predict_volume(model, volume, WINDOWS, STACK, batch_size=batch_size), reference,
                                   atol=1e-6, rtol=1e-5)


def test_stacks_clamp_at_the_volume_edges_and_pad_with_air() -> None:
    depth = 5
    volume = (torch.arange(depth, dtype=torch.int16) * 100 - 1000)[:, None, None].expand(depth, 20, 30).clone()
    recorder = _Recorder(2)
    predict_volume(recorder, volume, WINDOWS, STACK, batch_size=2, progress=None)
    inputs = torch.cat(recorder.inputs)                                  # (Z, 2 windows x 3 slices, 32, 32)
    assert inputs.shape == (depth, 6, 32, 32)
    low, width = WINDOWS[0][0] - WINDOWS[0][1] / 2, WINDOWS[0][1]
    slices = torch.round(inputs[:, :STACK, 0, 0] * width + low + 1000) / 100   # lung window -> slice index
    assert slices.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    air = (-1024 - low) / width
    assert torch.all(inputs[:, :STACK, 20:, :] == torch.tensor(air)) and torch.all(inputs[:, :STACK, :, 30:] == air)


def test_progress_reports_every_batch() -> None:
    calls: list[tuple[int, int]] = []
    predict_volume(_conv(2), _volume(depth=7), WINDOWS, STACK, batch_size=3, progress=lambda *a: calls.append(a))
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_flip_tta_on_a_mirror_symmetric_scan_pools_mirror_groups() -> None:
    volume = _volume()
    volume = torch.cat([volume[:, :10], volume[:, :10].flip(1)], dim=1)   # mirror-symmetric along X (axis -2)
    model = _conv(3, kernel=1)                                            # pixelwise: flip-equivariant
    direct = predict_volume(model, volume, WINDOWS, STACK)
    tta = FlipTTA([0, 1, 2], {0: 0, 1: 2, 2: 1})                         # class 1 and 2 are each other's mirror
    pooled = predict_volume(model, volume, WINDOWS, STACK, tta=tta)
    torch.testing.assert_close(pooled[0], direct[0])
    torch.testing.assert_close(pooled[1], (direct[1] + direct[2]) / 2)
    torch.testing.assert_close(pooled[2], (direct[1] + direct[2]) / 2)
    torch.testing.assert_close(pooled.sum(0), torch.ones(volume.shape), atol=1e-5, rtol=0)


def test_flip_tta_keeps_the_direct_share_within_a_group_without_a_mirror() -> None:
    # lobes: 0 bg, 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL; RUL + RML (group 1) mirror LUL (group 3)
    tta = FlipTTA([0, 3, 4, 1, 1, 2], {0: 0, 1: 3, 2: 4, 3: 1, 4: 2})
    volume, model = _volume(), _conv(6, kernel=1)                         # pixelwise: padding plays no part
    direct = predict_volume(model, volume, WINDOWS, STACK)
    pooled = predict_volume(model, volume, WINDOWS, STACK, tta=tta)
    torch.testing.assert_close(pooled[3] / pooled[4], direct[3] / direct[4], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pooled.sum(0), torch.ones(volume.shape), atol=1e-5, rtol=0)
    mirrored = predict_volume(model, volume.flip(1), WINDOWS, STACK).flip(2)   # the flipped view, un-flipped
    torch.testing.assert_close(pooled[3] + pooled[4], (direct[3] + direct[4] + mirrored[1]) / 2, rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(pooled[1], (direct[1] + mirrored[3] + mirrored[4]) / 2, rtol=1e-4, atol=1e-6)


def test_an_empty_volume_is_refused() -> None:
    with pytest.raises(InputError, match="at least one slice"):
        predict_volume(_conv(2), torch.zeros((0, 8, 8), dtype=torch.int16), WINDOWS, STACK)
