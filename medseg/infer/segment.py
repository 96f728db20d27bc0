"""Volume segmentation: load -> lung mask -> ROI crop -> model grid -> 2.5D probabilities -> source grid ->
postprocess -> label map on the exact source grid.

`LobeSegmenter` loads its model once and is reused across volumes; `segment_files` overlaps reading the
next input with computing the current one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.errors import ConfigError, InputError
from medseg.infer.lungmask import LEFT_LUNG, RIGHT_LUNG
from medseg.io import Volume
from medseg.labels import from_names, label_map
from medseg.transforms.chains import build_ct_chain
from medseg.transforms.config import PreprocessingConfig, preprocessing_config_from_dict
from medseg.transforms.geometry import ModelGrid

log = logging.getLogger(__name__)

__all__ = ["LobeSegmenter", "SegmentationResult", "segment_files", "segment_lungs"]



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
                              label_map("lungs").names())


class LobeSegmenter:
    """A lobe model loaded once; call it on Volumes."""

    def __init__(self, checkpoint: str | os.PathLike[str], *, device: str = "cpu", batch_size: int = 16,
                 tta: bool = False) -> None:
        from medseg.device import resolve_device
        from medseg.models import load_checkpoint

        self.device = resolve_device(device)
        self.model, self.card = load_checkpoint(checkpoint, device=self.device)
        if self.card.task not in ("lobes", "lungs"):
            raise ConfigError(f"model task is {self.card.task!r}, not a lung/lobe segmentation model", checkpoint)
        self.preprocessing = _card_preprocessing(self.card, checkpoint)
        self.chain = build_ct_chain(self.preprocessing)
        self.windows = [(w.center, w.width) for w in self.preprocessing.windows]
        self.stack = self.preprocessing.stack
        self.spacing = None if self.preprocessing.spacing is None else list(self.preprocessing.spacing)
        self.margin_mm = self.preprocessing.roi_margin_mm
        self.batch_size = batch_size
        self.label_map = from_names(self.card.labels, name=self.card.task, where=checkpoint)
        self.labels = self.label_map.names(background=True)
        self.right = self.label_map.side("right")
        self.left = self.label_map.side("left")
        if not (self.right and self.left):
            raise ConfigError(f"model labels {self.label_map.names()} do not name structures of both lungs (the "
                              "lung mask assigns each side's voxels to that side's labels; see configs/labels/)",
                              checkpoint)
        self.tta = self._flip_tta() if tta else None

    def _flip_tta(self):
        """Left-right flip TTA pooling each structure with its mirror image (mirror partners from the registry)."""
        from medseg.infer.predict import FlipTTA

        groups, mirror = self.label_map.flip_groups(self.card.out_channels)
        return FlipTTA(groups, mirror, axis=-2)

    def __call__(self, volume: Volume, progress: Callable[[int, int], None] | None = None) -> SegmentationResult:
        from medseg.infer.lungmask import lung_mask
        from medseg.infer.predict import predict_volume
        from medseg.transforms.chains import ct_sample
        from medseg.transforms.geometry import model_grid_slices
        from medseg.transforms.position import covers_lung_height, slice_positions

        watch = _Stopwatch()
        lungs = lung_mask(volume)
        watch.lap("lung_mask")
        if not lungs.any():
            raise InputError("no lungs found (no air-filled region inside the body): is this a chest CT?",
                             volume.source or None)
        data = self.chain(ct_sample(volume, mask=lungs))
        grid = ModelGrid.of(data["image"])
        watch.lap("resample")
        slices = model_grid_slices(data["image"])
        positions = None
        if self.preprocessing.position_channel:
            positions = slice_positions(slices.shape[0], known=covers_lung_height(lungs, volume.affine))
        probs = predict_volume(self.model, slices, self.windows, self.stack, batch_size=self.batch_size,
                               device=self.device, tta=self.tta, progress=progress, positions=positions)
        watch.lap("model")
        output = np.zeros(volume.shape, dtype=np.uint8)
        region = grid.source_region(output)                 # the chain's box of `output`, RAS order (a view)
        self._labels_on_source(grid, probs, data["mask"].as_tensor()[0].numpy(), region)
        watch.lap("to_source_grid")
        _keep_largest_components(region, [v for v in self.labels if v])
        watch.lap("postprocess")
        result = Volume(output, volume.affine, source=volume.source)
        return SegmentationResult(result, watch.timings, dict(self.labels))

    def _labels_on_source(self, grid: ModelGrid, probs: torch.Tensor, sides: np.ndarray,
                          region: np.ndarray) -> None:
        """Lung = the classical lung mask, exactly: the model only divides it into lobes, each lung voxel taking
        the most likely lobe of its own side. A phantom-trained model is not trusted to add or remove lung on
        real anatomy it has never seen (it called stomach gas and air outside the body lung on real CT).
        `sides` and `region` are the chain's box in RAS order."""
        right = torch.tensor(self.right)
        left = torch.tensor(self.left)
        for k0, values in grid.back_slabs(probs):
            k1 = k0 + values.shape[1]
            side = torch.from_numpy(np.ascontiguousarray(np.moveaxis(sides[:, :, k0:k1], 2, 0)))
            on_right = right[values[right].argmax(0)]
            on_left = left[values[left].argmax(0)]
            label = torch.where(side == RIGHT_LUNG, on_right, torch.where(side == LEFT_LUNG, on_left, 0))
            label = label.to(torch.uint8)
            region[:, :, k0:k1] = np.moveaxis(label.numpy(), 0, 2)


def _card_preprocessing(card, checkpoint: str | os.PathLike[str]) -> PreprocessingConfig:
    """The checkpoint's CT `PreprocessingConfig` (the card's own `spacing` wins, as training recorded it)."""
    preprocessing = preprocessing_config_from_dict(card.preprocessing, checkpoint)
    if preprocessing.modality != "ct":
        raise ConfigError("the checkpoint's preprocessing is not a CT chain", checkpoint)
    if card.spacing:
        preprocessing = preprocessing.model_copy(update={"spacing": tuple(float(s) for s in card.spacing)})
    return preprocessing


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


def segment_files(pairs: list[tuple[Path, Path]], segment: Callable[[Volume], SegmentationResult],
                  loader: Callable[[Path], Volume] | None = None) -> list[tuple[Path, SegmentationResult | Exception]]:
    """Segment many inputs with one loaded model; reading input n+1 overlaps computing input n.

    A failing case is reported in the returned list (its exception) and does not stop the others.
    """
    from medseg.io import load_volume, write_nifti
    from medseg.readahead import read_ahead

    loader = loader or load_volume
    outputs = dict(pairs)
    results: list[tuple[Path, SegmentationResult | Exception]] = []
    for loaded in read_ahead([p for p, _ in pairs], loader, thread_name="medseg-segment-read"):
        path, error = loaded.item, loaded.error
        if isinstance(error, (InputError, OSError)):
            results.append((path, error))
            continue
        try:
            result = segment(loaded.value)
            started = time.perf_counter()
            write_nifti(result.labels, outputs[path], label=True)
            result.timings["write"] = time.perf_counter() - started
            results.append((path, result))
        except InputError as exc:
            results.append((path, exc))
    return results
