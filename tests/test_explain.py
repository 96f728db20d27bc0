"""Grad-CAM explanations: the heat map points at the evidence, overlays and file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from medseg.infer.explain import cam_filename, cam_overlay, grad_cam, save_cam_panel


class _BrightnessNet(nn.Module):
    """Class 0 = how bright the image is, class 1 = how dark; one conv feature map each."""

    medseg_cam_layer = "act"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.weight[1, 0, 1, 1] = -1.0
            self.conv.bias[:] = torch.tensor([0.0, 1.0])
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_is_strongest_where_the_evidence_is() -> None:
    image = np.zeros((1, 1, 32, 32), dtype=np.float32)
    image[0, 0, 4:10, 20:28] = 1.0                    # bright patch, top right
    cam = grad_cam(_BrightnessNet(), image, 0)[0]
    assert cam.shape == (32, 32) and cam.min() >= 0.0 and cam.max() == 1.0
    row, column = np.unravel_index(np.argmax(cam), cam.shape)
    assert 4 <= row < 10 and 20 <= column < 28
    assert cam[20:, :12].max() < 0.1                  # nothing where the image is empty
    dark = grad_cam(_BrightnessNet(), image, 1)[0]     # the "dark" class points away from the patch
    assert dark[4:10, 20:28].mean() < dark[20:, :12].mean()


def test_repeated_grad_cam_calls_do_not_stack_hooks() -> None:
    model = _BrightnessNet()
    image = np.random.default_rng(0).random((1, 1, 16, 16)).astype(np.float32)
    first = grad_cam(model, image, 0)
    for _ in range(3):
        again = grad_cam(model, image, 0)
    np.testing.assert_allclose(first, again)
    assert len(model.act._forward_hooks) == 1


def test_overlay_panel_and_file_names(tmp_path: Path) -> None:
    image = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    cam = np.zeros_like(image)
    cam[:10, :10] = 1.0
    rgb = cam_overlay(image, cam)
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    assert rgb[60, 40, 0] == rgb[60, 40, 1] == rgb[60, 40, 2]      # no heat: plain grey
    assert rgb[2, 2, 0] > rgb[2, 2, 2] + 40                        # strongest heat: jet's top end is red
    path = save_cam_panel(tmp_path / "panel.png", image, [("nodule", 0.7, cam), ("effusion", 0.2, cam)], tile=100)
    assert Image.open(path).size == (3 * 100 + 2 * 4, 122)
    assert cam_filename("images/cxr_00001.png") == "images__cxr_00001.png"
    assert cam_filename("/data/a b/IM-0001.DCM") == "data__a_b__IM-0001.png"
    assert cam_filename("..") == "image.png"
