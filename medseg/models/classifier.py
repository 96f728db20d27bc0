"""Image classifiers for 2D radiographs: DenseNet-121 (default), ResNet-18/50, EfficientNet-B0, a UNet encoder-decoder.

Every builder takes (B, in_channels, H, W) images with H, W >= 32 and returns logits (B, out_channels). `dropout`
is applied to the pooled features just before the final linear layer. Each model carries `medseg_cam_layer`,
the name (as in `model.named_modules()`) of its last feature layer, for Grad-CAM:

    model = create_model("densenet121", in_channels=1, out_channels=6, pretrained="densenet121.pth")
    cam = monai.visualize.GradCAM(nn_module=model, target_layers=model.medseg_cam_layer)

ImageNet weights come only from local torchvision-format `.pth` files; nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from monai.networks.nets import BasicUNet, DenseNet121, EfficientNetBN
from torch import nn

from medseg.errors import ConfigError
from medseg.models.pretrained import LoadReport, copy_imagenet_weights, load_torchvision_resnet, read_torch_state_dict
from medseg.models.registry import register_model
from medseg.models.unet import TorchvisionResNetEncoder

__all__ = [
    "ResNetClassifier",
    "UNetClassifier",
    "densenet121",
    "efficientnet_b0",
    "load_torchvision_densenet",
    "resnet18",
    "resnet50",
    "unet_classifier",
]

log = logging.getLogger(__name__)

# torchvision names a dense layer's modules `norm1`/`conv1`/... (older files, e.g. the ImageNet download:
# `norm.1`/`conv.1`); MONAI nests them under `layers`. Same renaming as monai.networks.nets.densenet's
# `_load_state_dict`, extended to the newer dot-less names and to `num_batches_tracked`.
_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_DENSENET_FIRST_CONV = "features.conv0.weight"


def _check_args(in_channels: int, out_channels: int, dropout: float) -> None:
    if in_channels < 1 or out_channels < 1:
        raise ConfigError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


def _check_pretrained(pretrained: str | Path | None) -> None:
    if isinstance(pretrained, bool):
        raise ConfigError("pretrained must be a path to a local torchvision ImageNet .pth file (nothing is downloaded)")


class _PooledHead(nn.Module):
    """Global average pooling, dropout and a linear layer: (B, C, H, W) features -> (B, out) logits."""

    def __init__(self, in_features: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(features).flatten(1)))


# ------------------------------------------------------------------------------------------ DenseNet-121


def _read_torchvision_densenet(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a torchvision DenseNet file in MONAI's naming (unwrapped, `module.` prefixes removed)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in read_torch_state_dict(path, "DenseNet").items():
        match = _DENSE_LAYER_KEY.match(name)
        if match:
            name = f"{match[1]}.layers.{match[2]}{match[3]}.{match[4]}"
        tensors[name] = value
    if _DENSENET_FIRST_CONV not in tensors or not any(".denselayer" in k for k in tensors):
        shown = ", ".join(list(tensors)[:5])
        raise ConfigError("not a torchvision DenseNet state dict (expected keys 'features.conv0.weight', "
                          f"'features.denseblock1.denselayer1.norm1.weight', ...; found {len(tensors)} tensors "
                          f"such as: {shown})", path)
    return tensors


def load_torchvision_densenet(model: nn.Module, path: str | os.PathLike[str], in_channels: int) -> LoadReport:
    """Copy a torchvision ImageNet DenseNet state dict at `path` into a MONAI `DenseNet` (2D).

    The first conv is adapted to `in_channels` (`adapt_input_conv`); the ImageNet head (`classifier.*`) is
    dropped. A shape mismatch raises `ConfigError` naming the file and the key.
    """
    return copy_imagenet_weights(model, _read_torchvision_densenet(path), path=path, in_channels=in_channels,
                                 first_conv=_DENSENET_FIRST_CONV, head_prefix="classifier.", kind="DenseNet",
                                 ignore_missing=("class_layers.",))


@register_model
def densenet121(
    *,
    in_channels: int = 1,
    out_channels: int = 6,
    dropout: float = 0.0,
    pretrained: str | Path | None = None,
) -> nn.Module:
    """DenseNet-121 classifier (MONAI DenseNet121, 2D); `pretrained`: torchvision ImageNet densenet121 .pth path."""
    _check_args(in_channels, out_channels, dropout)
    _check_pretrained(pretrained)
    model = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)
    if dropout > 0:  # before the linear layer; parameter names (state-dict keys) stay MONAI's
        layers = list(model.class_layers.named_children())
        model.class_layers = nn.Sequential(OrderedDict([*layers[:-1], ("dropout", nn.Dropout(dropout)), layers[-1]]))
    if pretrained:
        model.medseg_pretrained_report = load_torchvision_densenet(model, pretrained, in_channels)
    model.medseg_cam_layer = "class_layers.relu"  # the final feature map (norm5 + ReLU)
    return model


# ------------------------------------------------------------------------------------------------ ResNet


class ResNetClassifier(nn.Module):
    """Torchvision-layout ResNet encoder (`TorchvisionResNetEncoder`) + pooled linear head."""

    def __init__(self, depth: int, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        name = f"medseg-tv-resnet{depth}"
        widths = dict(zip(TorchvisionResNetEncoder.get_encoder_names(),
                          TorchvisionResNetEncoder.num_channels_per_output(), strict=True))
        self.encoder = TorchvisionResNetEncoder(name, spatial_dims=2, in_channels=in_channels)
        self.head = _PooledHead(widths[name][-1], out_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def _resnet(depth: int, in_channels: int, out_channels: int, dropout: float, pretrained: str | Path | None):
    _check_args(in_channels, out_channels, dropout)
    _check_pretrained(pretrained)
    model = ResNetClassifier(depth, in_channels, out_channels, dropout)
    if pretrained:
        model.medseg_pretrained_report = load_torchvision_resnet(model.encoder, pretrained, in_channels)
    model.medseg_cam_layer = "encoder.layer4"
    return model


@register_model
def resnet18(
    *,
    in_channels: int = 1,
    out_channels: int = 6,
    dropout: float = 0.0,
    pretrained: str | Path | None = None,
) -> nn.Module:
    """ResNet-18 classifier (torchvision layout); `pretrained`: torchvision ImageNet resnet18 .pth path."""
    return _resnet(18, in_channels, out_channels, dropout, pretrained)


@register_model
def resnet50(
    *,
    in_channels: int = 1,
    out_channels: int = 6,
    dropout: float = 0.0,
    pretrained: str | Path | None = None,
) -> nn.Module:
    """ResNet-50 classifier (torchvision layout); `pretrained`: torchvision ImageNet resnet50 .pth path."""
    return _resnet(50, in_channels, out_channels, dropout, pretrained)


# ------------------------------------------------------------------------------------------ EfficientNet


@register_model
def efficientnet_b0(*, in_channels: int = 1, out_channels: int = 6, dropout: float = 0.2) -> nn.Module:
    """EfficientNet-B0 classifier (MONAI EfficientNetBN, 2D, randomly initialised)."""
    _check_args(in_channels, out_channels, dropout)
    model = EfficientNetBN("efficientnet-b0", pretrained=False, progress=False, spatial_dims=2,
                           in_channels=in_channels, num_classes=out_channels)
    model._dropout.p = dropout
    # The head activation module (`_swish`) is shared with the stem, so its hooks would mix the two calls;
    # the head's BatchNorm output (after the last conv) is the last feature map with a name of its own.
    model.medseg_cam_layer = "_bn1"
    return model


# -------------------------------------------------------------------------------------------------- UNet


class UNetClassifier(nn.Module):
    """MONAI `BasicUNet` (without its 1x1 output conv) as a full-resolution feature extractor + pooled head.

    BasicUNet handles any H, W (its decoder pads odd sizes), so the input is not padded.
    """

    def __init__(self, in_channels: int, out_channels: int, features: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.unet = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=features[-1], features=features)
        self.unet.final_conv = nn.Identity()
        self.head = _PooledHead(features[-1], out_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x))


@register_model
def unet_classifier(
    *,
    in_channels: int = 1,
    out_channels: int = 6,
    features: tuple[int, ...] = (16, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
) -> nn.Module:
    """UNet encoder-decoder (MONAI BasicUNet) + global pooling + linear head; `features`: 5 encoder widths + last."""
    _check_args(in_channels, out_channels, dropout)
    features = tuple(features)
    if len(features) != 6 or any(f < 1 for f in features):
        raise ConfigError(f"features must be 6 positive integers, got {list(features)}")
    model = UNetClassifier(in_channels, out_channels, features, dropout)
    model.medseg_cam_layer = "unet.upcat_1"  # the last decoder block, at input resolution
    return model
