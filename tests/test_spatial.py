"""Exact geometry of the model grid: reorientation, crop + resample and the way back (the math under the
CT chain's transforms; the transforms themselves are tested in test_preprocessing_chain.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.transforms.spatial import Reorientation, Resampling, lung_box


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return index @ affine[:3, :3].T + affine[:3, 3]


AFFINES = {
    "lps": np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 95.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]]),
    "feet_first": np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 95.0], [0, 0, -1.25, 10.0], [0, 0, 0, 1]]),
    "coronal": np.array([[-0.9, 0, 0, 100.0], [0, 0, 2.0, -40.0], [0, -0.9, 0, 30.0], [0, 0, 0, 1]]),
    "sagittal": np.array([[0, 0, 1.5, -20.0], [-0.75, 0, 0, 60.0], [0, -0.75, 0, 30.0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_reorientation_is_a_lossless_view_to_ras(name: str) -> None:
    affine = AFFINES[name]
    shape = (12, 10, 8)
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    orientation = Reorientation.to_ras(affine, shape)
    ras = orientation.apply(array)
    ras_affine = orientation.affine(affine)
    # RAS order: each axis increases towards R, A and S respectively (positive diagonal direction)
    assert np.all(np.argmax(np.abs(ras_affine[:3, :3]), axis=0) == [0, 1, 2])
    assert np.all(np.diag(ras_affine[:3, :3]) > 0)
    # the same voxel value sits at the same world position
    index = np.array([3, 4, 5])
    source_index = np.rint(np.linalg.solve(affine[:3, :3], _world(ras_affine, index) - affine[:3, 3])).astype(int)
    assert ras[tuple(index)] == array[tuple(source_index)]
    assert np.array_equal(orientation.undo(ras), array)
    assert np.shares_memory(ras, array)
    assert torch.equal(orientation.undo_tensor(torch.from_numpy(ras.copy())[None])[0], torch.from_numpy(array))


def test_crop_resample_maps_linear_fields_exactly_both_ways() -> None:
    """Trilinear resampling reproduces a linear function of world position: the grid affine is exact."""
    affine = np.array([[0.7, 0, 0, -90.0], [0, 0.8, 0, -60.0], [0, 0, 1.25, 40.0], [0, 0, 0, 1]])
    shape = (60, 50, 40)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = _world(affine, np.stack([ii, jj, kk], -1).astype(float))
    coefficients = np.array([0.3, -0.2, 0.5])
    field = (world @ coefficients).astype(np.float32)

    start, stop = (5, 7, 3), (55, 45, 37)
    crop = field[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
    crop_affine = affine.copy()
    crop_affine[:3, 3] = _world(affine, np.array(start, dtype=float))
    grid = Resampling.plan(crop.shape, affine_spacing := (0.7, 0.8, 1.25), (2.0, 2.0, 2.5))
    assert grid.out_shape == (round(50 * 0.7 / 2), round(38 * 0.8 / 2), round(34 * 1.25 / 2.5))
    resampled = grid.image(torch.from_numpy(np.moveaxis(crop, 2, 0).copy()), smooth=False).numpy()  # (Z', X', Y')
    grid_affine = grid.affine(crop_affine)
    gx, gy, gz = np.meshgrid(*[np.arange(n) for n in grid.out_shape], indexing="ij")
    expected = _world(grid_affine, np.stack([gx, gy, gz], -1).astype(float)) @ coefficients
    inner = (slice(1, -1),) * 3                                          # edges clamp, interior is exact
    assert np.allclose(np.moveaxis(resampled, 0, 2)[inner], expected[inner], atol=1e-3)
    assert np.allclose(np.linalg.norm(grid_affine[:3, :3], axis=0), [2.0, 2.0, 2.5], rtol=0.05)
    del affine_spacing

    # and back: a linear field on the model grid lands on the crop as the same linear function
    model_field = torch.from_numpy(np.moveaxis(expected, 2, 0).astype(np.float32))[None]   # (1, Z', X', Y')
    back = np.concatenate([values[0].numpy() for _, values in grid.back_slabs(model_field, slab=5)])  # (Z, X, Y)
    crop = np.moveaxis(crop, 2, 0)
    assert back.shape == crop.shape
    margin = (slice(3, -3), slice(3, -3), slice(3, -3))
    assert np.allclose(back[margin], crop[margin], atol=1e-3)


def test_labels_resample_by_nearest_voxel_centre() -> None:
    labels = np.zeros((40, 40, 20), dtype=np.uint8)
    labels[10:30, 10:30, 5:15] = 3
    grid = Resampling.plan(labels.shape, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    out = grid.labels(torch.from_numpy(np.moveaxis(labels, 2, 0).copy())).numpy()
    assert set(np.unique(out)) == {0, 3}
    assert out.sum() / 3 == pytest.approx((labels > 0).sum() / 8, rel=0.01)
    aligned = np.zeros_like(labels)
    aligned[10:30, 10:30, 4:14] = 3                                        # edges on the 2x grid's cell edges
    there = grid.labels(torch.from_numpy(np.moveaxis(aligned, 2, 0).copy()))
    back = grid.back_labels(there[None])[0].numpy()                      # nearest back: the block returns exactly
    np.testing.assert_array_equal(np.moveaxis(back, 0, 2), aligned)


def test_lung_box_adds_margin_in_mm_and_clips() -> None:
    mask = np.zeros((50, 40, 30), dtype=bool)
    mask[10:20, 2:30, 5:25] = True
    start, stop = lung_box(mask, (2.0, 1.0, 5.0), margin_mm=10.0)
    assert start == (5, 0, 3) and stop == (25, 40, 27)
