"""Importers for TotalSegmentator, NIH ChestX-ray14 and CheXpert, on tiny trees with the real layouts."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from medseg.cli.data import data
from medseg.data.importers import (
    CHEXPERT_CLASSES,
    LOBE_FILES,
    NIH_CLASSES,
    import_chestxray14,
    import_chexpert,
    import_totalsegmentator,
)
from medseg.data.manifest import load_manifest, validate_manifest
from medseg.errors import ConfigError

AFFINE = np.array([[-1.5, 0, 0, 90.0], [0, -1.5, 0, 80.0], [0, 0, 2.5, -200.0], [0, 0, 0, 1]])
META_HEADER = ("image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp;pathology;"
               "pathology_location")


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _subject(root: Path, name: str, *, overlap: bool = False, skip: str | None = None) -> None:
    """`root/<name>/ct.nii.gz` + `segmentations/<structure>.nii.gz`: lobe k fills the slab i == k."""
    _save(root / name / "ct.nii.gz", np.full((8, 8, 8), -800, dtype=np.int16))
    for value, structure in LOBE_FILES.items():
        if structure == skip:
            continue
        mask = np.zeros((8, 8, 8), dtype=np.uint8)
        mask[value, :, :] = 1
        if overlap and value in (3, 5):
            mask[7, 7, 7] = 1  # RUL and RLL both claim this voxel
        _save(root / name / "segmentations" / f"{structure}.nii.gz", mask)
    _save(root / name / "segmentations" / "liver.nii.gz", np.ones((8, 8, 8), dtype=np.uint8))


def _meta(root: Path, rows: list[str]) -> None:
    (root / "meta.csv").write_text("\ufeff" + "\n".join([META_HEADER, *rows]) + "\n", encoding="utf-8")


@pytest.fixture()
def totalseg(tmp_path: Path) -> Path:
    root = tmp_path / "Totalsegmentator_dataset_v201"
    _subject(root, "s0001")
    _subject(root, "s0002", overlap=True)
    _subject(root, "s0003", skip="lung_middle_lobe_right")
    _subject(root, "s0004")
    _meta(root, ["s0001;64;m;A;ct thorax;train;Siemens;X;120;;",
                 "s0002;71;f;B;ct abdomen;test;GE;Y;100;;",
                 "s0003;50;f;A;ct thorax;train;Siemens;X;120;;",
                 "s0004;33;m;C;ct thorax;val;Philips;Z;120;;",
                 "s0999;40;m;C;ct thorax;val;Philips;Z;120;;"])
    return root


def _tree(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


# ------------------------------------------------------------------------------------------ TotalSegmentator


def test_totalsegmentator_merges_lobes_onto_the_ct_grid(totalseg: Path, tmp_path: Path) -> None:
    before = _tree(totalseg)
    result = import_totalsegmentator(totalseg, tmp_path / "out" / "manifest.yaml")
    assert _tree(totalseg) == before, "the dataset tree must not be written to"
    manifest = load_manifest(result.path)
    assert manifest.task == "segmentation" and manifest.label_map[1] == "left_upper_lobe"
    case = next(c for c in manifest.cases if c.case_id == "s0001")
    assert case.image == "../Totalsegmentator_dataset_v201/s0001/ct.nii.gz"
    assert case.labels == {"lobes": "labels/s0001_lobes.nii.gz"}
    merged = nib.load(tmp_path / "out" / "labels" / "s0001_lobes.nii.gz")
    assert merged.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(merged.affine, AFFINE)
    np.testing.assert_array_equal(merged.get_qform(), AFFINE)
    labels = np.asanyarray(merged.dataobj)
    expected = np.zeros((8, 8, 8), dtype=np.uint8)
    for value in range(1, 6):
        expected[value] = value
    np.testing.assert_array_equal(labels, expected)
    assert case.metadata["age"] == 64 and case.metadata["study_type"] == "ct thorax"
    assert validate_manifest(result.path).ok


def test_totalsegmentator_overlap_is_counted_and_lowest_label_wins(totalseg: Path, tmp_path: Path) -> None:
    result = import_totalsegmentator(totalseg, tmp_path / "manifest.yaml", checksums=False)
    labels = np.asanyarray(nib.load(tmp_path / "labels" / "s0002_lobes.nii.gz").dataobj)
    assert labels[7, 7, 7] == 3
    assert result.stats["overlap_voxels"] == 1
    assert any(w.startswith("s0002: 1 voxel(s) in more than one lobe mask") for w in result.warnings)
    case = next(c for c in result.manifest.cases if c.case_id == "s0002")
    assert case.metadata["lobe_overlap_voxels"] == 1


def test_totalsegmentator_skips_a_case_missing_a_lobe_and_honours_meta_splits(totalseg: Path,
                                                                               tmp_path: Path) -> None:
    result = import_totalsegmentator(totalseg, tmp_path / "manifest.yaml", checksums=False)
    assert [c.case_id for c in result.manifest.cases] == ["s0001", "s0002", "s0004"]
    assert "s0003: skipped: missing lobe mask(s) lung_middle_lobe_right.nii.gz" in result.warnings
    assert "1 subject(s) listed in meta.csv have no folder (e.g. s0999)" in result.warnings
    assert result.stats["skipped"] == 1
    assert {c.case_id: c.split for c in result.manifest.cases} == {"s0001": "train", "s0002": "test", "s0004": "val"}
    assert result.manifest.provenance.seed is None


def test_totalsegmentator_without_meta_assigns_seeded_splits(totalseg: Path, tmp_path: Path) -> None:
    (totalseg / "meta.csv").unlink()
    first = import_totalsegmentator(totalseg, tmp_path / "a.yaml", split_seed=5, checksums=False)
    again = import_totalsegmentator(totalseg, tmp_path / "b.yaml", split_seed=5, checksums=False)
    splits = [c.split for c in first.manifest.cases]
    assert splits == [c.split for c in again.manifest.cases]
    assert sorted(splits) == ["test", "train", "val"]
    assert first.manifest.provenance.seed == 5


def test_totalsegmentator_cli(totalseg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "manifest.yaml"
    result = CliRunner().invoke(data, ["import", "totalsegmentator", str(totalseg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: 3 cases (train 1, val 1, test 1), skipped 1, overlap voxels 1")
    assert "warning: s0003: skipped" in result.stderr
    command = load_manifest(out).provenance.command
    assert command == f"medseg data import totalsegmentator {totalseg} --out {out}"
    assert CliRunner().invoke(data, ["validate", str(out)]).exit_code == 0


def test_totalsegmentator_real_example(realdata: Path, tmp_path: Path) -> None:
    """The real TotalSegmentator output (labels 10-14 = lobes) split into the dataset's per-structure files."""
    source = realdata / "nifti" / "abdomen_lung_bases"
    seg = nib.load(source / "example_seg.nii.gz")
    values = np.asanyarray(seg.dataobj)
    root = tmp_path / "ts"
    (root / "s0001" / "segmentations").mkdir(parents=True)
    os.symlink(source / "example_ct_sm.nii.gz", root / "s0001" / "ct.nii.gz")
    for value, structure in LOBE_FILES.items():
        nib.save(nib.Nifti1Image((values == value + 9).astype(np.uint8), seg.affine, seg.header),
                 root / "s0001" / "segmentations" / f"{structure}.nii.gz")
    result = import_totalsegmentator(root, tmp_path / "out" / "manifest.yaml")
    merged = nib.load(tmp_path / "out" / "labels" / "s0001_lobes.nii.gz")
    expected = np.where((values >= 10) & (values <= 14), values - 9, 0)
    np.testing.assert_array_equal(np.asanyarray(merged.dataobj), expected)
    np.testing.assert_allclose(merged.affine, nib.load(source / "example_ct_sm.nii.gz").affine, atol=1e-6)
    assert result.stats["overlap_voxels"] == 0
    assert validate_manifest(result.path).ok


# ----------------------------------------------------------------------------------------------- ChestX-ray14

NIH_ROWS = [  # Image Index, Finding Labels, Follow-up #, Patient ID, Age, Gender, View, W, H, x, y
    ("00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
    ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA"),
    ("00000003_000.png", "Hernia|Pleural_Thickening", 0, 3, 74, "F", "PA"),
    ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP"),
    ("00000005_000.png", "No Finding", 0, 5, 69, "F", "PA"),
    ("00000005_001.png", "Effusion", 1, 5, 69, "F", "AP"),
    ("00000006_000.png", "Infiltration", 0, 6, 81, "M", "PA"),
    ("00000007_000.png", "No Finding", 0, 7, 60, "M", "PA"),  # listed, image not downloaded
]


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


@pytest.fixture()
def nih(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    root.mkdir()
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    lines = [header] + [f"{name},{labels},{fu},{pid},{age},{sex},{view},2682,2749,0.143,0.143,"
                        for name, labels, fu, pid, age, sex, view in NIH_ROWS]
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    for index, (name, *_rest) in enumerate(NIH_ROWS[:-1]):
        _png(root / ("images_001" if index < 4 else "images_002") / "images" / name, index)
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in NIH_ROWS if r[3] in (1, 2, 3, 5, 6, 7)) + "\n")
    (root / "test_list.txt").write_text("00000004_000.png\n")
    return root


def test_chestxray14_parses_multi_labels_and_metadata(nih: Path, tmp_path: Path) -> None:
    result = import_chestxray14(nih, tmp_path / "out" / "manifest.yaml")
    manifest = load_manifest(result.path)
    assert manifest.task == "classification" and manifest.label_map == list(NIH_CLASSES)
    cases = {c.case_id: c for c in manifest.cases}
    assert len(cases) == 8 and "00000007_000" not in cases
    assert result.stats["images_missing"] == 1
    positive = {cid: sorted(k for k, v in c.labels.items() if v == 1) for cid, c in cases.items()}
    assert positive["00000001_001"] == ["Cardiomegaly", "Emphysema"]
    assert positive["00000003_000"] == ["Hernia", "Pleural_Thickening"]
    assert positive["00000002_000"] == [] and set(cases["00000002_000"].labels.values()) == {0}
    case = cases["00000004_000"]
    assert case.image == "../nih/images_002/images/00000004_000.png" and case.patient_id == "4"
    assert case.metadata == {"follow_up": 0, "sex": "M", "view_position": "AP", "age": 82,
                             "original_size": [2682, 2749], "pixel_spacing_mm": [0.143, 0.143]}
    assert validate_manifest(result.path).ok


def test_chestxray14_official_lists_and_no_patient_leakage(nih: Path, tmp_path: Path) -> None:
    result = import_chestxray14(nih, tmp_path / "manifest.yaml", val_fraction=0.4, checksums=False)
    splits = {c.case_id: c.split for c in result.manifest.cases}
    assert splits["00000004_000"] == "test"
    assert {s for cid, s in splits.items() if cid != "00000004_000"} == {"train", "val"}
    assert splits["00000001_000"] == splits["00000001_001"] and splits["00000005_000"] == splits["00000005_001"]
    report = validate_manifest(result.path)
    assert report.ok, report.problems


def test_chestxray14_without_lists_and_with_a_class_subset(nih: Path, tmp_path: Path) -> None:
    (nih / "test_list.txt").unlink()
    result = import_chestxray14(nih, tmp_path / "m.yaml", classes=["Effusion", "Cardiomegaly"], checksums=False)
    assert result.manifest.label_map == ["Cardiomegaly", "Effusion"]
    assert set(result.manifest.split_counts()) == {"train", "val", "test"}
    assert validate_manifest(result.path).ok
    with pytest.raises(ConfigError, match="unknown class 'Efusion' \\(did you mean 'Effusion'\\?\\)"):
        import_chestxray14(nih, tmp_path / "m.yaml", classes=["Efusion"])


def test_chestxray14_real_image(realdata: Path, tmp_path: Path) -> None:
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    os.symlink(realdata / "xray" / "nih_00000001_000_cardiomegaly.png", root / "images" / "00000001_000.png")
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Follow-up #,Patient ID\n"
                                              "00000001_000.png,Cardiomegaly,0,1\n")
    result = import_chestxray14(root, tmp_path / "manifest.yaml")
    assert result.manifest.cases[0].labels["Cardiomegaly"] == 1
    assert validate_manifest(result.path).ok


# --------------------------------------------------------------------------------------------------- CheXpert

CHEX_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CLASSES]


def _chex_row(path: str, view: str = "Frontal", **values: str) -> list[str]:
    labels = {name: "" for name in CHEXPERT_CLASSES} | {k.replace("_", " "): v for k, v in values.items()}
    return [path, "Female", "68", view, "AP" if view == "Frontal" else "", *(labels[n] for n in CHEXPERT_CLASSES)]


@pytest.fixture()
def chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "chexpert" / "CheXpert-v1.0-small"
    train = [
        _chex_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
                  Cardiomegaly="-1.0", Edema="1.0", Pneumonia="0.0"),
        _chex_row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", view="Lateral", Edema="1.0"),
        *[_chex_row(f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg", No_Finding="1.0")
          for p in range(2, 12)],
    ]
    valid = [_chex_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", Cardiomegaly="1.0")]
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        root.mkdir(parents=True, exist_ok=True)
        with open(root / name, "w", newline="") as handle:
            csv.writer(handle).writerows([CHEX_HEADER, *rows])
        for row in rows:
            image = root.parent / row[0]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    return root.parent


@pytest.mark.parametrize("policy, cardiomegaly", [("ones", 1), ("zeros", 0), ("ignore", None)])
def test_chexpert_uncertain_policies(chexpert: Path, tmp_path: Path, policy: str, cardiomegaly: int | None) -> None:
    result = import_chexpert(chexpert, tmp_path / "m.yaml", uncertain=policy, checksums=False)  # type: ignore[arg-type]
    case = load_manifest(result.path).cases[0]
    assert case.case_id == "patient00001_study1_view1_frontal" and case.patient_id == "patient00001"
    assert case.labels["Cardiomegaly"] == cardiomegaly  # -1.0
    assert case.labels["Edema"] == 1 and case.labels["Pneumonia"] == 0  # 1.0, 0.0
    assert case.labels["Fracture"] == 0  # blank = not mentioned
    assert f"uncertain (-1) -> {'null' if cardiomegaly is None else cardiomegaly}" in result.manifest.provenance.notes


def test_chexpert_paths_resolve_from_either_root_and_splits_are_per_patient(chexpert: Path, tmp_path: Path) -> None:
    from_parent = import_chexpert(chexpert, tmp_path / "a" / "m.yaml", uncertain="zeros")
    from_folder = import_chexpert(chexpert / "CheXpert-v1.0-small", tmp_path / "b" / "m.yaml", uncertain="zeros",
                                  val_fraction=0.3)
    assert len(from_parent.manifest.cases) == len(from_folder.manifest.cases) == 13
    assert from_parent.manifest.cases[0].image == "../chexpert/CheXpert-v1.0-small/train/patient00001/study1/" \
                                                  "view1_frontal.jpg"
    splits = {c.case_id: c.split for c in from_folder.manifest.cases}
    assert splits["patient64541_study1_view1_frontal"] == "test"
    assert splits["patient00001_study1_view1_frontal"] == splits["patient00001_study1_view2_lateral"]
    assert {"train", "val"} <= set(splits.values())
    assert validate_manifest(from_folder.path).ok


def test_chexpert_frontal_only_and_valid_as_val(chexpert: Path, tmp_path: Path) -> None:
    result = import_chexpert(chexpert, tmp_path / "m.yaml", uncertain="ignore", frontal_only=True,
                             valid_split="val", checksums=False)
    assert result.stats["lateral_dropped"] == 1
    assert all(c.metadata["view"] == "Frontal" for c in result.manifest.cases)
    assert result.manifest.split_counts() == {"train": 11, "val": 1, "test": 0}


def test_chexpert_cli_requires_a_policy_and_writes_nulls(chexpert: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    assert CliRunner().invoke(data, ["import", "chexpert", str(chexpert), "--out", str(out)]).exit_code == 2
    result = CliRunner().invoke(data, ["import", "chexpert", str(chexpert), "--out", str(out),
                                       "--uncertain", "ignore", "--classes", "Cardiomegaly,Edema"])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    assert document["label_map"] == ["Cardiomegaly", "Edema"]
    assert document["cases"][0]["labels"] == {"Cardiomegaly": None, "Edema": 1}
    bad = CliRunner().invoke(data, ["import", "chexpert", str(chexpert), "--uncertain", "ones", "--classes", "Edma"])
    assert bad.exit_code == 2 and "unknown class 'Edma' (did you mean 'Edema'?)" in bad.stderr
