"""Image input/output with exact geometry: DICOM series, NIfTI/NRRD/MHA volumes, radiographs."""

from medseg.io.dicom_discovery import Discovery, Series, SliceHeader, discover_dicom, group_series
from medseg.io.dicom_series import ReadOptions, read_series
from medseg.io.loader import DicomStudy, load_volume, require_ct, scan_dicom
from medseg.io.series_selection import Selection, SelectionRules, select_series
from medseg.io.volume import AIR_HU, Volume, check_affine, lps_to_ras
from medseg.io.volume_files import read_itk_image, read_nifti, write_nifti
from medseg.io.xray import Radiograph, is_radiograph_file, read_radiograph

__all__ = [
    "AIR_HU",
    "DicomStudy",
    "Discovery",
    "Radiograph",
    "ReadOptions",
    "Selection",
    "SelectionRules",
    "Series",
    "SliceHeader",
    "Volume",
    "check_affine",
    "discover_dicom",
    "group_series",
    "is_radiograph_file",
    "load_volume",
    "lps_to_ras",
    "read_itk_image",
    "read_nifti",
    "read_radiograph",
    "read_series",
    "require_ct",
    "scan_dicom",
    "select_series",
    "write_nifti",
]
