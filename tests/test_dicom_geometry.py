"""Acceptance: medseg's NIfTI of a synthetic DICOM series matches SimpleITK's reading of it exactly."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import load_volume, write_nifti
from medseg.io.dicom_write import SeriesInfo, write_ct_series

from .conftest import assert_same_corners, resample_by_world, sitk_read_series, sitk_world_matrix_ras


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    axis_v = np.array(axis, float) / np.linalg.norm(axis)
    angle = math.radians(degrees)
    cross = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _affine_ras(row_lps, col_lps, spacing, n_sign=1.0, origin_lps=(-120.0, -95.5, 310.25)) -> np.ndarray:
    """RAS affine of a series with the given DICOM (LPS) row/column directions and (dx, dy, dz)."""
    row, col = np.array(row_lps, float), np.array(col_lps, float)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[0]
    lps[:3, 1] = col * spacing[1]
    lps[:3, 2] = np.cross(row, col) * spacing[2] * n_sign
    lps[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


OBLIQUE = _rotation((1, 1, 0.3), 17.0)
CASES = {
    # name: (row LPS, column LPS, (dx, dy, dz), slice direction sign, (cols, rows, slices), patient position)
    "axial_head_first": ((1, 0, 0), (0, 1, 0), (0.7, 0.7, 2.5), 1, (40, 36, 24), "HFS"),
    "axial_feet_first": ((1, 0, 0), (0, 1, 0), (0.8, 0.8, 1.25), -1, (40, 36, 24), "FFS"),
    "flipped_row_and_column": ((-1, 0, 0), (0, -1, 0), (0.6, 0.6, 3.0), 1, (32, 40, 12), "HFS"),
    "coronal": ((1, 0, 0), (0, 0, -1), (0.9, 0.9, 2.0), 1, (30, 28, 16), "HFS"),
    "sagittal": ((0, 1, 0), (0, 0, -1), (0.75, 0.75, 1.5), 1, (30, 28, 16), "HFS"),
    "oblique_17deg": (tuple(OBLIQUE[:, 0]), tuple(OBLIQUE[:, 1]), (0.7, 0.7, 2.0), 1, (32, 30, 14), "HFS"),
    "non_square_pixels": ((1, 0, 0), (0, 1, 0), (0.55, 0.9, 5.0), 1, (48, 26, 10), "HFS"),
    "single_slice": ((1, 0, 0), (0, 1, 0), (0.7, 0.7, 5.0), 1, (40, 36, 1), "HFS"),
    "two_slices": ((1, 0, 0), (0, 1, 0), (0.7, 0.7, 0.625), 1, (40, 36, 2), "HFS"),
    "three_hundred_slices": ((1, 0, 0), (0, 1, 0), (0.68, 0.68, 0.625), 1, (24, 20, 300), "HFS"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nifti_matches_simpleitk(name: str, tmp_path: Path) -> None:
    row, col, spacing, sign, shape, position = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    hu = rng.integers(-1024, 3000, size=shape).astype(np.int16)
    affine = _affine_ras(row, col, spacing, sign)
    folder = tmp_path / "dicom"
    # Random extension-less names so slice order can only come from geometry.
    names = [f"IM{n:08x}" for n in rng.permutation(10**6)[: shape[2]]]
    write_ct_series(hu, affine, folder, SeriesInfo(patient_position=position), file_names=names)

    out = tmp_path / "ct.nii.gz"
    write_nifti(load_volume(folder), out)
    ours = nib.load(out)
    ours_values = np.asarray(ours.dataobj)
    reference = sitk_read_series(folder)
    ref_affine = sitk_world_matrix_ras(reference)
    ref_values = sitk.GetArrayFromImage(reference).transpose(2, 1, 0)

    assert ours_values.shape == ref_values.shape or sorted(ours_values.shape) == sorted(ref_values.shape)
    assert_same_corners(ours.affine, ours_values.shape, ref_affine, ref_values.shape, tol=1e-3)
    assert np.array_equal(resample_by_world(ref_values, ref_affine, ours.affine, ours_values.shape), ours_values)
    # And against the ground truth the series was written from (sform and qform agree with it).
    assert_same_corners(ours.affine, ours_values.shape, affine, hu.shape, tol=1e-3)
    assert np.array_equal(resample_by_world(hu, affine, ours.affine, ours_values.shape), ours_values)
    assert np.allclose(ours.get_qform(), ours.get_sform(), atol=1e-4)
    assert int(ours.header["qform_code"]) == 1 and int(ours.header["sform_code"]) == 1
