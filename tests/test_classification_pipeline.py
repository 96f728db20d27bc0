"""Radiograph classification end to end: train (operating points stored), `medseg classify`, Grad-CAM, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from medseg.cli import main
from medseg.data.manifest import Manifest, build_case, load_manifest, save_manifest
from medseg.errors import ConfigError
from medseg.models import ModelCard, create_model, read_model_card, save_checkpoint
from medseg.train.config import load_train_config, parse_operating_point

CLASSES = ["disc", "bar"]
SIZE = 64


def _toy_image(rng: np.random.Generator, disc: bool, bar: bool) -> np.ndarray:
    """80 x 64 (portrait, letterboxed by the chain) noise with an optional bright disc and/or dark bar."""
    image = rng.normal(110, 18, size=(80, 64))
    if disc:
        y, x = rng.integers(20, 60), rng.integers(16, 48)
        yy, xx = np.ogrid[:80, :64]
        image[(yy - y) ** 2 + (xx - x) ** 2 <= 64] += 110
    if bar:
        x = rng.integers(8, 52)
        image[10:70, x:x + 5] -= 80
    return np.clip(image, 0, 255).astype(np.uint8)


def _toy_dataset(root: Path, cases: int = 64, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    records = []
    for n in range(cases):
        disc, bar = bool(rng.random() < 0.4), bool(rng.random() < 0.3)
        name = f"images/toy_{n:03d}.png"
        Image.fromarray(_toy_image(rng, disc, bar)).save(root / name)
        split = "val" if n % 4 == 0 else "train"
        records.append(build_case(root, f"toy_{n:03d}", image=name, split=split,
                                  labels={"disc": int(disc), "bar": int(bar)}))
    manifest = Manifest(name="toy-cxr", task="classification", label_map=CLASSES, cases=records)
    return save_manifest(manifest, root / "manifest.yaml")


def _write_config(tmp_path: Path, manifest: Path, **changes) -> Path:
    config = {
        "task": "classification",
        "data": {"manifest": str(manifest), "train_splits": ["train"], "val_splits": ["val"]},
        "preprocessing": {"modality": "xray", "image_size": [SIZE, SIZE], "clahe": {"clip_limit": 2.0},
                          "augmentation": {"rotate_degrees": 3, "noise_std": 0.0}},
        "model": {"architecture": "resnet18"},
        "loss": {"name": "bce", "class_weights": "inverse_sqrt"},
        "classification": {"operating_point": "youden", "sampler": "class_balanced", "mixing": "mixup",
                           "mix_prob": 0.3},
        "optimizer": {"lr": 1.0e-3, "warmup_steps": 5},
        "schedule": {"epochs": 4, "steps_per_epoch": 12, "batch_size": 8},
        "threads": 2,
        "output": str(tmp_path / "run"),
    }
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "train_cls.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest, best checkpoint) of a small ResNet18 trained on the toy set through `medseg train`."""
    root = tmp_path_factory.mktemp("cls")
    manifest = _toy_dataset(root / "data")
    config = _write_config(root, manifest)
    result = CliRunner().invoke(main, ["--quiet", "train", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "best val_macro_auc" in result.output
    return manifest, root / "run" / "best.safetensors"


@pytest.mark.slow
def test_training_learns_the_toy_findings_and_stores_operating_points(trained: tuple[Path, Path]) -> None:
    _, best = trained
    card = read_model_card(best)
    assert card.task == "classification" and card.labels == {0: "disc", 1: "bar"}
    assert card.metrics["val_macro_auc"] > 0.9, card.metrics
    thresholds = card.extra["thresholds"]
    assert set(thresholds) == set(CLASSES) and all(0.0 <= t <= 1.0 for t in thresholds.values())
    assert card.extra["operating_point"] == "youden" and card.extra["multilabel"] is True
    assert card.preprocessing["image_size"] == [SIZE, SIZE]
    rows = _read_csv(best.parent / "val_predictions.csv")
    assert len(rows) == 16 and list(rows[0]) == ["image", *CLASSES, "disc_call", "bar_call"]
    metrics = _read_csv(best.parent / "metrics.csv")
    assert len(metrics) == 4 and "val_auc_disc" in metrics[-1]


@pytest.mark.slow
def test_classify_a_manifest_writes_probabilities_calls_and_gradcam(trained: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    manifest, best = trained
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["classify", str(manifest), "--split", "val", "--model", str(best),
                                       "--out", str(out), "--cam", str(tmp_path / "cam"), "--json"])
    assert result.exit_code == 0, result.output
    rows = _read_csv(out)
    expected = [c.image for c in load_manifest(manifest).cases if c.split == "val"]
    assert [row["image"] for row in rows] == expected
    thresholds = read_model_card(best).extra["thresholds"]
    for row in rows:
        for name in CLASSES:
            assert int(row[f"{name}_call"]) == int(float(row[name]) >= thresholds[name])
    # the same images through classify as the validation predictions written by training: one preprocessing
    # path (bit-identical model inputs); only the batch composition differs (float summation order, ~1e-7)
    val = {row["image"]: row for row in _read_csv(best.parent / "val_predictions.csv")}
    for row in rows:
        assert float(row["disc"]) == pytest.approx(float(val[row["image"]]["disc"]), abs=1e-5)
    cams = sorted((tmp_path / "cam").glob("*.png"))
    assert len(cams) == len(rows)
    panel = np.asarray(Image.open(cams[0]))
    assert panel.ndim == 3 and panel.shape[1] > panel.shape[0]   # input + at least one overlay side by side


@pytest.mark.slow
def test_evaluate_the_classify_output(trained: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, best = trained
    preds = tmp_path / "preds.csv"
    assert CliRunner().invoke(main, ["classify", str(manifest), "--split", "val", "--model", str(best),
                                     "--out", str(preds)]).exit_code == 0
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *CLASSES])
        for case in load_manifest(manifest).cases:
            if case.split == "val":
                writer.writerow([case.image, *(case.labels[name] for name in CLASSES)])
    result = CliRunner().invoke(main, ["evaluate", "cls", "--pred", str(preds), "--labels", str(labels),
                                       "--out", str(tmp_path / "report"), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "roc.png").is_file()


def _random_checkpoint(path: Path, size: int = SIZE) -> Path:
    model = create_model("densenet121", in_channels=1, out_channels=2)
    card = ModelCard.from_model(model, task="classification", labels={0: "disc", 1: "bar"},
                                preprocessing={"modality": "xray", "image_size": [size, size],
                                               "clahe": {"clip_limit": 2.0}},
                                extra={"multilabel": True, "thresholds": {"disc": 0.5, "bar": 0.5}})
    save_checkpoint(path, model, card)
    return path


def _as_true_monochrome1(source: Path, target: Path) -> Path:
    """Re-encode a MONOCHROME2 DICOM as MONOCHROME1 with inverted stored values (uncompressed)."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    top = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (top - pixels.astype(np.int32)).astype(pixels.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(target, enforce_file_format=True)
    return target


def test_real_radiographs_classify_without_error(realdata: Path, tmp_path: Path) -> None:
    checkpoint = _random_checkpoint(tmp_path / "random.safetensors")
    xray = realdata / "xray"
    inverted = _as_true_monochrome1(xray / "rsna_cr_jpeg_baseline.dcm", tmp_path / "rsna_true_mono1.dcm")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["classify", str(xray), str(inverted), "--model", str(checkpoint),
                                       "--out", str(out), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    rows = {Path(row["image"]).name: row for row in _read_csv(out)}
    for name in ("nih_00000001_000_cardiomegaly.png", "rsna_cr_jpeg_baseline.dcm", "rsna_cr_monochrome1.dcm",
                 "fuji_cr_monochrome1_10bit.dcm", "rsna_true_mono1.dcm"):
        assert name in rows
    assert len(rows) >= 8   # + three TBX11K PNGs found in the sub-folders; the JSON is skipped
    assert "non-radiograph files skipped" in result.output
    # The same picture stored as MONOCHROME2 (JPEG baseline) and as MONOCHROME1 gives the same probabilities.
    for name in ("disc", "bar"):
        assert float(rows["rsna_true_mono1.dcm"][name]) == pytest.approx(
            float(rows["rsna_cr_jpeg_baseline.dcm"][name]), abs=2e-3)


def test_classify_isolates_a_broken_file_and_names_it(tmp_path: Path) -> None:
    checkpoint = _random_checkpoint(tmp_path / "random.safetensors")
    rng = np.random.default_rng(0)
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(_toy_image(rng, True, False)).save(good)
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["classify", str(good), str(broken), "--model", str(checkpoint),
                                       "--out", str(out)])
    assert result.exit_code == 1
    assert "broken.png" in result.output
    assert [Path(row["image"]).name for row in _read_csv(out)] == ["good.png"]


def test_classify_errors_are_one_line_and_specific(tmp_path: Path) -> None:
    checkpoint = _random_checkpoint(tmp_path / "random.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    runner = CliRunner()
    result = runner.invoke(main, ["classify", str(empty), "--model", str(checkpoint), "--out",
                                  str(tmp_path / "p.csv")])
    assert result.exit_code != 0 and "no radiographs found" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["classify", str(tmp_path / "missing.png"), "--model", str(checkpoint),
                                  "--out", str(tmp_path / "p.csv")])
    assert result.exit_code != 0 and "missing.png" in result.output and "no such file" in result.output
    seg = create_model("unet_resnet18", in_channels=1, out_channels=3, spatial_dims=2)
    seg_path = tmp_path / "seg.safetensors"
    save_checkpoint(seg_path, seg, ModelCard.from_model(seg, task="lobes", labels={0: "bg", 1: "a", 2: "b"}))
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(good)
    result = runner.invoke(main, ["classify", str(good), "--model", str(seg_path), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code != 0 and "not a classification model" in result.output
    assert not (tmp_path / "p.csv").exists()


def test_classification_config_refuses_segmentation_losses(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("x")
    with pytest.raises(ConfigError, match="segmentation loss"):
        load_train_config(_write_config(tmp_path, manifest, loss={"name": "dice_ce"}))
    with pytest.raises(ConfigError, match="operating point"):
        load_train_config(_write_config(tmp_path, manifest, classification={"operating_point": "sensitivity:1.5"}))
    assert parse_operating_point("specificity:0.9") == ("specificity", 0.9)
    assert parse_operating_point("0.3") == ("fixed", 0.3)
    assert parse_operating_point("Youden") == ("youden", None)


def test_traced_cpu_model_gives_the_eager_probabilities(tmp_path: Path) -> None:
    from medseg.infer.classify import RadiographClassifier
    from medseg.infer.explain import grad_cam

    classifier = RadiographClassifier(_random_checkpoint(tmp_path / "random.safetensors"))
    batch = np.random.default_rng(1).random((3, 1, SIZE, SIZE)).astype(np.float32)
    eager = classifier.predict(batch)
    classifier.compile_for_cpu()
    assert classifier._runner is not classifier.model
    np.testing.assert_allclose(classifier.predict(batch), eager, atol=1e-5)
    assert grad_cam(classifier.model, batch[:1], 0).shape == (1, SIZE, SIZE)   # the eager model stays usable
