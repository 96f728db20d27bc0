"""Lobe statistics: exact numbers on a hand-built volume, phantoms, QC flags, CSV/JSON output, QC config."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.configfile import ConfigSchemaError
from medseg.data.phantom.ct_case import synth_ct_case
from medseg.errors import ConfigError, InputError
from medseg.export.statistics import (
    CSV_COLUMNS,
    QcRanges,
    load_qc_ranges,
    lobe_statistics,
    write_statistics,
)
from medseg.io import load_volume, read_nifti
from medseg.io.volume import Volume

QC_FILE = Path(__file__).resolve().parents[1] / "configs" / "qc" / "lobes.yaml"
VOXEL_ML = 1.5**3 / 1000.0
LOBES = {"LUL": 1, "LLL": 2, "RUL": 3, "RML": 4, "RLL": 5}
BOXES = {  # label -> (i, j, k) box: a 3-voxel tissue margin to every image face (a body around the lungs), none
    # touches another; +i is the patient's right, +j anterior, -k superior (so the lobes lie in anatomical order)
    1: np.s_[4:12, 4:12, 4:12], 2: np.s_[4:12, 4:12, 13:22], 3: np.s_[14:22, 4:12, 4:10],
    4: np.s_[14:22, 5:13, 11:15], 5: np.s_[14:22, 4:12, 16:22],
}
COUNTS = {1: 512, 2: 576, 3: 384, 4: 256, 5: 384}
SIZE = 25


def _hand_built(seed: int = 0) -> tuple[Volume, np.ndarray]:
    """25^3 voxels of 1.5 mm (a flipped axis: negative determinant); lung HU around -900 with tails below -950,
    tissue (40 HU) around it."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((SIZE, SIZE, SIZE), np.uint8)
    for label, box in BOXES.items():
        labels[box] = label
    hu = np.full(labels.shape, 40.0, np.float32)
    for label in BOXES:
        mask = labels == label
        hu[mask] = np.round(rng.normal(-880 - 10 * label, 50, mask.sum()))
    affine = np.diag([1.5, 1.5, -1.5, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return Volume(hu, affine, source="hand-built"), labels


def _codes(stats, code: str) -> set:
    return stats.flagged(code)


def _message(stats, code: str) -> str:
    [message] = [flag.message for flag in stats.flags if flag.code == code]
    return message


PIECE_FLAGS = {"lobe_fragmented", "lung_islands"}
NEW_FLAGS = {"lung_split_failed", "lung_outside_body", "lobes_out_of_order", *PIECE_FLAGS}


def test_hand_built_volumes_shares_and_densities_are_exact():
    volume, labels = _hand_built()
    stats = lobe_statistics(volume, labels)
    assert stats.voxel_ml == pytest.approx(VOXEL_ML, rel=1e-12)
    total = sum(COUNTS.values())
    assert total == 2112
    for name, label in LOBES.items():
        row = stats.row(name)
        mask = labels == label
        values = volume.array[mask].astype(np.float64)
        assert row.label == label and row.voxels == COUNTS[label] == mask.sum()
        assert row.volume_ml == pytest.approx(COUNTS[label] * 3.375 / 1000, rel=1e-12)
        assert row.share_percent == pytest.approx(100 * COUNTS[label] / total, rel=1e-12)
        assert row.mean_hu == pytest.approx(values.mean(), abs=1e-9)
        assert row.median_hu == pytest.approx(np.median(values), abs=1e-9)
        assert row.pd15_hu == pytest.approx(np.percentile(values, 15), abs=1e-9)
        assert row.laa950_percent == pytest.approx(100 * np.mean(values < -950), abs=1e-9)
        assert 0 < row.laa950_percent < 50                    # the test data really has voxels on both sides
        assert row.n_components == 1 and row.largest_component_ml == pytest.approx(row.volume_ml)
    right = stats.row("right_lung")
    assert right.voxels == 384 + 256 + 384
    assert right.share_percent == pytest.approx(100 * 1024 / 2112, rel=1e-12)
    right_values = volume.array[np.isin(labels, (3, 4, 5))]
    assert right.pd15_hu == pytest.approx(np.percentile(right_values, 15), abs=1e-9)
    assert stats.row("left_lung").voxels == 1088
    whole = stats.row("total")
    assert whole.volume_ml == pytest.approx(2112 * 3.375 / 1000) and whole.share_percent == 100
    assert whole.mean_hu == pytest.approx(volume.array[labels > 0].astype(np.float64).mean(), abs=1e-9)
    assert [r.name for r in stats.rows] == ["LUL", "LLL", "RUL", "RML", "RLL", "right_lung", "left_lung", "total"]
    codes = {flag.code for flag in stats.flags}
    assert codes == {"volume_out_of_range"}                    # only: 7 mL of "lung" is implausible
    assert _codes(stats, "volume_out_of_range") >= {"total"}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Same seed without and with emphysema, small grids."""
    root = tmp_path_factory.mktemp("stat_phantoms")
    cases = {}
    for key, findings in (("plain", []), ("emphysema", ["emphysema"])):
        case = synth_ct_case(root / key, 7, size=96, slices=48, findings=findings)
        volume = load_volume(case.folder / "ct")
        labels = read_nifti(case.folder / "lobes.nii.gz")
        summary = json.loads((case.folder / "findings.json").read_text())
        cases[key] = (volume, np.asarray(labels.array), summary)
    return cases


def test_phantom_shares_are_plausible_and_match_the_generator(phantoms):
    for volume, labels, summary in phantoms.values():
        stats = lobe_statistics(volume, labels, labels_source="lobes.nii.gz")
        assert stats.flags == [], [flag.message for flag in stats.flags]
        anatomy = summary["anatomy"]
        assert stats.row("total").volume_ml == pytest.approx(anatomy["lung_volume_ml"], abs=0.5)
        for name, share in anatomy["lobe_share_percent"].items():
            assert stats.row(name).share_percent == pytest.approx(share, abs=0.05)
        assert stats.row("total").laa950_percent == pytest.approx(anatomy["laa950_percent"], abs=1.0)
        assert -950 < stats.row("total").median_hu < -750


def test_emphysema_raises_laa950(phantoms):
    plain = lobe_statistics(*phantoms["plain"][:2]).row("total")
    emphysema = lobe_statistics(*phantoms["emphysema"][:2]).row("total")
    assert plain.laa950_percent < 5
    assert emphysema.laa950_percent > plain.laa950_percent + 5
    assert emphysema.pd15_hu < plain.pd15_hu


def _crop_top(volume: Volume, labels: np.ndarray, keep: float) -> tuple[Volume, np.ndarray]:
    """Cut the slices above `keep` of the lungs' cranio-caudal extent (k axis), fixing the affine."""
    ks = np.nonzero((labels > 0).any(axis=(0, 1)))[0]
    up = volume.affine[2, 2] > 0                                   # k runs towards the head
    if up:
        cut = int(ks[0] + keep * (ks[-1] - ks[0]))
        return Volume(volume.array[:, :, :cut], volume.affine), labels[:, :, :cut]
    cut = int(ks[-1] - keep * (ks[-1] - ks[0]))
    affine = volume.affine.copy()
    affine[:3, 3] += cut * affine[:3, 2]
    return Volume(volume.array[:, :, cut:], affine), labels[:, :, cut:]


def test_cropped_fov_flags_touched_lobes_as_lower_bounds(phantoms):
    volume, labels, _ = phantoms["plain"]
    cropped, cut_labels = _crop_top(volume, labels, 0.75)
    edge = cut_labels[:, :, -1] if volume.affine[2, 2] > 0 else cut_labels[:, :, 0]
    touched = {name for name, label in LOBES.items() if np.any(edge == label)}
    assert {"RUL", "LUL"} <= touched
    stats = lobe_statistics(cropped, cut_labels)
    assert _codes(stats, "touches_fov_edge") == touched | {"right_lung", "left_lung", "total"}
    for flag in stats.flags:
        if flag.code == "touches_fov_edge":
            assert "lower bound" in flag.message and "partial coverage" in flag.message
        if flag.code == "volume_out_of_range":                     # shares of a cut total are not lower bounds
            assert "partial coverage" in flag.message and ("lower bound" in flag.message) == (flag.label == "total")
    for name in touched:
        row = stats.row(name)
        assert row.volume_ml == pytest.approx(np.count_nonzero(cut_labels == LOBES[name]) * stats.voxel_ml)
        assert row.volume_ml > 0 and "touches_fov_edge" in row.flags
    assert "touches_fov_edge" not in lobe_statistics(volume, labels).row("RUL").flags


def test_in_plane_border_is_an_fov_edge():
    volume, labels = _hand_built()
    labels[0, 2:5, 2:5] = 1                                        # LUL reaches i = 0
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "touches_fov_edge") == {"LUL", "left_lung", "total"}
    message = next(f.message for f in stats.flags if f.code == "touches_fov_edge" and f.label == "LUL")
    assert "i=0" in message and "lower bound" in message


def test_missing_lobe():
    volume, labels = _hand_built()
    labels[labels == 4] = 0
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "missing_lobe") == {"RML"}
    rml = stats.row("RML")
    assert rml.voxels == 0 and rml.volume_ml == 0 and rml.share_percent == 0 and math.isnan(rml.mean_hu)
    assert rml.flags == ["missing_lobe"]
    assert "RML" not in _codes(stats, "volume_out_of_range")       # reported once, as missing


def test_hand_built_pieces_inside_the_lung_and_detached_ones():
    volume, labels = _hand_built()
    labels[12, 12, 12] = 1                                         # touches the LUL box by a corner: same part
    assert lobe_statistics(volume, labels).row("LUL").n_components == 1
    labels[4, 18, 18] = 1                                          # one stray voxel in tissue: 0.003 mL
    stats = lobe_statistics(volume, labels)
    assert stats.row("LUL").n_components == 2 and not {f.code for f in stats.flags} & PIECE_FLAGS
    labels[4:8, 16:20, 17:20] = 1                                  # 48 detached voxels (0.16 mL, 8 % of the lobe)
    stats = lobe_statistics(volume, labels)
    row = stats.row("LUL")
    assert row.n_components == 2 and row.largest_component_ml == pytest.approx(513 * VOXEL_ML)
    assert not {f.code for f in stats.flags} & PIECE_FLAGS        # an island below island_min_ml (1 mL)
    stats = lobe_statistics(volume, labels, qc=QcRanges(island_min_ml=0.1))
    assert _codes(stats, "lung_islands") == {"left_lung"} and not _codes(stats, "lobe_fragmented")
    assert "0.2 mL" in _message(stats, "lung_islands")

    volume, labels = _hand_built()
    labels[6:10, 6:10, 16:19] = 1                                  # 48 LUL voxels inside LLL: 8.6 % of LUL
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "lobe_fragmented") == {"LUL"} and not _codes(stats, "lung_islands")
    message = _message(stats, "lobe_fragmented")
    assert "next to LLL" in message and "0.2 mL" in message and "lobe split" in message
    assert "lobe_fragmented" in stats.row("LUL").flags
    assert not lobe_statistics(volume, labels, qc=QcRanges(fragment_min_percent=10)).flagged("lobe_fragmented")


def test_empty_mask_gives_nan_rows_not_zeros():
    volume, labels = _hand_built()
    stats = lobe_statistics(volume, np.zeros_like(labels))
    assert len(stats.rows) == 8
    for row in stats.rows:
        assert row.voxels == 0
        assert math.isnan(row.volume_ml) and math.isnan(row.share_percent) and math.isnan(row.mean_hu)
        assert "empty_mask" in row.flags
    assert _codes(stats, "empty_mask") == {None}
    assert not _codes(stats, "missing_lobe") and not _codes(stats, "volume_out_of_range")


@pytest.mark.parametrize("transform", [lambda a: a + 1100.0, lambda a: (a + 1024) / 4000.0, lambda a: a - 3000])
def test_not_hu(transform):
    volume, labels = _hand_built()
    shifted = Volume(transform(volume.array), volume.affine)
    stats = lobe_statistics(shifted, labels)
    assert _codes(stats, "not_hu") == {None}
    for row in stats.rows:
        assert math.isnan(row.mean_hu) and math.isnan(row.laa950_percent) and "not_hu" in row.flags
    assert stats.row("LUL").volume_ml == pytest.approx(512 * VOXEL_ML)
    assert not _codes(lobe_statistics(volume, labels), "not_hu")


def test_unexpected_label_is_reported_but_not_counted():
    volume, labels = _hand_built()
    labels[2:4, 12:14, 12:14] = 7
    stats = lobe_statistics(volume, labels)
    assert stats.row("label_7").voxels == 8 and _codes(stats, "unexpected_label") == {"label_7"}
    assert stats.row("total").voxels == 2112


def test_bad_label_maps_are_input_errors():
    volume, labels = _hand_built()
    with pytest.raises(InputError, match="does not match"):
        lobe_statistics(volume, labels[:, :, :10])
    with pytest.raises(InputError, match="whole numbers"):
        lobe_statistics(volume, labels + 0.5)


def test_write_statistics_csv_and_json(tmp_path):
    volume, labels = _hand_built()
    out = tmp_path / "out"
    csv_path, json_path = write_statistics(lobe_statistics(volume, labels), out / "lobes.csv", out / "lobes.json")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        records = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert [r["name"] for r in records][:5] == list(LOBES)
    assert float(records[0]["volume_ml"]) == pytest.approx(512 * VOXEL_ML, abs=1e-4)
    assert records[-1]["flags"] == "volume_out_of_range" and records[-1]["n_components"] == ""

    empty = lobe_statistics(volume, np.zeros_like(labels))
    write_statistics(empty, out / "empty.csv", out / "empty.json")
    text = (out / "empty.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert report["rows"][0]["volume_ml"] is None and report["rows"][0]["mean_hu"] is None
    assert report["flags"][0]["code"] == "empty_mask"
    assert json.loads(json_path.read_text())["rows"][0]["voxels"] == 512
    assert sorted(p.name for p in out.iterdir()) == ["empty.csv", "empty.json", "lobes.csv", "lobes.json"]


def test_qc_config_file_matches_defaults_and_refuses_unknown_keys(tmp_path):
    assert load_qc_ranges(QC_FILE) == QcRanges()
    bad = tmp_path / "qc.yaml"
    bad.write_text(QC_FILE.read_text() + "fragment_min_mll: 2\n")
    with pytest.raises(ConfigError, match="fragment_min_mll") as info:
        load_qc_ranges(bad)
    assert "fragment_min_ml" in str(info.value) and str(bad) in str(info.value)
    bad.write_text("share_percent:\n  RML: [14, 4]\n")
    with pytest.raises(ConfigSchemaError, match=r"share_percent\.RML"):
        load_qc_ranges(bad)
    bad.write_text("split_min_percent: 60\n")                      # at most 50: both sides cannot be below it
    with pytest.raises(ConfigSchemaError, match="split_min_percent"):
        load_qc_ranges(bad)
    for key in ("island_min_ml", "split_min_percent", "outside_body_max_ml", "fragment_min_ml"):
        assert f"\n{key}: " in QC_FILE.read_text()                  # every threshold is in the file, with its source


def test_custom_ranges_change_flags():
    volume, labels = _hand_built()
    qc = QcRanges(total_ml=(1, 10), share_percent={"LUL": (30, 40)})
    stats = lobe_statistics(volume, labels, qc=qc)
    assert _codes(stats, "volume_out_of_range") == {"LUL"}
    assert "24.2 %" in next(f.message for f in stats.flags if f.code == "volume_out_of_range")


# --- label-free QC on a realistic phantom (128 x 128 in-plane, ~3 mm pixels) -------------------------------


@pytest.fixture(scope="module")
def phantom128(tmp_path_factory):
    """A correct phantom CT with its lobe and lung label maps and the patient's body."""
    from medseg.infer.lungmask import body_mask

    case = synth_ct_case(tmp_path_factory.mktemp("qc_phantom") / "case", 11, size=128, findings=[])
    volume = load_volume(case.folder / "ct")
    lobes = np.asarray(read_nifti(case.folder / "lobes.nii.gz").array)
    lungs = np.asarray(read_nifti(case.folder / "lungs.nii.gz").array)
    return volume, lobes, lungs, body_mask(volume)


def _block(region: np.ndarray, ml: float, voxel_ml: float) -> tuple[slice, ...]:
    """A block of about `ml` (4 x 4 in-plane voxels, slices to fit) lying entirely in `region`."""
    shape = (4, 4, max(1, round(ml / voxel_ml / 16)))
    centres = np.argwhere(ndimage.binary_erosion(region, np.ones(shape, bool)))
    assert centres.size, "no room for the block"
    centre = centres[len(centres) // 2]
    return tuple(slice(c - n // 2, c - n // 2 + n) for c, n in zip(centre, shape, strict=True))


def test_correct_phantom_raises_none_of_the_new_flags(phantom128):
    volume, lobes, lungs, _ = phantom128
    for labels, name in ((lobes, "lobes"), (lungs, "lungs")):
        stats = lobe_statistics(volume, labels, name)
        assert not {flag.code for flag in stats.flags} & NEW_FLAGS, [flag.message for flag in stats.flags]


def test_swapped_sides(phantom128):
    volume, lobes, lungs, _ = phantom128
    swap = np.array([0, 3, 5, 1, 4, 2], np.uint8)                  # LUL <-> RUL, LLL <-> RLL
    stats = lobe_statistics(volume, swap[lobes])
    assert _codes(stats, "lobes_out_of_order") == {"total"}
    message = _message(stats, "lobes_out_of_order")
    assert "LUL and LLL" in message and "patient's right" in message and "swapped" in message
    stats = lobe_statistics(volume, np.array([0, 2, 1], np.uint8)[lungs], "lungs")
    assert _codes(stats, "lobes_out_of_order") == {"total"} and "(left lung)" in _message(stats, "lobes_out_of_order")
    assert not _codes(stats, "lung_split_failed")                  # both sides still hold about half


def test_failed_left_right_split(phantom128):
    volume, _, lungs, _ = phantom128
    stats = lobe_statistics(volume, np.where(lungs > 0, 1, 0).astype(np.uint8), "lungs")
    assert _codes(stats, "lung_split_failed") == {"left_lung"}
    assert "no left lung" in _message(stats, "lung_split_failed")
    assert "lung_split_failed" in stats.row("left_lung").flags

    labels = lungs.copy()                                          # most of the left lung labelled right
    left = np.argwhere(lungs == 2)
    cut = np.quantile(left[:, 2], 0.8)
    labels[tuple(left[left[:, 2] < cut].T)] = 1
    stats = lobe_statistics(volume, labels, "lungs")
    share = stats.row("left_lung").share_percent
    assert 5 < share < 20
    assert _codes(stats, "lung_split_failed") == {"left_lung"}
    assert f"left lung is {share:.1f} % of the total lung volume (expected 41.9-50.9 %" in \
        _message(stats, "lung_split_failed")
    assert not lobe_statistics(volume, labels, "lungs", QcRanges(split_min_percent=5)).flagged("lung_split_failed")


def test_lobes_out_of_order(phantom128):
    volume, lobes, _, _ = phantom128
    labels = np.array([0, 1, 2, 4, 3, 5], np.uint8)[lobes]         # RUL <-> RML: the middle lobe on top
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "lobes_out_of_order") == {"RML"}
    assert re.search(r"RML's centre lies \d+ mm above RUL's", _message(stats, "lobes_out_of_order"))
    labels = np.array([0, 2, 1, 3, 4, 5], np.uint8)[lobes]         # LUL <-> LLL
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "lobes_out_of_order") == {"LUL"}
    assert re.search(r"LUL's centre lies \d+ mm below LLL's", _message(stats, "lobes_out_of_order"))
    right = np.argwhere(np.isin(lobes, (3, 4, 5)))                 # the front half of the right lung is RLL,
    front = right[:, 1] * volume.affine[1, 1] > np.median(right[:, 1] * volume.affine[1, 1])   # the back RML
    labels = lobes.copy()
    labels[tuple(right[front].T)] = 5
    labels[tuple(right[~front].T)] = 4
    stats = lobe_statistics(volume, labels)
    assert "behind RLL's" in " ".join(f.message for f in stats.flags if f.code == "lobes_out_of_order")


def test_lung_outside_the_body(phantom128):
    volume, lobes, _, body = phantom128
    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    outside = ~ndimage.binary_dilation(body, iterations=2)
    labels = lobes.copy()
    labels[_block(outside, 5.0, voxel_ml)] = 3                     # RUL painted into the air beside the patient
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "lung_outside_body") == {"total"}
    painted = np.count_nonzero(labels != lobes) * voxel_ml
    assert f"{painted:.1f} mL of lung label lies outside the patient's body (RUL {painted:.1f} mL" in \
        _message(stats, "lung_outside_body")
    assert not lobe_statistics(volume, labels, qc=QcRanges(outside_body_max_ml=10)).flagged("lung_outside_body")
    small = lobes.copy()
    small[_block(outside, 0.5, voxel_ml)] = 3
    assert not lobe_statistics(volume, small).flagged("lung_outside_body")


def test_detached_island_is_not_a_lobe_fragment(phantom128):
    volume, lobes, lungs, body = phantom128
    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    room = ndimage.binary_erosion(body, iterations=3) & ~ndimage.binary_dilation(lobes > 0, iterations=3)
    block = _block(room, 2.0, voxel_ml)
    for labels, name, value, row in ((lobes, "lobes", 3, "right_lung"), (lungs, "lungs", 2, "left_lung")):
        painted = labels.copy()
        painted[block] = value
        stats = lobe_statistics(volume, painted, name)
        assert _codes(stats, "lung_islands") == {row} and not _codes(stats, "lobe_fragmented")
        assert not _codes(stats, "lung_outside_body")
        ml = np.count_nonzero(painted != labels) * voxel_ml
        assert 1.5 < ml < 2.5 and f"a detached island of {row.replace('_', ' ')} mask ({ml:.1f} mL)" in \
            _message(stats, "lung_islands")


def test_lobe_piece_inside_another_lobe_is_a_fragment(phantom128):
    volume, lobes, lungs, _ = phantom128
    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    labels = lobes.copy()
    labels[_block(ndimage.binary_erosion(lobes == 2, iterations=2), 2.0, voxel_ml)] = 1   # a LUL piece inside LLL
    stats = lobe_statistics(volume, labels)
    assert _codes(stats, "lobe_fragmented") == {"LUL"} and not _codes(stats, "lung_islands")
    assert "next to LLL: the lobe split is likely wrong" in _message(stats, "lobe_fragmented")
    labels = lungs.copy()
    labels[_block(lungs == 2, 2.0, voxel_ml)] = 1                  # right-lung label inside the left lung
    stats = lobe_statistics(volume, labels, "lungs")
    assert _codes(stats, "lobe_fragmented") == {"right_lung"}
    assert "next to left lung: the left/right split" in _message(stats, "lobe_fragmented")


def test_new_flags_reach_the_csv_and_json(phantom128, tmp_path):
    volume, _, lungs, _ = phantom128
    stats = lobe_statistics(volume, np.where(lungs > 0, 1, 0).astype(np.uint8), "lungs")
    csv_path, json_path = write_statistics(stats, tmp_path / "s.csv", tmp_path / "s.json")
    with csv_path.open(newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert "lung_split_failed" in rows["left_lung"]["flags"].split(";")
    report = json.loads(json_path.read_text())
    assert any(f["code"] == "lung_split_failed" and "no left lung" in f["message"] for f in report["flags"])
    assert report["qc_ranges"]["split_min_percent"] == 20


def test_share_reason_never_prints_the_bound_it_lies_outside_of():
    volume, labels = _hand_built()                                  # LUL: 512 / 2112 = 24.24 % of the lung
    stats = lobe_statistics(volume, labels, qc=QcRanges(share_percent={"LUL": (10, 24.2)}))
    [message] = [f.message for f in stats.flags if f.code == "volume_out_of_range" and f.label == "LUL"]
    assert message.startswith("LUL is 24.24 % of the total lung volume, outside the plausible 10-24.2 %")
