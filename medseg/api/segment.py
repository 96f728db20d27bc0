"""`medseg.segment`: lung lobes (a model) or lungs (classical) of a chest CT, on the exact source grid."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from medseg.errors import ConfigError, InputError

if TYPE_CHECKING:
    from medseg.io import Volume

__all__ = ["SegmentOptions", "Segmentation", "segment"]

Task = Literal["lobes", "lungs"]
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class SegmentOptions:
    """How a lobe model runs: slices per batch and left-right flip test-time augmentation."""

    batch_size: int = 16
    tta: bool = False


@dataclass(frozen=True)
class Segmentation:
    """A label map on the source grid, its label names, the volume of each label (ml) and stage timings (s)."""

    labels: Volume
    label_names: dict[int, str]
    volumes: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the label map as NIfTI (uint8, atomically); `path` must end in .nii or .nii.gz."""
        from medseg.io import write_nifti

        _check_nifti(path)
        return write_nifti(self.labels, path, label=True)


def _check_nifti(path: str | os.PathLike[str]) -> None:
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise InputError("output must end in .nii or .nii.gz", path)


def segment(input: str | os.PathLike[str] | Volume, output: str | os.PathLike[str] | None = None, *,
            model: str | os.PathLike[str] | None = None, task: Task = "lobes", device: str = "auto",
            options: SegmentOptions | None = None) -> Segmentation:
    """Segment a chest CT (a DICOM folder/file, a NIfTI/NRRD/MHA path, or a loaded `Volume`).

    task "lobes" needs `model` (a lobe checkpoint from `medseg train`); task "lungs" without a model uses the
    classical lung mask (1 right, 2 left). `output` (.nii/.nii.gz) also writes the label map there.
    Timings: load_model, read, the segmenter's stages, and write when `output` is given.
    """
    from medseg.device import resolve_device
    from medseg.export.statistics import label_volumes
    from medseg.infer.segment import LobeSegmenter, segment_lungs
    from medseg.io import Volume, load_volume, require_ct, write_nifti

    options = options or SegmentOptions()
    if task not in ("lobes", "lungs"):
        raise ConfigError(f"unknown task {task!r} (choose lobes or lungs)")
    if output is not None:
        _check_nifti(output)
    if task == "lobes" and model is None:
        raise ConfigError("task 'lobes' needs a model checkpoint (train one with `medseg train "
                          "configs/train/lobes.yaml`, see the README), or use task 'lungs'")
    started = time.perf_counter()
    segmenter = None
    if model is not None:
        segmenter = LobeSegmenter(model, device=str(resolve_device(device)), batch_size=options.batch_size,
                                  tta=options.tta)
    model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    volume = input if isinstance(input, Volume) else load_volume(input)
    require_ct(volume, "lung segmentation")
    read_seconds = time.perf_counter() - started
    result = segmenter(volume) if segmenter is not None else segment_lungs(volume)
    timings = {"load_model": model_seconds, "read": read_seconds, **result.timings}
    if output is not None:
        started = time.perf_counter()
        write_nifti(result.labels, output, label=True)
        timings["write"] = time.perf_counter() - started
    names = dict(result.label_names)
    return Segmentation(result.labels, names, label_volumes(result.labels, names), timings)
