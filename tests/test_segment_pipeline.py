"""Segmentation end to end: training (resume, self-describing checkpoints) and `medseg segment` geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from click.testing import CliRunner

from medseg.cli import main
from medseg.data.phantom.acquisition import sample_acquisition
from medseg.data.phantom.model import build_chest_model, component_rng
from medseg.data.phantom.render import Grid, ScannerSettings, render
from medseg.io.dicom_write import SeriesInfo, write_ct_series

from .conftest import assert_same_corners, resample_by_world, sitk_read_series, sitk_world_matrix_ras


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def _rotation_z(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


def _variant(affine: np.ndarray, shape: tuple[int, int, int], order: tuple[int, int, int],
             flips: tuple[bool, bool, bool]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The same box sampled with array axes permuted (`order`: old axis of each new axis) and flipped."""
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for new, old in enumerate(order):
        index_map[old, new] = -1.0 if flips[new] else 1.0
        if flips[new]:
            index_map[old, 3] = shape[old] - 1
    return affine @ index_map, tuple(shape[old] for old in order)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def chest_model():
    return build_chest_model(11, findings=())


def _base_grid(chest_model) -> Grid:
    acquisition = sample_acquisition(component_rng(11, "acquisition"), chest_model, size=128, slices=48,
                                     truncation_probability=0.0)
    return acquisition.grid


ORIENTATIONS = {
    "axial": ((0, 1, 2), (False, False, False)),
    "feet_first": ((0, 1, 2), (True, False, True)),
    "coronal": ((0, 2, 1), (False, True, False)),
    "sagittal": ((1, 2, 0), (False, True, False)),
    "oblique_12deg": None,
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_lung_mask_overlays_its_source_in_every_orientation(name: str, chest_model, tmp_path: Path) -> None:
    base = _base_grid(chest_model)
    if ORIENTATIONS[name] is None:
        centre = base.affine @ np.array([*(np.array(base.shape) - 1) / 2.0, 1.0])
        shift = np.eye(4)
        shift[:3, 3] = centre[:3]
        affine = shift @ _rotation_z(12.0) @ np.linalg.inv(shift) @ base.affine
        shape = base.shape
    else:
        affine, shape = _variant(base.affine, base.shape, *ORIENTATIONS[name])
    image = render(chest_model, Grid(shape, affine, base.slice_thickness), ScannerSettings(noise_sd=15.0))
    folder = tmp_path / "dicom"
    write_ct_series(np.asarray(image.hu), affine, folder, SeriesInfo())

    out = tmp_path / "lungs.nii.gz"
    result = CliRunner().invoke(main, ["segment", str(folder), str(out), "--task", "lungs"])
    assert result.exit_code == 0, result.output
    written = nib.load(out)
    mask = np.asarray(written.dataobj)
    reference = sitk_read_series(folder)
    ref_affine = sitk_world_matrix_ras(reference)
    ref_shape = sitk.GetArrayFromImage(reference).shape[::-1]
    assert_same_corners(written.affine, mask.shape, ref_affine, ref_shape, tol=1e-3)
    # the mask, carried to SimpleITK's grid through world coordinates, lies on the true lungs
    on_reference = resample_by_world(mask, written.affine, ref_affine, ref_shape)
    truth = resample_by_world(np.asarray(image.lungs), affine, ref_affine, ref_shape)
    for side in (1, 2):
        assert _dice(on_reference == side, truth == side) > 0.9, (name, side)


def _tiny_dataset(root: Path) -> Path:
    from medseg.data.phantom.ct_case import synth_ct_dataset

    return synth_ct_dataset(root, cases=3, seed=4, size=96, slices=36, findings=[])


def _train_config(tmp_path: Path, manifest: Path, epochs: int, **preprocessing) -> Path:
    config = {
        "task": "lobes",
        "data": {"manifest": str(manifest), "train_splits": ["train", "test"], "val_splits": ["val"]},
        "preprocessing": {"modality": "ct", "windows": [{"center": -600, "width": 1500}], "stack": 3,
                          "spacing": [4.0, 4.0, 5.0], "roi_margin_mm": 8, **preprocessing},
        "model": {"architecture": "unet_resnet18", "args": {"decoder_channels": [32, 16, 16, 8, 8]}},
        "schedule": {"epochs": epochs, "steps_per_epoch": 2, "batch_size": 2, "patch": [96, 64]},
        "threads": 1,
        "output": str(tmp_path / "run"),
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_train_resume_and_segment_on_the_source_grid(tmp_path: Path) -> None:
    from medseg.infer.lungmask import lung_mask
    from medseg.infer.segment import LobeSegmenter
    from medseg.io import load_volume
    from medseg.models import read_model_card

    manifest = _tiny_dataset(tmp_path / "data")
    splits = {case["split"] for case in yaml.safe_load(manifest.read_text())["cases"]}
    # 3 cases over 3 non-empty split fractions: `assign_patient_splits` gives each split one case, always
    assert splits == {"train", "val", "test"}
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(_train_config(tmp_path, manifest, epochs=2))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,train_loss")
    card = read_model_card(run / "best.safetensors")
    assert card.task == "lobes" and card.labels[4] == "right_middle_lobe"
    assert card.preprocessing["stack"] == 3 and card.spacing == [4.0, 4.0, 5.0]
    assert card.in_channels == 3 and card.out_channels == 6

    # resume: continues at epoch 3 with the history of epochs 1-2 kept
    result = runner.invoke(main, ["train", str(_train_config(tmp_path, manifest, epochs=3)), "--resume"])
    assert result.exit_code == 0, result.output
    resumed = (run / "metrics.csv").read_text().splitlines()
    assert len(resumed) == 4 and resumed[1:3] == rows[1:3] and resumed[3].startswith("3,6,")

    # inference: labels on the exact source grid; lobes only inside the body, each on its own side
    case_dir = manifest.parent / "case_000"
    volume = load_volume(case_dir / "ct")
    result = LobeSegmenter(run / "best.safetensors", batch_size=4)(volume)
    labels = result.labels.array
    assert labels.shape == volume.shape and np.allclose(result.labels.affine, volume.affine)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5}
    sides = lung_mask(volume)
    assert np.array_equal(labels > 0, sides > 0)                 # the lobes divide the lung mask, exactly
    assert not np.isin(labels[sides == 1], [1, 2]).any()        # right lung: right lobes only
    assert not np.isin(labels[sides == 2], [3, 4, 5]).any()
    assert set(result.timings) >= {"lung_mask", "resample", "model", "to_source_grid", "postprocess"}


@pytest.mark.slow
def test_position_channel_and_scanner_augmentation_train_and_segment_partial_scans(tmp_path: Path) -> None:
    from medseg.infer.lungmask import lung_mask
    from medseg.infer.segment import LobeSegmenter
    from medseg.io import Volume, load_volume
    from medseg.models import read_model_card

    manifest = _tiny_dataset(tmp_path / "data")
    scanner = {"scanner_thick_prob": 0.5, "scanner_lowres_prob": 0.5, "scanner_kernel_prob": 0.5,
               "scanner_noise_prob": 0.5, "scanner_hu_prob": 0.5, "position_dropout": 0.5}
    config = _train_config(tmp_path, manifest, epochs=1, position_channel=True, augmentation=scanner)
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    card = read_model_card(tmp_path / "run" / "best.safetensors")
    assert card.in_channels == 4 and card.preprocessing["position_channel"] is True   # 1 window x 3 + height
    segmenter = LobeSegmenter(tmp_path / "run" / "best.safetensors", batch_size=4)
    volume = load_volume(manifest.parent / "case_000" / "ct")
    full = segmenter(volume).labels.array
    assert np.array_equal(full > 0, lung_mask(volume) > 0)
    # the lower half only (lung cut at the top slice): the height is unknown, the lung still fully divided
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))
    keep = volume.shape[axis] // 2
    first = 0 if volume.affine[2, axis] > 0 else volume.shape[axis] - keep     # the inferior half's first index
    index = [slice(None)] * 3
    index[axis] = slice(first, first + keep)
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, axis] * first
    part = Volume(np.ascontiguousarray(volume.array[tuple(index)]), affine, source="lower half")
    labels = segmenter(part).labels.array
    assert labels.shape == part.shape and np.array_equal(labels > 0, lung_mask(part) > 0)


def test_segment_without_model_explains_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["segment", str(tmp_path), str(tmp_path / "out.nii.gz")])
    assert result.exit_code == 2
    assert "--model" in result.output and "--task lungs" in result.output


def test_train_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("task: lobes\ndata: {manifest: m.yaml}\npreprocessing: p.yaml\nshedule: {epochs: 2}\n")
    result = CliRunner().invoke(main, ["train", str(path)])
    assert result.exit_code == 2
    assert "shedule" in result.output and "did you mean 'schedule'" in result.output


def test_flip_tta_averages_mirror_groups_and_keeps_the_middle_lobe_share() -> None:
    import torch

    from medseg.infer.predict import FlipTTA

    # classes: 0 bg, 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL; groups: right upper+middle (1), right lower (2),
    # left upper (3), left lower (4)
    tta = FlipTTA([0, 3, 4, 1, 1, 2], {0: 0, 1: 3, 2: 4, 3: 1, 4: 2})
    direct = torch.tensor([0.1, 0.0, 0.0, 0.3, 0.3, 0.3])[None, :, None, None]
    mirrored = torch.tensor([0.1, 0.8, 0.1, 0.0, 0.0, 0.0])[None, :, None, None]
    merged = tta.combine(direct, mirrored)[0, :, 0, 0]
    # right upper + middle: (0.6 + 0.8) / 2 = 0.7, split 50/50 as in the direct view; lower (0.3 + 0.1) / 2
    assert torch.allclose(merged, torch.tensor([0.1, 0.0, 0.0, 0.35, 0.35, 0.2]), atol=1e-6)
    assert torch.isclose(merged.sum(), torch.tensor(1.0))


def test_segment_files_isolates_failures_and_writes_the_rest(realdata: Path, tmp_path: Path) -> None:
    from medseg.errors import InputError
    from medseg.infer.segment import SegmentationResult, segment_files, segment_lungs

    good = realdata / "ct_dicom" / "chest_slice_pair"
    missing = tmp_path / "no_such_study"
    pairs = [(missing, tmp_path / "a.nii.gz"), (good, tmp_path / "b.nii.gz")]
    results = dict(segment_files(pairs, segment_lungs))
    assert isinstance(results[missing], InputError) and not (tmp_path / "a.nii.gz").exists()
    assert isinstance(results[good], SegmentationResult) and "write" in results[good].timings
    written = nib.load(tmp_path / "b.nii.gz")
    assert set(np.unique(np.asarray(written.dataobj))) == {0, 1, 2}


def test_stray_lobe_pieces_join_the_lobe_they_border() -> None:
    from scipy import ndimage

    from medseg.infer.segment import _keep_largest_components

    labels = np.zeros((30, 20, 20), np.uint8)
    labels[2:14, 2:18, 2:18] = 1                   # lobe 1
    labels[14:28, 2:18, 2:18] = 2                  # lobe 2
    labels[20:23, 8:11, 8:11] = 1                  # a piece of 1 inside 2: becomes 2
    labels[5:7, 5:7, 5:7] = 2                      # a piece of 2 inside 1: becomes 1
    labels[10:14, 2:6, 2:6] = 3                    # lobe 3 (small, main body, borders 1 and 2)
    labels[16:18, 14:16, 14:16] = 3                # a piece of 3 inside 2: becomes 2
    island = (slice(0, 1), slice(0, 2), slice(0, 2))
    labels[island] = 1                             # lung island touching nothing else (diagonal gap): stays
    labels[1, :, :] = 0
    expected = labels.copy()
    expected[20:23, 8:11, 8:11] = 2
    expected[5:7, 5:7, 5:7] = 1
    expected[16:18, 14:16, 14:16] = 2
    _keep_largest_components(labels, [1, 2, 3])
    np.testing.assert_array_equal(labels, expected)
    cube = np.ones((3, 3, 3), bool)
    assert ndimage.label(labels == 2, structure=cube)[1] == 1 and ndimage.label(labels == 3, structure=cube)[1] == 1
