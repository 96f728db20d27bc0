"""Write a synthetic radiograph as DICOM Digital X-Ray Image Storage - For Presentation (DX, 12-bit)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from medseg.data.radiograph.detector import DISPLAY_WINDOW
from medseg.io.atomic import atomic_path
from medseg.io.dicom_write import file_meta

__all__ = ["DX_FOR_PRESENTATION", "DxInfo", "deterministic_uid", "write_dx"]

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
"""SOP Class: Digital X-Ray Image Storage - For Presentation."""
_BITS_STORED = 12
_MAX = 2**_BITS_STORED - 1


def deterministic_uid(*parts: object) -> str:
    """A valid UID derived from `parts` (same parts, same UID), under pydicom's UID root."""
    return str(generate_uid(entropy_srcs=[str(part) for part in parts]))


@dataclass(frozen=True)
class DxInfo:
    """Identifying and acquisition attributes of one radiograph (UIDs are required: pass deterministic ones)."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    imager_pixel_spacing: float          # mm at the detector
    magnification: float = 1.0           # estimated radiographic magnification (PixelSpacing = imager / this)
    window_centre: float = DISPLAY_WINDOW[0]
    window_width: float = DISPLAY_WINDOW[1]
    monochrome1: bool = False
    patient_name: str = "Synthetic^Chest"
    acquisition_date: dt.date = dt.date(2020, 1, 1)
    sid_mm: float = 1800.0
    source_patient_mm: float | None = None
    kvp: float = 120.0
    description: str = "medseg synthetic PA chest"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _dataset(stored: np.ndarray, info: DxInfo) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = info.sop_uid
    ds.ImageType = ["DERIVED", "PRIMARY"]
    date, time = info.acquisition_date.strftime("%Y%m%d"), "120000"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "medseg"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST PA"
    ds.SeriesDescription = info.description
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.AnatomicRegionSequence = [_code("43799004", "SCT", "Chest")]
    ds.KVP = f"{info.kvp:g}"
    ds.DistanceSourceToDetector = f"{info.sid_mm:.1f}"
    if info.source_patient_mm is not None:
        ds.DistanceSourceToPatient = f"{info.source_patient_mm:.1f}"
    ds.EstimatedRadiographicMagnificationFactor = f"{info.magnification:.4f}"
    ds.ImagerPixelSpacing = [f"{info.imager_pixel_spacing:.6f}"] * 2
    ds.PixelSpacing = [f"{info.imager_pixel_spacing / info.magnification:.6f}"] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "imager pixel spacing / estimated magnification at mid-chest"
    ds.DetectorType = "SCINTILLATOR"
    ds.ViewPosition = "PA"
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if info.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, _BITS_STORED, _BITS_STORED - 1, 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if info.monochrome1 else -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    centre = (_MAX + 1) - info.window_centre if info.monochrome1 else info.window_centre
    ds.WindowCenter, ds.WindowWidth = f"{centre:g}", f"{info.window_width:g}"
    ds.VOILUTFunction = "LINEAR"
    ds.WindowCenterWidthExplanation = "DISPLAY"
    return ds


def write_dx(path: str | os.PathLike[str], stored: np.ndarray, info: DxInfo) -> Path:
    """Write `stored` (uint16 0..4095, rows x columns, higher = more attenuation, i.e. MONOCHROME2) atomically.

    With `info.monochrome1` the stored values are inverted (4095 - v) and the window centre mirrored, so a
    viewer that applies the window and then inverts MONOCHROME1 shows exactly the MONOCHROME2 picture.
    """
    stored = np.asarray(stored)
    if stored.ndim != 2 or stored.dtype != np.uint16 or int(stored.max(initial=0)) > _MAX:
        raise ValueError(f"stored must be a 2D uint16 array within 0..{_MAX}")
    ds = _dataset(stored, info)
    pixels = (_MAX - stored).astype(np.uint16) if info.monochrome1 else stored
    ds.PixelData = np.ascontiguousarray(pixels).astype("<u2").tobytes()
    ds.file_meta = file_meta(DX_FOR_PRESENTATION, ds.SOPInstanceUID)
    with atomic_path(path) as temporary:
        ds.save_as(temporary, enforce_file_format=True)
    return Path(path)
