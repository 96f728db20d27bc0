"""Dataset manifests: schema errors a user can act on, round trips, splits, validation, the `data validate` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from medseg.cli.data import data
from medseg.data.manifest import (
    LOBE_LABELS,
    CaseRecord,
    Manifest,
    Provenance,
    assign_patient_splits,
    build_case,
    checksum_paths,
    load_manifest,
    manifest_json_schema,
    save_manifest,
    sha256_file,
    validate_manifest,
)
from medseg.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.array([[-1.5, 0, 0, 10.0], [0, -1.5, 0, 20.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _lobes() -> np.ndarray:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    for value in range(1, 6):
        labels[value, :, :] = value
    return labels


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """Three cases like the synthetic generator writes: a DICOM-folder image and NIfTI images with lobe labels."""
    root = tmp_path / "ds"
    cases = []
    for index, (patient, split) in enumerate([("p0", "train"), ("p1", "val"), ("p2", "test")]):
        case = root / f"case_{index:03d}"
        if index == 0:
            for k in range(3):
                (case / "ct").mkdir(parents=True, exist_ok=True)
                (case / "ct" / f"{k:03d}.dcm").write_bytes(bytes([k]) * 64)
            image = case / "ct"
        else:
            image = _nifti(case / "ct.nii.gz", np.zeros((8, 8, 8), dtype=np.int16))
        _nifti(case / "lobes.nii.gz", _lobes())
        cases.append(build_case(root, f"case_{index:03d}", image=image, patient_id=patient, split=split,
                                labels={"lobes": case / "lobes.nii.gz"}, metadata={"seed": index}))
    manifest = Manifest(name="synthetic", task="segmentation", label_map=LOBE_LABELS, cases=cases,
                        provenance=Provenance(generator="test", seed=0))
    return save_manifest(manifest, root / "manifest.yaml")


def _edit(path: Path, change) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


# ---------------------------------------------------------------------------------------------- schema


def test_yaml_round_trip_keeps_int_label_keys_and_paths(dataset: Path) -> None:
    document = yaml.safe_load(dataset.read_text())
    assert list(document) == ["version", "name", "task", "created", "provenance", "label_map", "cases"]
    assert document["label_map"] == LOBE_LABELS
    assert document["provenance"] == {"generator": "test", "seed": 0}
    case = document["cases"][0]
    assert case["image"] == "case_000/ct" and case["labels"] == {"lobes": "case_000/lobes.nii.gz"}
    assert sorted(case["checksums"]) == ["case_000/ct/000.dcm", "case_000/ct/001.dcm", "case_000/ct/002.dcm",
                                        "case_000/lobes.nii.gz"]
    assert case["checksums"]["case_000/ct/001.dcm"] == sha256_file(dataset.parent / "case_000/ct/001.dcm")
    manifest = load_manifest(dataset)
    assert save_manifest(manifest, dataset.parent / "copy.json")
    assert load_manifest(dataset.parent / "copy.json") == manifest


def test_numpy_metadata_is_saved_as_plain_values(tmp_path: Path) -> None:
    case = CaseRecord(case_id="a", patient_id="p", image="a.nii.gz",
                      metadata={"spacing": np.array([0.7, 0.7, 2.0]), "n": np.int64(3), "shape": (8, 8)})
    manifest = Manifest(name="x", task="segmentation", label_map={0: "background"}, cases=[case])
    saved = load_manifest(save_manifest(manifest, tmp_path / "m.yaml")).cases[0].metadata
    assert saved == {"spacing": [0.7, 0.7, 2.0], "n": 3, "shape": [8, 8]}


def test_classification_nulls_survive_a_round_trip(tmp_path: Path) -> None:
    manifest = Manifest(name="cxr", task="classification", label_map=["Edema", "Cardiomegaly"], cases=[
        CaseRecord(case_id="a", patient_id="p", image="images/a.png", labels={"Edema": None, "Cardiomegaly": 1})])
    for name in ("m.yaml", "m.json"):
        assert load_manifest(save_manifest(manifest, tmp_path / name)).cases[0].labels == {"Edema": None,
                                                                                             "Cardiomegaly": 1}


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["cases"][1].update(splt="train"), "cases[1]: unknown key 'splt' (did you mean 'split'?)"),
    (lambda d: d.update(labelmap={}), "(top level): unknown key 'labelmap' (did you mean 'label_map'?)"),
    (lambda d: d["provenance"].update(sead=1), "provenance: unknown key 'sead' (did you mean 'seed'?)"),
    (lambda d: d["cases"][2].update(split="training"), "cases[2].split: Input should be 'train', 'val' or 'test'"),
    (lambda d: d["cases"][0].pop("patient_id"), "cases[0]: missing required key 'patient_id'"),
    (lambda d: d["cases"][0]["checksums"].update({"x": "abc"}), "cases[0].checksums.x: String should match"),
    (lambda d: d.update(label_map=["a", "b"]), "label_map: a segmentation label_map maps label values to names"),
    (lambda d: d.update(label_map={"one": "x"}), "label_map: label values must be non-negative integers"),
    (lambda d: d.update(created="yesterday"), "created: not an ISO 8601 timestamp"),
])
def test_schema_errors_name_the_file_the_location_and_a_suggestion(dataset: Path, change, expected: str) -> None:
    _edit(dataset, change)
    with pytest.raises(ConfigError) as caught:
        load_manifest(dataset)
    assert str(caught.value).startswith(f"{dataset}: ")
    assert expected in str(caught.value)
    assert "pydantic" not in str(caught.value) and "errors.pydantic.dev" not in str(caught.value)


def test_several_schema_errors_are_listed_together(dataset: Path) -> None:
    _edit(dataset, lambda d: (d["cases"][0].update(splt=1), d["cases"][1].update(imgae="x")))
    with pytest.raises(ConfigError) as caught:
        load_manifest(dataset)
    assert caught.value.errors == ["cases[0]: unknown key 'splt' (did you mean 'split'?)",  # type: ignore[attr-defined]
                                   "cases[1]: unknown key 'imgae' (did you mean 'image'?)"]


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed", "invalid YAML at line"),
    ("- a\n- b\n", "must be a mapping"),
    ("version: 2\nname: x\n", "unsupported manifest version 2"),
])
def test_unreadable_manifests_raise_config_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_manifest(path)


def test_missing_manifest_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_manifest(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="must end in"):
        load_manifest(tmp_path / "manifest.txt")


def test_json_schema_file_is_in_sync_with_the_model() -> None:
    committed = json.loads((REPO / "data_manifest/schema/manifest.schema.json").read_text())
    assert committed == manifest_json_schema(), (
        "data_manifest/schema/manifest.schema.json is stale: regenerate it with "
        "`medseg data schema --out data_manifest/schema/manifest.schema.json`")


def test_each_label_file_is_checked_against_its_own_label_map(tmp_path: Path) -> None:
    from medseg.data.manifest import validate_manifest
    from medseg.data.phantom.ct_case import synth_ct_dataset

    path = synth_ct_dataset(tmp_path / "d", cases=1, seed=3, size=48, slices=16, findings=[])
    manifest = load_manifest(path)
    assert manifest.label_maps == {"lobes": "lobes", "lungs": "lungs"}
    assert manifest.label_map_for("lungs") == {0: "background", 1: "right_lung", 2: "left_lung"}
    assert manifest.label_map_for("lobes") == LOBE_LABELS
    assert validate_manifest(path).ok
    document = yaml.safe_load(path.read_text())
    document["label_maps"]["lobes"] = "lungs"           # lobes.nii.gz holds 3-5: not lung values
    path.write_text(yaml.safe_dump(document))
    report = validate_manifest(path)
    assert not report.ok and any("3, 4, 5" in p.message and "lobes.nii.gz" in str(p.path) for p in report.problems)
    document["label_maps"]["lobes"] = "lobez"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="unknown label map 'lobez'"):
        load_manifest(path)


def test_lobe_label_map_matches_the_label_config() -> None:
    from medseg.data.importers import LOBE_FILES

    config = yaml.safe_load((REPO / "configs/labels/lobes.yaml").read_text())["labels"]
    assert {int(k): v["name"] for k, v in config.items()} == LOBE_LABELS
    assert {int(k): v["totalsegmentator"] for k, v in config.items() if int(k)} == LOBE_FILES


# ----------------------------------------------------------------------------------------------- splits


def test_patient_splits_are_deterministic_order_free_and_proportional() -> None:
    patients = [f"p{i:03d}" for i in range(100)]
    first = assign_patient_splits(patients, seed=3)
    assert first == assign_patient_splits(list(reversed(patients)) + patients[:5], seed=3)
    counts = {split: list(first.values()).count(split) for split in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 15, "test": 15}
    assert assign_patient_splits(patients, seed=4) != first


def test_small_cohorts_still_fill_every_requested_split() -> None:
    assert sorted(assign_patient_splits(["a", "b", "c"], seed=0).values()) == ["test", "train", "val"]
    assert set(assign_patient_splits(["a", "b", "c"], (1.0, 0.0, 0.0)).values()) == {"train"}
    with pytest.raises(ConfigError, match="sum to 1"):
        assign_patient_splits(["a"], (0.5, 0.2, 0.2))


def test_checksum_paths_expands_folders(dataset: Path) -> None:
    sums = checksum_paths(dataset.parent, ["case_000/ct", dataset.parent / "case_001/ct.nii.gz"])
    assert list(sums) == ["case_000/ct/000.dcm", "case_000/ct/001.dcm", "case_000/ct/002.dcm", "case_001/ct.nii.gz"]


# ------------------------------------------------------------------------------------------- validation


def _kinds(path: Path, **options) -> list[tuple[str, str | None, str | None]]:
    return [(p.kind, p.case_id, p.path) for p in validate_manifest(path, **options).problems]


def test_a_good_manifest_validates(dataset: Path) -> None:
    report = validate_manifest(dataset)
    assert report.ok, report.problems
    assert report.checksums_verified == 8 and report.label_files_read == 3
    assert report.summary().startswith("OK: 3 cases (train 1, val 1, test 1)")


def test_validate_finds_a_missing_file(dataset: Path) -> None:
    (dataset.parent / "case_001/lobes.nii.gz").unlink()
    kinds = _kinds(dataset)
    assert ("missing", "case_001", "case_001/lobes.nii.gz") in kinds
    assert len(kinds) == 2  # the label file and its checksum entry


def test_validate_finds_a_changed_byte(dataset: Path) -> None:
    target = dataset.parent / "case_000/ct/001.dcm"
    target.write_bytes(b"\x07" + target.read_bytes()[1:])
    assert _kinds(dataset) == [("checksum", "case_000", "case_000/ct/001.dcm")]
    assert validate_manifest(dataset, check_checksums=False).ok


def test_validate_finds_a_file_added_to_a_dicom_folder(dataset: Path) -> None:
    (dataset.parent / "case_000/ct/003.dcm").write_bytes(b"extra")
    assert _kinds(dataset) == [("unlisted", "case_000", "case_000/ct/003.dcm")]


def test_validate_finds_label_values_outside_the_map(dataset: Path) -> None:
    labels = _lobes()
    labels[0, 0, 0] = 7
    _nifti(dataset.parent / "case_002/lobes.nii.gz", labels)
    report = validate_manifest(dataset, check_checksums=False)
    assert [(p.kind, p.case_id) for p in report.problems] == [("label_value", "case_002")]
    assert "label value(s) 7 not in the label map (0-5)" in report.problems[0].message


def test_validate_finds_a_label_off_the_image_grid(dataset: Path) -> None:
    _nifti(dataset.parent / "case_001/lobes.nii.gz", _lobes(), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    assert _kinds(dataset, check_checksums=False) == [("label_grid", "case_001", "case_001/lobes.nii.gz")]


def test_an_unreadable_image_header_is_reported_not_skipped(dataset: Path) -> None:
    image = dataset.parent / "case_001/ct.nii.gz"
    image.write_bytes(b"\x1f\x8b not really gzip")         # the label grid cannot be checked against it
    kinds = _kinds(dataset, check_checksums=False)
    assert kinds == [("image", "case_001", "case_001/ct.nii.gz")]
    message = validate_manifest(dataset, check_checksums=False).problems[0].message
    assert "label grid was not checked" in message


def test_progress_bars_only_on_a_terminal_and_for_enough_items(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from medseg.data.manifest import PROGRESS_MIN_ITEMS, progress

    def run(total: int) -> str:
        with progress(total, "hashing cases") as advance:
            for _ in range(total):
                advance()
        return capsys.readouterr().err

    assert run(PROGRESS_MIN_ITEMS) == ""                                  # not a terminal: no bar
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    assert run(PROGRESS_MIN_ITEMS - 1) == ""                              # too few items: no bar
    assert "hashing cases" in run(PROGRESS_MIN_ITEMS)


def test_manifest_package_keeps_every_public_name() -> None:
    import medseg.data.manifest as facade
    from medseg.data.manifest import hashing, schema, splits, storage, validation

    for module in (schema, storage, hashing, splits, validation):
        for name in module.__all__:
            assert getattr(facade, name) is getattr(module, name), name
    assert facade.LOBE_LABELS is schema.LOBE_LABELS


def test_validate_finds_patient_leakage_and_duplicate_ids(dataset: Path) -> None:
    _edit(dataset, lambda d: d["cases"][2].update(patient_id="p0"))
    report = validate_manifest(dataset)
    assert [p.kind for p in report.problems] == ["patient_leakage"]
    assert "patient 'p0' is in 2 splits (train: case_000; test: case_002)" in report.problems[0].message
    _edit(dataset, lambda d: d["cases"][1].update(case_id="case_000"))
    assert "duplicate_case" in [p.kind for p in validate_manifest(dataset).problems]


def test_validate_checks_classification_labels(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    manifest = Manifest(name="cxr", task="classification", label_map=["Edema", "Cardiomegaly"], cases=[
        build_case(tmp_path, "a", image="a.png", labels={"Edema": 2, "Cardiomegally": 1, "Cardiomegaly": None})])
    report = validate_manifest(save_manifest(manifest, tmp_path / "m.yaml"))
    messages = [p.message for p in report.problems]
    assert messages == ["class 'Edema' must be 0, 1 or null, got 2",
                        "class 'Cardiomegally' is not in the label map (did you mean 'Cardiomegaly'?)"]


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_validate_ok_is_one_line_and_exit_0(dataset: Path) -> None:
    result = CliRunner().invoke(data, ["validate", str(dataset)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines() == [f"{dataset}: OK: 3 cases (train 1, val 1, test 1); 8 files "
                                                  "present, 8 checksums verified, 3 label files read"]


def test_cli_validate_problems_give_a_table_and_exit_1(dataset: Path) -> None:
    (dataset.parent / "case_002/lobes.nii.gz").write_bytes(b"not a nifti")
    result = CliRunner().invoke(data, ["validate", str(dataset), "--no-checksums"])
    assert result.exit_code == 1
    assert "case_002" in result.stdout and "label: cannot" in result.stdout and "1 problem(s)" in result.stdout
    result = CliRunner().invoke(data, ["validate", str(dataset), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["ok"] is False
    assert {p["kind"] for p in report["problems"]} == {"checksum", "label"}


def test_cli_validate_invalid_manifest_is_one_error_line_and_exit_2(dataset: Path) -> None:
    _edit(dataset, lambda d: d["cases"][0].update(splt="train"))
    result = CliRunner().invoke(data, ["validate", str(dataset)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"medseg: error: {dataset}: cases[0]: unknown key 'splt' "
                                     "(did you mean 'split'?)")
    result = CliRunner().invoke(data, ["validate", str(dataset.parent / "missing.yaml")])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_cli_schema_prints_the_schema() -> None:
    result = CliRunner().invoke(data, ["schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == manifest_json_schema()
