"""Real scanner files from ../shared/realdata: load correctly or are refused for their specific reason."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import GeometryError, InputError
from medseg.io import AIR_HU, ReadOptions, SelectionRules, load_volume, write_nifti
from medseg.io.volume_files import read_itk_image

from .conftest import assert_same_corners, resample_by_world, sitk_read_series, sitk_world_matrix_ras

ANY_MODALITY = SelectionRules(modalities=None)


def test_siemens_j2k_series_matches_totalsegmentator_grid_and_simpleitk(realdata: Path, tmp_path: Path) -> None:
    folder = realdata / "ct_dicom" / "siemens_abdomen_j2k"
    out = write_nifti(load_volume(folder), tmp_path / "ct.nii.gz")
    ours = nib.load(out)
    ours_values = np.asarray(ours.dataobj)
    assert ours_values.shape == (512, 512, 20)

    reference = nib.load(realdata / "ct_dicom" / "siemens_abdomen_j2k_reference_seg.nii.gz")
    assert_same_corners(ours.affine, ours.shape, reference.affine, reference.shape, tol=1e-3)
    # Every voxel centre of ours is a voxel centre of the reference grid (any axis order / flips).
    resample_by_world(np.asarray(reference.dataobj), reference.affine, ours.affine, ours.shape, tol=1e-3)

    image = sitk_read_series(folder)
    sitk_affine = sitk_world_matrix_ras(image)
    sitk_values = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    assert_same_corners(ours.affine, ours.shape, sitk_affine, sitk_values.shape)
    assert np.array_equal(resample_by_world(sitk_values, sitk_affine, ours.affine, ours.shape), ours_values)
    assert ours_values.min() >= -1024 and ours_values.max() > 1000  # HU: air .. bone


def test_transfer_syntaxes_decode_to_identical_pixels(realdata: Path) -> None:
    files = sorted((realdata / "ct_dicom" / "transfer_syntaxes").glob("*.dcm"))
    assert len(files) == 9
    arrays = [load_volume(f, rules=ANY_MODALITY).array for f in files]
    for path, array in zip(files[1:], arrays[1:], strict=False):
        assert np.array_equal(array, arrays[0]), f"{path.name} decodes differently"
    assert arrays[0].std() > 0


def test_mr_series_is_refused_for_ct(realdata: Path) -> None:
    with pytest.raises(InputError, match="modality MR is not CT"):
        load_volume(realdata / "ct_dicom" / "transfer_syntaxes")


def test_gantry_tilt_detected_and_resampled_or_refused(realdata: Path) -> None:
    folder = realdata / "ct_dicom" / "gantry_tilt"
    with pytest.raises(GeometryError, match=r"gantry tilt of 14\.\d+ deg"):
        load_volume(folder, options=ReadOptions(on_gantry_tilt="error"))
    volume = load_volume(folder)
    assert any("gantry tilt" in note for note in volume.notes)
    direction = volume.affine[:3, :3] / np.array(volume.spacing)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6), "resampled grid must be orthogonal"
    assert volume.slice_files == []  # slices no longer map one-to-one onto files


def test_missing_slice_refused_or_interpolated(realdata: Path) -> None:
    folder = realdata / "ct_dicom" / "missing_slice"
    with pytest.raises(GeometryError, match="1 missing slice"):
        load_volume(folder)
    volume = load_volume(folder, options=ReadOptions(on_uneven_spacing="resample"))
    assert volume.shape[2] == 5 and volume.spacing[2] == pytest.approx(5.0, abs=1e-3)
    assert any("missing slice" in note for note in volume.notes)


def test_missing_slice_in_tilted_series_refused(realdata: Path) -> None:
    with pytest.raises(GeometryError, match="1 missing slice"):
        load_volume(realdata / "ct_dicom" / "missing_slice_tilted")


def test_duplicate_positions_refused(realdata: Path) -> None:
    with pytest.raises(GeometryError, match="duplicate slice positions"):
        load_volume(realdata / "ct_dicom" / "duplicate_positions")


def test_pixel_padding_becomes_air_and_lossy_j2k_is_close(realdata: Path) -> None:
    folder = realdata / "ct_dicom" / "nema_ct1_chest"
    lossless = load_volume(folder / "nema-ct1_jpll.dcm").array
    lossy = load_volume(folder / "nema-ct1_j2ki.dcm").array
    assert lossless.min() == AIR_HU  # PixelPaddingValue -2000 would otherwise read as -3024 HU
    assert (lossless == AIR_HU).mean() > 0.05
    assert lossy.min() == AIR_HU  # lossy coding perturbs the padding value; it must still become air
    difference = np.abs(lossless.astype(float) - lossy)
    assert np.median(difference) < 30  # lossy codec noise, not a decoding error
    assert np.corrcoef(lossless.ravel(), lossy.ravel())[0, 1] > 0.99
    with pytest.raises(GeometryError, match="duplicate"):  # the same slice twice is not a volume
        load_volume(folder)


def test_small_real_slices_load(realdata: Path) -> None:
    single = load_volume(realdata / "ct_dicom" / "CT_small.dcm")
    assert single.shape == (128, 128, 1) and single.modality == "CT"
    pair = load_volume(realdata / "ct_dicom" / "chest_slice_pair")
    assert pair.shape == (512, 512, 2) and pair.spacing == pytest.approx((0.625, 0.625, 1.0))
    assert np.array_equal(pair.array[:, :, 0], pair.array[:, :, 1])


def test_whole_tree_selects_the_largest_ct_series(realdata: Path) -> None:
    from medseg.io import scan_dicom

    study = scan_dicom(realdata / "ct_dicom")
    assert study.selection.chosen.folder.endswith("siemens_abdomen_j2k")
    verdicts = {v.series.folder.rsplit("/", 1)[-1]: v for v in study.selection.verdicts}
    assert not verdicts["transfer_syntaxes"].eligible
    assert study.discovery.skipped_non_dicom == 1  # the reference .nii.gz


@pytest.mark.parametrize("relative", ["nifti/chest_cta_crop/ct_cropped.nii.gz",
                                      "nifti/abdomen_lung_bases/example_ct_sm.nii.gz"])
def test_real_nifti_world_coordinates_agree_with_simpleitk(realdata: Path, relative: str) -> None:
    path = realdata / relative
    ours = load_volume(path)
    image = sitk.ReadImage(str(path))
    assert_same_corners(ours.affine, ours.shape, sitk_world_matrix_ras(image), image.GetSize(), tol=1e-3)


def test_nrrd_and_mha_keep_geometry(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (7, 9, 11)).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((12.0, -40.0, 100.0))
    rotation = sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix()
    image.SetDirection(rotation)
    for suffix in (".nrrd", ".mha"):
        path = tmp_path / f"vol{suffix}"
        sitk.WriteImage(image, str(path))
        volume = load_volume(path)
        assert volume.shape == (11, 9, 7)
        assert_same_corners(volume.affine, volume.shape, sitk_world_matrix_ras(image), image.GetSize(), tol=1e-4)
        expected = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        assert np.array_equal(volume.array, expected)
    assert read_itk_image(tmp_path / "vol.mha").shape == (11, 9, 7)
