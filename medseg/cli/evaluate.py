"""`medseg evaluate`: score predictions against references (thin layers over `medseg.evaluate_segmentation` and
`medseg.evaluate_classification`).

Register with `main.add_command(evaluate)`; the group also works on its own (errors -> one line, exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from medseg.cli.errors import ErrorReportingGroup
from medseg.cli.options import table_console

__all__ = ["evaluate"]


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
def evaluate() -> None:
    """Score model outputs against reference annotations."""


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _mean_sd(stats: dict[str, Any], digits: int) -> str:
    if not stats["n"]:
        return "-"
    sd = "" if math.isnan(stats["std"]) else f" ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{sd}"


_STATUS_NOTES = {"ok": "", "absent": "absent in both", "missing_in_pred": "missing in prediction",
                 "missing_in_ref": "not in reference"}


def _print_case(scores: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("label", "Dice", "IoU", "HD95 mm", "ASSD mm", "ΔV %", "note"):
        table.add_column(column, justify="left" if column in ("label", "note") else "right")
    for s in scores.per_label:
        table.add_row(s.name, _number(s.dice, 4), _number(s.iou, 4), _number(s.hd95_mm, 2), _number(s.assd_mm, 2),
                      _number(s.volume_diff_percent, 1), _STATUS_NOTES[s.status])
    table.add_section()
    table.add_row("mean", _number(scores.mean_dice, 4), _number(scores.mean_iou, 4),
                  _number(scores.mean_hd95_mm, 2), _number(scores.mean_assd_mm, 2), "", "")
    table.caption = "mean: over the labels present in the reference"
    table_console().print(table)


def _print_folder(result: Any) -> None:
    from rich.table import Table

    console = table_console()
    console.print(f"{len(result)} case(s): {result.pred_dir} vs {result.ref_dir}", markup=False, highlight=False)
    cases = Table(title_justify="left")
    for column in ("case", "mean Dice", "worst label"):
        cases.add_column(column, justify="right" if column == "mean Dice" else "left")
    for case, scores in result.cases:
        scored = [s for s in scores.per_label if s.in_reference]
        worst = min(scored, key=lambda s: s.dice, default=None)
        cases.add_row(case, _number(scores.mean_dice, 4),
                      f"{worst.name} {_number(worst.dice, 4)}" if worst else "-")
    console.print(cases)

    summary = Table(title="per label: mean ± sd over the cases whose reference holds the label",
                    title_justify="left")
    for column in ("label", "n", "Dice", "Dice min", "HD95 mm", "ASSD mm", "ΔV %", "missing"):
        summary.add_column(column, justify="left" if column in ("label", "missing") else "right")
    for name, stats in result.summary["labels"].items():
        missing = [f"{stats[key]} {where}" for key, where in (("n_missing_pred", "pred"), ("n_missing_ref", "ref"))
                   if stats[key]]
        summary.add_row(name, str(stats["n"]), _mean_sd(stats["dice"], 3), _number(stats["dice"]["min"], 3),
                        _mean_sd(stats["hd95_mm"], 2), _mean_sd(stats["assd_mm"], 2),
                        _mean_sd(stats["volume_diff_percent"], 1), ", ".join(missing) or "-")
    overall = result.summary["mean_dice"]
    summary.add_section()
    summary.add_row("mean", str(overall["n"]), _mean_sd(overall, 3), _number(overall["min"], 3), "", "", "", "")
    console.print(summary)


@evaluate.command("seg")
@click.option("--pred", "pred", type=click.Path(path_type=Path), required=True,
              help="Predicted label map, or a folder of them.")
@click.option("--ref", "ref", type=click.Path(path_type=Path), required=True,
              help="Reference label map, or a folder of them (same kind as --pred).")
@click.option("--labels", type=click.Choice(["lobes", "lungs", "all"]), default="lobes", show_default=True,
              help="Label set: a registered label map (lobes, lungs: configs/labels/), or all (every value present).")
@click.option("--ref-name", help="Label file inside reference case folders (e.g. lobes.nii.gz).")
@click.option("--pred-name", help="Label file inside prediction case folders [default: --ref-name if present, "
              "else the folder's only volume file].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only (stdout).")
@click.option("--out", type=click.Path(path_type=Path), help="Write a CSV: one row per case and label.")
def seg(pred: Path, ref: Path, labels: str, ref_name: str | None, pred_name: str | None, as_json: bool,
        out: Path | None) -> None:
    """Dice, IoU, HD95, ASSD (mm) and volume differences per label.

    --pred and --ref are two label files on the same grid, or two folders whose cases pair by name:
    CASE.nii.gz, or a CASE/ subfolder holding --ref-name/--pred-name (or a single volume file).
    Unpaired cases are listed as warnings. A label absent from both maps is skipped; a label in only one
    scores Dice 0 and infinite distances (JSON null). Means run over the labels present in the reference.
    """
    from medseg.api.evaluate import evaluate_segmentation
    from medseg.evaluate.segmentation import case_name, write_scores_csv
    from medseg.jsonable import dumps_json

    result = evaluate_segmentation(pred, ref, labels=labels, ref_name=ref_name,  # type: ignore[arg-type]
                                   pred_name=pred_name, progress=True)
    cases = result.cases if pred.is_dir() else [(case_name(pred) or pred.name, result)]
    if out is not None:
        write_scores_csv(cases, out)
    if as_json:
        click.echo(dumps_json(result.to_dict()))
    elif pred.is_dir():
        _print_folder(result)
    else:
        _print_case(result, f"{pred} vs {ref}")
    if out is not None and not as_json:
        click.echo(f"wrote {out}")


def _check_operating_point(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from medseg.errors import ConfigError
    from medseg.evaluate.classification import parse_operating_point

    try:
        parse_operating_point(value)
    except ConfigError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def _estimate(value: float, low: float, high: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "-"
    ci = "" if math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{value:.{digits}f}{ci}"


def _print_classification(report: Any, paths: dict[str, Path]) -> None:
    from rich.table import Table

    spec = f"{100 * report.specificity_target:g}"
    table = Table(title=f"{report.predictions_path} vs {report.labels_path}: {report.n_images} images, "
                        f"task {report.task}, operating point {report.operating_point}", title_justify="left")
    table.add_column("class", justify="left", min_width=8)
    for column in ("pos", "AUC [95% CI]", "thr", "sens [CI]", "spec [CI]", f"sens@{spec}%spec [CI]"):
        table.add_column(column, justify="right", no_wrap=True)
    for c in report.per_class:
        op = c.operating_point
        sens, specificity = op.metrics["sensitivity"], op.metrics["specificity"]
        table.add_row(c.name, f"{c.positives}/{c.n}", _estimate(c.auc.value, c.auc.low, c.auc.high),
                      _number(op.threshold, 3), _estimate(sens.value, sens.low, sens.high, 2),
                      _estimate(specificity.value, specificity.low, specificity.high, 2),
                      _estimate(c.sensitivity_at_specificity.value, c.sensitivity_at_specificity.low,
                                c.sensitivity_at_specificity.high, 2))
    table.add_section()
    for kind in ("macro", "micro"):
        auc = report.summary[f"{kind}_auc"]
        table.add_row(kind, "", _estimate(auc.value, auc.low, auc.high), "", "", "", "")
    if report.multiclass is not None:
        accuracy = report.multiclass["accuracy"]
        table.caption = f"accuracy (argmax) {_estimate(accuracy.value, accuracy.low, accuracy.high)}"
    console = table_console()
    console.print(table)
    if report.comparison is not None:
        compare = Table(title=f"DeLong: A {report.predictions_path} vs B {report.compare_path}", title_justify="left")
        for column in ("class", "AUC A", "AUC B", "A - B", "z", "p"):
            compare.add_column(column, justify="left" if column == "class" else "right")
        for row in report.comparison:
            compare.add_row(row.name, _number(row.auc_a, 3), _number(row.auc_b, 3), _number(row.difference, 3),
                            _number(row.z, 2), "<0.001" if row.p_value < 0.001 else _number(row.p_value, 3))
        console.print(compare)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    for path in paths.values():
        click.echo(f"wrote {path}")


@evaluate.command("cls")
@click.option("--pred", "pred", type=click.Path(path_type=Path), required=True,
              help="Predictions CSV: `image`, one probability column per class, optional `<class>_call` columns.")
@click.option("--labels", "labels", type=click.Path(path_type=Path), required=True,
              help="Labels CSV: `image`, one 0/1 column per class (these columns are the evaluated classes).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder: report.json, per_class.csv, operating_points.csv, PNG figures, report.html.")
@click.option("--compare", "compare", type=click.Path(path_type=Path),
              help="Second predictions CSV on the same images: paired DeLong test per class.")
@click.option("--operating-point", default="calls", show_default=True, callback=_check_operating_point,
              help="calls (the `_call` columns, else youden), youden, sensitivity:T, specificity:T, or a fixed "
                   "threshold such as 0.5. All but calls and a fixed threshold are chosen on the evaluated data.")
@click.option("--resamples", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Bootstrap resamples for the intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--task", type=click.Choice(["auto", "multilabel", "multiclass"]), default="auto", show_default=True,
              help="multiclass: one-hot labels, softmax rows (adds argmax accuracy and a C x C confusion matrix).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the table.")
def cls(pred: Path, labels: Path, out: Path, compare: Path | None, operating_point: str, resamples: int, seed: int,
        task: str, as_json: bool) -> None:
    """AUC (bootstrap and DeLong CIs), PR-AUC, operating-point metrics and calibration per class.

    Rows are paired by the `image` column: the same text, else the same file (each path relative to its CSV's
    folder), else a unique file name. The classes are the label file's columns. Intervals are 95 %:
    stratified percentile bootstrap per class, Wilson for proportions.
    """
    from medseg.api.evaluate import ClassificationOptions, evaluate_classification
    from medseg.evaluate.classification import write_report

    report = evaluate_classification(pred, labels, compare=compare, progress=not as_json,
                                     options=ClassificationOptions(operating_point, resamples, seed,
                                                                   task))  # type: ignore[arg-type]
    paths = write_report(report, out)
    if as_json:
        click.echo(paths["report.json"].read_text(encoding="utf-8"), nl=False)
    else:
        _print_classification(report, paths)
