"""Write a volume as a valid DICOM CT Image Storage series (for phantoms, demos and tests)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, RLELossless, generate_uid

from medseg.io.atomic import atomic_path
from medseg.io.volume import lps_to_ras

__all__ = ["CT_IMAGE_STORAGE", "SeriesInfo", "file_meta", "write_ct_series"]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_WINDOWS = {"LUNG": (-600, 1500), "MEDIASTINUM": (40, 400)}


@dataclass(frozen=True)
class SeriesInfo:
    """Identifying attributes of a written series; UIDs are generated when left empty."""

    patient_id: str = "MEDSEG-PHANTOM"
    patient_name: str = "Phantom^Medseg"
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    series_number: int = 1
    series_description: str = "medseg synthetic CT"
    modality: str = "CT"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    patient_position: str = "HFS"
    slice_thickness: float | None = None
    """Nominal SliceThickness (mm); defaults to the slice spacing."""
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    pixel_padding_value: int | None = None
    study_date: str = ""
    """StudyDate/SeriesDate (YYYYMMDD); today when empty. Fix it (with the UIDs) for byte-identical output."""


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta information for an uncompressed explicit-VR little-endian object."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _base_dataset(info: SeriesInfo, rows: int, cols: int, uids: dict[str, str]) -> Dataset:
    now = dt.datetime.strptime(info.study_date, "%Y%m%d") if info.study_date else dt.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.SeriesDate = ds.StudyDate
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = info.modality
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = info.series_number
    ds.SeriesDescription = info.series_description
    ds.PatientPosition = info.patient_position
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "medseg"
    ds.ImageType = list(info.image_type)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = f"{info.rescale_intercept:g}"
    ds.RescaleSlope = f"{info.rescale_slope:g}"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.WindowCenter = [str(c) for c, _ in _WINDOWS.values()]
    ds.WindowWidth = [str(w) for _, w in _WINDOWS.values()]
    ds.WindowCenterWidthExplanation = list(_WINDOWS)
    if info.pixel_padding_value is not None:
        ds.PixelPaddingValue = int(info.pixel_padding_value)
    return ds


def write_ct_series(
    hu: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | os.PathLike[str],
    info: SeriesInfo | None = None,
    *,
    file_names: list[str] | None = None,
    compress_rle: bool = False,
) -> list[Path]:
    """Write `hu[i, j, k]` (voxel (i, j, k) at `affine_ras @ (i, j, k, 1)`) as one file per slice k.

    Columns of the affine give the row direction * column spacing, the column direction * row spacing and
    the slice step; a step that is not along the slice normal makes a gantry-tilted (sheared) series.
    Files are written atomically; `file_names` overrides the default `slice_0001.dcm`... names. SOP
    instance UIDs derive from the series UID, so fixed `info` UIDs and date give identical files.
    """
    info = info or SeriesInfo()
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3D (i, j, k), got shape {hu.shape}")
    affine_lps = lps_to_ras(np.asarray(affine_ras, dtype=np.float64))
    dx, dy = (float(np.linalg.norm(affine_lps[:3, axis])) for axis in (0, 1))
    row_dir, col_dir = affine_lps[:3, 0] / dx, affine_lps[:3, 1] / dy
    normal = np.cross(row_dir, col_dir)
    spacing = abs(float(affine_lps[:3, 2] @ normal))
    cols, rows, slices = hu.shape
    names = file_names or [f"slice_{k + 1:04d}.dcm" for k in range(slices)]
    if len(names) != slices:
        raise ValueError(f"{len(names)} file names for {slices} slices")
    uids = {
        "study": info.study_uid or generate_uid(),
        "series": info.series_uid or generate_uid(),
        "frame": info.frame_of_reference_uid or generate_uid(),
    }
    stored = np.rint((hu.astype(np.float64) - info.rescale_intercept) / info.rescale_slope)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = _base_dataset(info, rows, cols, uids)
    written = []
    for k in range(slices):
        ds = Dataset()
        ds.update(template)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["series"], str(k)])
        ds.InstanceNumber = k + 1
        position = affine_lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row_dir, col_dir])]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.SliceThickness = f"{info.slice_thickness or spacing:.6f}"
        ds.SliceLocation = f"{float(position[:3] @ normal):.6f}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.file_meta = file_meta(CT_IMAGE_STORAGE, ds.SOPInstanceUID)
        if compress_rle:
            ds.compress(RLELossless)
        target = folder / names[k]
        with atomic_path(target) as temporary:
            ds.save_as(temporary, enforce_file_format=True)
        written.append(target)
    return written
