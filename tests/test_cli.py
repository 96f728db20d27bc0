"""The command line as a user meets it: outputs, exit codes, one-line errors, fast start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.io.dicom_write import SeriesInfo, write_ct_series


def _medseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def series(tmp_path: Path) -> Path:
    affine = np.diag([-0.7, -0.7, 2.0, 1.0])
    hu = np.random.default_rng(0).integers(-1024, 1000, (20, 22, 5)).astype(np.int16)
    write_ct_series(hu, affine, tmp_path / "dicom", SeriesInfo(series_description="chest"))
    return tmp_path / "dicom"


def test_convert_writes_nifti(series: Path, tmp_path: Path) -> None:
    result = _medseg("convert", str(series), str(tmp_path / "out" / "ct.nii.gz"))
    assert result.returncode == 0, result.stderr
    assert nib.load(tmp_path / "out" / "ct.nii.gz").shape == (20, 22, 5)
    assert "wrote" in result.stdout


def test_info_json_reports_selection_and_geometry(series: Path) -> None:
    result = _medseg("info", str(series), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["selected"] and "5 slices" in report["reason"]
    assert report["volume"]["shape"] == [20, 22, 5]
    assert report["volume"]["spacing_mm"] == [0.7, 0.7, 2.0]
    assert report["volume"]["orientation"] == "LPS"
    assert report["error"] is None


@pytest.mark.parametrize("setup, expected", [
    ("missing", "no such file or folder"),
    ("text", "no DICOM images found"),
    ("truncated", "truncated pixel data"),
    ("badnifti", "not a readable NIfTI file"),
])
def test_bad_input_gives_one_line_and_exit_2(series: Path, tmp_path: Path, setup: str, expected: str) -> None:
    target = {
        "missing": tmp_path / "nope",
        "text": tmp_path / "notes",
        "truncated": series,
        "badnifti": tmp_path / "broken.nii.gz",
    }[setup]
    if setup == "text":
        target.mkdir()
        (target / "a.txt").write_text("not an image")
    elif setup == "truncated":
        victim = sorted(series.iterdir())[1]
        victim.write_bytes(victim.read_bytes()[:-300])
    elif setup == "badnifti":
        target.write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "out.nii.gz"
    result = _medseg("convert", str(target), str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), result.stderr
    assert expected in lines[0] and str(target.name) in lines[0]
    assert "Traceback" not in result.stderr and not out.exists()
    debug = _medseg("--debug", "convert", str(target), str(out))
    assert "Traceback" in debug.stderr


def test_info_on_refused_series_shows_series_and_reason(tmp_path: Path, series: Path) -> None:
    sorted(series.iterdir())[2].unlink()  # a missing slice in the middle
    result = _medseg("info", str(series))
    assert result.returncode == 2
    assert "1 missing slice" in result.stdout and "chest" in result.stdout


def test_light_commands_do_not_import_torch_or_monai(series: Path) -> None:
    code = (
        "import sys\nfrom medseg.cli import main\n"
        f"try:\n    main(['info', {str(series)!r}, '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_every_command_group_is_registered_and_set_must_be_key_value(tmp_path: Path) -> None:
    result = _medseg("--help")
    assert result.returncode == 0
    for command in ("convert", "info", "synth", "data", "evaluate", "train", "segment", "classify", "validate",
                    "run", "review"):
        assert f"\n  {command} " in result.stdout, command
    bad = _medseg("validate", str(tmp_path / "wf.yaml"), "--set", "novalue")
    assert bad.returncode == 2 and "expected KEY=VALUE, got 'novalue'" in bad.stderr


def test_classify_a_folder_then_evaluate_against_its_labels_csv(tmp_path: Path) -> None:
    """Issue 14's new-user path: predictions name images as found, labels.csv relative to itself."""
    from tests.test_api import _cxr_checkpoint, _write_png

    data = tmp_path / "cxr"
    for n, name in enumerate(("a", "b", "c", "d")):
        _write_png(data / "images" / f"{name}.png", n % 3)
    (data / "labels.csv").write_text("image,disc,bar\nimages/a.png,1,0\nimages/b.png,0,1\nimages/c.png,1,1\n"
                                     "images/d.png,0,0\n")
    model = _cxr_checkpoint(tmp_path / "cxr.safetensors")
    run = {"capture_output": True, "text": True, "timeout": 120, "cwd": tmp_path}
    classified = subprocess.run([sys.executable, "-m", "medseg", "classify", "cxr/images", "--model", str(model),
                                 "--out", "out/p.csv"], **run)
    assert classified.returncode == 0, classified.stderr
    assert (tmp_path / "out/p.csv").read_text().splitlines()[1].startswith("cxr/images/a.png,")
    evaluated = subprocess.run([sys.executable, "-m", "medseg", "evaluate", "cls", "--pred", "out/p.csv",
                                "--labels", "cxr/labels.csv", "--out", "report", "--resamples", "50", "--json"], **run)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n_images"] == 4
