"""Segmentation scores per label: Dice, IoU, HD95, ASSD (in mm, anisotropic spacing) and volumes.

Conventions
-----------
* Label maps hold integer labels; values <= 0 are background. Float arrays must hold whole numbers.
* Surface voxels are the mask voxels with at least one 6-neighbour outside the mask (binary erosion with
  a cross; voxels on the image border are surface), as in MONAI's `get_mask_edges`.
* Distances run between surface voxel centres, in mm (`spacing` per array axis, axes taken as orthogonal).
  They are computed on the bounding box of both masks plus a 1-voxel margin, never on the whole volume:
  exact Euclidean distance transforms (`scipy.ndimage.distance_transform_edt(..., sampling=spacing)`)
  for small boxes and an exact k-d tree nearest-neighbour search over the surface voxels for large ones
  (same distances, far faster when the box holds many more voxels than the surfaces; `distance_method`).
* HD95 = max(95th percentile of pred->ref surface distances, 95th percentile of ref->pred), with linear
  interpolation (MONAI `compute_hausdorff_distance(percentile=95)`).
  ASSD = mean of all pred->ref and ref->pred distances together
  (MONAI `compute_average_surface_distance(symmetric=True)`).
* Volumes are voxel counts times the product of the spacings, in ml; volume_diff = pred - ref,
  volume_diff_percent = 100 * (pred - ref) / ref.
* Empty masks: a label absent from both maps has status "absent", NaN scores, and is left out of
  every mean. A label in only one map has Dice = IoU = 0 and infinite HD95/ASSD (JSON null, CSV "inf"),
  status "missing_in_pred" or "missing_in_ref"; volume_diff_percent is NaN when the reference is empty.
* Means (`mean_dice`, ...) run over the labels present in the reference (status "ok" or
  "missing_in_pred"), so a label missing from the prediction counts with Dice 0 and makes the mean
  distances infinite; a false-positive label (missing_in_ref) is reported but not averaged.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError

__all__ = [
    "GRID_TOLERANCE_MM",
    "CasePairs",
    "FolderScores",
    "LabelScores",
    "SegmentationScores",
    "case_name",
    "check_same_grid",
    "compare_files",
    "compare_labels",
    "evaluate_folder",
    "evaluate_pairs",
    "find_cases",
    "pair_folders",
    "resolve_labels",
    "summarize",
    "surface_distances",
    "write_scores_csv",
]

log = logging.getLogger(__name__)

LabelSpec = Mapping[int, str] | Sequence[int] | str | None
Status = Literal["ok", "absent", "missing_in_pred", "missing_in_ref"]
DistanceMethod = Literal["auto", "edt", "kdtree"]
CaseCallback = Callable[[int, int, str], None]

GRID_TOLERANCE_MM = 1e-3
"""Largest voxel-centre displacement (mm) at which two grids still count as the same."""

_EDT_VOXELS_PER_SURFACE_VOXEL = 6.0
"""`auto` uses the EDT while the box has at most this many voxels per surface voxel (measured break-even)."""

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# ------------------------------------------------------------------------------------------------ results


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


@dataclass(frozen=True)
class LabelScores:
    """Scores of one label; see the module docstring for the conventions of empty masks."""

    name: str
    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    volume_pred_ml: float
    volume_ref_ml: float
    volume_diff_ml: float
    volume_diff_percent: float
    label: int = 0
    status: Status = "ok"

    @property
    def in_reference(self) -> bool:
        """The reference holds this label (it counts in the means)."""
        return self.status in ("ok", "missing_in_pred")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and inf become None (`status` tells which)."""
        return {key: _json_number(value) if isinstance(value, float) else value
                for key, value in asdict(self).items()}


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one prediction/reference pair: one `LabelScores` per label, in label-set order."""

    per_label: tuple[LabelScores, ...]
    spacing: tuple[float, ...]
    pred: str = ""
    ref: str = ""

    def __getitem__(self, key: str | int) -> LabelScores:
        """Scores of a label by name or by value."""
        for scores in self.per_label:
            if key in (scores.name, scores.label):
                return scores
        raise KeyError(key)

    def _mean_of(self, metric: str) -> float:
        return _mean([getattr(s, metric) for s in self.per_label if s.in_reference])

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the labels present in the reference (NaN when there are none)."""
        return self._mean_of("dice")

    @property
    def mean_iou(self) -> float:
        return self._mean_of("iou")

    @property
    def mean_hd95_mm(self) -> float:
        """Mean HD95 over the labels present in the reference (inf when one is missing from the prediction)."""
        return self._mean_of("hd95_mm")

    @property
    def mean_assd_mm(self) -> float:
        return self._mean_of("assd_mm")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; non-finite numbers become None."""
        return {
            "pred": self.pred,
            "ref": self.ref,
            "spacing_mm": [float(s) for s in self.spacing],
            "mean_dice": _json_number(self.mean_dice),
            "mean_iou": _json_number(self.mean_iou),
            "mean_hd95_mm": _json_number(self.mean_hd95_mm),
            "mean_assd_mm": _json_number(self.mean_assd_mm),
            "labels": {s.name: s.to_dict() for s in self.per_label},
        }


# ------------------------------------------------------------------------------------------------ labels


def resolve_labels(spec: LabelSpec, present: Sequence[int] = ()) -> dict[int, str]:
    """Label value -> name from a registered label map ("lobes", "lungs": `medseg.labels`), "all", a
    {value: name} mapping (a model card's labels) or a list of values.

    Names are the registry's short names (LUL ... RLL, right_lung); None means "lobes"; "all" names every
    value in `present` by its number.
    """
    from medseg.labels import from_names, label_map, label_map_names

    if spec is None:
        resolved = label_map("lobes").short_names()
    elif isinstance(spec, str):
        key = spec.lower()
        if key == "all":
            resolved = {int(v): str(int(v)) for v in sorted(present)}
        elif key in label_map_names():
            resolved = label_map(key).short_names()
        else:
            raise ConfigError(f"unknown label set {spec!r}; choose one of {', '.join([*label_map_names(), 'all'])}")
    elif isinstance(spec, Mapping):
        resolved = from_names({value: name for value, name in spec.items() if int(value) != 0}).short_names()
    else:
        resolved = {int(value): str(int(value)) for value in spec}
    bad = [value for value in resolved if value < 1]
    if bad:
        raise ConfigError(f"label values must be positive (0 is background), got {bad}")
    return resolved


def _label_array(array: np.ndarray, source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """An integer view/copy of a label map (bool -> uint8; whole-number floats -> uint8/int32)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype.kind in "ui":
        return array
    if array.dtype.kind != "f":
        raise InputError(f"not a label map (dtype {array.dtype})", source)
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise InputError("not a label map (non-integer values)", source)
    low, high = (float(rounded.min()), float(rounded.max())) if rounded.size else (0.0, 0.0)
    if low >= 0 and high <= 255:
        return rounded.astype(np.uint8)
    if high > np.iinfo(np.int32).max:
        raise InputError(f"label value {high:g} is too large", source)
    return np.maximum(rounded, 0).astype(np.int32)


def _boxes(array: np.ndarray, max_label: int | None) -> list[tuple[slice, ...] | None]:
    """Bounding box of each label value 1..max (None where absent), in one pass over the array."""
    from scipy import ndimage

    if max_label is not None and max_label < 1:
        return []
    return list(ndimage.find_objects(array, max_label=max_label or 0))


def _union_box(boxes: Sequence[tuple[slice, ...]], shape: Sequence[int], margin: int) -> tuple[slice, ...]:
    return tuple(slice(max(min(b[axis].start for b in boxes) - margin, 0),
                       min(max(b[axis].stop for b in boxes) + margin, shape[axis]))
                 for axis in range(len(shape)))


# --------------------------------------------------------------------------------------------- distances


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a 6-neighbour (2n-neighbour in n-D) outside the mask or outside the array.

    Equal to `mask & ~scipy.ndimage.binary_erosion(mask, cross)` (border_value 0), about 3x faster.
    """
    interior = mask.copy()
    for axis in range(mask.ndim):
        border = [slice(None)] * mask.ndim
        for edge in (0, -1):
            border[axis] = edge
            interior[tuple(border)] = False
    for axis, n in enumerate(mask.shape):
        before, centre, after = ([slice(None)] * mask.ndim for _ in range(3))
        before[axis], centre[axis], after[axis] = slice(0, max(n - 2, 0)), slice(1, max(n - 1, 1)), slice(2, n)
        interior[tuple(centre)] &= mask[tuple(before)] & mask[tuple(after)]
    return mask & ~interior


def surface_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing: Sequence[float],
                      method: DistanceMethod = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of `a` to the surface of `b`, and from `b`'s to `a`'s.

    Both masks must be non-empty. Pass the masks cropped to their joint bounding box plus a 1-voxel margin
    (as `compare_labels` does) so the cost does not grow with the image. `method`: "edt" (Euclidean
    distance transform of the box), "kdtree" (nearest surface voxel) or "auto" (the cheaper one).
    """
    surf_a, surf_b = _surface(mask_a), _surface(mask_b)
    sampling = np.asarray(spacing, dtype=np.float64)
    if method == "auto":
        points = np.count_nonzero(surf_a) + np.count_nonzero(surf_b)
        method = "edt" if mask_a.size <= _EDT_VOXELS_PER_SURFACE_VOXEL * points else "kdtree"
    if method == "edt":
        from scipy.ndimage import distance_transform_edt

        to_b = distance_transform_edt(~surf_b, sampling=sampling)[surf_a]
        to_a = distance_transform_edt(~surf_a, sampling=sampling)[surf_b]
        return to_b, to_a
    if method == "kdtree":
        from scipy.spatial import cKDTree

        index_a, index_b = np.argwhere(surf_a), np.argwhere(surf_b)
        points_a, points_b = index_a * sampling, index_b * sampling

        def nearest(points: np.ndarray, on_other: np.ndarray, other: np.ndarray) -> np.ndarray:
            distances = np.zeros(len(points))  # voxels on both surfaces are at distance 0
            distances[~on_other] = cKDTree(other, leafsize=32).query(points[~on_other], k=1)[0]
            return distances

        to_b = nearest(points_a, surf_b[tuple(index_a.T)], points_b)
        to_a = nearest(points_b, surf_a[tuple(index_b.T)], points_a)
        return to_b, to_a
    raise ValueError(f"unknown distance method {method!r}")


# -------------------------------------------------------------------------------------------------- scores


def _score_label(pred: np.ndarray, ref: np.ndarray, label: int, name: str,
                 box_pred: tuple[slice, ...] | None, box_ref: tuple[slice, ...] | None,
                 spacing: tuple[float, ...], method: DistanceMethod) -> LabelScores:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if box_pred is None and box_ref is None:
        return LabelScores(name, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0, 0.0, math.nan, label, "absent")
    region = _union_box([b for b in (box_pred, box_ref) if b is not None], pred.shape, margin=1)
    a, b = pred[region] == label, ref[region] == label
    n_a, n_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    volume_pred, volume_ref = n_a * voxel_ml, n_b * voxel_ml
    volume_diff = volume_pred - volume_ref
    percent = 100.0 * volume_diff / volume_ref if n_b else math.nan
    if n_a == 0 or n_b == 0:
        status: Status = "missing_in_pred" if n_a == 0 else "missing_in_ref"
        return LabelScores(name, 0.0, 0.0, math.inf, math.inf, volume_pred, volume_ref, volume_diff, percent,
                           label, status)
    overlap = int(np.count_nonzero(a & b))
    dice = 2.0 * overlap / (n_a + n_b)
    iou = overlap / (n_a + n_b - overlap)
    to_ref, to_pred = surface_distances(a, b, spacing, method)
    hd95 = max(float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))
    assd = (float(to_ref.sum()) + float(to_pred.sum())) / (to_ref.size + to_pred.size)
    return LabelScores(name, dice, iou, hd95, assd, volume_pred, volume_ref, volume_diff, percent, label)


def compare_labels(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   labels: LabelSpec = None, *, distance_method: DistanceMethod = "auto",
                   pred_source: str = "", ref_source: str = "") -> SegmentationScores:
    """Score a predicted label map against a reference on the same grid (`spacing` in mm per array axis).

    `labels`: value -> name mapping, a list of values, or "lobes" (default) / "lungs" / "all".
    """
    pred, ref = _label_array(pred, pred_source or "prediction"), _label_array(ref, ref_source or "reference")
    if pred.shape != ref.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {pred.ndim} positive numbers, got {spacing}")
    wanted = None if isinstance(labels, str) and labels.lower() == "all" else resolve_labels(labels)
    max_label = None if wanted is None else max(wanted, default=0)
    boxes_pred, boxes_ref = _boxes(pred, max_label), _boxes(ref, max_label)
    if wanted is None:
        present = {i + 1 for boxes in (boxes_pred, boxes_ref) for i, box in enumerate(boxes) if box is not None}
        wanted = resolve_labels("all", sorted(present))

    def box(boxes: list, value: int) -> tuple[slice, ...] | None:
        return boxes[value - 1] if value <= len(boxes) else None

    per_label = tuple(_score_label(pred, ref, value, name, box(boxes_pred, value), box(boxes_ref, value),
                                   spacing, distance_method) for value, name in wanted.items())
    return SegmentationScores(per_label, spacing, pred=pred_source, ref=ref_source)


def check_same_grid(pred: Any, ref: Any, tolerance_mm: float = GRID_TOLERANCE_MM) -> None:
    """Raise GeometryError (naming both files) unless two `Volume`s share shape and voxel positions."""
    if pred.shape != ref.shape:
        raise GeometryError(f"grid does not match {ref.source}: shape {'x'.join(map(str, pred.shape))} vs "
                            f"{'x'.join(map(str, ref.shape))}", pred.source)
    index = np.array(list(itertools.product(*[(0, max(n - 1, 1)) for n in pred.shape])), dtype=np.float64)
    deviation = float(np.linalg.norm(pred.world(index) - ref.world(index), axis=1).max())
    if deviation > tolerance_mm:

        def fmt(values: Sequence[float]) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        raise GeometryError(
            f"grid does not match {ref.source}: voxel positions differ by up to {deviation:.4g} mm "
            f"(tolerance {tolerance_mm:g}; spacing {fmt(pred.spacing)} vs {fmt(ref.spacing)} mm, "
            f"origin {fmt(pred.affine[:3, 3])} vs {fmt(ref.affine[:3, 3])} mm)", pred.source)


def compare_files(pred_path: str | os.PathLike[str], ref_path: str | os.PathLike[str], labels: LabelSpec = None,
                  *, distance_method: DistanceMethod = "auto",
                  tolerance_mm: float = GRID_TOLERANCE_MM) -> SegmentationScores:
    """Load two label maps (NIfTI/NRRD/MHA), check they share a grid, score them; spacing from the affine."""
    from medseg.io import load_volume

    pred, ref = load_volume(pred_path), load_volume(ref_path)
    pred.source, ref.source = str(pred_path), str(ref_path)
    check_same_grid(pred, ref, tolerance_mm)
    return compare_labels(pred.array, ref.array, pred.spacing, labels, distance_method=distance_method,
                          pred_source=str(pred_path), ref_source=str(ref_path))


# -------------------------------------------------------------------------------------------------- folders


def case_name(path: str | os.PathLike[str]) -> str | None:
    """File name without its volume suffix (.nii.gz, .nii, .nrrd, .mha ...); None for other files."""
    path = Path(path)
    lower = path.name.lower()
    for suffix in _VOLUME_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and case_name(p) is not None)


def find_cases(folder: str | os.PathLike[str], name: str | None = None,
               fallback_name: str | None = None) -> tuple[dict[str, Path], list[str]]:
    """Cases in a folder: case name -> label file, and notes on case folders that were skipped.

    A volume file `CASE.nii.gz` (or .nii/.nrrd/.mha...) is case CASE; a subfolder `CASE/` is case CASE
    when it holds `name` (required when given), else `fallback_name` if present, else its only volume file.
    A file wins over a subfolder of the same case name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder" if not folder.exists() else "not a folder", folder)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    cases: dict[str, Path] = {}
    skipped: list[str] = []
    for path in entries:
        case = case_name(path) if path.is_file() else None
        if case is not None:
            cases.setdefault(case, path)
    for path in entries:
        if not path.is_dir():
            continue
        if path.name in cases:
            log.debug("%s: using %s, not the folder of the same name", path, cases[path.name])
            continue
        if name is not None:
            if (path / name).is_file():
                cases[path.name] = path / name
            elif _volume_files(path):
                skipped.append(f"{path}: no {name}")
            continue
        if fallback_name is not None and (path / fallback_name).is_file():
            cases[path.name] = path / fallback_name
            continue
        files = _volume_files(path)
        if len(files) == 1:
            cases[path.name] = files[0]
        elif len(files) > 1:
            skipped.append(f"{path}: {len(files)} volume files ({', '.join(f.name for f in files)}); "
                           "choose one with --ref-name/--pred-name")
    return cases, skipped


@dataclass
class CasePairs:
    """Matched prediction/reference files of two folders, and what could not be matched."""

    pred_dir: Path
    ref_dir: Path
    pairs: list[tuple[str, Path, Path]]
    missing_pred: list[str] = field(default_factory=list)
    """Reference cases with no prediction."""
    missing_ref: list[str] = field(default_factory=list)
    """Predictions with no reference."""
    skipped: list[str] = field(default_factory=list)
    """Case folders that could not be read as one label file (why)."""

    def warnings(self) -> list[str]:
        notes = []
        if self.missing_pred:
            notes.append(f"{len(self.missing_pred)} reference case(s) in {self.ref_dir} have no prediction: "
                         f"{', '.join(self.missing_pred)}")
        if self.missing_ref:
            notes.append(f"{len(self.missing_ref)} prediction(s) in {self.pred_dir} have no reference: "
                         f"{', '.join(self.missing_ref)}")
        return notes + [f"skipped {note}" for note in self.skipped]


def pair_folders(pred_dir: str | os.PathLike[str], ref_dir: str | os.PathLike[str], ref_name: str | None = None,
                 pred_name: str | None = None) -> CasePairs:
    """Pair cases by name (file name without suffix, or case subfolder name); unmatched cases are logged.

    `ref_name`/`pred_name`: the label file inside case subfolders (e.g. lobes.nii.gz); a prediction
    subfolder without `pred_name` uses `ref_name` if present, else its only volume file.
    Raises InputError when no case pairs up.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, skipped_pred = find_cases(pred_dir, pred_name, fallback_name=ref_name)
    refs, skipped_ref = find_cases(ref_dir, ref_name)
    common = sorted(set(preds) & set(refs))
    result = CasePairs(pred_dir, ref_dir, [(case, preds[case], refs[case]) for case in common],
                       missing_pred=sorted(set(refs) - set(preds)), missing_ref=sorted(set(preds) - set(refs)),
                       skipped=skipped_pred + skipped_ref)
    if not common:
        hint = f"; {result.skipped[0]}" if result.skipped else ""
        raise InputError(f"no case pairs: {len(preds)} prediction(s) in {pred_dir}, {len(refs)} reference(s) "
                         f"in {ref_dir}, no case names in common{hint}")
    for warning in result.warnings():
        log.warning(warning)
    return result


@dataclass
class FolderScores:
    """Scores of every paired case (iterate for `(case, SegmentationScores)`) and their per-label summary."""

    cases: list[tuple[str, SegmentationScores]]
    summary: dict[str, Any]
    missing_pred: list[str] = field(default_factory=list)
    missing_ref: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pred_dir: str = ""
    ref_dir: str = ""

    def __iter__(self):
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pred_dir": self.pred_dir,
            "ref_dir": self.ref_dir,
            "cases": {case: scores.to_dict() for case, scores in self.cases},
            "summary": _jsonable(self.summary),
            "missing_pred": list(self.missing_pred),
            "missing_ref": list(self.missing_ref),
            "skipped": list(self.skipped),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float):
        return _json_number(value)
    return value


def _finite(values: Iterable[float]) -> list[float]:
    return [value for value in values if math.isfinite(value)]


def _stats(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample sd (NaN below 2 values), min, max."""
    data = np.asarray(values, dtype=np.float64)
    if not data.size:
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"n": int(data.size), "mean": float(data.mean()),
            "std": float(data.std(ddof=1)) if data.size > 1 else math.nan,
            "min": float(data.min()), "max": float(data.max())}


def summarize(cases: Sequence[tuple[str, SegmentationScores]]) -> dict[str, Any]:
    """Per-label statistics over cases whose reference holds the label.

    Dice/IoU include the zeros of labels missing from the prediction; HD95/ASSD statistics use the finite
    values only (`n_missing_pred` counts the rest). `mean_dice`: statistics of the per-case mean Dice.
    """
    by_name: dict[str, list[LabelScores]] = {}
    for _, scores in cases:
        for label_scores in scores.per_label:
            by_name.setdefault(label_scores.name, []).append(label_scores)
    labels: dict[str, Any] = {}
    for name, items in by_name.items():
        scored = [s for s in items if s.in_reference]
        labels[name] = {
            "label": items[0].label,
            "n": len(scored),
            "n_missing_pred": sum(s.status == "missing_in_pred" for s in items),
            "n_missing_ref": sum(s.status == "missing_in_ref" for s in items),
            **{metric: _stats(_finite(getattr(s, metric) for s in scored))
               for metric in ("dice", "iou", "hd95_mm", "assd_mm", "volume_diff_percent")},
        }
    return {
        "n_cases": len(cases),
        "mean_dice": _stats(_finite(scores.mean_dice for _, scores in cases)),
        "labels": labels,
    }


def evaluate_pairs(pairs: CasePairs, labels: LabelSpec = None, *, distance_method: DistanceMethod = "auto",
                   on_case: CaseCallback | None = None) -> FolderScores:
    """Score each pair with `compare_files`; `on_case(done, total, case)` after each case."""
    results: list[tuple[str, SegmentationScores]] = []
    for done, (case, pred_path, ref_path) in enumerate(pairs.pairs, start=1):
        scores = compare_files(pred_path, ref_path, labels, distance_method=distance_method)
        log.info("%s: mean Dice %.4f", case, scores.mean_dice)
        results.append((case, scores))
        if on_case is not None:
            on_case(done, len(pairs.pairs), case)
    return FolderScores(results, summarize(results), missing_pred=list(pairs.missing_pred),
                        missing_ref=list(pairs.missing_ref), skipped=list(pairs.skipped),
                        pred_dir=str(pairs.pred_dir), ref_dir=str(pairs.ref_dir))


def evaluate_folder(pred_dir: str | os.PathLike[str], ref_dir: str | os.PathLike[str], labels: LabelSpec = None,
                    ref_name: str | None = None, *, pred_name: str | None = None,
                    distance_method: DistanceMethod = "auto", on_case: CaseCallback | None = None) -> FolderScores:
    """Pair the cases of two folders (`pair_folders`) and score every pair (`evaluate_pairs`)."""
    pairs = pair_folders(pred_dir, ref_dir, ref_name=ref_name, pred_name=pred_name)
    return evaluate_pairs(pairs, labels, distance_method=distance_method, on_case=on_case)


# ------------------------------------------------------------------------------------------------------ CSV

CSV_COLUMNS = ("case", "label", "name", "status", "dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml",
               "volume_ref_ml", "volume_diff_ml", "volume_diff_percent")


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return value


def write_scores_csv(cases: Sequence[tuple[str, SegmentationScores]], path: str | os.PathLike[str]) -> Path:
    """Write one row per case and label, atomically. NaN is written empty, infinity as "inf"."""
    from medseg.io.atomic import write_atomically

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for case, scores in cases:
                for s in scores.per_label:
                    writer.writerow([case, s.label, s.name, s.status,
                                     *(_csv_value(getattr(s, column)) for column in CSV_COLUMNS[4:])])

    return write_atomically(path, write)
