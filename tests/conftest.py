"""Shared fixtures: the real-data folder and independent SimpleITK references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REALDATA_COHORTS = Path(__file__).resolve().parents[2] / "shared" / "realdata_cohorts"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """`../shared/realdata`; tests using it skip cleanly only when the folder is absent."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not available")
    return REALDATA


@pytest.fixture(scope="session")
def realdata_cohorts() -> Path:
    """`../shared/realdata_cohorts`; tests using it skip cleanly only when the folder is absent."""
    if not REALDATA_COHORTS.is_dir():
        pytest.skip("../shared/realdata_cohorts is not available")
    return REALDATA_COHORTS


def sitk_read_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def sitk_world_matrix_ras(image) -> np.ndarray:
    """Index (i, j, k) -> RAS mm for a SimpleITK image, built from SimpleITK's own getters.

    Written independently of medseg's conversion code and checked against
    TransformIndexToPhysicalPoint so the tests do not trust medseg to compare medseg.
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    corner = [s - 1 for s in image.GetSize()]
    expected = np.array(image.TransformIndexToPhysicalPoint([int(c) for c in corner]))
    assert np.allclose(matrix[:3, :3] @ corner + matrix[:3, 3], expected, atol=1e-6)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix


def corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    grid = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1).T
    return grid @ affine[:3, :3].T + affine[:3, 3]


def assert_same_corners(affine_a: np.ndarray, shape_a, affine_b: np.ndarray, shape_b, tol: float = 1e-3) -> None:
    """The 8 corner voxel centres of two grids coincide as sets (any axis order), within `tol` mm."""
    a, b = corners(affine_a, shape_a), corners(affine_b, shape_b)
    distances = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    assert distances.min(axis=1).max() < tol, f"corner mismatch up to {distances.min(axis=1).max():.4g} mm"
    assert distances.min(axis=0).max() < tol


def resample_by_world(values_b: np.ndarray, affine_b: np.ndarray, affine_a: np.ndarray, shape_a,
                      tol: float = 1e-3) -> np.ndarray:
    """Values of grid B at every voxel centre of grid A, which must coincide with voxels of B."""
    index_a = np.indices(shape_a[:3]).reshape(3, -1).T.astype(np.float64)
    world = index_a @ affine_a[:3, :3].T + affine_a[:3, 3]
    index_b = (world - affine_b[:3, 3]) @ np.linalg.inv(affine_b[:3, :3]).T
    rounded = np.rint(index_b)
    spacing_b = np.linalg.norm(affine_b[:3, :3], axis=0)
    assert (np.abs(index_b - rounded) * spacing_b).max() < tol, "grids do not share voxel centres"
    rounded = rounded.astype(int)
    assert (rounded >= 0).all() and (rounded < np.array(values_b.shape[:3])).all(), "grid A leaves grid B"
    return values_b[tuple(rounded.T)].reshape(shape_a[:3])
