"""Figures (ROC, PR, calibration, confusion, comparison) and a self-contained HTML page for a classification report.

matplotlib is imported lazily with the Agg backend; PNGs are written atomically and embedded in the HTML as
base64 data URIs, so report.html needs no other file and no network.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.export import html
from medseg.export.html import MISSING, escape, interval, is_number, number
from medseg.io.atomic import write_atomically

if TYPE_CHECKING:
    from medseg.evaluate.classification import ClassificationReport, ClassResult

__all__ = ["write_figures", "write_html"]

DPI = 110
PANEL_INCHES = (3.5, 3.3)
MAX_COLUMNS = 4
COLOURS = ("#1f5fa8", "#d2691e")
"""Curve colours: the evaluated predictions, then the --compare predictions."""
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.labelsize": 9,
         "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
         "axes.spines.right": False}


# ------------------------------------------------------------------------------------------------ formatting


def _num(value: float | None, digits: int = 3) -> str:
    """The report's numbers: 3 decimals unless told, `medseg.export.html.number`'s policy for NaN/inf/None."""
    return number(value, digits)


def _ci(low: float, high: float, digits: int = 3) -> str:
    return interval(low, high, digits)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g} %"


# ------------------------------------------------------------------------------------------------ figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt: Any, count: int, suptitle: str) -> tuple[Any, list[Any]]:
    columns = min(MAX_COLUMNS, max(count, 1))
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + 0.4),
                                squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for extra in flat[count:]:
        extra.set_visible(False)
    figure.suptitle(suptitle, fontsize=12, fontweight="bold")
    return figure, flat[:count]


def _save(figure: Any, path: Path) -> Path:
    plt = _pyplot()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=DPI, format="png"))
    plt.close(figure)
    return path


def _undefined(ax: Any, c: ClassResult) -> None:
    ax.text(0.5, 0.5, "\n".join(c.notes[:1]) or "undefined", ha="center", va="center", transform=ax.transAxes,
            color="#666")


def _square(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25)


def _title(c: ClassResult) -> str:
    return f"{c.name}  ({c.positives}/{c.n} positive)"


def _roc_figure(report: ClassificationReport) -> Any:
    plt = _pyplot()
    figure, axes = _grid(plt, len(report.per_class), "ROC curves")
    fpr_line = 1 - report.specificity_target
    for ax, c in zip(axes, report.per_class, strict=True):
        _square(ax, "1 − specificity", "sensitivity")
        ax.set_title(_title(c))
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999")
        if not c.roc_curve["fpr"]:
            _undefined(ax, c)
            continue
        ax.plot(c.roc_curve["fpr"], c.roc_curve["tpr"], lw=1.8, color=COLOURS[0],
                label=f"AUC {_num(c.auc.value)} {_ci(c.auc.low, c.auc.high)}")
        ax.axvline(fpr_line, ls=":", lw=1, color="#888", label=f"{_pct(report.specificity_target)} specificity")
        op = c.operating_point
        sens, spec = op.metrics["sensitivity"].value, op.metrics["specificity"].value
        if math.isfinite(sens) and math.isfinite(spec):
            ax.plot(1 - spec, sens, "o", ms=7, color="#c0392b", mec="white", mew=1.2, zorder=5,
                    label=f"operating point ({op.rule})")
        ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    return figure


def _pr_figure(report: ClassificationReport) -> Any:
    plt = _pyplot()
    figure, axes = _grid(plt, len(report.per_class), "Precision-recall curves")
    for ax, c in zip(axes, report.per_class, strict=True):
        _square(ax, "recall (sensitivity)", "precision (PPV)")
        ax.set_title(_title(c))
        ax.axhline(c.prevalence, ls="--", lw=0.8, color="#999", label=f"prevalence {c.prevalence:.3f}")
        if not c.pr_curve["recall"]:
            _undefined(ax, c)
            continue
        ax.step(c.pr_curve["recall"], c.pr_curve["precision"], where="post", lw=1.8, color=COLOURS[0],
                label=f"AP {_num(c.average_precision.value)} "
                      f"{_ci(c.average_precision.low, c.average_precision.high)}")
        op = c.operating_point
        sens, ppv = op.metrics["sensitivity"].value, op.metrics["ppv"].value
        if math.isfinite(sens) and math.isfinite(ppv):
            ax.plot(sens, ppv, "o", ms=7, color="#c0392b", mec="white", mew=1.2, zorder=5,
                    label=f"operating point ({op.rule})")
        ax.legend(loc="best", frameon=True, framealpha=0.9)
    return figure


def _calibration_figure(report: ClassificationReport) -> Any:
    plt = _pyplot()
    figure, axes = _grid(plt, len(report.per_class), "Reliability diagrams (grey bars: cases per bin, right axis)")
    for ax, c in zip(axes, report.per_class, strict=True):
        bins = c.calibration
        counts = ax.twinx()
        centres = (bins.edges[:-1] + bins.edges[1:]) / 2
        width = float(np.diff(bins.edges).mean())
        counts.bar(centres, bins.count, width=width * 0.9, color="#dfe3e9", zorder=0)
        counts.set_ylim(0, max(int(bins.count.max()), 1) * 2.5)  # bars in the lower part, under the curve
        counts.set_ylabel("cases", color="#888")
        counts.tick_params(axis="y", colors="#888")
        counts.spines["right"].set_visible(True)
        counts.spines["right"].set_color("#bbb")
        counts.spines["top"].set_visible(False)
        ax.set_zorder(counts.get_zorder() + 1)
        ax.patch.set_visible(False)
        _square(ax, "mean predicted probability", "observed frequency")
        ax.set_aspect("auto")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999")
        filled = bins.count > 0
        ax.plot(bins.mean_predicted[filled], bins.observed[filled], "o-", ms=4, lw=1.4, color=COLOURS[0])
        ax.set_title(f"{c.name}  (ECE {_num(c.ece)})")
    return figure


def _matrix(ax: Any, matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str) -> None:
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=10 if matrix.shape[0] <= 4 else 8,
                color="white" if shares[i, j] > 0.6 else "#222")
    ax.set_xticks(range(len(columns)), columns, rotation=30 if len(columns) > 2 else 0, ha="right"
                  if len(columns) > 2 else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("prediction")
    ax.set_ylabel("label")
    ax.set_title(title)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _confusion_figure(report: ClassificationReport) -> Any:
    plt = _pyplot()
    if report.multiclass is not None:
        classes = report.multiclass["classes"]
        size = max(4.0, 0.55 * len(classes) + 2.5)
        figure, ax = plt.subplots(figsize=(size, size), layout="constrained")
        _matrix(ax, np.asarray(report.multiclass["confusion_matrix"]), classes, classes,
                f"Confusion matrix (argmax), accuracy {_num(report.multiclass['accuracy'].value)}")
        return figure
    figure, axes = _grid(plt, len(report.per_class), "Confusion at the operating point (colour: share of the row)")
    for ax, c in zip(axes, report.per_class, strict=True):
        k = c.operating_point.confusion
        matrix = np.array([[k["tp"], k["fn"]], [k["fp"], k["tn"]]])
        _matrix(ax, matrix, ["positive", "negative"], ["positive", "negative"],
                f"{c.name}  (t = {_num(c.operating_point.threshold)})")
    return figure


def _compare_figure(report: ClassificationReport) -> Any:
    plt = _pyplot()
    assert report.comparison is not None
    figure, axes = _grid(plt, len(report.per_class), "ROC comparison (paired DeLong test)")
    name_a, name_b = Path(report.predictions_path).name, Path(report.compare_path or "").name
    for ax, c, row in zip(axes, report.per_class, report.comparison, strict=True):
        _square(ax, "1 − specificity", "sensitivity")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999")
        p = MISSING if not is_number(row.p_value) else ("< 0.001" if row.p_value < 0.001 else f"{row.p_value:.3f}")
        ax.set_title(f"{c.name}  (p {p})" if p.startswith("<") else f"{c.name}  (p = {p})")
        if not c.roc_curve["fpr"]:
            _undefined(ax, c)
            continue
        ax.plot(c.roc_curve["fpr"], c.roc_curve["tpr"], lw=1.8, color=COLOURS[0],
                label=f"A {name_a}: {_num(row.auc_a)}")
        ax.plot(row.roc_curve_b["fpr"], row.roc_curve_b["tpr"], lw=1.8, color=COLOURS[1],
                label=f"B {name_b}: {_num(row.auc_b)}")
        ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    return figure


def write_figures(report: ClassificationReport, out_dir: str | Path) -> dict[str, Path]:
    """roc.png, pr.png, calibration.png, confusion.png and, with a comparison, roc_compare.png."""
    plt = _pyplot()
    out = Path(out_dir)
    makers: dict[str, Callable[[ClassificationReport], Any]] = {
        "roc.png": _roc_figure, "pr.png": _pr_figure, "calibration.png": _calibration_figure,
        "confusion.png": _confusion_figure}
    if report.comparison is not None:
        makers["roc_compare.png"] = _compare_figure
    paths = {}
    with plt.rc_context(STYLE):
        for name, make in makers.items():
            paths[name] = _save(make(report), out / name)
    return paths


# ------------------------------------------------------------------------------------------------ HTML

CSS = """
.card { padding: 10px 16px; min-width: 170px; }
.notes { color: #4a5568; margin: 8px 0; padding-left: 20px; }
table.report th:first-child, table.report td:first-child { text-align: left; }
table.report th { line-height: 1.25; vertical-align: bottom; font-weight: bold; }
table.report td { padding: 6px 9px; vertical-align: top; }
table.report tbody tr:nth-child(even) { background: #f8f9fb; }
table.report tbody tr.summary { background: #eef4fb; }
td .ci { display: block; color: #6b7686; font-size: 11.5px; font-weight: normal; }
td .src { display: block; color: #6b7686; font-size: 11.5px; }
.legend { color: #5a6575; font-size: 12.5px; margin: 6px 2px; }
.footnotes { color: #8a5a00; font-size: 13px; margin: 6px 0; }
.howto { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 6px 18px; }
.howto li { margin: 6px 0; }
"""
"""The report's own styles on top of `medseg.export.html.BASE_CSS`."""


def _cell(value: float, low: float = math.nan, high: float = math.nan, digits: int = 3) -> str:
    ci = _ci(low, high, digits)
    return f"<td>{_num(value, digits)}{f'<span class=ci>{ci}</span>' if ci else ''}</td>"


def _card(label: str, estimate: Any) -> str:
    return html.card(label, _num(estimate.value), note=escape(_ci(estimate.low, estimate.high)))


def _report_table(head: list[str], rows: list[str]) -> str:
    """A report table: first column left-aligned, the others right; striped rows."""
    return html.table([(label, "l" if n == 0 else "r") for n, label in enumerate(head)], rows, table_css="report")


def _class_table(report: ClassificationReport) -> str:
    spec, sens = _pct(report.specificity_target), _pct(report.sensitivity_target)
    head = ["Class", "Positives<br>prevalence", "AUC<br>bootstrap CI", "AP (PR-AUC)", "Threshold<br>source",
            "Sensitivity", "Specificity", "PPV", "NPV", f"Sens @<br>{spec} spec", f"Spec @<br>{sens} sens", "ECE"]
    rows, footnotes = [], []
    for c in report.per_class:
        op = c.operating_point
        m = op.metrics
        source = "calls" if op.rule == "calls" else op.rule
        source += " ·&nbsp;on&nbsp;data" if op.chosen_on_data else ""
        mark = ""
        if c.notes:
            footnotes.append(f"<li><b>{escape(c.name)}</b>: {escape('; '.join(c.notes))}</li>")
            mark = f"<sup>{len(footnotes)}</sup>"
        delong = _ci(c.auc_delong.low, c.auc_delong.high)
        auc = (f"<td>{_num(c.auc.value)}<span class=ci>{_ci(c.auc.low, c.auc.high)}</span>"
               f"<span class=ci>DeLong {delong}</span></td>") if delong else _cell(c.auc.value, c.auc.low, c.auc.high)
        cells = [f"<td><b>{escape(c.name)}</b>{mark}</td>",
                 f"<td>{c.positives} / {c.n}<span class=ci>{100 * c.prevalence:.1f} %</span></td>", auc,
                 _cell(c.average_precision.value, c.average_precision.low, c.average_precision.high),
                 f"<td>{_num(op.threshold)}<span class=src>{source}</span></td>",
                 *(_cell(m[k].value, m[k].low, m[k].high) for k in ("sensitivity", "specificity", "ppv", "npv")),
                 _cell(c.sensitivity_at_specificity.value, c.sensitivity_at_specificity.low,
                       c.sensitivity_at_specificity.high),
                 _cell(c.specificity_at_sensitivity.value, c.specificity_at_sensitivity.low,
                       c.specificity_at_sensitivity.high),
                 f"<td>{_num(c.ece)}</td>"]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    for kind in ("macro", "micro"):
        auc, ap = report.summary[f"{kind}_auc"], report.summary[f"{kind}_average_precision"]
        rows.append(f"<tr class=summary><td>{kind}</td><td></td>{_cell(auc.value, auc.low, auc.high)}"
                    f"{_cell(ap.value, ap.low, ap.high)}{'<td></td>' * 8}</tr>")
    legend = ("<p class=legend>Each cell: value, then its 95 % interval; AUC shows the bootstrap interval, then the "
              "DeLong interval. Threshold: positive means score ≥ threshold; for calls it is the lowest score "
              "called positive.</p>").replace("95 %", f"{100 * report.confidence:g} %")
    notes = f"<ol class=footnotes>{''.join(footnotes)}</ol>" if footnotes else ""
    return _report_table(head, rows) + legend + notes


def _comparison_table(report: ClassificationReport) -> str:
    assert report.comparison is not None
    rows = []
    for row in report.comparison:
        p = MISSING if not is_number(row.p_value) else ("&lt; 0.001" if row.p_value < 0.001 else f"{row.p_value:.3f}")
        rows.append(f"<tr><td><b>{escape(row.name)}</b></td><td>{_num(row.auc_a)}</td><td>{_num(row.auc_b)}</td>"
                    f"<td>{f'{row.difference:+.3f}' if is_number(row.difference) else ''}</td>"
                    f"<td>{_num(row.z, 2)}</td><td>{p}</td></tr>")
    return _report_table(["Class", "AUC A (--pred)", "AUC B (--compare)", "A − B", "z", "p (two-sided)"], rows)


_CAPTIONS = {
    "roc.png": "ROC curve per class with the chance diagonal; the dot is the operating point, the dotted line "
               "marks {spec} specificity.",
    "pr.png": "Precision-recall curve per class; the dashed line is the prevalence (a random classifier).",
    "calibration.png": "Reliability diagrams: mean predicted probability vs observed frequency per equal-width "
                       "bin (15 bins); grey bars count the cases per bin.",
    "confusion.png": "Confusion at the operating point (rows: label, columns: prediction).",
    "roc_compare.png": "ROC curves of both prediction files; p from the paired DeLong test.",
}


def _how_to_read(report: ClassificationReport) -> str:
    c = f"{100 * report.confidence:g} %"
    if report.n_resamples:
        bootstrap = (f"Bootstrap intervals are {c} percentile intervals from {report.n_resamples} resamples "
                     f"(seed {report.seed}). Per class the bootstrap is <b>stratified</b>: positives and negatives "
                     "are resampled separately with replacement, keeping their counts. Macro and micro intervals "
                     "resample images jointly (all classes together, not stratified).")
    else:
        bootstrap = "No bootstrap was run (0 resamples): bootstrap intervals are omitted."
    if report.operating_point == "calls":
        source = ("Decisions come from the predictions' <code>_call</code> columns (the model's stored thresholds); "
                  "the threshold shown is the lowest score called positive.")
    else:
        source = f"Decisions use: {escape(report.operating_point_source)}; positive means score ≥ threshold."
    if report.thresholds_chosen_on_data:
        source += (" <b>These thresholds were chosen on the evaluated data</b>, so sensitivity, specificity, "
                   "PPV and NPV are optimistic; fix the threshold on separate data for an unbiased estimate.")
    items = [
        bootstrap,
        "The DeLong interval is AUC ± z·SE with the DeLong (1988) variance, clipped to [0, 1].",
        f"Sensitivity, specificity, PPV, NPV and accuracy are proportions with {c} Wilson score intervals.",
        source,
        f"Sens @ {_pct(report.specificity_target)} spec is the best sensitivity among thresholds whose specificity "
        f"reaches {_pct(report.specificity_target)} (read off the ROC curve, no interpolation); likewise Spec @ "
        f"{_pct(report.sensitivity_target)} sens.",
        "AP is the average precision (area under the step-wise precision-recall curve); compare it to the "
        "prevalence, which is its value for a random classifier. ECE is the expected calibration error over 15 "
        "equal-width bins.",
        "Macro = mean over the classes with a defined AUC; micro = all (image, class) cells pooled.",
    ]
    if report.comparison is not None:
        items.append("The comparison uses the paired DeLong test on the same images; p-values are per class and "
                     "not corrected for multiple comparisons.")
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def write_html(report: ClassificationReport, path: str | Path, figures: dict[str, Path]) -> Path:
    """A self-contained report.html (figures embedded as base64 PNG)."""
    pred, labels = Path(report.predictions_path).name, Path(report.labels_path).name
    title = f"Classification report: {pred} vs {labels}"
    meta = [f"Predictions <code>{escape(report.predictions_path)}</code> · "
            f"labels <code>{escape(report.labels_path)}</code>"]
    if report.compare_path:
        meta.append(f"Compared with <code>{escape(report.compare_path)}</code>")
    meta.append(f"{report.n_images} images · {len(report.classes)} classes · task {escape(report.task)} · "
                f"operating point <b>{escape(report.operating_point)}</b> · "
                f"created {escape(report.created.replace('T', ' '))}")
    cards = [_card("macro AUC", report.summary["macro_auc"]), _card("micro AUC", report.summary["micro_auc"]),
             _card("macro AP", report.summary["macro_average_precision"]),
             _card("micro AP", report.summary["micro_average_precision"])]
    if report.multiclass is not None:
        cards.append(_card("accuracy (argmax)", report.multiclass["accuracy"]))
    body = [f"<h1>{escape(title)}</h1>", *(f"<p class=meta>{line}</p>" for line in meta),
            f"<div class=cards>{''.join(cards)}</div>"]
    if report.thresholds_chosen_on_data:
        body.append("<div class='panel amber'><b>Optimistic operating point.</b> Thresholds were chosen on the "
                    f"evaluated data ({escape(report.operating_point_source)}): the sensitivity, specificity, PPV "
                    "and NPV below overstate what the same thresholds would reach on new data.</div>")
    notes = [n for n in report.notes if not n.startswith("thresholds were chosen")]
    if notes:
        body.append("<ul class=notes>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    body += ["<h2>Per class</h2>", _class_table(report)]
    if report.comparison is not None:
        body += [f"<h2>Comparison: A = {escape(pred)}, B = {escape(Path(report.compare_path or '').name)}</h2>",
                 _comparison_table(report)]
    body.append("<h2>Figures</h2>")
    for name, png in figures.items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        caption = _CAPTIONS.get(name, "").format(spec=_pct(report.specificity_target))
        body.append(html.figure(f"data:image/png;base64,{data}", name, caption))
    body += ["<h2>How to read this report</h2>", f"<div class=howto>{_how_to_read(report)}</div>"]
    return html.write_page(path, html.page(title, "".join(body), css=CSS))
