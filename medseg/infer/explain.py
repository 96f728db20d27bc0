"""Grad-CAM explanations for radiograph classifiers (MONAI's `GradCAM`), saved as review overlays.

Each registered classifier names its last convolutional feature layer in `model.medseg_cam_layer`. Heat
maps are upsampled to the model input and normalised to [0, 1] per image; the overlay is drawn on the
preprocessed (letterboxed, CLAHE) image the model saw.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from medseg.errors import ConfigError

__all__ = ["CamClasses", "cam_filename", "cam_overlay", "cam_panels", "choose_cam_classes", "grad_cam",
           "save_cam_panel"]

CamClasses = Literal["called", "top", "all"]

_CAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> {layer: GradCAM}: MONAI's GradCAM adds hooks it never removes, so build one per model and layer."""


def _unit_range(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1], strongest evidence = 1.

    MONAI's default CAM normaliser (`ScaleIntensity(minv=1.0, maxv=0.0)`) maps the strongest evidence to 0;
    overlays need it the other way round.
    """
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().float().cpu().numpy()
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    low = maps.min(axis=tuple(range(1, maps.ndim)), keepdims=True)
    span = maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def _cam_for(model: nn.Module, layer: str):
    from monai.visualize import GradCAM

    per_model = _CAMS.setdefault(model, {})
    if layer not in per_model:
        per_model[layer] = GradCAM(nn_module=model, target_layers=layer, postprocessing=_unit_range)
    return per_model[layer]


def grad_cam(model: nn.Module, images: np.ndarray | torch.Tensor, class_index: int, *,
             layer: str | None = None) -> np.ndarray:
    """`(B, H, W)` Grad-CAM maps in [0, 1] for `class_index`, for `(B, 1, H, W)` model inputs."""
    layer = layer or getattr(model, "medseg_cam_layer", None)
    if not layer:
        raise ConfigError(f"{type(model).__name__} names no Grad-CAM layer (medseg_cam_layer); pass layer=")
    names = dict(model.named_modules())
    if layer not in names:
        raise ConfigError(f"Grad-CAM layer {layer!r} is not a module of {type(model).__name__}")
    device = next(model.parameters()).device
    tensor = torch.as_tensor(np.asarray(images, dtype=np.float32)).to(device).contiguous()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            maps = _cam_for(model, layer)(x=tensor, class_idx=int(class_index))
    finally:
        model.train(was_training)
    return np.asarray(torch.as_tensor(maps).detach().float().cpu())[:, 0]


def choose_cam_classes(probabilities: np.ndarray, calls: np.ndarray | None, which: CamClasses = "called"
                       ) -> list[int]:
    """Class indices to explain: those called positive (the top class when none), the top class, or all."""
    probabilities = np.asarray(probabilities)
    top = [int(np.argmax(probabilities))]
    if which == "all":
        return list(range(len(probabilities)))
    if which == "top":
        return top
    if which != "called":
        raise ConfigError(f"unknown Grad-CAM class choice {which!r} (choose called, top or all)")
    called = [] if calls is None else [int(i) for i in np.flatnonzero(calls)]
    return called or top


def cam_panels(model: nn.Module, image: np.ndarray, classes: Sequence[str], probabilities: np.ndarray,
               calls: np.ndarray | None = None, which: CamClasses = "called") -> list[tuple[str, float, np.ndarray]]:
    """(class name, probability, `(H, W)` Grad-CAM) for the classes `choose_cam_classes` picks; `image` is the
    `(H, W)` or `(1, H, W)` model input."""
    batch = np.asarray(image, dtype=np.float32).reshape(1, 1, *np.shape(image)[-2:])
    return [(classes[k], float(probabilities[k]), grad_cam(model, batch, k)[0])
            for k in choose_cam_classes(probabilities, calls, which)]


def cam_overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: the greyscale image (values in [0, 1]) with a jet-coloured heat map blended by its strength."""
    import cv2

    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    heat = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    coloured = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1] / 255.0
    weight = alpha * heat[..., None]
    rgb = (1 - weight) * grey[..., None] + weight * coloured
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def cam_filename(image_id: str) -> str:
    """A flat, safe PNG name for an image id: `images/cxr_001.png` -> `images__cxr_001.png`."""
    stem = re.sub(r"\.(png|jpe?g|dcm|dicom)$", "", image_id.strip(), flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("\\", "/").replace("/", "__")).strip("._")
    return f"{stem or 'image'}.png"


def save_cam_panel(path: str | os.PathLike[str], image: np.ndarray, panels: Sequence[tuple[str, float, np.ndarray]],
                   *, title: str = "", tile: int = 320) -> Path:
    """A row: the input, then one Grad-CAM overlay per (class name, probability, cam). Written atomically."""
    from PIL import Image, ImageDraw

    from medseg.io.atomic import atomic_path

    def tile_of(rgb: np.ndarray, caption: str) -> Image.Image:
        picture = Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR)
        canvas = Image.new("RGB", (tile, tile + 22), "black")
        canvas.paste(picture, (0, 22))
        ImageDraw.Draw(canvas).text((6, 5), caption, fill="white")
        return canvas

    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    tiles = [tile_of(np.repeat(grey[..., None], 3, axis=2), title or "input")]
    tiles += [tile_of(cam_overlay(image, cam), f"{name}  p={prob:.2f}") for name, prob, cam in panels]
    sheet = Image.new("RGB", (tile * len(tiles) + 4 * (len(tiles) - 1), tile + 22), "black")
    for n, picture in enumerate(tiles):
        sheet.paste(picture, (n * (tile + 4), 0))
    with atomic_path(path) as temporary:
        sheet.save(temporary)
    return Path(path)
