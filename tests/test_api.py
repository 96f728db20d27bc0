"""The public Python API (`import medseg`): light import, each function on small data, the README snippet."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

import medseg

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "numpy", "scipy", "pydantic", "pydicom", "nibabel", "SimpleITK", "pandas", "sklearn",
         "cv2", "rich", "click", "yaml")
CLASSES = ["disc", "bar"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom chest CT case folder: ct/ (DICOM), lobes.nii.gz, lungs.nii.gz."""
    from medseg.data.phantom.ct_case import synth_ct_case

    return synth_ct_case(tmp_path_factory.mktemp("api") / "case", seed=5, size=80, slices=32, findings=[]).folder


def _lobe_checkpoint(path: Path) -> Path:
    """An untrained tiny 2.5D lobe UNet with a complete model card (labels from the registry)."""
    from medseg.labels import label_map
    from medseg.models import ModelCard, create_model, save_checkpoint

    model = create_model("unet_resnet18", in_channels=3, out_channels=6, spatial_dims=2,
                         decoder_channels=[32, 16, 16, 8, 8])
    preprocessing = {"modality": "ct", "windows": [{"center": -600, "width": 1500}], "stack": 3,
                     "spacing": [4.0, 4.0, 5.0], "roi_margin_mm": 8}
    card = ModelCard.from_model(model, task="lobes", labels=label_map("lobes").names(background=True),
                                preprocessing=preprocessing, spacing=[4.0, 4.0, 5.0])
    save_checkpoint(path, model, card)
    return path


def _cxr_checkpoint(path: Path) -> Path:
    """An untrained ResNet18 radiograph classifier (64 x 64 input, calls at 0.5)."""
    from medseg.models import ModelCard, create_model, save_checkpoint

    model = create_model("resnet18", in_channels=1, out_channels=2)
    card = ModelCard.from_model(model, task="classification", labels=dict(enumerate(CLASSES)),
                                preprocessing={"modality": "xray", "image_size": [64, 64]},
                                extra={"multilabel": True, "thresholds": {name: 0.5 for name in CLASSES}})
    save_checkpoint(path, model, card)
    return path


def _radiograph(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(120, 25, size=(80, 64))
    image[20:60, 10 + 10 * seed: 30 + 10 * seed] += 70
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_radiograph(seed)).save(path)
    return path


def _write_dx(path: Path, seed: int) -> Path:
    from medseg.data.radiograph.dicom_dx import DxInfo, deterministic_uid, write_dx

    stored = (_radiograph(seed).astype(np.uint16) * 16).astype(np.uint16)
    info = DxInfo(patient_id=f"P{seed}", study_uid=deterministic_uid("study", seed),
                  series_uid=deterministic_uid("series", seed), sop_uid=deterministic_uid("sop", seed),
                  imager_pixel_spacing=0.5)
    return write_dx(path, stored, info)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"lobes": _lobe_checkpoint(root / "lobes.safetensors"), "cxr": _cxr_checkpoint(root / "cxr.safetensors")}


# ------------------------------------------------------------------------------------------------ import


def test_import_medseg_is_light_and_fast() -> None:
    code = "import medseg, sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    heavy = sorted({name for name in loaded if name.split(".")[0] in HEAVY})
    assert not heavy, heavy
    cumulative = {match.group(2).strip(): int(match.group(1))
                  for match in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|\s+(.+)", result.stderr)}
    assert "medseg" in cumulative and cumulative["medseg"] < 100_000, cumulative.get("medseg")   # microseconds


def test_every_public_name_resolves_and_train_stays_the_function() -> None:
    for name in medseg.__all__:
        assert getattr(medseg, name) is not None, name
    assert set(medseg.__all__) <= set(dir(medseg))
    with pytest.raises(AttributeError, match="no attribute 'segmnet'"):
        medseg.segmnet  # noqa: B018
    from medseg.train.config import load_train_config  # binds the medseg.train package on import

    assert callable(load_train_config) and callable(medseg.train) and medseg.train.__module__ == "medseg.api.train"


# ------------------------------------------------------------------------------------------------ segment


def test_segment_lungs_without_a_model(study: Path, tmp_path: Path) -> None:
    ct = medseg.load_volume(study / "ct")
    result = medseg.segment(ct, tmp_path / "lungs.nii.gz", task="lungs")
    assert result.labels.shape == ct.shape and np.allclose(result.labels.affine, ct.affine)
    assert set(result.label_names) == {1, 2} and set(result.volumes) == set(result.label_names.values())
    written = nib.load(tmp_path / "lungs.nii.gz")
    voxel_ml = float(np.prod(written.header.get_zooms()[:3])) / 1000.0
    array = np.asarray(written.dataobj)
    for value, name in result.label_names.items():
        assert result.volumes[name] == pytest.approx((array == value).sum() * voxel_ml, abs=0.06)
        assert result.volumes[name] > 50
    truth = np.asarray(nib.load(study / "lungs.nii.gz").dataobj)
    assert 2 * ((array > 0) & (truth > 0)).sum() / ((array > 0).sum() + (truth > 0).sum()) > 0.9
    assert {"load_model", "read", "lung_mask", "write"} <= set(result.timings)


def test_segment_lobes_with_a_model_and_save(study: Path, models: dict[str, Path], tmp_path: Path) -> None:
    result = medseg.segment(study / "ct", model=models["lobes"], device="cpu",
                            options=medseg.SegmentOptions(batch_size=4))
    assert result.labels.shape == medseg.load_volume(study / "ct").shape
    assert set(np.unique(result.labels.array)) <= set(result.label_names)
    assert set(result.volumes) == {name for value, name in result.label_names.items() if value}
    voxel_ml = abs(np.linalg.det(result.labels.affine[:3, :3])) / 1000.0
    assert sum(result.volumes.values()) == pytest.approx((result.labels.array > 0).sum() * voxel_ml, abs=0.3)
    assert {"load_model", "read", "model", "postprocess"} <= set(result.timings)
    saved = result.save(tmp_path / "lobes.nii.gz")
    assert np.array_equal(np.asarray(nib.load(saved).dataobj), result.labels.array)
    with pytest.raises(medseg.InputError, match=r"\.nii"):
        result.save(tmp_path / "lobes.png")


def test_segment_refuses_lobes_without_a_model(study: Path, tmp_path: Path) -> None:
    with pytest.raises(medseg.ConfigError, match=r"needs a model checkpoint.*medseg train"):
        medseg.segment(study / "ct")
    with pytest.raises(medseg.ConfigError, match="unknown task"):
        medseg.segment(study / "ct", task="heart")  # type: ignore[arg-type]
    with pytest.raises(medseg.InputError, match=r"\.nii"):
        medseg.segment(study / "ct", tmp_path / "out.mha", task="lungs")


# ------------------------------------------------------------------------------------------------ classify


def test_classify_write_predictions_and_evaluate(models: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    images = [_write_png(Path("data/images/a.png"), 0), _write_png(Path("data/images/b.png"), 1),
              _write_dx(Path("data/images/c.dcm"), 2)]
    Path("data/images/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows = medseg.classify(["data/images"], models["cxr"], device="cpu")
    assert [row.image for row in rows] == ["data/images/a.png", "data/images/b.png", "data/images/broken.png",
                                           "data/images/c.dcm"]
    broken = rows[2]
    assert broken.error and not broken.probabilities
    good = [row for row in rows if row.ok]
    for row in good:
        assert list(row.probabilities) == CLASSES and all(0 <= p <= 1 for p in row.probabilities.values())
        assert row.calls == {name: int(row.probabilities[name] >= 0.5) for name in CLASSES}

    out = medseg.write_predictions(rows, Path("results/preds.csv"))
    table = list(csv.reader(out.open()))
    assert table[0] == ["image", *CLASSES, *(f"{name}_call" for name in CLASSES)]
    assert [line[0] for line in table[1:]] == [str(image) for image in images]
    assert float(table[1][1]) == good[0].probabilities["disc"]

    # labels.csv beside the images names them relative to itself; predictions.csv lives elsewhere
    Path("data/labels.csv").write_text("image,disc,bar\nimages/a.png,1,0\nimages/b.png,0,1\nimages/c.dcm,1,1\n")
    report = medseg.evaluate_classification(out, "data/labels.csv", out=Path("report"),
                                            options=medseg.ClassificationOptions(resamples=20))
    assert report.n_images == 3 and report.classes == CLASSES and Path("report/report.json").is_file()
    with pytest.raises(medseg.InputError, match="no classified image"):
        medseg.write_predictions([broken], "empty.csv")


def test_written_probabilities_keep_their_calls_exact(tmp_path: Path) -> None:
    from medseg.evaluate.classification import read_prediction_table

    at_threshold = float(np.float32(0.991027295589447))   # a Youden threshold is a score of the data itself
    rows = [medseg.PredictionRow("a.png", {"disc": at_threshold, "bar": 0.25}, {"disc": 1, "bar": 0}),
            medseg.PredictionRow("b.png", {"disc": 0.5, "bar": 1 / 3}, {"disc": 0, "bar": 0})]
    table = read_prediction_table(medseg.write_predictions(rows, tmp_path / "p.csv"), "predictions")
    assert table.values.tolist() == [[at_threshold, 0.25], [0.5, 1 / 3]]
    assert table.values[0, 0] >= at_threshold and table.calls.tolist() == [[1, 0], [0, 0]]
    no_calls = medseg.write_predictions([medseg.PredictionRow("c.png", {"disc": 0.1})], tmp_path / "q.csv")
    assert no_calls.read_text().splitlines() == ["image,disc", "c.png,0.1"]
    with pytest.raises(medseg.InputError, match="has classes"):
        medseg.write_predictions([*rows, medseg.PredictionRow("d.png", {"bar": 0.1, "disc": 0.2})], tmp_path / "r.csv")


# ------------------------------------------------------------------------------------------------ run, train


def test_run_a_workflow_with_overrides(study: Path, tmp_path: Path) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text("version: 1\nname: api-lungs\ninputs: {path: nowhere}\n"
                        "steps:\n  - lung_mask\n  - export: {nifti: true}\noutput: {dir: out}\n")
    with pytest.raises(medseg.ConfigError, match="nowhere does not exist"):
        medseg.run(workflow)
    summary = medseg.run(workflow, input=study.parent, output=tmp_path / "batch", **{"executor.workers": 1})
    assert summary.output == (tmp_path / "batch").resolve() or summary.output == tmp_path / "batch"
    assert [o.status for o in summary.outcomes] == ["done"] and not summary.failed
    assert (summary.output / "run.json").is_file()
    again = medseg.run(workflow, input=study.parent, output=tmp_path / "batch")
    assert [o.status for o in again.outcomes] == ["skipped"]


@pytest.mark.slow
def test_train_a_classifier_from_a_config(tmp_path: Path) -> None:
    from tests.test_classification_pipeline import _toy_dataset, _write_config

    config = _write_config(tmp_path, _toy_dataset(tmp_path / "data", cases=16))
    summary = medseg.train(config, **{"schedule.epochs": 1, "schedule.steps_per_epoch": 2})
    assert summary.epochs_run == 1 and (summary.run_dir / "best.safetensors").is_file()
    rows = medseg.classify(tmp_path / "data" / "images", summary.run_dir / "best.safetensors", device="cpu")
    assert len(rows) == 16 and all(row.ok for row in rows)


def test_create_and_list_models() -> None:
    import torch

    assert {"resnet18", "unet_resnet18"} <= set(medseg.list_models())
    assert medseg.list_models("unet_*") and all(name.startswith("unet_") for name in medseg.list_models("unet_*"))
    model = medseg.create_model("resnet18", in_channels=1, out_channels=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3)


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_segmentation_files_and_folders(study: Path, tmp_path: Path) -> None:
    reference = study / "lobes.nii.gz"
    scores = medseg.evaluate_segmentation(reference, reference)
    assert scores.mean_dice == pytest.approx(1.0)
    shifted = nib.load(reference)
    array = np.roll(np.asarray(shifted.dataobj), 2, axis=0)
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
    nib.save(nib.Nifti1Image(array, shifted.affine), tmp_path / "pred" / "case.nii.gz")
    nib.save(shifted, tmp_path / "ref" / "case.nii.gz")
    folder = medseg.evaluate_segmentation(tmp_path / "pred", tmp_path / "ref")
    assert [case for case, _ in folder.cases] == ["case"] and 0.5 < folder.cases[0][1].mean_dice < 1.0
    with pytest.raises(medseg.InputError, match="both be files or both be folders"):
        medseg.evaluate_segmentation(tmp_path / "pred", reference)


# ------------------------------------------------------------------------------------------------ README


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the From Python section holds one python block"
    return blocks[0]


def test_readme_from_python_snippet_runs(study: Path, models: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact README code, run in a folder holding the files it names ("/data/studies": a phantom tree)."""
    import shutil

    code = _readme_snippet()
    monkeypatch.chdir(tmp_path)
    shutil.copytree(study / "ct", "study")
    Path("runs/lobes").mkdir(parents=True)
    Path("runs/cxr").mkdir(parents=True)
    shutil.copy(models["lobes"], "runs/lobes/best.safetensors")
    shutil.copy(models["cxr"], "runs/cxr/best.safetensors")
    _write_png(Path("cxr1.png"), 0)
    _write_dx(Path("cxr2.dcm"), 1)
    Path("labels.csv").write_text("image,disc,bar\ncxr1.png,1,0\ncxr2.dcm,0,1\n")
    Path("workflows").mkdir()
    workflow = yaml.safe_load((REPO / "workflows/lung_lobes_ct.yaml").read_text())
    workflow["inputs"]["series"]["min_slices"] = 10
    workflow["executor"] = {"kind": "local", "workers": 1}
    Path("workflows/lung_lobes_ct.yaml").write_text(yaml.safe_dump(workflow))
    studies = tmp_path / "studies"
    shutil.copytree(study, studies / "case")
    assert '"/data/studies"' in code
    namespace: dict[str, object] = {}
    exec(compile(code.replace('"/data/studies"', repr(str(studies))), "README.md", "exec"), namespace)
    assert Path("lobes.nii.gz").is_file()
    summary = namespace["summary"]
    assert [o.status for o in summary.outcomes] == ["done"], summary.outcomes  # type: ignore[attr-defined]
