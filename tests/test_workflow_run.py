"""`medseg run`: a tree with good and broken studies, isolated failures, run.json, resume, kill -9 safety."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.io import load_volume, read_nifti
from medseg.io.dicom_write import SeriesInfo, write_ct_series

WORKFLOW = """\
version: 1
name: tree-lungs
inputs: {path: studies, series: {min_slices: 10}}
steps:
  - lung_mask
  - statistics
  - export: {nifti: true, dicom_seg: true, overlays: true, review_html: true}
output: {dir: out}
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.data.phantom.ct_case import synth_ct_case

    root = tmp_path_factory.mktemp("run")
    studies = root / "studies"
    for n in range(4):
        synth_ct_case(studies / f"good{n}", seed=20 + n, size=80, slices=32, findings=[])
    truncated = synth_ct_case(studies / "truncated", seed=30, size=80, slices=32, findings=[]).folder / "ct"
    victim = sorted(truncated.iterdir())[10]
    victim.write_bytes(victim.read_bytes()[:-3000])                     # pixel data cut short
    gap = synth_ct_case(studies / "gap", seed=31, size=80, slices=32, findings=[]).folder / "ct"
    sorted(gap.iterdir())[15].unlink()                                  # a missing slice
    write_ct_series(np.full((16, 16, 24), -800, np.int16), np.diag([1.5, 1.5, 2.0, 1.0]), studies / "mr",
                    SeriesInfo(modality="MR"))
    (studies / "notes").mkdir()
    (studies / "notes" / "readme.txt").write_text("not an image")
    (root / "wf.yaml").write_text(WORKFLOW)
    return root


def _record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_batch_processes_good_cases_and_reports_broken_ones(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    result = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml", "--force"])
    assert result.exit_code == 0, result.output                          # fail_on_error is off
    record = _record(tree / "out")
    by_source = {Path(c["source"]).parent.name if c["case_id"] else Path(c["source"]).name: c
                 for c in record["cases"]}
    assert record["counts"]["done"] == 4
    assert by_source["truncated"]["status"] == "failed", by_source["truncated"]
    assert "slice_0011.dcm" in by_source["truncated"]["reason"], by_source["truncated"]["reason"]
    assert by_source["gap"]["status"] == "failed" and "missing slice" in by_source["gap"]["reason"]
    assert by_source["mr"]["status"] == "input_problem" and "MR" in by_source["mr"]["reason"]
    assert by_source["notes"]["status"] == "input_problem"
    assert "FAILED" in result.output and "NOT A CASE" in result.output
    assert record["packages"]["medseg"] and len(record["config_hash"]) == 16

    case = tree / "out" / "good0__ct"
    volume = load_volume(tree / "studies" / "good0" / "ct")
    mask = read_nifti(case / "lungs.nii.gz")
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)          # on the source grid
    assert set(np.unique(mask.array)) == {0, 1, 2}
    seg = pydicom.dcmread(case / "lungs_seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    stats = json.loads((case / "statistics.json").read_text())
    assert stats and (case / "overlay.png").stat().st_size > 1000
    assert not (tree / "out" / ".partial").exists()
    assert (tree / "out" / "index.html").is_file() and (case / "review.html").is_file()
    assert "good0__ct" in (tree / "out" / "review.csv").read_text()


def test_rerun_skips_finished_cases_and_retries_failures(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    CliRunner().invoke(main, ["--quiet", "run", "wf.yaml"])
    stamp = (tree / "out" / "good1__ct" / "case.json").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml"])
    assert result.exit_code == 0
    counts = _record(tree / "out")["counts"]
    assert counts["skipped"] == 4 and counts["done"] == 0 and counts["failed"] == 2
    assert (tree / "out" / "good1__ct" / "case.json").stat().st_mtime_ns == stamp
    failing = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml", "--set", "fail_on_error=true"])
    assert failing.exit_code == 1 and _record(tree / "out")["counts"]["skipped"] == 4   # not a case change
    changed = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml", "--set", "steps.2.overlays=false"])
    assert changed.exit_code == 0
    assert _record(tree / "out")["counts"]["done"] == 4                 # other exports: every case redone
    assert not (tree / "out" / "good1__ct" / "overlay.png").exists()


@pytest.mark.slow
def test_kill_9_leaves_no_partial_case_and_a_rerun_finishes(tree: Path) -> None:
    out = tree / "killed"
    command = [str(Path(sys.executable).parent / "medseg"), "--quiet", "run", "wf.yaml", "--output", str(out)]
    process = subprocess.Popen(command, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if _record(out)["counts"]["done"] >= 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    folders = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert folders, "nothing finished before the kill"
    for folder in folders:                                               # every visible case folder is complete
        assert (folder / "case.json").is_file()
        for name in ("lungs.nii.gz", "lungs_seg.dcm", "overlay.png", "statistics.csv"):
            assert (folder / name).is_file(), (folder, name)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name and ".partial" not in p.parts]
    done_before = len(folders)
    rerun = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    counts = _record(out)["counts"]
    assert counts["skipped"] == done_before and counts["skipped"] + counts["done"] == 4
    assert not (out / ".partial").exists()


def test_radiograph_workflow_writes_predictions_gradcam_and_an_auc_report(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_classification_pipeline import _random_checkpoint, _toy_dataset

    manifest = _toy_dataset(tmp_path / "data", cases=24)
    from medseg.data.manifest import load_manifest

    cases = [c for c in load_manifest(manifest).cases if c.split == "val"]
    labels = tmp_path / "labels.csv"
    labels.write_text("image,disc,bar\n" + "".join(f"{c.image},{c.labels['disc']},{c.labels['bar']}\n"
                                                    for c in cases))
    checkpoint = _random_checkpoint(tmp_path / "cls.safetensors")
    (tmp_path / "cxr.yaml").write_text(
        "version: 1\nname: cxr\ninputs: {manifest: data/manifest.yaml, splits: [val]}\nsteps:\n"
        f"  - classify_cxr: {{model: {checkpoint}, cam: true}}\n"
        "  - export: {review_html: true, auc_report: {labels: labels.csv, resamples: 200}}\noutput: {dir: out}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--quiet", "run", "cxr.yaml"])
    assert result.exit_code == 0, result.output
    record = _record(tmp_path / "out")
    assert record["counts"]["done"] == len(cases) and record["auc_report"] == "auc_report/report.html"
    import csv

    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [r["image"] for r in rows] == [c.image for c in cases]        # matches labels.csv ids
    assert (tmp_path / "out" / "auc_report" / "report.json").is_file()
    assert (tmp_path / "out" / cases[0].case_id / "gradcam.png").is_file()
    assert (tmp_path / "out" / "index.html").is_file()


def test_auc_labels_match_by_path_then_by_unique_file_name(tmp_path: Path) -> None:
    from medseg.workflow.runner import _label_keys

    labels = tmp_path / "cxr" / "labels.csv"
    images = ["images/a.png", "images/b.png", "left/c.png", "right/c.png"]
    predicted = [("x1", str(tmp_path / "cxr" / "images" / "a.png")),     # the same file
                 ("x2", str(tmp_path / "cxr" / "dicom" / "b.dcm")),       # its DICOM twin: unique name
                 ("x3", str(tmp_path / "other" / "c.dcm")),               # ambiguous name: left as is
                 ("x4", str(tmp_path / "cxr" / "images" / "z.png"))]      # unlabelled
    assert _label_keys(labels, images, predicted) == ["images/a.png", "images/b.png", "x3", "x4"]


def test_ray_executor_gives_the_local_results(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'medseg[ray]')")
    monkeypatch.chdir(tree)
    local = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml", "--output", "out_local"])
    assert local.exit_code == 0, local.output
    result = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml", "--output", "out_ray", "--set", "executor.kind=ray",
                                       "--set", "executor.workers=2"])
    assert result.exit_code == 0, result.output
    ray_record, local_record = _record(tree / "out_ray"), _record(tree / "out_local")
    assert ray_record["counts"] == local_record["counts"] == {"done": 4, "skipped": 0, "failed": 2,
                                                              "input_problem": 2}
    reasons = {c["source"]: (c["status"], c["reason"]) for c in local_record["cases"]}
    assert {c["source"]: (c["status"], c["reason"]) for c in ray_record["cases"]} == reasons
    done = [c["case_id"] for c in ray_record["cases"] if c["status"] == "done"]
    assert len(done) == 4
    for case_id in done:   # the same voxels, written by another process
        np.testing.assert_array_equal(read_nifti(tree / "out_ray" / case_id / "lungs.nii.gz").array,
                                      read_nifti(tree / "out_local" / case_id / "lungs.nii.gz").array)
    assert (tree / "out_ray" / "index.html").is_file() and not (tree / "out_ray" / ".partial").exists()
    rerun = CliRunner().invoke(main, ["--quiet", "run", "wf.yaml", "--output", "out_ray", "--set", "executor.kind=ray"])
    assert rerun.exit_code == 0 and _record(tree / "out_ray")["counts"]["skipped"] == 4   # resumable as well


def test_ray_settings_need_the_ray_executor(tree: Path) -> None:
    from medseg.errors import ConfigError
    from medseg.workflow import load_workflow

    with pytest.raises(ConfigError, match="Ray settings"):
        load_workflow(tree / "wf.yaml", {"executor.gpus_per_worker": 1})


SMALL_WORKFLOW = """\
version: 1
name: small
inputs: {path: studies}
executor: {workers: 2}
steps:
  - lung_mask
output: {dir: out}
"""


def _small_tree(root: Path, names: tuple[str, ...] = ("a", "b")) -> Path:
    from medseg.io.volume import Volume
    from medseg.io.volume_files import write_nifti

    for name in names:
        write_nifti(Volume(np.full((12, 12, 8), -800, np.int16), np.eye(4)), root / "studies" / f"{name}.nii.gz")
    (root / "wf.yaml").write_text(SMALL_WORKFLOW)
    return root / "wf.yaml"


def test_an_unexpected_exception_in_a_case_is_recorded_with_its_type_and_logged_with_its_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from medseg.errors import InputError
    from medseg.workflow import load_workflow, processing
    from medseg.workflow.runner import run_workflow

    def process(case, *args) -> None:
        if case.case_id == "a":
            raise KeyError("no such label: 7")                          # a bug
        raise InputError("a reported problem", case.source)              # a user-facing error

    monkeypatch.setattr(processing, "_process_ct", process)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="medseg.workflow"):
        run_workflow(load_workflow(_small_tree(tmp_path)), progress=False)
    cases = {c["case_id"]: c for c in _record(tmp_path / "out")["cases"]}
    assert cases["a"]["status"] == "failed"
    assert cases["a"]["error"] == {"type": "KeyError", "message": "'no such label: 7'"}
    assert cases["a"]["reason"] == "internal error: KeyError: 'no such label: 7'"
    assert cases["b"]["error"] == {"type": "InputError", "message": "b.nii.gz: a reported problem"}
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warned] == ["case a failed with an unexpected KeyError"]
    assert warned[0].exc_info is not None and "in process" in caplog.text       # the traceback reaches the log
    assert any(r.levelno == logging.DEBUG and "case b failed" in r.getMessage() for r in caplog.records)


def test_local_executor_reads_ahead_with_timings_and_a_failed_read_fails_only_its_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.workflow import executors, load_workflow, processing
    from medseg.workflow.cases import Case
    from medseg.workflow.processing import RunContext

    def read(case: Case, workflow, models) -> np.ndarray:
        time.sleep(0.05)
        if case.case_id == "b":
            raise OSError(5, "Input/output error", str(case.source))
        return np.zeros((2, 2, 2))

    monkeypatch.setattr(executors, "read_case", read)
    monkeypatch.setattr(processing, "_process_ct", lambda *args: None)
    workflow = load_workflow(_small_tree(tmp_path))
    context = RunContext(out=tmp_path / "out", work_root=tmp_path / "out" / ".partial" / "run", fingerprint="f")
    cases = [Case(name, "ct", tmp_path / f"{name}.nii.gz", folder=name) for name in ("a", "b", "c")]
    outcomes = list(executors.LocalExecutor(workflow, context).outcomes(cases))
    assert [(o.case_id, o.status) for o in outcomes] == [("a", "done"), ("b", "failed"), ("c", "done")]
    assert all(o.timings["read"] >= 0.05 for o in outcomes)                   # the reading time is kept
    assert outcomes[1].error == {"type": "OSError", "message": f"[Errno 5] Input/output error: '{tmp_path}/b.nii.gz'"}
    assert json.loads((tmp_path / "out" / "c" / "case.json").read_text())["timings"]["read"] >= 0.05
