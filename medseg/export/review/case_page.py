"""A case's review.html: QC flags, overlay or Grad-CAM, statistics or probabilities, outputs, timings, notes."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.export.html import escape, figure, href, is_number, number, table
from medseg.export.review.parts import (
    FLAG_HELP,
    INDEX_FILE,
    PAGE_FILE,
    badge,
    flag_colour,
    flagged,
    kind_pill,
    severity,
    status_pill,
    write_review_page,
)
from medseg.export.review.records import CASE_FILE, RUN_FILE, ReviewCase, load_case

__all__ = ["write_case_page"]

_OUTPUT_NAMES = {"overlay": "Overlay (PNG)", "gradcam": "Grad-CAM (PNG)", "nifti": "Label map (NIfTI)",
                 "dicom_seg": "DICOM SEG", "statistics_csv": "Statistics (CSV)",
                 "statistics_json": "Statistics (JSON)"}


def _case_flags(case: ReviewCase) -> list[tuple[str, str | None, str]]:
    """(code, structure or None, message): statistics.json's flags, then codes only case.json names."""
    flags = [(str(f.get("code", "")), f.get("label"), str(f.get("message", "")))
             for f in (case.stats or {}).get("flags", []) if isinstance(f, dict)]
    known = {code for code, _, _ in flags}
    flags += [(str(code), None, FLAG_HELP.get(str(code), "")) for code in case.data["flags"] if code not in known]
    return flags


def _flags_panel(case: ReviewCase) -> str:
    flags = sorted(_case_flags(case), key=lambda flag: severity(flag[0]))      # red first; stable otherwise
    if not flags:
        return "<div class='panel ok'><b>No QC flags.</b></div>"
    colours = {flag_colour(code) for code, _, _ in flags}
    colour = "red" if "red" in colours else "amber" if "amber" in colours else "info"
    items = "".join(f"<li>{badge(code)}<span class=where>{escape(_where(where))}</span>{escape(message)}</li>"
                    for code, where, message in flags)
    heading = "check before accepting" if colour != "info" else "low severity, for a glance"
    return (f"<div class='panel {colour}'><h3>QC flags ({len(flags)}): {heading}</h3>"
            f"<ul class=flaglist>{items}</ul></div>")


def _where(structure: str | None) -> str:
    """The structure a flag concerns, as text: right_lung -> right lung; None -> case."""
    return "case" if not structure else str(structure).replace("_", " ")


def _figure(case: ReviewCase) -> str:
    xray = case.kind == "xray"
    name = case.image()
    if name is None:
        wanted = case.data["outputs"].get("gradcam" if xray else "overlay")
        what = "Grad-CAM" if xray else "overlay"
        text = f"{escape(wanted)} is missing" if wanted else f"no {what} image was written (enable it in the workflow)"
        return f"<div class='panel amber'>{text}.</div>"
    caption = ("Input radiograph, then Grad-CAM per reported class (warm colours: regions that raised the score)."
               if xray else "Segmentation overlay: three axial slices, a coronal and a right-lung sagittal slice "
                            "(radiological convention: patient right on the viewer's left).")
    return figure(href(name), f"{case.case_id} {'Grad-CAM' if xray else 'overlay'}", caption)


def _stats_table(case: ReviewCase) -> str:
    rows = [r for r in (case.stats or {}).get("rows", []) if isinstance(r, dict)]
    if not rows:
        volumes = case.data["summary"].get("volumes_ml", {})
        body = [f"<tr><td class=l>{escape(name)}</td><td>{number(ml)}</td></tr>" for name, ml in volumes.items()]
        return table([("Structure", "l"), ("Volume (mL)", "r")], body) if body else "<p class=muted>None.</p>"
    body = []
    for row in rows:
        css = f"{'summary ' if row.get('label') is None else ''}{flagged(row.get('flags') or [])}".strip()
        parts = row.get("n_components")
        body.append(
            f"<tr class='{css}'><td class=l>{escape(row.get('name', ''))}</td><td>{number(row.get('volume_ml'))}</td>"
            f"<td>{number(row.get('share_percent'))}</td><td>{number(row.get('mean_hu'), 0)}</td>"
            f"<td>{number(row.get('median_hu'), 0)}</td><td>{number(row.get('pd15_hu'), 0)}</td>"
            f"<td>{number(row.get('laa950_percent'), 2)}</td><td>{'–' if parts is None else escape(parts)}</td>"
            f"<td>{number(row.get('largest_component_ml'))}</td>"
            f"<td class=l>{''.join(badge(code) for code in sorted(row.get('flags') or [], key=severity))}</td></tr>")
    head = [("Structure", "l"), ("Volume (mL)", "r"), ("Share (%)", "r"), ("Mean HU", "r"), ("Median HU", "r"),
            ("PD15 (HU)", "r"), ("LAA-950 (%)", "r"), ("Parts", "r"), ("Largest part (mL)", "r"), ("Flags", "l")]
    legend = ("<p class=muted>PD15: 15th percentile of HU. LAA-950: % of voxels below −950 HU. Parts: separate "
              "connected components. Shaded rows are sums over the structures above.</p>")
    return table(head, body) + legend


def _probability_table(case: ReviewCase) -> str:
    probabilities = case.data["summary"].get("probabilities", {})
    calls = case.data["summary"].get("calls", {})
    body = []
    for name, p in probabilities.items():
        called = bool(calls.get(name))
        width = f"{100 * p:.1f}" if is_number(p) else "0"
        body.append(f"<tr class='{'positive' if called else ''}'><td class=l>{escape(name)}</td>"
                    f"<td>{number(p, 3)}<span class=pbar><span style='width:{width}%'></span></span></td>"
                    f"<td class=l>{'positive' if called else 'negative'}</td></tr>")
    if not body:
        return "<p class=muted>No probabilities recorded.</p>"
    return table([("Finding", "l"), ("Probability", "r"), ("Call", "l")], body, "compact") + (
        "<p class=muted>Calls use the model's stored thresholds; highlighted rows are called positive.</p>")


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _outputs_list(case: ReviewCase) -> str:
    items = []
    for key, name in [*case.data["outputs"].items(), ("case_record", CASE_FILE)]:
        label = _OUTPUT_NAMES.get(key, "Case record (JSON)" if key == "case_record" else key)
        path = case.folder / name
        if path.is_file():
            items.append(f"<li><a href='{href(name)}'>{escape(label)}</a> <span class=muted>{escape(name)} · "
                         f"{_size(path.stat().st_size)}</span></li>")
        else:
            items.append(f"<li>{escape(label)} <span class=missing>{escape(name)} missing</span></li>")
    return f"<ul class=plain>{''.join(items)}</ul>"


def _timings(case: ReviewCase) -> str:
    rows = [f"<tr><td class=l>{escape(step)}</td><td>{number(seconds, 3)}</td></tr>"
            for step, seconds in case.data["timings"].items()]
    rows.append(f"<tr class=summary><td class=l>case total</td><td>{number(case.data.get('seconds'), 3)}</td></tr>")
    note = ("<p class=muted>Reading runs ahead in a background thread while the previous case computes, so it is "
            "not part of the case total.</p>") if "read" in case.data["timings"] else ""
    return table([("Step", "l"), ("Seconds", "r")], rows) + note


def _index_href(case_dir: Path) -> str:
    """Relative link to the run's index.html: the nearest parent holding run.json (default ../index.html)."""
    for parent in list(case_dir.resolve().parents)[:6]:
        if (parent / RUN_FILE).is_file():
            return href(os.path.relpath(parent / INDEX_FILE, case_dir.resolve()))
    return href(Path("..") / INDEX_FILE)


def _case_body(case: ReviewCase, title: str) -> str:
    data = case.data
    meta = (f"{kind_pill(case.kind)} {status_pill(data['status'])} · processed {escape(case.processed)} · "
            f"{number(data.get('seconds'), 2)} s")
    parts = [f"<div class=top><a href='{_index_href(case.folder)}'>← All cases</a><span>medseg review</span></div>",
             f"<h1>{escape(title)}</h1><p class=meta>{meta}</p>",
             f"<p class=meta>Source <code>{escape(data.get('source', ''))}</code></p>"]
    if data.get("reason"):
        parts.append(f"<div class='panel red'><b>Reason:</b> {escape(data['reason'])}</div>")
    parts += [_flags_panel(case), _figure(case)]
    if case.kind == "xray":
        parts += ["<h2>Findings</h2>", _probability_table(case)]
    else:
        parts += ["<h2>Volumes and densities</h2>", _stats_table(case)]
    notes = "".join(f"<li>{escape(note)}</li>" for note in data["notes"]) or "<li class=muted>none</li>"
    parts.append(f"<div class=grid><div><h2>Outputs</h2>{_outputs_list(case)}<h2>Notes</h2>"
                 f"<ul class=plain>{notes}</ul></div><div><h2>Timings</h2>{_timings(case)}</div></div>")
    return "".join(parts)


def write_case(case: ReviewCase, title: str | None = None) -> Path:
    """`case.folder/review.html` for an already loaded case."""
    title = title or f"Case {case.case_id}"
    return write_review_page(case.folder / PAGE_FILE, title, _case_body(case, title))


def write_case_page(case_dir: Path, title: str | None = None) -> Path:
    """`case_dir/review.html` from its case.json (and statistics.json when present)."""
    return write_case(load_case(Path(case_dir)), title)
