"""Paint tubes, balls and sub-voxel vessels into a rendered volume with partial-volume edges.

Capsules (segments with round ends) are painted one by one inside their bounding boxes; vessels much
thinner than a voxel are instead splatted as line samples whose weight is the fraction of each voxel
they fill, which gives the fine, faint texture of peripheral lung vessels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medseg.data.phantom.tissues import Tissue
from medseg.data.phantom.trees import Segments

__all__ = ["LUNG_LIKE", "PaintTarget", "paint_capsules", "splat_segments"]

LUNG_LIKE = np.zeros(256, dtype=bool)
LUNG_LIKE[[Tissue.LUNG, Tissue.FISSURE, Tissue.EMPHYSEMA, Tissue.GROUND_GLASS, Tissue.VESSEL]] = True


@dataclass
class PaintTarget:
    """Arrays being rendered (i, j, k) and the map from voxel indices to body-frame millimetres."""

    hu: np.ndarray
    tissue: np.ndarray
    lobe: np.ndarray
    body_from_voxel: np.ndarray

    def __post_init__(self) -> None:
        self.voxel_from_body = np.linalg.inv(self.body_from_voxel)
        self.spacing = np.linalg.norm(self.body_from_voxel[:3, :3], axis=0)
        self.edge_width = float(np.cbrt(np.prod(self.spacing)))


Painter = Callable[[PaintTarget, tuple[slice, slice, slice], np.ndarray], None]
"""Called with the target, a bounding box and the occupancy (0..1) of the shape inside it."""


def paint_capsules(target: PaintTarget, segments: Segments, painter: Painter) -> None:
    """Compute each capsule's occupancy in its bounding box and hand it to `painter`."""
    if not len(segments):
        return
    m = target.body_from_voxel
    shape = np.array(target.hu.shape)
    starts_v = (target.voxel_from_body[:3, :3] @ segments.start.T).T + target.voxel_from_body[:3, 3]
    ends_v = (target.voxel_from_body[:3, :3] @ segments.end.T).T + target.voxel_from_body[:3, 3]
    reach = segments.radius[:, None] / target.spacing[None, :] + 1.5
    low = np.floor(np.minimum(starts_v, ends_v) - reach).astype(int)
    high = np.ceil(np.maximum(starts_v, ends_v) + reach).astype(int) + 1
    low = np.maximum(low, 0)
    high = np.minimum(high, shape)
    for n in np.flatnonzero(np.all(high > low, axis=1)):
        box = tuple(slice(int(a), int(b)) for a, b in zip(low[n], high[n], strict=True))
        i = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
        j = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
        k = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
        a, b, radius = segments.start[n], segments.end[n], segments.radius[n]
        axis = b - a
        length2 = float(axis @ axis)
        relative = [m[c, 0] * i + m[c, 1] * j + m[c, 2] * k + np.float32(m[c, 3] - a[c]) for c in range(3)]
        if length2 > 1e-9:
            t = (relative[0] * axis[0] + relative[1] * axis[1] + relative[2] * axis[2]) / length2
            t = np.clip(t, 0.0, 1.0)
            distance2 = sum((relative[c] - t * np.float32(axis[c])) ** 2 for c in range(3))
        else:
            distance2 = sum(r * r for r in relative)
        occupancy = np.clip((radius - np.sqrt(distance2)) / target.edge_width + 0.5, 0.0, 1.0)
        if occupancy.any():
            painter(target, box, occupancy.astype(np.float32))


def fill_painter(code: Tissue, value: float, *, only_lung: bool = False, clear_lobe: bool = False,
                 keep_lobe_only: bool = False) -> Painter:
    """A painter that blends `value` in by occupancy and sets `code` where the shape covers > half a voxel.

    `only_lung` restricts it to lung-like voxels (intrapulmonary structures); `clear_lobe` removes lobe
    labels it covers (mediastinal structures); `keep_lobe_only` restricts it to voxels with a lobe label.
    """

    def paint(target: PaintTarget, box: tuple[slice, slice, slice], occupancy: np.ndarray) -> None:
        hu, tissue = target.hu[box], target.tissue[box]
        if only_lung:
            occupancy = occupancy * LUNG_LIKE[tissue]
        if keep_lobe_only:
            occupancy = occupancy * (target.lobe[box] > 0)
        hu += occupancy * (np.float32(value) - hu)
        covered = occupancy >= 0.5
        tissue[covered] = code
        if clear_lobe:
            target.lobe[box][covered] = 0

    return paint


def splat_segments(target: PaintTarget, segments: Segments, value: float, code_threshold: float = 0.5) -> None:
    """Add thin vessels as partial-volume line samples into lung-like voxels (vectorised)."""
    if not len(segments):
        return
    lengths = np.linalg.norm(segments.end - segments.start, axis=1)
    step = 0.5 * float(target.spacing.min())
    counts = np.maximum(1, np.ceil(lengths / step).astype(int))
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(owner.size) - first + 0.5) / counts[owner]
    points = segments.start[owner] + t[:, None] * (segments.end - segments.start)[owner]
    weight = np.pi * segments.radius[owner] ** 2 * (lengths / counts)[owner] / float(np.prod(target.spacing))
    voxel = points @ target.voxel_from_body[:3, :3].T + target.voxel_from_body[:3, 3]
    base = np.floor(voxel).astype(np.int64)
    frac = voxel - base
    shape = np.array(target.hu.shape)
    flat_index, flat_weight = [], []
    for corner in np.ndindex(2, 2, 2):
        index = base + np.array(corner)
        w = weight * np.prod(np.where(np.array(corner), frac, 1.0 - frac), axis=1)
        inside = np.all((index >= 0) & (index < shape), axis=1)
        flat_index.append(np.ravel_multi_index(index[inside].T, target.hu.shape))
        flat_weight.append(w[inside])
    indices = np.concatenate(flat_index)
    if not indices.size:
        return
    unique, inverse = np.unique(indices, return_inverse=True)
    filled = np.minimum(np.bincount(inverse, weights=np.concatenate(flat_weight)), 1.0).astype(np.float32)
    where = np.unravel_index(unique, target.hu.shape)
    lung = LUNG_LIKE[target.tissue[where]]
    where = tuple(axis[lung] for axis in where)
    filled = filled[lung]
    values = target.hu[where]
    target.hu[where] = values + filled * (np.float32(value) - values)
    vessel = filled >= code_threshold
    target.tissue[tuple(axis[vessel] for axis in where)] = Tissue.VESSEL
