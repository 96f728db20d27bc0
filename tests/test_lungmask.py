"""Classical lung mask: sides from the affine, airway and gas excluded, touching lungs split, thin volumes.

Real data come from `../shared/realdata` and `../shared/realdata_cohorts` (skipped when absent); the four
whole-thorax Lung-PET-CT-Dx series are also degraded here (`degraded`: 4-7 mm pixels, cropped fields of view,
thick slices, blur, noise, other storage orders) to reproduce low-resolution scanner exports; synthetic chests
are built here in numpy (`synthetic_chest`, also used by `benchmarks/lungmask_bench.py`) and small phantoms come
from the CT generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.infer.lungmask import LEFT_LUNG, RIGHT_LUNG, LungMaskSettings, body_mask, lung_mask
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
    assert dice(mask > 0, lobes) >= 0.95, "TotalSegmentator's lungs (labels 10-14)"
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


# --- low-resolution and cropped synthetic chests ----------------------------------------------------------


@pytest.mark.parametrize(("shape", "spacing"), [((64, 56, 40), (5.0, 5.0, 8.0)), ((64, 64, 50), (4.0, 4.0, 5.0)),
                                                ((48, 40, 30), (6.7, 6.7, 8.0))])
@pytest.mark.parametrize("touching", [True, False])
def test_low_resolution_synthetic_chest(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                                        touching: bool) -> None:
    """Lungs touching at the anterior junction (or apart) at 4-7 mm pixels and 5-8 mm slices; at 4 mm the
    256 mm field of view cuts the chest wall and the CT table lies at the border."""
    volume, truth = synthetic_chest(shape, spacing, touching=touching)
    mask = lung_mask(volume)
    check_sides(volume, mask)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(mask == side, truth == side) >= 0.95, side
    assert not (mask.astype(bool) & ~body_mask(volume)).any()


def test_low_resolution_phantom_dice(tmp_path: Path) -> None:
    from medseg.data.phantom.ct_case import synth_ct_case

    synth_ct_case(tmp_path / "case", 2, case_id="x", size=64, findings=["nodule"])
    volume = load_volume(tmp_path / "case" / "ct")
    truth = read_nifti(tmp_path / "case" / "lungs.nii.gz").array
    assert min(volume.spacing[:2]) > 5.0
    mask = lung_mask(volume)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(mask == side, truth == side) >= 0.95, side


# --- real whole-thorax series and degraded versions of them ----------------------------------------------

LUNG_PET_CT_DX = "ct_lung_pet_ct_dx"


def lung_pet_ct_dx_series(cohorts: Path) -> dict[str, Path]:
    """{patient_kernel: folder} of the four Lung-PET-CT-Dx series listed in SERIES.csv."""
    import csv

    folder = cohorts / LUNG_PET_CT_DX
    if not (folder / "SERIES.csv").is_file():
        pytest.skip(f"{LUNG_PET_CT_DX} is not available")
    with open(folder / "SERIES.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {f"{row['patient_id'][-5:]}_{row['kernel']}": folder / row["series_dir"] for row in rows}


def body_centre(volume: Volume) -> np.ndarray:
    """RAS centre of the patient in the middle axial slice (largest opened tissue component; axis 2 axial)."""
    from scipy import ndimage

    k = volume.array.shape[2] // 2
    parts, _ = ndimage.label(ndimage.binary_opening(volume.array[:, :, k] > -500, iterations=3))
    body = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
    i, j = np.argwhere(body).mean(axis=0)
    return volume.world(np.array([i, j, (volume.array.shape[2] - 1) / 2]))


def degraded(volume: Volume, pixel_mm: float, slice_mm: float, size: int, shift_mm: tuple[float, float] = (0, 0),
             storage: str = "LPS", axes: tuple[int, int, int] = (0, 1, 2), noise_hu: float = 10.0,
             seed: int = 0) -> Volume:
    """A low-resolution export of an axial series (axis 2 axial), like a resampled NIfTI of a scanner series.

    In-plane area averaging to `pixel_mm`, averaging over `slice_mm` thick slices, a soft blur and noise; a
    `size` x `size` field of view centred on the patient (plus `shift_mm` in RAS x, y: cropped, lungs cut by
    the border, table at the edge), stored LPS (DICOM-like) or RAS (NIfTI-like), array axes permuted by `axes`.
    """
    import cv2
    from scipy import ndimage

    source = volume.array.astype(np.float32)
    rows, cols, slices = source.shape
    pixel, thickness = float(volume.spacing[0]), float(volume.spacing[2])
    factor = pixel_mm / pixel
    small = (max(1, round(cols / factor)), max(1, round(rows / factor)))
    planes = np.stack([cv2.resize(source[:, :, k], small, interpolation=cv2.INTER_AREA) for k in range(slices)], 2)
    planes = ndimage.uniform_filter1d(planes, max(1, round(slice_mm / thickness)), axis=2, mode="nearest")
    scale = np.diag([rows / small[1], cols / small[0], 1.0, 1.0])
    scale[:2, 3] = (np.array([rows / small[1], cols / small[0]]) - 1) / 2
    grid_affine = volume.affine @ scale  # index of `planes` -> RAS
    z_range = thickness * (slices - 1)
    count = int(z_range // slice_mm) + 1
    sign = -1.0 if storage == "LPS" else 1.0
    affine = np.diag([sign * pixel_mm, sign * pixel_mm, slice_mm, 1.0])
    centre = body_centre(volume) + np.array([shift_mm[0], shift_mm[1], 0.0])
    affine[:3, 3] = centre - affine[:3, :3] @ np.array([(size - 1) / 2, (size - 1) / 2, (count - 1) / 2])
    index = np.indices((size, size, count)).reshape(3, -1).astype(np.float64)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    source_index = np.linalg.solve(grid_affine[:3, :3], world - grid_affine[:3, 3:4])
    array = ndimage.map_coordinates(planes, source_index, order=1, mode="nearest").reshape(size, size, count)
    array = ndimage.gaussian_filter(array, 0.6) + np.random.default_rng(seed).normal(0, noise_hu, array.shape)
    out = Volume(np.round(array).astype(np.int16), affine, tags={"Modality": "CT"}, source="degraded")
    return transposed(out, axes) if axes != (0, 1, 2) else out


def to_grid(source: Volume, mask: np.ndarray, target: Volume) -> np.ndarray:
    """A mask on `source`'s grid sampled (nearest) at the voxel centres of `target`."""
    from scipy import ndimage

    index = np.indices(target.array.shape).reshape(3, -1).astype(np.float64)
    world = target.affine[:3, :3] @ index + target.affine[:3, 3:4]
    source_index = np.linalg.solve(source.affine[:3, :3], world - source.affine[:3, 3:4])
    return ndimage.map_coordinates(mask.astype(np.uint8), source_index, order=0, cval=0).reshape(
        target.array.shape) > 0


def check_real_lungs(volume: Volume, mask: np.ndarray, what: str) -> None:
    """Label-free acceptance: both lungs on their side, none outside the body, each 35-65 % of the total."""
    check_sides(volume, mask)
    outside = np.count_nonzero(mask.astype(bool) & ~body_mask(volume))
    assert outside == 0, f"{what}: {outside} lung voxels outside the body (air around the patient or the table)"
    right, left = np.count_nonzero(mask == RIGHT_LUNG), np.count_nonzero(mask == LEFT_LUNG)
    assert 0.35 <= right / (right + left) <= 0.65, f"{what}: right lung share {right / (right + left):.2f}"


def upper_airway(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """Trachea and main bronchi of an axial series: central gas blobs from the top slice of the lungs down,
    each overlapping the airway of the slice above, over the upper 45 % of the lungs' slices."""
    from scipy import ndimage

    airway = np.zeros(mask.shape, bool)
    with_lung = np.flatnonzero(mask.any(axis=(0, 1)))
    step = -1 if volume.affine[2, 2] > 0 else 1
    top = with_lung[-1] if step < 0 else with_lung[0]
    previous = None
    for k in range(top, top + step * int(0.45 * (with_lung[-1] - with_lung[0])), step):
        for blob in central_gas_blobs(volume, k):
            if previous is None or (blob & ndimage.binary_dilation(previous, iterations=3)).any():
                airway[:, :, k] |= blob
        if not airway[:, :, k].any():
            break
        previous = airway[:, :, k]
    return airway


DEGRADED = {  # name: degraded() arguments
    "64px_8mm": dict(pixel_mm=0.0, slice_mm=8.0, size=64, noise_hu=15.0),  # pixel from the full field of view
    "4mm_256mm_table_ras": dict(pixel_mm=4.0, slice_mm=5.0, size=64, shift_mm=(0.0, -25.0), storage="RAS"),
    "4.5mm_252mm_shifted_transposed": dict(pixel_mm=4.5, slice_mm=6.0, size=56, shift_mm=(20.0, 0.0), storage="RAS",
                                           axes=(2, 1, 0)),
    "4mm_240mm_anterior": dict(pixel_mm=4.0, slice_mm=5.0, size=60, shift_mm=(0.0, 20.0)),
}


@pytest.mark.parametrize("series", ["A0001_L", "A0001_B", "A0002_B70f", "A0002_B40f"])
def test_real_whole_thorax_and_degraded(realdata_cohorts: Path, series: str) -> None:
    """Lung-PET-CT-Dx (Philips 5 mm L/B kernels, Siemens 8 mm B70f/B40f; table in view, tumours) at full
    resolution and degraded to 64 x 64 pixels, to ~4 mm pixels with a cropped 256 mm field of view (lungs cut by
    the border, table at the edge, the failure class of a real 64 x 64 x 79 case), shifted and transposed.

    Every version: both lungs on their side, nothing outside the body or on the table, 35-65 % each, trachea
    and main bronchi excluded (up to 4.5 mm pixels: at 64 x 64, 5.2-6.7 mm pixels, partial volume leaves the
    narrow tracheas of these patients as dense as the lung), and the degraded masks agree with full resolution.
    """
    volume = load_volume(lung_pet_ct_dx_series(realdata_cohorts)[series])
    full = lung_mask(volume)
    check_real_lungs(volume, full, series)
    airway = upper_airway(volume, full)
    assert np.count_nonzero(airway) > 500, "trachea and main bronchi should be visible"
    assert np.count_nonzero(full[airway]) <= 0.06 * np.count_nonzero(airway), "trachea and main bronchi are not lung"
    for name, options in DEGRADED.items():
        options = dict(options)
        if not options["pixel_mm"]:
            options["pixel_mm"] = volume.array.shape[0] * float(volume.spacing[0]) / options["size"]
        low = degraded(volume, **options)
        mask = lung_mask(low)
        what = f"{series} {name}"
        check_real_lungs(low, mask, what)
        if options["pixel_mm"] <= 4.5:  # coarser, partial volume makes a narrow trachea as dense as the lung
            tube = to_grid(volume, airway, low)
            assert np.count_nonzero(mask[tube]) <= 0.15 * np.count_nonzero(tube), f"{what}: airway labelled as lung"
        reference = to_grid(volume, full == RIGHT_LUNG, low), to_grid(volume, full == LEFT_LUNG, low)
        for side, truth in zip((RIGHT_LUNG, LEFT_LUNG), reference, strict=True):
            assert dice(mask == side, truth) >= 0.93, f"{what}: side {side} disagrees with full resolution"


def test_real_pathology_kept(realdata_cohorts: Path) -> None:
    """Emphysema-like patches (-950..-1000 HU) stay lung; a tumour at the lateral pleura is filled in (not the
    mediastinum); at full resolution and at 4 mm with a cropped field of view."""
    volume = load_volume(lung_pet_ct_dx_series(realdata_cohorts)["A0002_B40f"])
    reference = lung_mask(volume)
    rng = np.random.default_rng(0)
    assert np.allclose(volume.affine[:3, :3], np.diag(np.diag(volume.affine)[:3]))  # axis-aligned series
    spacing = np.abs(np.diag(volume.affine)[:3])

    def ball(centre: np.ndarray, radius_mm: float) -> np.ndarray:
        box = tuple(slice(max(0, int(c - radius_mm / d) - 1), int(c + radius_mm / d) + 2)
                    for c, d in zip(centre, spacing, strict=True))
        grid = np.ogrid[tuple(slice(part.start, min(part.stop, n))
                              for part, n in zip(box, volume.array.shape, strict=True))]
        squared = sum(((axis - c) * d) ** 2 for axis, c, d in zip(grid, centre, spacing, strict=True))
        inside = np.zeros(volume.array.shape, bool)
        inside[box] = squared <= radius_mm**2
        return inside

    array = volume.array.copy()
    right, left = reference == RIGHT_LUNG, reference == LEFT_LUNG
    emphysema = np.zeros(array.shape, bool)
    points = np.argwhere(right)
    for point in points[rng.choice(len(points), 10, replace=False)]:
        emphysema |= ball(point, rng.uniform(15, 30)) & right
    array[emphysema] = rng.integers(-1000, -950, np.count_nonzero(emphysema))
    middle = np.flatnonzero(left.any(axis=(0, 1)))
    k = middle[len(middle) // 2]
    points = np.argwhere(left[:, :, k])
    i, j = points[np.argmax(points[:, 0])]  # most lateral point of the left lung (LPS storage: i grows leftwards)
    lump = ball(np.array([i + 5.0 / spacing[0], j, k]), 17.5)  # 35 mm, its centre 5 mm into the chest wall
    tumour = lump & left
    array[lump & (left | (array < -300))] = 40
    sick = Volume(array, volume.affine.copy(), tags={"Modality": "CT"}, source="pathology")
    for version in (sick, degraded(sick, 4.0, 5.0, 64, storage="RAS")):
        mask = lung_mask(version)
        check_real_lungs(version, mask, "pathology")
        patches = to_grid(sick, emphysema, version)
        lesion = to_grid(sick, tumour, version)
        assert np.count_nonzero(mask[patches] == RIGHT_LUNG) >= 0.95 * np.count_nonzero(patches), "emphysema kept"
        assert np.count_nonzero(mask[lesion] == LEFT_LUNG) >= 0.6 * np.count_nonzero(lesion), "pleural tumour kept"
