"""`medseg evaluate cls` end to end on small CSVs: report files, values against sklearn, the CLI's errors."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, roc_auc_score

from medseg.cli.evaluate import evaluate
from medseg.errors import InputError
from medseg.evaluate.classification import evaluate_classification, read_prediction_table

CLASSES = ["effusion", "nodule", "pneumothorax"]


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _multilabel(tmp_path: Path, n: int = 150, seed: int = 0) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """labels.csv and preds.csv (shuffled rows, `_call` columns at 0.4, an extra text column)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(CLASSES))) < [0.3, 0.15, 0.1]).astype(int)
    labels[:2] = [[0, 0, 0], [1, 1, 1]]
    probabilities = np.round(1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.5 * labels - 1))), 3)
    images = [f"cxr/{i:03d}.png" for i in range(n)]
    _write(tmp_path / "labels.csv", ["image", *CLASSES], [[images[i], *labels[i]] for i in range(n)])
    order = rng.permutation(n)
    _write(tmp_path / "preds.csv", ["image", *CLASSES, *(f"{c}_call" for c in CLASSES), "model"],
           [[images[i], *probabilities[i], *(probabilities[i] >= 0.4).astype(int), "v2"] for i in order])
    return tmp_path / "labels.csv", tmp_path / "preds.csv", labels, probabilities


def _invoke(*args: object):
    return CliRunner().invoke(evaluate, [str(a) for a in args])


def test_multilabel_with_calls_end_to_end(tmp_path: Path) -> None:
    labels_csv, preds_csv, labels, probabilities = _multilabel(tmp_path)
    out = tmp_path / "report"
    result = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", out, "--resamples", 300)
    assert result.exit_code == 0, result.output
    for name in ("report.json", "per_class.csv", "operating_points.csv", "roc.png", "pr.png", "calibration.png",
                 "confusion.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "roc_compare.png").exists()
    assert "effusion" in result.output and "wrote" in result.output

    report = json.loads((out / "report.json").read_text())  # strict JSON: NaN would not parse as null
    assert report["task"] == "multilabel" and report["operating_point"] == "calls"
    assert report["thresholds_chosen_on_data"] is False
    for j, c in enumerate(report["per_class"]):
        assert c["name"] == CLASSES[j]
        assert c["auc"]["value"] == pytest.approx(roc_auc_score(labels[:, j], probabilities[:, j]), abs=1e-9)
        assert c["auc"]["low"] < c["auc"]["value"] < c["auc"]["high"]
        assert c["average_precision"]["value"] == pytest.approx(
            average_precision_score(labels[:, j], probabilities[:, j]))
        called = probabilities[:, j] >= 0.4
        assert c["operating_point"]["confusion"] == {
            "tp": int((called & (labels[:, j] == 1)).sum()), "fp": int((called & (labels[:, j] == 0)).sum()),
            "tn": int((~called & (labels[:, j] == 0)).sum()), "fn": int((~called & (labels[:, j] == 1)).sum())}
        assert c["operating_point"]["threshold"] == pytest.approx(probabilities[called, j].min())
    summary = report["summary"]
    assert summary["macro_auc"]["value"] == pytest.approx(
        np.mean([roc_auc_score(labels[:, j], probabilities[:, j]) for j in range(3)]))
    assert summary["micro_auc"]["value"] == pytest.approx(roc_auc_score(labels.ravel(), probabilities.ravel()))
    assert summary["macro_auc"]["low"] < summary["macro_auc"]["value"] < summary["macro_auc"]["high"]

    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == [*CLASSES, "macro", "micro"]
    assert float(rows[0]["auc"]) == pytest.approx(report["per_class"][0]["auc"]["value"], abs=1e-6)
    with open(out / "operating_points.csv", newline="") as handle:
        points = list(csv.DictReader(handle))
    assert {p["rule"] for p in points} == {"calls", "youden", "sensitivity:0.9", "specificity:0.9", "0.5"}
    assert sum(p["used"] == "True" for p in points) == len(CLASSES)

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page
    assert "preds.csv" in page and "labels.csv" in page and "chosen on the evaluated data" not in page


def test_data_chosen_operating_point_is_flagged(tmp_path: Path) -> None:
    labels_csv, preds_csv, labels, probabilities = _multilabel(tmp_path, seed=1)
    table = read_prediction_table(labels_csv, "labels")
    preds = read_prediction_table(preds_csv, "predictions", table.classes)
    report = evaluate_classification(table, preds, operating_point="sensitivity:0.9", n_resamples=0)
    assert report.thresholds_chosen_on_data and any("optimistic" in n for n in report.notes)
    for c in report.per_class:
        assert c.operating_point.rule == "sensitivity:0.9" and c.operating_point.chosen_on_data
        assert c.operating_point.metrics["sensitivity"].value >= 0.9
        assert math.isnan(c.auc.low)  # no resamples, no bootstrap interval
    fixed = evaluate_classification(table, preds, operating_point="0.5", n_resamples=0)
    assert not fixed.thresholds_chosen_on_data
    assert fixed.per_class[0].operating_point.confusion["tp"] == int(
        ((probabilities[:, 0] >= 0.5) & (labels[:, 0] == 1)).sum())


def test_missing_calls_fall_back_to_youden(tmp_path: Path) -> None:
    labels_csv, _, labels, probabilities = _multilabel(tmp_path)
    preds_csv = _write(tmp_path / "plain.csv", ["image", *CLASSES],
                       [[f"cxr/{i:03d}.png", *probabilities[i]] for i in range(len(labels))])
    table = read_prediction_table(labels_csv, "labels")
    report = evaluate_classification(table, read_prediction_table(preds_csv, "predictions"), n_resamples=0)
    assert report.operating_point == "youden" and report.thresholds_chosen_on_data
    assert any("no `_call` columns" in note for note in report.notes)


def test_multiclass_softmax(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, classes = 120, ["normal", "pneumonia", "covid"]
    truth = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[truth]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    one_hot = np.eye(3, dtype=int)[truth]
    _write(tmp_path / "labels.csv", ["image", *classes], [[f"id{i}", *one_hot[i]] for i in range(n)])
    _write(tmp_path / "preds.csv", ["image", *classes], [[f"id{i}", *np.round(probabilities[i], 4)] for i in range(n)])
    out = tmp_path / "out"
    result = _invoke("cls", "--pred", tmp_path / "preds.csv", "--labels", tmp_path / "labels.csv", "--out", out,
                     "--resamples", 100, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["task"] == "multiclass"
    predicted = np.round(probabilities, 4).argmax(axis=1)
    assert report["multiclass"]["accuracy"]["value"] == pytest.approx(accuracy_score(truth, predicted))
    assert report["multiclass"]["confusion_matrix"] == confusion_matrix(truth, predicted).tolist()
    for j, c in enumerate(report["per_class"]):
        assert c["auc"]["value"] == pytest.approx(roc_auc_score(truth == j, np.round(probabilities[:, j], 4)))


def test_compare_mode(tmp_path: Path) -> None:
    labels_csv, preds_csv, labels, probabilities = _multilabel(tmp_path, n=200)
    rng = np.random.default_rng(9)
    noisy = np.clip(probabilities + rng.normal(scale=0.3, size=probabilities.shape), 0, 1)
    other = _write(tmp_path / "other.csv", ["image", *CLASSES],
                   [[f"cxr/{i:03d}.png", *noisy[i]] for i in range(len(labels))])
    out = tmp_path / "out"
    result = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", out, "--compare", other,
                     "--resamples", 100)
    assert result.exit_code == 0, result.output
    assert (out / "roc_compare.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    for j, row in enumerate(report["comparison"]):
        assert row["auc_a"] == pytest.approx(roc_auc_score(labels[:, j], probabilities[:, j]))
        assert row["auc_b"] == pytest.approx(roc_auc_score(labels[:, j], noisy[:, j]))
        assert row["difference"] == pytest.approx(row["auc_a"] - row["auc_b"])
        assert 0 <= row["p_value"] <= 1
    assert "DeLong" in result.output and (out / "report.html").read_text().count("data:image/png") == 5
    table = read_prediction_table(labels_csv, "labels")
    preds = read_prediction_table(preds_csv, "predictions", table.classes)
    same = evaluate_classification(table, preds, compare=preds, n_resamples=0).comparison
    assert same is not None and all(r.z == 0 and r.p_value == 1 for r in same)


def test_class_without_positives_reports_nan(tmp_path: Path) -> None:
    labels_csv, preds_csv, _, _ = _multilabel(tmp_path)
    rows = list(csv.reader(labels_csv.open()))
    for row in rows[1:]:
        row[3] = "0"  # pneumothorax: no positives
    _write(labels_csv, rows[0], rows[1:])
    table = read_prediction_table(labels_csv, "labels")
    report = evaluate_classification(table, read_prediction_table(preds_csv, "predictions", table.classes),
                                     operating_point="youden", n_resamples=50)
    empty = report.per_class[2]
    assert empty.positives == 0 and math.isnan(empty.auc.value) and "no positives" in " ".join(empty.notes)
    assert report.summary["macro_classes"] == 2
    document = report.to_json()
    assert document["per_class"][2]["auc"]["value"] is None
    json.dumps(document, allow_nan=False)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda h, r: (h[:2] + h[3:], [x[:2] + x[3:] for x in r]), ["preds.csv", "class column(s) missing", "'nodule'"]),
    (lambda h, r: (h, r[:-3]), ["preds.csv", "3 image(s) of", "labels.csv", "cxr/"]),
    (lambda h, r: (h, [[*x[:1], "1.7", *x[2:]] if i == 4 else x for i, x in enumerate(r)]),
     ["preds.csv", "probabilities must lie in [0, 1]", "1.7", "line 6"]),
    (lambda h, r: (h, [[*x[:1], "high", *x[2:]] if i == 2 else x for i, x in enumerate(r)]),
     ["preds.csv", "non-numeric value 'high'", "line 4", "'effusion'"]),
    (lambda h, r: (["id", *h[1:]], r), ["preds.csv", "missing `image` column"]),
])
def test_cli_reports_bad_predictions(tmp_path: Path, edit, expected: list[str]) -> None:
    labels_csv, preds_csv, _, _ = _multilabel(tmp_path)
    rows = list(csv.reader(preds_csv.open()))
    header, body = edit(rows[0], rows[1:])
    _write(preds_csv, header, body)
    result = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", tmp_path / "out")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("medseg: error:") and "\n" not in message
    for part in expected:
        assert part in message, message
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_labels(tmp_path: Path) -> None:
    labels_csv, preds_csv, _, _ = _multilabel(tmp_path)
    rows = list(csv.reader(labels_csv.open()))
    rows[3][2] = "2"
    _write(labels_csv, rows[0], rows[1:])
    result = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "labels.csv" in result.stderr and "labels must be 0 or 1" in result.stderr and "line 4" in result.stderr
    result = _invoke("cls", "--pred", preds_csv, "--labels", tmp_path / "absent.csv", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "absent.csv: no such file" in result.stderr
    result = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", tmp_path / "out",
                     "--operating-point", "sensitivity:high")
    assert result.exit_code == 2 and "unknown operating point" in result.stderr


def test_read_prediction_table_validation(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", ["image", "a", "b"], [["x", "0.1", "0.2"], ["x", "0.3", "0.4"]])
    with pytest.raises(InputError, match="appears twice"):
        read_prediction_table(path, "predictions")
    path = _write(tmp_path / "p.csv", ["image", "a", "a_call", "b"], [["x", "0.1", "1", "0.2"]])
    with pytest.raises(InputError, match="some classes only"):
        read_prediction_table(path, "predictions")
    path = _write(tmp_path / "p.csv", ["image", "a", "b"], [["x", "0.1", "nan"]])
    with pytest.raises(InputError, match="not a finite number"):
        read_prediction_table(path, "predictions")
    path = _write(tmp_path / "p.csv", ["image", "a", "b", "note"], [["x", "0.1", "0.2", "free text"]])
    table = read_prediction_table(path, "predictions", ["b", "a"])
    assert table.classes == ["b", "a"] and table.values.tolist() == [[0.2, 0.1]] and table.calls is None


def test_calls_that_are_not_a_threshold_get_a_note(tmp_path: Path) -> None:
    labels_csv, preds_csv, _, _ = _multilabel(tmp_path)
    table = read_prediction_table(labels_csv, "labels")
    preds = read_prediction_table(preds_csv, "predictions", table.classes)
    assert not any("not one threshold" in " ".join(c.notes)
                   for c in evaluate_classification(table, preds, n_resamples=0).per_class)
    calls = preds.calls.copy()
    top = int(np.argmax(preds.values[:, 0]))
    calls[top, 0] = 0  # the highest score is called negative
    report = evaluate_classification(table, replace(preds, calls=calls), n_resamples=0)
    assert "not one threshold" in " ".join(report.per_class[0].notes)
    assert report.per_class[0].operating_point.confusion["fn"] + report.per_class[0].operating_point.confusion["tn"] \
        == int((calls[:, 0] == 0).sum())


def test_predictions_for_unlabelled_extra_images_are_left_out(tmp_path: Path) -> None:
    labels_csv, preds_csv, _, _ = _multilabel(tmp_path)
    rows = list(csv.reader(labels_csv.open()))
    _write(labels_csv, rows[0], rows[1:-5])          # five predicted images lose their labels
    result = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == len(rows) - 6


# ------------------------------------------------------------------------------------------------ row pairing


def test_classify_output_pairs_with_a_labels_csv_beside_the_images(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`medseg classify DIR/images --out p.csv` writes paths as found (relative to the working directory);
    DIR/labels.csv names the images relative to itself. Issue 14: this failed with "... not in this file"."""
    labels_csv, preds_csv, _, _ = _multilabel(tmp_path)        # labels: cxr/NNN.png
    monkeypatch.chdir(tmp_path.parent)
    rows = list(csv.reader(preds_csv.open()))
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    as_found = [[f"{tmp_path.name}/{row[0]}", *row[1:]] for row in rows[1:]]
    _write(out_dir / "p.csv", rows[0], as_found)
    reference = _invoke("cls", "--pred", preds_csv, "--labels", labels_csv, "--out", tmp_path / "a", "--json")
    result = _invoke("cls", "--pred", out_dir / "p.csv", "--labels", labels_csv, "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.output
    paired, exact = json.loads(result.stdout), json.loads(reference.stdout)
    assert paired["n_images"] == exact["n_images"] == len(rows) - 1
    assert [c["auc"] for c in paired["per_class"]] == [c["auc"] for c in exact["per_class"]]


def test_rows_pair_by_exact_text_then_same_file_then_unique_name(tmp_path: Path) -> None:
    from medseg.evaluate.matching import label_keys

    labels_csv = tmp_path / "cxr" / "labels.csv"
    preds_csv = tmp_path / "out" / "preds.csv"
    labels = ["images/a.png", "images/b.png", "images/c.png", "left/d.png", "right/d.png", "e.png"]
    preds = ["images/a.png",                    # exact text
             "../cxr/images/b.png",             # the same file, relative to preds.csv
             str(tmp_path / "cxr/images/c.png"),  # the same file, absolute
             "elsewhere/d.png",                 # ambiguous name: unpaired
             "dicom/e.dcm",                     # unique name without extension (the DICOM twin)
             "images/z.png"]                    # unlabelled
    assert label_keys(labels, labels_csv, preds, preds_csv) == [
        "images/a.png", "images/b.png", "images/c.png", None, "e.png", None]
    # a later rule never takes a label row an earlier one paired: the PNG wins, its DICOM twin is unlabelled
    assert label_keys(["images/e.png"], labels_csv, ["dicom/e.dcm", "../cxr/images/e.png"], preds_csv) == [
        None, "images/e.png"]


def test_pairing_errors_name_examples(tmp_path: Path) -> None:
    labels = _write(tmp_path / "labels.csv", ["image", "a"],
                    [["left/d.png", 1], ["right/d.png", 0], ["f.png", 1], ["g.png", 0]])
    preds = _write(tmp_path / "preds.csv", ["image", "a"],
                   [["x/d.png", 0.3], ["y/d.png", 0.6], ["f.png", 0.9], ["g.png", 0.1]])
    table = read_prediction_table(labels, "labels")
    with pytest.raises(InputError, match=r"2 image\(s\) of .*labels.csv are not in this file \(e.g. 'left/d.png', "
                                         r"'right/d.png'\).*2 row\(s\) here fit several labels.*'x/d.png' -> "):
        evaluate_classification(table, read_prediction_table(preds, "predictions"), n_resamples=0)
    twice = _write(tmp_path / "twice.csv", ["image", "a"],
                   [["x/f.png", 0.3], ["y/f.png", 0.6], ["left/d.png", 0.5], ["right/d.png", 0.5], ["g.png", 0.2]])
    labels = _write(tmp_path / "labels.csv", ["image", "a"],
                    [["left/d.png", 1], ["right/d.png", 0], ["data/f.png", 1], ["g.png", 0]])
    with pytest.raises(InputError, match=r"twice.csv: rows 'x/f.png' and 'y/f.png' both match label image "
                                         r"'data/f.png' \(the same file name\)"):
        evaluate_classification(read_prediction_table(labels, "labels"), read_prediction_table(twice, "predictions"),
                                n_resamples=0)
