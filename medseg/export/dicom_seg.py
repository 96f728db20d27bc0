"""DICOM SEG export: label maps on a CT series' own acquired slices (highdicom), and reading them back.

A SEG frame must lie exactly on a source image, so the label array (medseg's (i, j, k) RAS grid, the
same array written to NIfTI) is mapped to each source file's (row, column) pixel grid from geometry:
ImagePositionPatient / ImageOrientationPatient / PixelSpacing against `volume.affine`, never by
assuming an axis order. A multi-frame (enhanced) source is referenced frame by frame, each frame placed
by its functional groups. Volumes that were resampled while loading (gantry tilt, uneven spacing) have
no acquired slices to reference and are refused.

Segments are coded from the label registry (`medseg.labels`, `configs/labels/*.yaml`): category CID 7150,
type from DICOM's own vocabulary (CID 6170 "Lobe of Lung", "Lung") with the laterality (CID 244) in the
Segmented Property Type Modifier Code Sequence, anatomic region "Lung" for lobes. A model's labels map to
codes by name, so the codes follow the model card whatever its label order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

import medseg
from medseg.errors import ConfigError, DicomError, GeometryError, InputError
from medseg.io.atomic import atomic_path
from medseg.io.dicom_multiframe import frame_geometry
from medseg.io.volume import Volume, lps_to_ras
from medseg.labels import Coded, LabelMap, label_map_names
from medseg.labels import label_map as registered_map
from medseg.labels import resolve_label_map as resolve_labels

__all__ = [
    "SEGMENTATION_STORAGE",
    "DicomSegResult",
    "Structure",
    "read_dicom_seg_labels",
    "resolve_label_map",
    "write_dicom_seg",
]

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
POSITION_TOLERANCE_MM = 1e-3
"""Largest in-plane offset (and frame-to-source position difference) accepted, in mm."""
SLICE_TOLERANCE_FRACTION = 0.01
"""Through-plane offset accepted between a source slice and its label plane, as a fraction of the slice
step (the loader's default uneven-spacing tolerance), never below `POSITION_TOLERANCE_MM`."""

@dataclass(frozen=True)
class Structure:
    """A label as DICOM SEG codes it: segment label, category, type (+ laterality modifier), region, colour."""

    name: str
    label: str
    category: Code
    code: Code
    modifier: Code | None
    region: Code | None
    rgb: tuple[int, int, int]

    @property
    def key(self) -> tuple[str, str, str]:
        """(type scheme, type value, laterality value) identifying the structure when a SEG is read back."""
        return self.code.scheme_designator, self.code.value, self.modifier.value if self.modifier else ""


LabelMapLike = LabelMap | Mapping[int, str] | str


def _code(coded: Coded) -> Code:
    return Code(coded.value, coded.scheme, coded.meaning)


def resolve_label_map(label_map: LabelMapLike, path: str | os.PathLike[str] | None = None) -> dict[int, Structure]:
    """Label value -> `Structure` for a registry name ("lobes", "lungs"), a model card's {value: name} mapping
    or a `medseg.labels.LabelMap`; every label must have DICOM codes in `configs/labels/`."""
    try:
        labels = resolve_labels(label_map, path)
    except ConfigError as exc:
        raise InputError(str(exc), path) from None
    resolved: dict[int, Structure] = {}
    for label in labels.foreground:
        if label.type is None or label.category is None:
            raise InputError(f"label {label.value} {label.name!r} has no DICOM codes for DICOM SEG; coded labels: "
                             f"{', '.join(sorted(_coded_names()))} (configs/labels/)", path)
        structure = Structure(label.name, label.display, _code(label.category), _code(label.type),
                              _code(label.laterality_code) if label.laterality_code else None,
                              _code(label.region) if label.region else None, label.colour)
        twin = next((v for v, s in resolved.items() if s.key == structure.key), None)
        if twin is not None:
            raise InputError(f"label values {twin} and {label.value} both code {structure.code.meaning}"
                             f"{' ' + structure.modifier.meaning if structure.modifier else ''}", path)
        resolved[label.value] = structure
    if not resolved:
        raise InputError("the label map is empty", path)
    return resolved


def _coded_names() -> set[str]:
    return {label.name for name in label_map_names() for label in registered_map(name).foreground if label.type}


@dataclass(frozen=True)
class DicomSegResult:
    """What `write_dicom_seg` wrote."""

    path: Path
    segments: dict[int, str]
    """Segment number -> structure name."""
    label_values: dict[int, int]
    """Segment number -> label value in the input array."""
    skipped: dict[int, str] = field(default_factory=dict)
    """Label value -> structure name of labels absent from the mask (no segment written)."""
    frames: int = 0
    source_images: int = 0


# ------------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class _Plane:
    """Where a (rows, columns) image lies on a label grid: one fixed axis, one axis per image direction."""

    axis: int
    index: int
    row_axis: int
    row_start: int
    row_step: int
    col_axis: int
    col_start: int
    col_step: int
    rows: int
    cols: int

    @property
    def key(self) -> tuple[int, int]:
        return self.axis, self.index

    def region(self, labels: np.ndarray) -> np.ndarray:
        """A (rows, columns) view of `labels` in the image's pixel order (writable)."""
        index: list[int | slice] = [0, 0, 0]
        index[self.axis] = self.index
        for axis, start, step, count in ((self.row_axis, self.row_start, self.row_step, self.rows),
                                         (self.col_axis, self.col_start, self.col_step, self.cols)):
            stop = start + step * count
            index[axis] = slice(start, None if stop < 0 else stop, step)
        view = labels[tuple(index)]
        return view.T if self.col_axis < self.row_axis else view


def _image_plane(position, orientation, spacing, rows: int, cols: int, affine_lps: np.ndarray,
                 shape: tuple[int, ...], where: str) -> _Plane:
    """Map an image plane (DICOM LPS attributes) onto the voxel grid of `affine_lps`, or raise GeometryError."""
    orientation = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    dy, dx = (float(v) for v in spacing)
    matrix = affine_lps[:3, :3]
    inverse = np.linalg.inv(matrix)
    steps = {}
    for name, direction, count in (("column", row_dir * dx, cols), ("row", col_dir * dy, rows)):
        step = inverse @ direction          # voxel index change per pixel along this image direction
        axis = int(np.argmax(np.abs(step)))
        sign = 1 if step[axis] > 0 else -1
        unit = np.zeros(3)
        unit[axis] = sign
        drift = float(np.linalg.norm(matrix @ (step - unit))) * max(count - 1, 1)
        if drift > POSITION_TOLERANCE_MM:
            raise GeometryError(
                f"the image's {name} direction/spacing does not follow a label-grid axis "
                f"({drift:.3g} mm off across the image); the mask grid is not this image's pixel grid", where)
        steps[name] = (axis, sign)
    (col_axis, col_step), (row_axis, row_step) = steps["column"], steps["row"]
    if col_axis == row_axis:
        raise GeometryError("image rows and columns map to the same label-grid axis", where)
    axis = 3 - col_axis - row_axis
    start = inverse @ (np.asarray(position, dtype=np.float64) - affine_lps[:3, 3])
    rounded = np.rint(start)
    offset = matrix @ (start - rounded)
    normal = np.cross(row_dir, col_dir)
    through, in_plane = abs(float(offset @ normal)), float(np.linalg.norm(offset - (offset @ normal) * normal))
    slice_step = abs(float(matrix[:, axis] @ normal))
    if in_plane > POSITION_TOLERANCE_MM or through > max(POSITION_TOLERANCE_MM, SLICE_TOLERANCE_FRACTION * slice_step):
        raise GeometryError(
            f"this acquired slice is not on the label grid (nearest voxel centre {in_plane:.3g} mm "
            f"off in-plane, {through:.3g} mm off along the normal); a DICOM SEG must reference acquired "
            "slices", where)
    start_index = rounded.astype(int)
    plane = _Plane(axis, int(start_index[axis]), row_axis, int(start_index[row_axis]), row_step,
                   col_axis, int(start_index[col_axis]), col_step, rows, cols)
    for grid_axis, first, step, count in ((axis, plane.index, 1, 1), (row_axis, plane.row_start, row_step, rows),
                                          (col_axis, plane.col_start, col_step, cols)):
        last = first + step * (count - 1)
        if min(first, last) < 0 or max(first, last) >= shape[grid_axis]:
            raise GeometryError(f"the image extends beyond the label grid (axis {grid_axis}: voxels "
                                f"{min(first, last)}..{max(first, last)} of {shape[grid_axis]})", where)
    return plane


def _source_plane(ds: Dataset, affine_lps: np.ndarray, shape: tuple[int, ...], where: str) -> _Plane:
    spacing = ds.get("PixelSpacing")
    if ds.get("ImagePositionPatient") is None or ds.get("ImageOrientationPatient") is None or not spacing:
        raise DicomError("ImagePositionPatient/ImageOrientationPatient/PixelSpacing missing", where)
    return _image_plane(ds.ImagePositionPatient, ds.ImageOrientationPatient, spacing, int(ds.Rows),
                        int(ds.Columns), affine_lps, shape, where)


# ------------------------------------------------------------------------------------------------ sources

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_TYPE2_EMPTY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


def _read_sources(volume: Volume) -> list[Dataset]:
    """Headers of the volume's source files (one per slice, or the one multi-frame file), checked to be one
    referenceable series."""
    paths = list(dict.fromkeys(volume.slice_files))
    datasets = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except FileNotFoundError as exc:
            raise InputError("source DICOM slice no longer exists", path) from exc
        except Exception as exc:
            raise DicomError(f"cannot re-read the source DICOM slice ({exc})", path) from exc
        missing = [kw for kw in _REQUIRED_UIDS if not str(ds.get(kw, "") or "").strip()]
        if missing:
            raise InputError(f"source slice has no {'/'.join(missing)} (anonymised without UIDs?); a DICOM SEG "
                             "must reference its source study, series, images and frame of reference", path)
        for keyword in _TYPE2_EMPTY:        # Type 2: may be empty, and highdicom copies them
            if keyword not in ds:
                setattr(ds, keyword, "")
        if "Modality" not in ds:
            ds.Modality = volume.modality or "OT"
        datasets.append(ds)
    first = datasets[0]
    for ds, path in zip(datasets, paths, strict=True):
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if ds.get(keyword) != first.get(keyword):
                raise InputError(f"{keyword} differs from {os.path.basename(paths[0])}: not one series", path)
    expected = volume.tags.get("SeriesInstanceUID")
    if expected and expected != first.SeriesInstanceUID:
        raise InputError(f"slice files belong to series {first.SeriesInstanceUID}, not the volume's {expected}",
                         paths[0])
    if len({ds.SOPInstanceUID for ds in datasets}) != len(datasets):
        raise InputError("several slice files share one SOPInstanceUID", volume.source)
    return datasets


def _source_images(volume: Volume, datasets: list[Dataset]) -> dict[tuple[str, int], tuple[Dataset, str]]:
    """(SOPInstanceUID, 1-based frame number or 0 for a single-frame file) -> (dataset holding that image's
    ImagePositionPatient / ImageOrientationPatient / PixelSpacing, how messages name it), slice order k = 0, 1, ..."""
    if volume.slice_frames:
        source = datasets[0]
        geometry = frame_geometry(source)
        return {(str(source.SOPInstanceUID), frame + 1): (geometry[frame], f"{volume.slice_files[0]} frame {frame + 1}")
                for frame in volume.slice_frames}
    return {(str(ds.SOPInstanceUID), 0): (ds, file) for ds, file in zip(datasets, volume.slice_files, strict=True)}


def _source_planes(images: dict[tuple[str, int], tuple[Dataset, str]], affine_lps: np.ndarray,
                   shape: tuple[int, ...]) -> dict[tuple[str, int], _Plane]:
    """Each source image's plane on the label grid."""
    return {key: _source_plane(ds, affine_lps, shape, where) for key, (ds, where) in images.items()}


def _require_acquired_slices(volume: Volume, path: Path) -> None:
    if volume.slice_files:
        return
    if volume.tags.get("SeriesInstanceUID"):
        reason = "; ".join(volume.notes) or "its slices are not the acquired ones"
        raise GeometryError(f"a DICOM SEG must reference acquired slices, but this volume was resampled while "
                            f"loading ({reason}); no SEG frame would lie on a source image. The NIfTI label map "
                            "on the resampled grid is unaffected", volume.source or path)
    raise InputError(f"DICOM SEG needs the source DICOM series; this volume was read from "
                     f"{volume.source or 'an in-memory array'}", volume.source or path)


def _check_labels(labels: np.ndarray, volume: Volume, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise InputError(f"label array shape {labels.shape} differs from the CT volume's {volume.shape} "
                         f"({volume.source}); labels must be on the series' own grid", path)
    if labels.dtype.kind not in "biuf":
        raise InputError(f"label array has dtype {labels.dtype}; expected integers", path)
    if labels.size and (labels.min() < 0 or labels.max() > 255 or
                        (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)))):
        raise InputError("label values must be integers in 0..255", path)
    return labels.astype(np.uint8, copy=False)


# ------------------------------------------------------------------------------------------------ writing


def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    label_map: LabelMapLike = "lobes",
    series_description: str = "medseg lobes",
    series_number: int = 300,
    algorithm_name: str = "medseg",
    algorithm_version: str = medseg.__version__,
    manufacturer: str = "medseg",
) -> DicomSegResult:
    """Write `labels` (uint8, on `volume`'s grid, as written to NIfTI) as a BINARY DICOM SEG, atomically.

    One segment per label present (absent labels are skipped, logged and reported); one frame per source
    slice and segment with pixels. Raises InputError / GeometryError naming the file and the problem.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    _require_acquired_slices(volume, path)
    labels = _check_labels(labels, volume, path)
    structures = resolve_label_map(label_map, path)
    present = set(np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist()) - {0}
    unnamed = sorted(present - set(structures))
    if unnamed:
        raise InputError(f"label value(s) {unnamed} have no name in the label map "
                         f"({ {v: s.name for v, s in structures.items()} })", path)
    skipped = {value: s.name for value, s in sorted(structures.items()) if value not in present}
    for value, name in skipped.items():
        log.info("%s: label %d (%s) is absent from the mask; no segment written", path, value, name)
    kept = [value for value in sorted(structures) if value in present]
    if not kept:
        raise InputError("the label array is empty: nothing to export as DICOM SEG", path)

    datasets = _read_sources(volume)
    affine_lps = lps_to_ras(volume.affine)
    images = _source_images(volume, datasets)
    sources = _source_planes(images, affine_lps, volume.shape)
    planes = list(sources.values())
    _check_planes(planes, labels, volume)
    to_segment = np.zeros(256, dtype=np.uint8)
    to_segment[kept] = np.arange(1, len(kept) + 1)
    if volume.slice_frames:  # one SEG frame per source frame, in the source's frame order (others stay empty)
        frames = np.zeros((int(datasets[0].NumberOfFrames), planes[0].rows, planes[0].cols), dtype=np.uint8)
        for (_, number), plane in sources.items():
            frames[number - 1] = to_segment[plane.region(labels)]
    else:
        frames = np.stack([to_segment[plane.region(labels)] for plane in planes])

    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=codes.cid7162.ArtificialIntelligence,
                                                   version=algorithm_version)
    descriptions = [_segment_description(number, structures[value], algorithm)
                    for number, value in enumerate(kept, start=1)]
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=manufacturer,
            manufacturer_model_name=algorithm_name, software_versions=algorithm_version,
            device_serial_number="0", series_description=series_description,
            content_description=series_description[:64],
        )
    except ValueError as exc:
        raise InputError(f"highdicom refused the segmentation: {exc}", volume.source or path) from exc
    _verify_frames(seg, images, datasets[0].SeriesInstanceUID, volume.slice_files[0])
    with atomic_path(path) as temporary:
        seg.save_as(temporary)
    return DicomSegResult(
        path=path,
        segments={number: structures[value].name for number, value in enumerate(kept, start=1)},
        label_values={number: value for number, value in enumerate(kept, start=1)},
        skipped=skipped,
        frames=int(seg.NumberOfFrames),
        source_images=len(datasets),
    )


def _segment_description(number: int, structure: Structure, algorithm: Any) -> Any:
    """highdicom's segment description plus the laterality modifiers it has no argument for."""
    import highdicom as hd

    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=structure.label, segmented_property_category=structure.category,
        segmented_property_type=structure.code, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[structure.region] if structure.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*structure.rgb),
    )
    if structure.modifier is not None:
        modifier = hd.sr.CodedConcept.from_code(structure.modifier)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        if structure.region is not None:
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                hd.sr.CodedConcept.from_code(structure.modifier)]
    return description


def _check_planes(planes: list[_Plane], labels: np.ndarray, volume: Volume) -> None:
    """Source slices lie on distinct planes of one axis and together hold every labelled voxel."""
    keys = [plane.key for plane in planes]
    if len({axis for axis, _ in keys}) > 1:
        raise GeometryError("source slices map to different axes of the label grid", volume.source)
    if len(set(keys)) != len(keys):
        first = next(i for i, key in enumerate(keys) if keys.index(key) != i)
        raise GeometryError(f"two source slices map to the same label plane {keys[first]}",
                            volume.slice_files[first])
    covered = sum(int(np.count_nonzero(plane.region(labels))) for plane in planes)
    total = int(np.count_nonzero(labels))
    if covered != total:
        raise GeometryError(f"{total - covered} labelled voxel(s) lie off the acquired slices; a DICOM SEG can "
                            "only describe voxels of its source images", volume.source)


def _verify_frames(seg: Dataset, images: dict[tuple[str, int], tuple[Dataset, str]], series_uid: str,
                   where: str) -> None:
    """Every frame references a source image (and frame) and sits at its position, orientation and pixel spacing."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    series = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
    if series != {series_uid}:
        raise GeometryError(f"SEG references series {sorted(series)}, not {series_uid}", where)
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        key = _referenced_image(item)
        if key not in images:
            raise GeometryError(f"SEG frame {number} references an image outside the series ({key[0]}"
                                f"{f' frame {key[1]}' if key[1] else ''})", where)
        ds, file = images[key]
        orientation = (item.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[0]
        measures = (item.get("PixelMeasuresSequence") or shared.PixelMeasuresSequence)[0]
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        error = float(np.abs(position - np.array(ds.ImagePositionPatient, dtype=float)).max())
        if (error > POSITION_TOLERANCE_MM
                or not np.allclose(np.array(orientation.ImageOrientationPatient, dtype=float),
                                   np.array(ds.ImageOrientationPatient, dtype=float), atol=1e-6)
                or not np.allclose(np.array(measures.PixelSpacing, dtype=float),
                                   np.array(ds.PixelSpacing, dtype=float), rtol=1e-6)):
            raise GeometryError(f"SEG frame {number} does not lie on its source image (position off by "
                                f"{error:.3g} mm, or orientation/spacing differ)", file)


def _referenced_image(item: Dataset) -> tuple[str, int]:
    """(ReferencedSOPInstanceUID, ReferencedFrameNumber or 0) of a SEG frame's source image."""
    source = item.DerivationImageSequence[0].SourceImageSequence[0]
    frame = source.get("ReferencedFrameNumber")
    if isinstance(frame, (list, tuple, pydicom.multival.MultiValue)):
        frame = frame[0] if len(frame) == 1 else None
    return str(source.ReferencedSOPInstanceUID), int(frame) if frame not in (None, "") else 0


# ------------------------------------------------------------------------------------------------ reading


def _segment_values(seg, label_map: LabelMapLike | None, path: Path) -> dict[int, int]:
    """Segment number -> label value, matching segments by property type and laterality modifier."""
    types = {}
    for description in seg.SegmentSequence:
        code = description.SegmentedPropertyTypeCodeSequence[0]
        modifiers = code.get("SegmentedPropertyTypeModifierCodeSequence") or []
        types[int(description.SegmentNumber)] = (str(code.CodingSchemeDesignator), str(code.CodeValue),
                                                 str(modifiers[0].CodeValue) if modifiers else "")
    candidates = [label_map] if label_map is not None else label_map_names()
    for candidate in candidates:
        by_code = {s.key: value for value, s in resolve_label_map(candidate, path).items()}
        if all(code in by_code for code in types.values()):
            return {number: by_code[code] for number, code in types.items()}
    unknown = sorted({f"{scheme} {value}{' (' + modifier + ')' if modifier else ''}"
                      for scheme, value, modifier in types.values()})
    raise InputError(f"SEG segment types {unknown} do not all belong to label map "
                     f"{label_map if label_map is not None else ' or '.join(label_map_names())}", path)


def read_dicom_seg_labels(seg_path: str | os.PathLike[str], volume: Volume, *,
                          label_map: LabelMapLike | None = None) -> np.ndarray:
    """Rebuild a uint8 label array on `volume`'s grid from a BINARY DICOM SEG (for tests and QA).

    Frames are placed by their own position/orientation; when `volume` has its slice files, each frame's
    ReferencedSOPInstanceUID must name the slice at that place. Segments map to label values by their
    SNOMED CT codes in `label_map` (default: "lobes" or "lungs", whichever holds every segment).
    """
    import highdicom as hd

    path = Path(seg_path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise InputError(f"not a readable DICOM SEG ({exc})", path) from exc
    if seg.SOPClassUID != SEGMENTATION_STORAGE or seg.SegmentationType != "BINARY":
        raise InputError(f"not a BINARY Segmentation Storage object ({seg.SOPClassUID}, "
                         f"{seg.get('SegmentationType')})", path)
    frame_of_reference = volume.tags.get("FrameOfReferenceUID")
    if frame_of_reference and seg.get("FrameOfReferenceUID") != frame_of_reference:
        raise GeometryError(f"SEG frame of reference {seg.get('FrameOfReferenceUID')} differs from the volume's "
                            f"{frame_of_reference}", path)
    values = _segment_values(seg, label_map, path)
    affine_lps = lps_to_ras(volume.affine)
    shared = seg.SharedFunctionalGroupsSequence[0]
    source_planes = (_source_planes(_source_images(volume, _read_sources(volume)), affine_lps, volume.shape)
                     if volume.slice_files else {})

    labels = np.zeros(volume.shape, dtype=np.uint8)
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        orientation = (item.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[0]
        measures = (item.get("PixelMeasuresSequence") or shared.PixelMeasuresSequence)[0]
        plane = _image_plane(item.PlanePositionSequence[0].ImagePositionPatient,
                             orientation.ImageOrientationPatient, measures.PixelSpacing, int(seg.Rows),
                             int(seg.Columns), affine_lps, volume.shape, f"{path} frame {number}")
        if source_planes:
            key = _referenced_image(item)
            if source_planes.get(key) != plane:
                where = "is not in this series" if key not in source_planes else "lies elsewhere"
                image = f"{key[0]}{f' frame {key[1]}' if key[1] else ''}"
                raise GeometryError(f"frame {number} references image {image}, which {where}", path)
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        segment = int(identification[0].ReferencedSegmentNumber)  # shared when there is a single segment
        plane.region(labels)[seg.get_stored_frame(number) > 0] = values[segment]
    return labels
