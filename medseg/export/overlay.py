"""Label-overlay montages: axial and coronal/sagittal CT slices in lung window with coloured labels and a legend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg.export.preview import LUNG_WINDOW, canonical_ras
from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume
from medseg.labels import LabelMap, resolve_label_map

__all__ = ["label_montage", "save_label_montage"]


def _window(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = window
    return np.clip((image - (centre - width / 2)) / width, 0.0, 1.0)


def _tile(hu: np.ndarray, labels: np.ndarray, row_mm: float, col_mm: float, height: int,
          colours: dict[int, tuple[str, tuple[int, int, int]]], window: tuple[float, float], alpha: float
          ) -> np.ndarray:
    from PIL import Image

    grey = _window(hu.astype(np.float32), window)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for value, (_, colour) in colours.items():
        mask = labels == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(colour) / 255.0
    rows, cols = grey.shape
    width = max(1, round(height * (cols * col_mm) / (rows * row_mm)))
    image = Image.fromarray((rgb * 255).astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image)


def label_montage(volume: Volume, labels: np.ndarray, *, label_map: LabelMap | str | Mapping[int, str] = "lobes",
                  window: tuple[float, float] = LUNG_WINDOW, height: int = 320, alpha: float = 0.35,
                  title: str = "") -> np.ndarray:
    """RGB montage: three axial slices through the labelled region, a coronal and a right-lung sagittal, legend.

    Colours and legend names come from `label_map` (a registry name, a model card's {value: name} or a
    `medseg.labels.LabelMap`). Radiological convention (patient right on the viewer's left); slice positions
    follow the labels' extent so every structure is shown. Returns an (H, W, 3) uint8 array.
    """
    from PIL import Image, ImageDraw

    colours = resolve_label_map(label_map).colours()
    hu_ras, (sx, sy, sz) = canonical_ras(volume)
    label_ras, _ = canonical_ras(Volume(np.asarray(labels), volume.affine))
    present = np.argwhere(label_ras > 0)
    if present.size:
        low, high = present.min(axis=0), present.max(axis=0)
        centre = ((low + high) // 2).astype(int)
        levels = [int(low[2] + f * (high[2] - low[2])) for f in (0.8, 0.5, 0.25)]
    else:
        centre = np.array(hu_ras.shape) // 2
        levels = [int(hu_ras.shape[2] * f) for f in (0.7, 0.5, 0.3)]
    _, cj, _ = centre
    ci = int(low[0] + 0.78 * (high[0] - low[0])) if present.size else centre[0]   # through the right lung
    views = [(hu_ras[::-1, ::-1, k].T, label_ras[::-1, ::-1, k].T, sy, sx) for k in levels]
    views.append((hu_ras[::-1, cj, ::-1].T, label_ras[::-1, cj, ::-1].T, sz, sx))
    views.append((hu_ras[ci, ::-1, ::-1].T, label_ras[ci, ::-1, ::-1].T, sz, sy))
    tiles = [_tile(h, lab, r, c, height, colours, window, alpha) for h, lab, r, c in views]
    gap = np.zeros((height, 4, 3), np.uint8)
    strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    legend = Image.new("RGB", (strip.shape[1], 26), (0, 0, 0))
    draw = ImageDraw.Draw(legend)
    x = 6
    if title:
        draw.text((x, 7), title, fill=(255, 255, 255))
        x += 8 * len(title) + 16
    for _, (name, colour) in sorted(colours.items()):
        draw.rectangle([x, 7, x + 12, 19], fill=colour)
        draw.text((x + 17, 7), name, fill=(255, 255, 255))
        x += 24 + 8 * len(name)
    return np.concatenate([np.asarray(legend), strip], axis=0)


def save_label_montage(volume: Volume, labels: np.ndarray, path: str | os.PathLike[str], **options) -> Path:
    """Write `label_montage` as a PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(label_montage(volume, labels, **options)).save(temporary, format="PNG")
    return Path(path)
