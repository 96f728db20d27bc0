"""The invertible spatial transforms of the CT chain (MONAI dict transforms over `medseg.transforms.spatial`).

Each takes and returns channel-first `(C, X, Y, Z)` MetaTensors, updates the affine exactly, and records itself
in `applied_operations`, so `Compose.inverse` / `Invertd` carry a model-grid array back to the source grid
(same shape and affine; `Invertd(..., nearest_interp=True)` keeps label maps nearest-neighbour):

- `CropToMaskd`: crop every key to the bounding box of `box_key` (> 0) plus `margin_mm` (index slicing);
- `ReorientToRASd`: permute/flip the axes to RAS (no interpolation); the copy it makes is laid out slice-major
  (Z, X, Y) in memory so the resample reads it without another copy;
- `ResampleToSpacingd`: half-pixel-centred resample to a spacing (anti-aliased trilinear for images,
  nearest-exact for `label_keys`).

`ModelGrid.of(tensor)` reads the records back, for the slab-wise way back that inference uses
(`ModelGrid.back_slabs` + `ModelGrid.source_region`) instead of materialising full-resolution probabilities.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys

from medseg.errors import InputError
from medseg.transforms.spatial import Reorientation, Resampling, lung_box

__all__ = ["CropToMaskd", "ModelGrid", "ReorientToRASd", "ResampleToSpacingd", "model_grid_slices"]

_LABEL_MODES = ("nearest", "nearest-exact")


def _meta(value: Any) -> MetaTensor:
    return value if isinstance(value, MetaTensor) else MetaTensor(torch.as_tensor(np.asarray(value)))


def _affine(value: MetaTensor) -> np.ndarray:
    return np.asarray(value.affine, dtype=np.float64)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _derived(source: MetaTensor, array: torch.Tensor, affine: np.ndarray) -> MetaTensor:
    """A MetaTensor holding `array` with `source`'s metadata and applied operations, and a new affine."""
    out = MetaTensor(array, meta=dict(source.meta), applied_operations=list(source.applied_operations))
    out.affine = torch.as_tensor(affine, dtype=torch.float64)
    return out


def _check_spatial(key: Hashable, value: MetaTensor) -> None:
    if value.ndim != 4:
        raise InputError(f"{key}: the CT chain needs channel-first (C, X, Y, Z) arrays, got shape "
                         f"{tuple(value.shape)}")


class _Recorded(MapTransform, InvertibleTransform):
    """Inverse for transforms that record themselves: each key's last record is popped and `_undo` applied."""

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = _meta(d[key])
            d[key] = self._undo(value, self.pop_transform(value))
        return d

    def _undo(self, value: MetaTensor, record: Mapping[str, Any]) -> MetaTensor:
        raise NotImplementedError


class CropToMaskd(_Recorded):
    """Crop `keys` to the bounding box of `box_key > 0` grown by `margin_mm` (clipped to the array).

    The margin is converted to voxels per axis with `box_key`'s spacing. A mask without foreground keeps the
    whole array. The crop is a view. Inverse: the array is put back in a zero-filled array of the source shape.
    """

    def __init__(self, keys: KeysCollection, box_key: str, margin_mm: float,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key
        self.margin_mm = float(margin_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = _meta(d[self.box_key])
        _check_spatial(self.box_key, mask)
        box_mask = mask.as_tensor()[0].numpy()             # numpy: several times faster than torch here
        inside = box_mask if box_mask.dtype.kind in "bu" else box_mask > 0
        start, stop = lung_box(inside, _spacing(_affine(mask)), self.margin_mm)
        box = (slice(None), *(slice(a, b) for a, b in zip(start, stop, strict=True)))
        for key in self.key_iterator(d):
            value = _meta(d[key])
            _check_spatial(key, value)
            if tuple(value.shape[1:]) != tuple(mask.shape[1:]):
                raise InputError(f"{key} {tuple(value.shape[1:])} is not on the grid of {self.box_key} "
                                 f"{tuple(mask.shape[1:])}")
            shift = np.eye(4)
            shift[:3, 3] = start
            out = _derived(value, value.as_tensor()[box], _affine(value) @ shift)
            d[key] = self.push_transform(out, orig_size=tuple(value.shape[1:]),
                                         extra_info={"start": list(start), "stop": list(stop)})
        return d

    def _undo(self, value: MetaTensor, record: Mapping[str, Any]) -> MetaTensor:
        start = record[TraceKeys.EXTRA_INFO]["start"]
        stop = record[TraceKeys.EXTRA_INFO]["stop"]
        shape = tuple(int(n) for n in record[TraceKeys.ORIG_SIZE])
        tensor = value.as_tensor()
        full = torch.zeros((tensor.shape[0], *shape), dtype=tensor.dtype)
        full[(slice(None), *(slice(a, b) for a, b in zip(start, stop, strict=True)))] = tensor
        shift = np.eye(4)
        shift[:3, 3] = -np.asarray(start, dtype=np.float64)
        return _derived(value, full, _affine(value) @ shift)


class ReorientToRASd(_Recorded):
    """Permute and flip the spatial axes of `keys` to RAS order (axis 0 towards patient right, ...); exact.

    The result is a copy (same dtype) laid out slice-major (Z, X, Y) in memory, which the resample reads as is.
    Inverse: the permutation and flips undone.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = _meta(d[key])
            _check_spatial(key, value)
            affine = _affine(value)
            orientation = Reorientation.to_ras(affine, value.shape[1:])
            source = value.as_tensor().numpy()
            ras = np.moveaxis(orientation.apply(np.moveaxis(source, 0, -1)), -1, 0)   # (C, X, Y, Z) view
            target = np.empty((ras.shape[0], ras.shape[3], ras.shape[1], ras.shape[2]), dtype=source.dtype)
            np.copyto(np.moveaxis(target, 1, 3), ras)                    # one pass: flip and permute
            tensor = torch.from_numpy(target).permute(0, 2, 3, 1)        # (C, X, Y, Z), slice-major memory
            out = _derived(value, tensor, orientation.affine(affine))
            d[key] = self.push_transform(out, orig_size=tuple(value.shape[1:]),
                                         extra_info={"ornt": orientation.ornt.tolist()})
        return d

    def _undo(self, value: MetaTensor, record: Mapping[str, Any]) -> MetaTensor:
        shape = tuple(int(n) for n in record[TraceKeys.ORIG_SIZE])
        orientation = Reorientation(np.asarray(record[TraceKeys.EXTRA_INFO]["ornt"]), shape)  # type: ignore[arg-type]
        affine = _affine(value) @ np.linalg.inv(np.asarray(orientation.affine(np.eye(4))))
        return _derived(value, orientation.undo_tensor(value.as_tensor()), affine)


class ResampleToSpacingd(_Recorded):
    """Resample `keys` to `spacing` (mm; None keeps the spacing) on the same box, half-pixel-centred.

    Images: in-plane Gaussian pre-blur when shrinking by 1.5x or more, then trilinear; float32 out.
    `label_keys`: nearest voxel centre (`nearest-exact`), uint8 out. Inverse: trilinear back, or nearest when
    the record's mode says so (`Invertd(..., nearest_interp=True)` switches it).
    """

    def __init__(self, keys: KeysCollection, spacing: Sequence[float] | None,
                 label_keys: KeysCollection = (), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = _meta(d[key])
            _check_spatial(key, value)
            affine = _affine(value)
            plan = Resampling.plan(value.shape[1:], _spacing(affine), self.spacing)
            labels = key in self.label_keys
            channels = [plan.labels(c.permute(2, 0, 1)) if labels else plan.image(c.permute(2, 0, 1))
                        for c in value.as_tensor()]                       # each (Z', X', Y')
            stacked = channels[0][None] if len(channels) == 1 else torch.stack(channels)
            tensor = stacked.permute(0, 2, 3, 1)                         # (C, X', Y', Z')
            out = _derived(value, tensor, plan.affine(affine))
            d[key] = self.push_transform(out, orig_size=plan.in_shape,
                                         extra_info={"mode": "nearest-exact" if labels else "trilinear"})
        return d

    def _undo(self, value: MetaTensor, record: Mapping[str, Any]) -> MetaTensor:
        plan = Resampling(tuple(int(n) for n in record[TraceKeys.ORIG_SIZE]),  # type: ignore[arg-type]
                          tuple(int(n) for n in value.shape[1:]))
        slices = value.as_tensor().permute(0, 3, 1, 2)                     # (C, Z', X', Y')
        if record[TraceKeys.EXTRA_INFO]["mode"] in _LABEL_MODES:
            back = plan.back_labels(slices)
        else:
            back = torch.cat([values for _, values in plan.back_slabs(slices)], dim=1)
        affine = _affine(value) @ np.linalg.inv(plan.index_map())
        return _derived(value, back.permute(0, 2, 3, 1), affine)


def model_grid_slices(image: Any) -> torch.Tensor:
    """The slice-major (Z, X, Y) plain tensor of a (1, X, Y, Z) chain output (a view: no copy)."""
    tensor = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    if tensor.ndim != 4 or tensor.shape[0] != 1:
        raise InputError(f"expected a one-channel (1, X, Y, Z) volume, got shape {tuple(tensor.shape)}")
    return tensor[0].permute(2, 0, 1)


@dataclass(frozen=True)
class ModelGrid:
    """Where a chain output lies in its source array: crop box, reorientation and resampling."""

    box: tuple[slice, slice, slice]
    orientation: Reorientation
    resampling: Resampling

    @classmethod
    def of(cls, image: MetaTensor) -> ModelGrid:
        """Read the records `CropToMaskd` (optional), `ReorientToRASd` and `ResampleToSpacingd` left on `image`."""
        records = {op[TraceKeys.CLASS_NAME]: op for op in image.applied_operations}
        missing = {"ReorientToRASd", "ResampleToSpacingd"} - set(records)
        if missing:
            raise InputError(f"not a CT chain output: no {sorted(missing)} in its applied operations")
        reorient, resample = records["ReorientToRASd"], records["ResampleToSpacingd"]
        crop_shape = tuple(int(n) for n in reorient[TraceKeys.ORIG_SIZE])
        crop = records.get("CropToMaskd")
        if crop is None:
            box = tuple(slice(0, n) for n in crop_shape)
        else:
            info = crop[TraceKeys.EXTRA_INFO]
            box = tuple(slice(a, b) for a, b in zip(info["start"], info["stop"], strict=True))
        orientation = Reorientation(np.asarray(reorient[TraceKeys.EXTRA_INFO]["ornt"]), crop_shape)  # type: ignore[arg-type]
        resampling = Resampling(tuple(int(n) for n in resample[TraceKeys.ORIG_SIZE]),  # type: ignore[arg-type]
                                tuple(int(n) for n in image.shape[1:]))
        return cls(box, orientation, resampling)  # type: ignore[arg-type]

    def source_region(self, source: np.ndarray) -> np.ndarray:
        """The chain's box of a source-shaped (X, Y, Z) array, in RAS order: a writable view of `source`."""
        return self.orientation.apply(source[self.box])

    def back_slabs(self, probabilities: torch.Tensor, slab: int = 16) -> Iterator[tuple[int, torch.Tensor]]:
        """Slice-major (C, Z', X', Y') model-grid values back on `source_region`, a slab of planes at a time:
        (k0, (C, K, X, Y)) for region planes k0 .. k0+K-1 (see `Resampling.back_slabs`)."""
        return self.resampling.back_slabs(probabilities, slab)
