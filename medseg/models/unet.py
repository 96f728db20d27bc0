"""UNets: ResNet-encoder UNets (MONAI `FlexibleUNet`) and a classic UNet (MONAI `BasicUNet`).

The ResNet encoders use torchvision's block layout, projection shortcuts included (see
`TorchvisionResNetEncoder`), so ImageNet weights from a local torchvision `.pth` file load 1:1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import BasicUNet, FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNet, ResNetFeatures, get_inplanes
from torch import nn

from medseg.errors import ConfigError
from medseg.models.pretrained import load_torchvision_resnet
from medseg.models.registry import register_model

__all__ = ["ResNetUNet", "TorchvisionResNetEncoder", "basic_unet", "resnet_unet"]

log = logging.getLogger(__name__)

Upsample = Literal["deconv", "bilinear"]

# backbone name -> (block, blocks per stage); same as torchvision's resnet18/34/50.
_LAYOUTS: dict[str, tuple[str, list[int]]] = {
    "medseg-tv-resnet18": ("basic", [2, 2, 2, 2]),
    "medseg-tv-resnet34": ("basic", [3, 4, 6, 3]),
    "medseg-tv-resnet50": ("bottleneck", [3, 4, 6, 3]),
}


class TorchvisionResNetEncoder(ResNetFeatures, BaseEncoder):
    """MONAI `ResNetFeatures` with torchvision's layout: 1x1-conv + BN projection shortcuts (no bias).

    MONAI's own resnet18/34 encoders use parameter-free zero-padding ("type A") shortcuts; torchvision
    (and ImageNet weights) use projections ("type B"). Module names equal torchvision's. Returns the
    five feature maps (strides 2, 4, 8, 16, 32) that `FlexibleUNet` expects.
    """

    def __init__(self, model_name: str, pretrained: bool = False, spatial_dims: int = 2, in_channels: int = 3) -> None:
        if pretrained:
            raise ValueError("pretrained weights are loaded by medseg.models.pretrained, not by the encoder")
        block, layers = _LAYOUTS[model_name]
        ResNet.__init__(
            self,
            block=block,
            layers=layers,
            block_inplanes=get_inplanes(),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(_LAYOUTS)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": name, "pretrained": False, "spatial_dims": 2, "in_channels": 3} for name in _LAYOUTS]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 64, 128, 256, 512) if block == "basic" else (64, 256, 512, 1024, 2048)
                for block, _ in _LAYOUTS.values()]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(_LAYOUTS)


FLEXUNET_BACKBONE.register_class(TorchvisionResNetEncoder)


class ResNetUNet(FlexibleUNet):
    """`FlexibleUNet` that accepts any spatial size: the input is zero-padded (at the end of each axis)
    to a multiple of 32 and the output cropped back. Module names (state-dict keys) are FlexibleUNet's."""

    multiple = 32

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        size = inputs.shape[2:]
        pads = [(-n) % self.multiple for n in size]
        if not any(pads):
            return super().forward(inputs)
        padding = [value for pad in reversed(pads) for value in (0, pad)]
        output = super().forward(F.pad(inputs, padding))
        return output[(..., *(slice(0, n) for n in size))]


def _check_positive(name: str, values: Sequence[int], length: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != length or any(v < 1 for v in values):
        raise ConfigError(f"{name} must be {length} positive integers, got {list(values)}")
    return values


def resnet_unet(
    depth: int,
    *,
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    upsample: Upsample = "deconv",
    dropout: float = 0.0,
    pretrained: str | Path | bool | None = None,
) -> ResNetUNet:
    """A `FlexibleUNet` with a torchvision-layout ResNet-`depth` encoder (registered as `unet_resnet18/34/50`)."""
    if in_channels < 1 or out_channels < 1:
        raise ConfigError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    decoder_channels = _check_positive("decoder_channels", decoder_channels, 5)
    if upsample not in ("deconv", "bilinear"):
        raise ConfigError(f"upsample must be 'deconv' or 'bilinear', got {upsample!r}")
    if pretrained is True:
        raise ConfigError("pretrained must be a path to a local torchvision ResNet .pth file (nothing is downloaded)")
    # "bilinear": parameter-free interpolation (trilinear in 3D) plus the decoder's pre-conv where channels change.
    mode = {"upsample": "deconv"} if upsample == "deconv" else {"upsample": "nontrainable", "interp_mode": "bilinear"}
    model = ResNetUNet(
        in_channels=in_channels,
        out_channels=out_channels,
        backbone=f"medseg-tv-resnet{depth}",
        pretrained=False,
        decoder_channels=decoder_channels,
        spatial_dims=spatial_dims,
        dropout=dropout,
        **mode,
    )
    if pretrained:
        if spatial_dims != 2:
            raise ConfigError(f"ImageNet ResNet weights are 2D; pretrained needs spatial_dims=2, got {spatial_dims}",
                              pretrained)
        report = load_torchvision_resnet(model.encoder, pretrained, in_channels)
        model.medseg_pretrained_report = report  # type: ignore[assignment]
    return model


def _resnet_unet_builder(depth: int):
    """The registered builder `unet_resnet{depth}` (explicit keyword signature: it is the argument schema)."""

    def build(
        *,
        in_channels: int = 3,
        out_channels: int,
        spatial_dims: int = 2,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        upsample: Upsample = "deconv",
        dropout: float = 0.0,
        pretrained: str | Path | bool | None = None,
    ) -> nn.Module:
        return resnet_unet(depth, in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims,
                           decoder_channels=decoder_channels, upsample=upsample, dropout=dropout,
                           pretrained=pretrained)

    build.__name__ = build.__qualname__ = f"unet_resnet{depth}"
    build.__doc__ = (f"UNet with a ResNet-{depth} encoder (MONAI FlexibleUNet); `pretrained`: torchvision "
                     "ImageNet .pth path.")
    return build


for _depth in (18, 34, 50):
    register_model(f"unet_resnet{_depth}")(_resnet_unet_builder(_depth))


@register_model("unet")
def basic_unet(
    *,
    in_channels: int = 1,
    out_channels: int,
    spatial_dims: int = 2,
    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
    upsample: Upsample = "deconv",
    dropout: float = 0.0,
    pretrained: str | Path | bool | None = None,
) -> nn.Module:
    """Classic UNet (MONAI BasicUNet); `features`: 5 encoder widths + the last decoder width."""
    if pretrained:
        raise ConfigError("model 'unet' has no pretrained weights; use unet_resnet18/34/50 for an ImageNet encoder")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    features = _check_positive("features", features, 6)
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=features,
        dropout=dropout,
        upsample="deconv" if upsample == "deconv" else "nontrainable",
    )
