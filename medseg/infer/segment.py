"""Volume segmentation: load -> lung mask -> ROI crop -> model grid -> 2.5D probabilities -> source grid ->
postprocess -> label map on the exact source grid.

`LobeSegmenter` loads its model once and is reused across volumes; `segment_files` overlaps reading the
next input with computing the current one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.errors import ConfigError, InputError
from medseg.io import Volume
from medseg.transforms.spatial import CropResample, Reorientation, lung_box

log = logging.getLogger(__name__)

__all__ = ["LobeSegmenter", "SegmentationResult", "segment_files", "segment_lungs"]

RIGHT_LUNG, LEFT_LUNG = 1, 2


@dataclass
class SegmentationResult:
    """A label map on the source grid, plus how long each stage took (seconds)."""

    labels: Volume
    timings: dict[str, float] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now


def segment_lungs(volume: Volume) -> SegmentationResult:
    """Classical lung mask (1 right lung, 2 left lung) on the source grid; no model needed."""
    from medseg.infer.lungmask import lung_mask

    watch = _Stopwatch()
    labels = lung_mask(volume)
    watch.lap("lung_mask")
    return SegmentationResult(Volume(labels, volume.affine, source=volume.source), watch.timings,
                              {1: "right_lung", 2: "left_lung"})


def _resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available (this torch build: "
                          f"{torch.__version__})")
    return torch.device(name)


class LobeSegmenter:
    """A lobe model loaded once; call it on Volumes."""

    def __init__(self, checkpoint: str | os.PathLike[str], *, device: str = "cpu", batch_size: int = 16,
                 tta: bool = False) -> None:
        from medseg.models import load_checkpoint

        self.device = _resolve_device(device)
        self.model, self.card = load_checkpoint(checkpoint, device=self.device)
        if self.card.task not in ("lobes", "lungs"):
            raise ConfigError(f"model task is {self.card.task!r}, not a lung/lobe segmentation model", checkpoint)
        prep = self.card.preprocessing
        self.windows = [(float(w["center"]), float(w["width"])) for w in prep["windows"]]
        self.stack = int(prep["stack"])
        self.spacing = [float(s) for s in (self.card.spacing or prep["spacing"])]
        self.margin_mm = float(prep.get("roi_margin_mm", 10.0))
        self.batch_size = batch_size
        self.labels = {int(k): v for k, v in self.card.labels.items()}
        self.right = [v for v, name in self.labels.items() if v and "right" in name.lower()]
        self.left = [v for v, name in self.labels.items() if v and "left" in name.lower()]
        self.tta = self._flip_tta() if tta else None

    def _flip_tta(self):
        """Left-right flip TTA grouping lobes by their mirror images (needs both sides named)."""
        from medseg.infer.predict import FlipTTA

        if not (self.right and self.left):
            raise ConfigError("flip TTA needs a model whose labels name left and right structures")
        groups, mirror = [], {0: 0}
        for value in range(self.card.out_channels):
            name = self.labels.get(value, "").lower()
            if value == 0:
                groups.append(0)
            else:
                side = 1 if "right" in name else 3
                groups.append(side + (1 if "lower" in name else 0))
        mirror.update({1: 3, 2: 4, 3: 1, 4: 2})
        return FlipTTA(groups, mirror, axis=-2)

    def __call__(self, volume: Volume, progress: Callable[[int, int], None] | None = None) -> SegmentationResult:
        from medseg.infer.lungmask import lung_mask
        from medseg.infer.predict import predict_volume

        watch = _Stopwatch()
        lungs = lung_mask(volume)
        watch.lap("lung_mask")
        orientation = Reorientation.to_ras(volume.affine, volume.shape)
        hu = orientation.apply(volume.array)
        sides = orientation.apply(lungs)
        spacing = np.linalg.norm(orientation.affine(volume.affine)[:3, :3], axis=0)
        if not sides.any():
            raise InputError("no lungs found (no air-filled region inside the body): is this a chest CT?",
                             volume.source or None)
        start, stop = lung_box(sides > 0, spacing, self.margin_mm)
        grid = CropResample.plan(start, stop, spacing, self.spacing)
        image = grid.image(hu)
        watch.lap("resample")
        probs = predict_volume(self.model, image, self.windows, self.stack, batch_size=self.batch_size,
                               device=self.device, tta=self.tta, progress=progress)
        watch.lap("model")
        output = np.zeros(volume.shape, dtype=np.uint8)
        out_view = orientation.apply(output)
        self._labels_on_source(grid, probs, sides, out_view)
        watch.lap("to_source_grid")
        _keep_largest_components(out_view[grid.slices()], [v for v in self.labels if v])
        watch.lap("postprocess")
        result = Volume(output, volume.affine, source=volume.source)
        return SegmentationResult(result, watch.timings, dict(self.labels))

    def _labels_on_source(self, grid: CropResample, probs: torch.Tensor, sides: np.ndarray,
                          out_view: np.ndarray) -> None:
        """Lung = classical mask (unless the model is sure it is not lung) or the model's own lung; each
        lung voxel gets the most likely lobe of its side."""
        x, y, z = grid.slices()
        crop_sides = sides[x, y, z]
        crop_out = out_view[x, y, z]
        right = torch.tensor(self.right)
        left = torch.tensor(self.left)
        for k0, values in grid.back_slabs(probs):
            k1 = k0 + values.shape[1]
            side = torch.from_numpy(np.ascontiguousarray(np.moveaxis(crop_sides[:, :, k0:k1], 2, 0)))
            background = values[0]
            lung = ((side > 0) & (background < 0.9)) | (background < 0.5)
            best_right, index_right = values[right].max(0)
            best_left, index_left = values[left].max(0)
            on_right, on_left = right[index_right], left[index_left]
            free = torch.where(best_right >= best_left, on_right, on_left)
            label = torch.where(side == RIGHT_LUNG, on_right, torch.where(side == LEFT_LUNG, on_left, free))
            label = torch.where(lung, label, 0).to(torch.uint8)
            crop_out[:, :, k0:k1] = np.moveaxis(label.numpy(), 0, 2)


def _keep_largest_components(labels: np.ndarray, values: Iterable[int], passes: int = 3) -> None:
    """In place: each label keeps its largest 26-connected component; every other piece takes the label it
    shares the most boundary with (so every lung voxel keeps a lobe). A piece touching no other label (an
    island of lung) stays. Repeated while pieces move (a piece can join a label it is not connected to)."""
    from scipy import ndimage

    cube = np.ones((3, 3, 3), dtype=bool)
    for _ in range(passes):
        moved = False
        for value in values:
            components, count = ndimage.label(labels == value, structure=cube)
            if count <= 1:
                continue
            largest = int(np.bincount(components.ravel())[1:].argmax()) + 1
            for index, box in enumerate(ndimage.find_objects(components), start=1):
                if index == largest or box is None:
                    continue
                grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
                region = labels[grown]                       # a view: writes go to `labels`
                piece = components[grown] == index
                around = region[ndimage.binary_dilation(piece, structure=cube) & ~piece]
                around = around[(around != 0) & (around != value)]
                if around.size:
                    region[piece] = np.bincount(around).argmax()
                    moved = True
        if not moved:
            return


def _prefetch(loader: Callable[[Path], Volume], inputs: list[Path]) -> Iterator[tuple[Path, Volume | Exception]]:
    """Yield (input, volume or the error it raised), loading the next input in a background thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        def load(path: Path) -> Volume | Exception:
            try:
                return loader(path)
            except (InputError, OSError) as exc:
                return exc

        pending = pool.submit(load, inputs[0]) if inputs else None
        for index, path in enumerate(inputs):
            volume = pending.result()
            pending = pool.submit(load, inputs[index + 1]) if index + 1 < len(inputs) else None
            yield path, volume


def segment_files(pairs: list[tuple[Path, Path]], segment: Callable[[Volume], SegmentationResult],
                  loader: Callable[[Path], Volume] | None = None) -> list[tuple[Path, SegmentationResult | Exception]]:
    """Segment many inputs with one loaded model; reading input n+1 overlaps computing input n.

    A failing case is reported in the returned list (its exception) and does not stop the others.
    """
    from medseg.io import load_volume, write_nifti

    loader = loader or load_volume
    outputs = dict(pairs)
    results: list[tuple[Path, SegmentationResult | Exception]] = []
    for path, volume in _prefetch(loader, [p for p, _ in pairs]):
        if isinstance(volume, Exception):
            results.append((path, volume))
            continue
        try:
            result = segment(volume)
            started = time.perf_counter()
            write_nifti(result.labels, outputs[path], label=True)
            result.timings["write"] = time.perf_counter() - started
            results.append((path, result))
        except InputError as exc:
            results.append((path, exc))
    return results
