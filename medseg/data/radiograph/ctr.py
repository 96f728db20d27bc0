"""Cardiothoracic ratio measured on the rendered phantom's tissue map, the way it is read off a PA film.

Heart width = rightmost plus leftmost extent of the cardiac silhouette (Tissue.BLOOD seen along the beam)
between the heart's lowest point and its centre level, which keeps the aorta, vena cava and pulmonary
arteries (also BLOOD, all above that level) out. Thoracic width = widest inner width of the pleural spaces
(lungs, effusion, pneumothorax) at any level. CTR > 0.5 on a PA film = cardiomegaly (ANATOMY.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.data.phantom import ChestModel, Grid, PhantomImage, Tissue

__all__ = ["CardiothoracicRatio", "measure_ctr"]

_PLEURAL = (Tissue.EFFUSION, Tissue.PNEUMOTHORAX)


@dataclass(frozen=True)
class CardiothoracicRatio:
    """Widths in mm in the object plane (the ratio is the same on the film up to differential magnification)."""

    ratio: float
    heart_width_mm: float
    thorax_width_mm: float
    heart_z_mm: float          # scanner z of the level where the heart is widest
    thorax_z_mm: float         # scanner z of the widest thoracic level


def _extent(columns: np.ndarray) -> tuple[int, int] | None:
    found = np.flatnonzero(columns)
    return (int(found[0]), int(found[-1])) if found.size else None


def measure_ctr(image: PhantomImage, model: ChestModel, grid: Grid) -> CardiothoracicRatio:
    """Measure the cardiothoracic ratio on a coronal-slab render (i right->left, j head->feet, k along the beam)."""
    spacing_x = float(np.linalg.norm(grid.affine[:3, 0]))
    z_of_row = grid.affine[2, 3] + grid.affine[2, 1] * np.arange(grid.shape[1])
    world_from_body = np.linalg.inv(model.pose.body_from_world())
    centre = world_from_body @ np.array([*model.shape.heart_centre, 1.0])
    heart = (image.tissue == Tissue.BLOOD).any(axis=2)                      # (i, j) silhouette
    band = np.flatnonzero((z_of_row <= centre[2]) & heart.any(axis=0))
    pleural = ((image.lobes > 0) | np.isin(image.tissue, _PLEURAL)).any(axis=2)
    thorax_rows = [(row, _extent(pleural[:, row])) for row in range(grid.shape[1])]
    thorax_rows = [(row, span[1] - span[0] + 1) for row, span in thorax_rows if span is not None]
    if not band.size or not thorax_rows:
        return CardiothoracicRatio(float("nan"), 0.0, 0.0, float("nan"), float("nan"))
    spans = [_extent(heart[:, row]) for row in band]
    first = min(span[0] for span in spans)                                  # patient's right border
    last = max(span[1] for span in spans)                                   # patient's left border
    widest = band[int(np.argmax([span[1] - span[0] for span in spans]))]
    heart_mm = (last - first + 1) * spacing_x
    thorax_row, thorax_px = max(thorax_rows, key=lambda item: item[1])
    thorax_mm = thorax_px * spacing_x
    return CardiothoracicRatio(ratio=heart_mm / thorax_mm, heart_width_mm=heart_mm, thorax_width_mm=thorax_mm,
                               heart_z_mm=float(z_of_row[widest]), thorax_z_mm=float(z_of_row[thorax_row]))
