"""Segmentation metrics and `medseg evaluate seg`: analytic cases, MONAI as an independent reference, the CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import GeometryError
from medseg.evaluate.segmentation import (
    compare_files,
    compare_labels,
    evaluate_folder,
    pair_folders,
    surface_distances,
)

LOBES = {1: "LUL", 2: "LLL", 3: "RUL", 4: "RML", 5: "RLL"}
"""The lungmask lobe convention, written out so the tests check the registry."""

REPO = Path(__file__).resolve().parents[1]


def _medseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def _invoke(*args: str):
    """The `evaluate` group in-process (stdout and stderr kept apart)."""
    from click.testing import CliRunner

    from medseg.cli.evaluate import evaluate

    return CliRunner().invoke(evaluate, list(args))


def _sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _random_labels(seed: int, shape: tuple[int, int, int], n_labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A reference with `n_labels` smooth random blobs and a prediction that perturbs them."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for label in range(1, n_labels + 1):
        base = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        noisy = base + 0.4 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
        ref[(base > np.quantile(base, 0.85)) & (ref == 0)] = label
        pred[(noisy > np.quantile(noisy, 0.85)) & (pred == 0)] = label
    return pred, ref


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([0.8, 0.8, 2.0, 1.0]) if affine is None else affine),
             path)
    return path


def _lobe_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _random_labels(seed, (24, 26, 14), n_labels=5)
    return pred, ref


# ------------------------------------------------------------------------------------------------ metrics


def test_offset_spheres_match_analytic_overlap_and_distances() -> None:
    radius, offset = 12.0, 3
    ref = _sphere((40, 40, 40), (20, 20, 20), radius)
    pred = _sphere((40, 40, 40), (20 + offset, 20, 20), radius)
    scores = compare_labels(pred, ref, (1.0, 1.0, 1.0), labels={1: "ball"})
    ball = scores["ball"]

    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12  # volume of the overlap
    ball_volume = 4 / 3 * math.pi * radius**3
    assert ball.dice == pytest.approx(lens / ball_volume, rel=0.02)
    assert ball.dice == pytest.approx(2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum()))
    assert ball.iou == pytest.approx(ball.dice / (2 - ball.dice))
    assert ball.volume_ref_ml == pytest.approx(ball_volume / 1000, rel=0.02)
    assert ball.volume_diff_ml == 0 and ball.volume_diff_percent == 0
    # Distance from one surface to the other is ~offset*|cos(theta)|, uniform in [0, offset] on a sphere:
    # the 95th percentile is ~0.95*offset and the mean ~offset/2 (within voxelisation).
    assert ball.hd95_mm == pytest.approx(offset, abs=1.0)
    assert ball.assd_mm == pytest.approx(offset / 2, abs=0.5)
    assert scores.mean_dice == ball.dice


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_monai_on_random_shapes() -> None:
    import torch  # a hard dependency (pyproject): missing means broken, not skipped
    from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance

    pred, ref = _random_labels(3, (26, 30, 18))
    ref[0, 5:15, 3:9] = 2  # a label touching the image border
    spacing = (0.8, 1.3, 2.5)
    labels = {1: "a", 2: "b", 3: "c"}
    ours = {method: compare_labels(pred, ref, spacing, labels, distance_method=method)
            for method in ("edt", "kdtree", "auto")}
    for value, name in labels.items():
        y_pred = torch.from_numpy((pred == value)[None, None].astype(np.float32))
        y = torch.from_numpy((ref == value)[None, None].astype(np.float32))
        hd95 = float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                                spacing=list(spacing))[0, 0])
        assd = float(compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                      spacing=list(spacing))[0, 0])
        dice = float(DiceMetric(include_background=True, reduction="none")(y_pred, y)[0, 0])
        for scores in ours.values():
            assert scores[name].hd95_mm == pytest.approx(hd95, rel=1e-4)
            assert scores[name].assd_mm == pytest.approx(assd, rel=1e-4)
            assert scores[name].dice == pytest.approx(dice, rel=1e-5)
            assert 0 < scores[name].dice < 1


def test_surface_distance_methods_agree() -> None:
    pred, ref = _random_labels(5, (20, 22, 16), n_labels=1)
    a, b = pred == 1, ref == 1
    edt = surface_distances(a, b, (0.7, 1.1, 3.0), "edt")
    kdtree = surface_distances(a, b, (0.7, 1.1, 3.0), "kdtree")
    for x, y in zip(edt, kdtree, strict=True):
        np.testing.assert_allclose(np.sort(x), np.sort(y), rtol=1e-12, atol=1e-12)


def test_anisotropic_spacing_changes_distances_not_overlap() -> None:
    ref = _sphere((30, 30, 30), (15, 15, 13), 8)
    pred = _sphere((30, 30, 30), (15, 15, 15), 8)  # offset 2 voxels along the third axis
    iso = compare_labels(pred, ref, (1.0, 1.0, 1.0), {1: "x"})["x"]
    aniso = compare_labels(pred, ref, (1.0, 1.0, 3.0), {1: "x"})["x"]
    across = compare_labels(pred, ref, (3.0, 1.0, 1.0), {1: "x"})["x"]
    assert aniso.dice == iso.dice and aniso.iou == iso.iou
    assert aniso.hd95_mm > 1.5 * iso.hd95_mm
    assert aniso.assd_mm > 1.2 * iso.assd_mm
    assert across.hd95_mm != aniso.hd95_mm
    assert aniso.volume_ref_ml == pytest.approx(3 * iso.volume_ref_ml)


def test_empty_label_conventions() -> None:
    ref = np.zeros((20, 20, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:8, 2:8, 2:6] = 1
    pred[3:8, 2:8, 2:6] = 1
    ref[10:15, 10:15, 2:6] = 2  # 2: only in the reference
    pred[12:16, 2:6, 5:8] = 3  # 3: only in the prediction; 4: in neither
    scores = compare_labels(pred, ref, (1.0, 1.0, 2.0), {1: "one", 2: "two", 3: "three", 4: "four"})

    assert scores["one"].status == "ok" and 0 < scores["one"].dice < 1
    two, three, four = scores["two"], scores["three"], scores["four"]
    assert (two.status, two.dice, two.iou, two.hd95_mm, two.assd_mm) == ("missing_in_pred", 0, 0, math.inf,
                                                                         math.inf)
    assert two.volume_diff_percent == -100
    assert (three.status, three.dice, three.hd95_mm) == ("missing_in_ref", 0, math.inf)
    assert math.isnan(three.volume_diff_percent)
    assert four.status == "absent" and math.isnan(four.dice) and math.isnan(four.hd95_mm)
    # Means: labels in the reference only (one, two); absent and false-positive labels are left out.
    assert scores.mean_dice == pytest.approx(scores["one"].dice / 2)
    assert scores.mean_hd95_mm == math.inf

    document = json.loads(json.dumps(scores.to_dict(), allow_nan=False))
    assert document["labels"]["two"]["hd95_mm"] is None and document["labels"]["two"]["status"] == "missing_in_pred"
    assert document["labels"]["four"]["dice"] is None
    assert document["mean_hd95_mm"] is None

    nothing = compare_labels(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8))
    assert math.isnan(nothing.mean_dice) and all(s.status == "absent" for s in nothing.per_label)


def test_all_labels_and_float_maps() -> None:
    pred, ref = _random_labels(7, (16, 16, 12), n_labels=2)
    pred[0, 0, 0] = 9
    scores = compare_labels(pred.astype(np.float32), ref, labels="all")
    assert [s.name for s in scores.per_label] == ["1", "2", "9"]
    assert scores["9"].status == "missing_in_ref"
    lungs = compare_labels(pred, ref, labels="lungs")
    assert [s.name for s in lungs.per_label] == ["right_lung", "left_lung"]


def test_default_lobe_names_follow_the_label_config() -> None:
    import yaml

    config = yaml.safe_load((REPO / "configs" / "labels" / "lobes.yaml").read_text())
    assert {int(k): v["abbreviation"] for k, v in config["labels"].items() if int(k)} == LOBES
    pred = np.zeros((4, 4, 4), np.uint8)
    assert [s.name for s in compare_labels(pred, pred, (1.0, 1.0, 1.0)).per_label] == list(LOBES.values())


# -------------------------------------------------------------------------------------------------- files


def test_grid_mismatch_names_both_files(tmp_path: Path) -> None:
    pred, ref = _lobe_pair(1)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    ref_path = _save(ref, tmp_path / "ref.nii.gz", affine)
    shifted = affine.copy()
    shifted[0, 3] = 0.5
    pred_path = _save(pred, tmp_path / "pred.nii.gz", shifted)
    with pytest.raises(GeometryError) as error:
        compare_files(pred_path, ref_path)
    message = str(error.value)
    assert str(pred_path) in message and str(ref_path) in message and "0.5 mm" in message

    _save(pred[:, :, :-1], tmp_path / "short.nii.gz", affine)
    with pytest.raises(GeometryError, match=r"24x26x13 vs 24x26x14"):
        compare_files(tmp_path / "short.nii.gz", ref_path)

    nearly = affine.copy()
    nearly[2, 3] = 4e-4  # within the 1e-3 mm tolerance
    scores = compare_files(_save(pred, tmp_path / "near.nii.gz", nearly), ref_path)
    assert scores.spacing == pytest.approx((0.8, 0.8, 2.0))
    assert scores.mean_dice == pytest.approx(compare_labels(pred, ref, (0.8, 0.8, 2.0)).mean_dice)


def test_folder_pairing_layouts(tmp_path: Path) -> None:
    pred, ref = _lobe_pair(2)
    _save(pred, tmp_path / "preds" / "case_001.nii.gz")
    _save(pred, tmp_path / "preds" / "case_002" / "lobes.nii.gz")
    _save(pred, tmp_path / "preds" / "case_005" / "whatever.nii")  # single file: used as is
    for case in ("case_001", "case_002", "case_005"):
        _save(ref, tmp_path / "refs" / case / "lobes.nii.gz")
        _save(ref > 0, tmp_path / "refs" / case / "lungs.nii.gz")
    pairs = pair_folders(tmp_path / "preds", tmp_path / "refs", ref_name="lobes.nii.gz")
    assert [(c, p.name, r.name) for c, p, r in pairs.pairs] == [
        ("case_001", "case_001.nii.gz", "lobes.nii.gz"),
        ("case_002", "lobes.nii.gz", "lobes.nii.gz"),
        ("case_005", "whatever.nii", "lobes.nii.gz"),
    ]
    assert not pairs.missing_pred and not pairs.missing_ref

    # Without --ref-name, folders with two label files are ambiguous: reported, not guessed.
    from medseg.errors import InputError

    with pytest.raises(InputError, match="2 volume files"):
        pair_folders(tmp_path / "preds", tmp_path / "refs")

    result = evaluate_folder(tmp_path / "preds", tmp_path / "refs", ref_name="lobes.nii.gz")
    assert len(result) == 3
    summary = result.summary["labels"]["LUL"]
    assert summary["n"] == 3 and summary["dice"]["std"] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_single_file_json_matches_api_and_writes_csv(tmp_path: Path) -> None:
    pred, ref = _lobe_pair(4)
    pred_path, ref_path = _save(pred, tmp_path / "p.nii.gz"), _save(ref, tmp_path / "r.nii.gz")
    result = _medseg("evaluate", "seg", "--pred", str(pred_path), "--ref", str(ref_path), "--json",
                     "--out", str(tmp_path / "out" / "scores.csv"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    expected = compare_labels(pred, ref, (0.8, 0.8, 2.0), LOBES).to_dict()
    assert list(document["labels"]) == list(expected["labels"])
    for name, label in expected["labels"].items():
        for key, value in label.items():
            got = document["labels"][name][key]
            assert got == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), (name, key)
    assert document["mean_dice"] == pytest.approx(expected["mean_dice"])
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == list(LOBES.values())
    assert {row["case"] for row in rows} == {"p"}
    assert float(rows[0]["dice"]) == pytest.approx(expected["labels"]["LUL"]["dice"])

    human = _invoke("seg", "--pred", str(pred_path), "--ref", str(ref_path))
    assert human.exit_code == 0, human.output
    assert "HD95 mm" in human.stdout and "RML" in human.stdout and "mean" in human.stdout


def test_cli_folders_warn_about_missing_pairs_and_score_the_rest(tmp_path: Path) -> None:
    pred, ref = _lobe_pair(6)
    for case in ("case_001", "case_002", "case_004"):  # case_004 has no reference
        _save(pred, tmp_path / "preds" / f"{case}.nii.gz")
    for case in ("case_001", "case_002", "case_003"):  # case_003 has no prediction
        _save(ref, tmp_path / "refs" / case / "lobes.nii.gz")
        _save(ref > 0, tmp_path / "refs" / case / "lungs.nii.gz")
    out = tmp_path / "scores.csv"
    common = ["evaluate", "seg", "--pred", str(tmp_path / "preds"), "--ref", str(tmp_path / "refs"),
              "--ref-name", "lobes.nii.gz"]
    result = _medseg(*common, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "case_003" in result.stderr and "no prediction" in result.stderr
    assert "case_004" in result.stderr and "no reference" in result.stderr
    assert "case_001" in result.stdout and "case_002" in result.stdout and "HD95 mm" in result.stdout
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 5 and {row["case"] for row in rows} == {"case_001", "case_002"}

    as_json = _invoke(*common[1:], "--json")
    document = json.loads(as_json.stdout)
    assert set(document["cases"]) == {"case_001", "case_002"}
    assert document["missing_pred"] == ["case_003"] and document["missing_ref"] == ["case_004"]
    assert document["summary"]["labels"]["RLL"]["n"] == 2



def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    pred, ref = _lobe_pair(8)
    _save(pred, tmp_path / "preds" / "a.nii.gz")
    _save(ref, tmp_path / "refs" / "b.nii.gz")
    nothing = _invoke("seg", "--pred", str(tmp_path / "preds"), "--ref", str(tmp_path / "refs"))
    assert nothing.exit_code == 2 and nothing.stderr.startswith("medseg: error:")
    assert "no case pairs" in nothing.stderr and len(nothing.stderr.strip().splitlines()) == 1

    mixed = _invoke("seg", "--pred", str(tmp_path / "preds" / "a.nii.gz"), "--ref", str(tmp_path / "refs"))
    assert mixed.exit_code == 2 and "both be files or both be folders" in mixed.stderr
    missing = _invoke("seg", "--pred", str(tmp_path / "nope.nii.gz"), "--ref", str(tmp_path / "refs" / "b.nii.gz"))
    assert missing.exit_code == 2 and "nope.nii.gz: no such file or folder" in missing.stderr
