"""Classical lung mask: sides from the affine, airway and gas excluded, touching lungs split, thin volumes.

Real data come from `../shared/realdata` (skipped when absent); synthetic chests are built here in numpy
(`synthetic_chest`, also used by `benchmarks/lungmask_bench.py`) and one small phantom comes from the CT generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.infer.lungmask import LEFT_LUNG, RIGHT_LUNG, LungMaskSettings, lung_mask
from medseg.io import Volume, load_volume, read_nifti


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def world_x(volume: Volume, mask: np.ndarray) -> float:
    """RAS x (mm, + = patient right) of the centroid of a mask."""
    return float(volume.world(np.argwhere(mask).mean(axis=0))[0])


def flipped(volume: Volume, axis: int) -> Volume:
    """The same image with one array axis reversed and the affine that keeps every voxel in place."""
    matrix = np.eye(4)
    matrix[axis, axis], matrix[axis, 3] = -1.0, volume.array.shape[axis] - 1
    return Volume(np.flip(volume.array, axis), volume.affine @ matrix)


def transposed(volume: Volume, perm: tuple[int, int, int]) -> Volume:
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, list(perm)]
    return Volume(np.transpose(volume.array, perm), affine)


def synthetic_chest(shape: tuple[int, int, int] = (176, 144, 48), spacing: tuple[float, float, float] = (2.0, 2.0, 4.0),
                    touching: bool = False, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A DICOM-like (LPS-stored, i = patient left, j = posterior, k = superior) chest and its lung truth.

    Body ellipse on a hollow table inside a circular field of view padded with -2000; two dome-shaped lungs
    (-850 HU with vessels) around a mediastinum, a trachea splitting into main bronchi, stomach gas under
    the left lung. `touching` brings the lungs together in front of the mediastinum (anterior junction).
    Returns the volume and the truth (1 right lung, 2 left lung).
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = ((np.arange(nx) - (nx - 1) / 2) * spacing[0]).astype(np.float32)
    y = ((np.arange(ny) - (ny - 1) / 2) * spacing[1]).astype(np.float32)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    fov = xx**2 + yy**2 <= (min(nx * spacing[0], ny * spacing[1]) / 2) ** 2
    base = np.full((nx, ny), -1000, np.int16)
    base[(np.abs(xx) < 160) & (yy > 100) & (yy < 112)] = 300  # table with a hollow core
    base[(np.abs(xx) < 150) & (yy > 103) & (yy < 109)] = -1000
    base[(xx / 135) ** 2 + (yy / 95) ** 2 <= 1] = 40
    mediastinum = (xx / 28) ** 2 + ((yy - 40) / 60) ** 2 <= 1
    trachea = xx**2 + (yy - 15) ** 2 <= 64
    stomach = ((xx - 65) / 35) ** 2 + ((yy + 25) / 25) ** 2 <= 1
    sides = {RIGHT_LUNG: (xx < 0) & ~mediastinum, LEFT_LUNG: (xx > 0) & ~mediastinum}
    noise = [rng.integers(-25, 26, size=(nx, ny)).astype(np.int16) for _ in range(4)]
    vessels = np.zeros((nx, ny), bool)
    for cx, cy in rng.uniform((-110, -60), (110, 60), size=(40, 2)):
        vessels |= (xx - cx) ** 2 + (yy - cy) ** 2 <= 9.0
    hu = np.empty(shape, np.int16)
    truth = np.zeros(shape, np.uint8)
    for k in range(nz):
        t = k / (nz - 1)
        plane = base.copy()
        labels = truth[:, :, k]
        if 0.2 <= t <= 0.95:
            scale = max(1e-3, 1 - ((t - 0.55) / 0.42) ** 2) ** 0.25
            a, b = 50 * scale, 70 * scale
            centre = a + (-15 if touching else 16)
            for side, sign in ((RIGHT_LUNG, -1), (LEFT_LUNG, 1)):
                labels[sides[side] & (((xx - sign * centre) / a) ** 2 + (yy / b) ** 2 <= 1)] = side
            plane[labels > 0] = -850
            plane[(labels > 0) & vessels] = 40
        if t >= 0.72:
            plane[trachea] = -1000
        elif t >= 0.6:
            shift = (0.72 - t) / 0.12 * 25
            for sign in (-1, 1):
                plane[(xx - sign * shift) ** 2 + (yy - 15) ** 2 <= 30] = -1000
        if 0.03 <= t <= 0.15:
            plane[stomach] = -1000
        plane += noise[k % 4]
        plane[~fov] = -2000
        hu[:, :, k] = plane
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS storage in RAS terms
    affine[:3, 3] = [x[-1], y[-1], 0.0]
    return Volume(hu, affine, tags={"Modality": "CT"}, source="synthetic chest"), truth


def check_sides(volume: Volume, mask: np.ndarray) -> None:
    right, left = mask == RIGHT_LUNG, mask == LEFT_LUNG
    assert right.any() and left.any(), "both lungs expected"
    assert world_x(volume, right) > world_x(volume, left), "right lung must lie at larger RAS x (patient right)"


# --- synthetic volumes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("touching", [False, True])
def test_synthetic_chest_dice_and_sides(touching: bool) -> None:
    volume, truth = synthetic_chest(touching=touching)
    mask = lung_mask(volume)
    assert mask.shape == volume.array.shape and mask.dtype == np.uint8
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(mask == side, truth == side) >= 0.95, (touching, side)
    check_sides(volume, mask)
    stomach = np.zeros_like(truth, bool)
    stomach[..., : int(0.16 * truth.shape[2])] = volume.array[..., : int(0.16 * truth.shape[2])] < -900
    assert not (mask.astype(bool) & stomach).any(), "stomach gas must not become lung"


def test_touching_lungs_are_split_near_the_midline() -> None:
    volume, truth = synthetic_chest(touching=True)
    assert (truth > 0)[volume.array.shape[0] // 2 - 1: volume.array.shape[0] // 2 + 1].any(), "lungs must touch"
    mask = lung_mask(volume)
    middle = (volume.array.shape[0] - 1) / 2
    i = np.arange(volume.array.shape[0])[:, None, None]
    # LPS storage: patient right is at small i
    wrong = ((mask == RIGHT_LUNG) & (i > middle + 3)) | ((mask == LEFT_LUNG) & (i < middle - 3))
    assert np.count_nonzero(wrong) < 0.002 * np.count_nonzero(mask)


def test_orientation_invariance() -> None:
    volume, _ = synthetic_chest(touching=True, seed=1)
    reference = lung_mask(volume)
    variants = {
        "flip k (feet first)": (flipped(volume, 2), lambda m: np.flip(m, 2)),
        "flip i (RAS-like x)": (flipped(volume, 0), lambda m: np.flip(m, 0)),
        "transposed i/j, flip": (flipped(transposed(volume, (1, 0, 2)), 0),
                                 lambda m: np.transpose(np.flip(m, 0), (1, 0, 2))),
        "slices first, C order": (Volume(np.ascontiguousarray(np.transpose(volume.array, (2, 0, 1))),
                                         transposed(volume, (2, 0, 1)).affine), lambda m: np.transpose(m, (1, 2, 0))),
    }
    for name, (variant, undo) in variants.items():
        mask = undo(lung_mask(variant))
        for side in (RIGHT_LUNG, LEFT_LUNG):
            assert dice(mask == side, reference == side) >= 0.99, name


def test_single_slice_and_slice_pair() -> None:
    volume, truth = synthetic_chest(seed=2)
    k = int(0.5 * volume.array.shape[2])
    for slab in (slice(k, k + 1), slice(k, k + 2)):
        thin = Volume(np.ascontiguousarray(volume.array[:, :, slab]), volume.affine.copy())
        thin.affine[:3, 3] = volume.world(np.array([0, 0, slab.start]))
        mask = lung_mask(thin)
        for side in (RIGHT_LUNG, LEFT_LUNG):
            assert dice(mask == side, truth[:, :, slab] == side) >= 0.95
        check_sides(thin, mask)


def test_no_lungs_gives_empty_mask() -> None:
    tissue = Volume(np.full((64, 64, 20), 40, np.int16), np.diag([0.8, 0.8, 2.0, 1.0]))
    assert not lung_mask(tissue).any()
    volume, _ = synthetic_chest(seed=3)
    abdomen = Volume(np.ascontiguousarray(volume.array[:, :, : int(0.18 * volume.array.shape[2])]), volume.affine)
    assert not lung_mask(abdomen).any(), "stomach gas alone is not lung"
    mr_like = Volume(np.random.default_rng(0).integers(0, 800, (40, 40, 10)).astype(np.int16), np.eye(4),
                     tags={"Modality": "MR"})
    assert not lung_mask(mr_like).any()


def test_unusable_input_raises() -> None:
    with pytest.raises(InputError):
        lung_mask(np.zeros((10, 10, 10)))  # type: ignore[arg-type]
    flat = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4))
    flat.array = np.zeros((4, 4), np.int16)
    with pytest.raises(InputError, match="3D"):
        lung_mask(flat)
    singular = Volume(np.zeros((4, 4, 4), np.int16), np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(InputError, match="affine"):
        lung_mask(singular)


def test_settings_are_frozen() -> None:
    settings = LungMaskSettings()
    with pytest.raises(AttributeError):
        settings.air_threshold_hu = -300  # type: ignore[misc]


# --- generated phantom ---------------------------------------------------------------------------------


def test_phantom_dice(tmp_path: Path) -> None:
    from medseg.data.phantom.ct_case import synth_ct_case

    synth_ct_case(tmp_path / "case", 5, case_id="x", size=128, findings=[])
    volume = load_volume(tmp_path / "case" / "ct")
    truth = read_nifti(tmp_path / "case" / "lungs.nii.gz").array
    mask = lung_mask(volume)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(mask == side, truth == side) >= 0.95, side


# --- real data -----------------------------------------------------------------------------------------


def central_gas_blobs(volume: Volume, k: int) -> list[np.ndarray]:
    """Air-filled lumens (< -800 HU with an air core < -950 HU, 0.3-8 cm²) near the body's left-right middle
    in slice k: trachea, main bronchi, oesophageal air."""
    from scipy import ndimage

    plane = volume.array[:, :, k]
    parts, _ = ndimage.label(ndimage.binary_opening(plane > -500, iterations=3))
    body = ndimage.binary_fill_holes(parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:])))
    rows = np.flatnonzero(body.any(axis=1))  # i runs left-right in these axial DICOM slices
    middle, half = (rows[0] + rows[-1]) / 2, (rows[-1] - rows[0]) / 2
    parts, count = ndimage.label((plane < -800) & body)
    pixel_cm2 = volume.spacing[0] * volume.spacing[1] / 100
    blobs = []
    for index in range(1, count + 1):
        blob = parts == index
        central = abs(np.argwhere(blob)[:, 0].mean() - middle) <= 0.25 * half
        if central and 0.3 <= np.count_nonzero(blob) * pixel_cm2 <= 8 and plane[blob].min() < -950:
            blobs.append(blob)
    return blobs


def test_real_chest_slice_pair(realdata: Path) -> None:
    volume = load_volume(realdata / "ct_dicom" / "chest_slice_pair")
    mask = lung_mask(volume)
    check_sides(volume, mask)
    assert np.array_equal(mask[:, :, 0], mask[:, :, 1]), "the two slices hold identical pixels"
    pixel_cm2 = volume.spacing[0] * volume.spacing[1] / 100
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert 40 <= np.count_nonzero(mask[:, :, 0] == side) * pixel_cm2 <= 250
    dense = volume.array[..., 0] > -300
    assert np.count_nonzero(mask[..., 0][dense]) < 0.1 * np.count_nonzero(mask[..., 0]), "mostly air"
    assert np.count_nonzero(mask[..., 0][dense]) < 0.1 * np.count_nonzero(dense), "heart and wall are not lung"


def test_real_nema_slice_excludes_airway(realdata: Path) -> None:
    volume = load_volume(realdata / "ct_dicom" / "nema_ct1_chest" / "nema-ct1_jpll.dcm")
    mask = lung_mask(volume)
    check_sides(volume, mask)
    pixel_cm2 = volume.spacing[0] * volume.spacing[1] / 100
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert 60 <= np.count_nonzero(mask == side) * pixel_cm2 <= 250
    blobs = central_gas_blobs(volume, 0)
    assert blobs, "the central airway should be visible in this slice"
    for blob in blobs:
        assert np.count_nonzero(mask[:, :, 0][blob]) <= 0.1 * np.count_nonzero(blob)


def test_real_chest_cta_crop(realdata: Path) -> None:
    volume = load_volume(realdata / "nifti" / "chest_cta_crop" / "ct_cropped.nii.gz")
    mask = lung_mask(volume)
    check_sides(volume, mask)
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert 300 <= np.count_nonzero(mask == side) * voxel_ml <= 3000
    air = volume.array < -400
    assert np.count_nonzero(mask.astype(bool) & air) >= 0.9 * np.count_nonzero(mask), "mask is mostly air"
    superior = int(np.argmax(np.abs(volume.affine[2, :3])))
    top = -1 if volume.affine[2, superior] > 0 else 0
    top_slice = np.take(volume.array, top, axis=superior)
    top_mask = np.take(mask, top, axis=superior)
    from scipy import ndimage

    parts, count = ndimage.label(top_slice < -950)
    sizes = np.bincount(parts.ravel())[1:]
    trachea = parts == 1 + int(np.argmax(sizes))
    assert count and not top_mask[trachea].any(), "trachea must not be in the lung mask"


def test_real_abdomen_lung_bases(realdata: Path) -> None:
    folder = realdata / "nifti" / "abdomen_lung_bases"
    volume = load_volume(folder / "example_ct_sm.nii.gz")
    seg = read_nifti(folder / "example_seg.nii.gz").array
    mask = lung_mask(volume)
    lobes = np.isin(seg, [10, 11, 12, 13, 14])
    with_lobes = lobes.any(axis=(0, 1))
    assert dice(mask[..., with_lobes] > 0, lobes[..., with_lobes]) > 0.9
    assert dice(mask == RIGHT_LUNG, np.isin(seg, [12, 13, 14])) > 0.85
    assert dice(mask == LEFT_LUNG, np.isin(seg, [10, 11])) > 0.85
    assert np.count_nonzero(mask[..., ~with_lobes]) <= 10, "bowel gas below the lungs is not lung"
    assert not np.any(mask[np.isin(seg, [15, 16])]), "oesophagus and trachea are not lung"
    below = Volume(np.ascontiguousarray(volume.array[..., ~with_lobes]), volume.affine)
    assert not lung_mask(below).any()


def test_real_volumes_without_lungs(realdata: Path) -> None:
    abdomen = load_volume(realdata / "ct_dicom" / "siemens_abdomen_j2k")  # TotalSegmentator finds no lung here
    assert np.count_nonzero(lung_mask(abdomen)) == 0
    mr = load_volume(realdata / "nifti" / "mr_not_ct.nii.gz")
    assert not lung_mask(mr).any()


# --- full size ------------------------------------------------------------------------------------------


def test_full_size_touching_chest() -> None:
    """512 x 512 x 300 at 0.7 mm with touching lungs (the erosion split, the slowest path): both lungs found.

    Its speed (target: well inside 2.5 s on 2 cores) is measured by `benchmarks/lungmask_bench.py`.
    """
    volume, truth = synthetic_chest((512, 512, 300), (0.7, 0.7, 1.0), touching=True)
    mask = lung_mask(volume)
    check_sides(volume, mask)
    assert dice(mask == RIGHT_LUNG, truth == RIGHT_LUNG) >= 0.95
    assert dice(mask == LEFT_LUNG, truth == LEFT_LUNG) >= 0.95
