"""Workflow inputs -> cases: studies, series selection, radiographs, volume files, and reported problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.io.dicom_write import SeriesInfo, write_ct_series
from medseg.io.volume import Volume
from medseg.io.volume_files import write_nifti
from medseg.workflow.cases import discover_cases
from medseg.workflow.schema import Inputs


def _series(folder: Path, modality: str = "CT", slices: int = 24, patient: str = "P1") -> list[Path]:
    hu = np.full((16, 16, slices), -800, dtype=np.int16)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    return write_ct_series(hu, affine, folder, SeriesInfo(patient_id=patient, modality=modality))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    _series(root / "study_a" / "ct", patient="A")
    _series(root / "study_b" / "series1", patient="B")
    _series(root / "study_b" / "localizer", slices=3, patient="B")        # same study? no: own study UID
    _series(root / "mr_only", modality="MR", patient="C")
    broken = _series(root / "study_d" / "ct", patient="D")
    broken[0].write_bytes(broken[0].read_bytes()[:200])                  # truncated file
    (root / "notes").mkdir()
    for n in range(3):
        (root / "notes" / f"readme_{n}.txt").write_text("not an image")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "chest.png")
    write_nifti(Volume(np.zeros((8, 8, 8), np.int16), np.eye(4)), root / "vol" / "scan.nii.gz")
    return root


def test_a_tree_becomes_cases_and_problems(tree: Path) -> None:
    found = discover_cases(Inputs(path=tree, series={"min_slices": 10}))
    by_id = {case.case_id: case for case in found.cases}
    assert {"study_a__ct", "study_b__series1", "study_d__ct", "chest", "vol__scan"} <= set(by_id)
    assert by_id["study_a__ct"].kind == "ct" and len(by_id["study_a__ct"].files) == 24
    assert by_id["study_a__ct"].patient_id == "A" and by_id["study_a__ct"].series_uid
    assert by_id["chest"].kind == "xray" and by_id["vol__scan"].kind == "ct"
    assert len(by_id["study_d__ct"].files) == 23                          # the truncated file is left out ...
    reasons = {Path(p.source).name: p.reason for p in found.problems}
    assert "slice_0001.dcm" in reasons                                    # ... and reported with its reason
    assert "MR" in reasons["mr_only"]                                     # no CT series in that study
    assert "no images: 3 file(s)" in reasons["notes"]
    assert "localizer" in reasons and "slices" in reasons["localizer"]    # too few slices for min_slices
    assert len({case.case_id for case in found.cases}) == len(found.cases)


def test_glob_and_single_file_inputs(tree: Path) -> None:
    only_a = discover_cases(Inputs(path=tree, glob="study_a/**"))
    assert [case.case_id for case in only_a.cases] == ["study_a__ct"]
    single = discover_cases(Inputs(path=tree / "chest.png"))
    assert [(c.case_id, c.kind) for c in single.cases] == [("chest", "xray")]


def test_an_unreadable_volume_file_is_a_problem_with_the_readers_reason(tmp_path: Path) -> None:
    write_nifti(Volume(np.zeros((8, 8, 8), np.int16), np.eye(4)), tmp_path / "good.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD? no")
    found = discover_cases(Inputs(path=tmp_path))
    assert [case.case_id for case in found.cases] == ["good"]
    reasons = {Path(p.source).name: p.reason for p in found.problems}
    assert set(reasons) == {"broken.nii.gz", "broken.nrrd"}
    assert "cannot read the NIfTI header (ImageFileError" in reasons["broken.nii.gz"]
    assert "cannot read the image header" in reasons["broken.nrrd"]
