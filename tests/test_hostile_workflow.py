"""`medseg run` against hostile inputs: tags that name paths, layouts that escape, collisions, two runs at once,
a full disk, folders medseg did not write, and machine paths in records (issue #13)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import ConfigError, InputError
from medseg.workflow import load_workflow
from medseg.workflow.layout import MARKER, case_relpath, check_layout, plan_case_folders, safe_component
from medseg.workflow.lock import OutputLock

WORKFLOW = """\
version: 1
name: hostile
inputs: {path: studies, series: {min_slices: 10}}
steps:
  - lung_mask
  - statistics
  - export: {nifti: true, dicom_seg: true, overlays: false, review_html: true}
output: {dir: out, layout: "LAYOUT"}
"""


def _set_tag(folder: Path, **values: str) -> None:
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small CT studies: two of patient P1 (two studies), one of patient P2."""
    from medseg.data.phantom.ct_case import synth_ct_case

    root = tmp_path_factory.mktemp("hostile")
    for n, patient in enumerate(("P1", "P1", "P2")):
        case = synth_ct_case(root / "studies" / f"s{n}", seed=40 + n, size=64, slices=24, findings=[])
        _set_tag(case.folder / "ct", PatientID=patient)
    return root


def _workspace(phantoms: Path, tmp_path: Path, layout: str) -> Path:
    shutil.copytree(phantoms / "studies", tmp_path / "studies")
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("LAYOUT", layout))
    return tmp_path


def _run(where: Path, *args: str):
    return CliRunner().invoke(main, ["--quiet", "run", str(where / "wf.yaml"), "--output", str(where / "out"), *args])


def _record(where: Path) -> dict:
    return json.loads((where / "out" / "run.json").read_text())


# ---------------------------------------------------------------------------------------------------- unit level

@pytest.mark.parametrize("value", ["../../victim", "/etc/passwd", "..", ".", "", "a/b", "a\\b", ".hidden",
                                   "x" * 300, "café", "nul\x00byte", "CON"])
def test_safe_component_is_one_harmless_path_part(value: str) -> None:
    name = safe_component(value)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".") and len(name) <= 64
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def test_safe_component_keeps_clean_values_and_keeps_changed_ones_apart() -> None:
    assert safe_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_component("ct__case_000") == "ct__case_000"
    assert safe_component("../../x") != safe_component(".._.._x")            # a hash of the original is appended
    assert safe_component("a/b") != safe_component("a_b")


@pytest.mark.parametrize("layout", ["{case_id:/>1.0}", "{case_id:.>2.0}", "{case_id!r}", "{case_id[0]}",
                                    "{case_id.real}", "/{case_id}", "../{case_id}", "{case_id}/..", "a//{case_id}",
                                    "{case}", "plain"])
def test_layouts_that_could_escape_are_refused(layout: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_layout(layout)
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("LAYOUT", layout).replace("studies", str(tmp_path)))
    with pytest.raises(ConfigError, match="layout"):
        load_workflow(tmp_path / "wf.yaml")


def test_validate_refuses_a_format_spec_layout_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("LAYOUT", "{case_id:.>2.0}"))
    result = subprocess.run([sys.executable, "-m", "medseg", "validate", str(tmp_path / "wf.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "format spec" in result.stderr and "Traceback" not in result.stderr


def test_case_folders_stay_inside_the_output_even_through_symlinks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    assert case_relpath("{patient_id}/{case_id}", {"patient_id": "../..", "case_id": "c"}, out).startswith("unknown-")
    with pytest.raises(ConfigError, match="outside the output folder"):
        case_relpath("{patient_id}/{case_id}", {"patient_id": "link", "case_id": "c"}, out)


def test_collisions_are_suffixed_by_source_or_refused(tmp_path: Path) -> None:
    items = [("a", "/data/s1", {"patient_id": "P1"}), ("b", "/data/s2", {"patient_id": "P1"}),
             ("c", "/data/s3", {"patient_id": "p1"}), ("d", "/data/s4", {"patient_id": "P2"}),
             ("e", "/data/s5", {"patient_id": "run.json"})]
    plan = plan_case_folders(items, "{patient_id}", tmp_path)
    assert plan.folders["d"] == "P2"
    assert len({plan.folders[k].casefold() for k in "abc"}) == 3                # case-insensitive file systems too
    assert plan.folders["e"] != "run.json" and len(plan.renamed) == 4
    reordered = plan_case_folders(list(reversed(items)), "{patient_id}", tmp_path)
    assert reordered.folders == plan.folders                                 # independent of discovery order
    with pytest.raises(ConfigError, match=r"same case folder 'P1'.*/data/s1.*/data/s2"):
        plan_case_folders(items[:2], "{patient_id}", tmp_path, on_collision="error")


# ------------------------------------------------------------------------------------------------ through a run

def test_a_patient_id_that_names_a_path_deletes_nothing_outside_the_run(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{patient_id}")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    absolute = tmp_path / "absolute_victim"
    absolute.mkdir()
    (absolute / "precious.txt").write_text("keep me too")
    _set_tag(where / "studies" / "s0", PatientID="../victim")               # out/../victim == tmp_path/victim
    _set_tag(where / "studies" / "s1", PatientID=str(absolute))
    _set_tag(where / "studies" / "s2", PatientID="../victim", SeriesInstanceUID="1.2.3")
    for _ in range(2):                                                       # a rerun redoes nothing outside either
        result = _run(where, "--force")
        assert result.exit_code == 0, result.output
        assert (victim / "precious.txt").read_text() == "keep me" and sorted(p.name for p in victim.iterdir()) == \
            ["precious.txt"]
        assert (absolute / "precious.txt").read_text() == "keep me too"
    record = _record(where)
    assert record["counts"]["done"] == 3
    folders = [p for p in (where / "out").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == 3 and all((f / "lungs.nii.gz").is_file() and (f / MARKER).is_file() for f in folders)


def test_series_uid_layout_with_a_path_in_the_uid(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{series_uid}")
    _set_tag(where / "studies" / "s0", SeriesInstanceUID="../../escaped")
    result = _run(where)
    assert result.exit_code == 0, result.output
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert _record(where)["counts"]["done"] == 3


def test_two_studies_of_one_patient_keep_two_folders_and_resume(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{patient_id}")
    result = _run(where)
    assert result.exit_code == 0, result.output
    record = _record(where)
    assert record["counts"]["done"] == 3 and len(record["renamed_case_folders"]) == 2
    assert len({c["folder"] for c in record["cases"]}) == 3
    done = [p for p in (where / "out").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(done) == 3 and sorted(p.name for p in done)[2] == "P2"
    rerun = _run(where)
    assert rerun.exit_code == 0 and _record(where)["counts"] == {"done": 0, "skipped": 3, "failed": 0,
                                                                 "input_problem": 0}


def test_collisions_can_be_refused_instead(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{patient_id}")
    result = _run(where, "--set", "output.on_collision=error")
    assert result.exit_code == 2 and "resolve to the same case folder 'P1'" in result.output
    assert "s0" in result.output and "s1" in result.output


def test_a_folder_medseg_did_not_write_is_never_replaced(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{patient_id}")
    _set_tag(where / "studies" / "s0", PatientID="mine")
    _set_tag(where / "studies" / "s1", PatientID="P3")
    (where / "out").mkdir()
    (where / "out" / ".medseg-run").write_text("")
    (where / "out" / "mine").mkdir()
    (where / "out" / "mine" / "notes.txt").write_text("the user's own folder")
    result = _run(where)
    assert result.exit_code == 0, result.output
    assert (where / "out" / "mine" / "notes.txt").read_text() == "the user's own folder"
    failed = [c for c in _record(where)["cases"] if c["status"] == "failed"]
    assert len(failed) == 1 and "not written by medseg" in failed[0]["reason"]


def test_a_non_empty_foreign_output_folder_is_refused(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{case_id}")
    (where / "out").mkdir()
    (where / "out" / "thesis.tex").write_text("years of work")
    result = _run(where)
    assert result.exit_code == 2 and "not empty and was not made by medseg" in result.output
    assert sorted(p.name for p in (where / "out").iterdir()) == ["thesis.tex"]


def test_a_second_run_on_a_locked_output_exits_at_once_naming_the_holder(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{case_id}")
    with OutputLock(where / "out"):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "medseg", "run", str(where / "wf.yaml"), "--output",
                                 str(where / "out")], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and time.monotonic() - started < 30
        assert "in use by another medseg run" in result.stderr and "pid" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _run(where).exit_code == 0                                        # released: the next run proceeds
    with pytest.raises(InputError, match="in use"), OutputLock(where / "out"), OutputLock(where / "out"):
        pass


@pytest.mark.slow
def test_two_concurrent_runs_never_corrupt_a_done_case(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{case_id}")
    command = [str(Path(sys.executable).parent / "medseg"), "--quiet", "run", str(where / "wf.yaml"), "--output",
               str(where / "out")]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (where / "out" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2 and "in use by another medseg run" in second.stderr
    assert first.returncode == 0, first_err
    record = _record(where)
    assert record["counts"]["done"] == 3
    for case in record["cases"]:
        folder = where / "out" / case["folder"]
        for name in ("case.json", "lungs.nii.gz", "lungs_seg.dcm", "statistics.json", MARKER):
            assert (folder / name).is_file(), (folder, name)


def test_a_full_disk_fails_the_case_with_one_line(phantoms: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.export.dicom_seg as dicom_seg

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.dcm"))

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", full)
    where = _workspace(phantoms, tmp_path, "{case_id}")
    result = _run(where)
    assert result.exit_code == 0, result.output
    record = _record(where)
    assert record["counts"]["failed"] == 3
    for case in record["cases"]:
        assert "\n" not in case["reason"] and case["reason"].endswith("no space left on device")
    assert not [p for p in (where / "out").iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_records_and_review_pages_carry_no_machine_paths(phantoms: Path, tmp_path: Path) -> None:
    where = _workspace(phantoms, tmp_path, "{case_id}")
    (where / "studies" / "broken").mkdir()
    (where / "studies" / "broken" / "x.dcm").write_bytes(b"DICM" * 10)
    assert _run(where).exit_code == 0
    record = _record(where)
    assert str(tmp_path) in json.dumps(record["inputs"])                    # absolute only in the inputs block
    rest = {k: v for k, v in record.items() if k != "inputs"}
    assert str(tmp_path) not in json.dumps(rest), [c["source"] for c in record["cases"]]
    assert {c["source"] for c in record["cases"] if c["case_id"]} == {"s0/ct", "s1/ct", "s2/ct"}
    for page in (where / "out").rglob("*.html"):
        assert str(tmp_path) not in page.read_text(), page
    for case_json in (where / "out").rglob("case.json"):
        assert str(tmp_path) not in case_json.read_text(), case_json
