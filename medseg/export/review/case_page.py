"""Review pages for a `medseg run` output folder, and the review sheet radiologists fill in.

`write_review_package(out)` writes, for every finished case folder, `review.html` (QC flags, overlay or
Grad-CAM, statistics or probabilities, outputs, timings, notes), then `review.csv` (one row per case and
structure: accept / reject) and `index.html` (run counts, failures with their reasons, a sortable table of the
cases). `summarize_review` reads a filled sheet back: acceptance rates with Wilson intervals and, with several
reviewers, Cohen's kappa per pair.

The pages are static: inline CSS, a few lines of inline JS (header sorting; an image-load self check that sets
`data-images-loaded` / `data-images-total` on <body> at window load), relative links only, no network.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medseg.errors import InputError
from medseg.evaluate.roc import wilson_interval
from medseg.io.atomic import write_atomically

__all__ = [
    "REVIEW_COLUMNS",
    "WHOLE_CASE",
    "Acceptance",
    "Agreement",
    "ReviewSummary",
    "summarize_review",
    "write_case_page",
    "write_index",
    "write_review_csv",
    "write_review_package",
]

log = logging.getLogger(__name__)

CASE_FILE = "case.json"
RUN_FILE = "run.json"
STATS_FILE = "statistics.json"
PAGE_FILE = "review.html"
INDEX_FILE = "index.html"
SHEET_FILE = "review.csv"
NEW_SHEET_FILE = "review.new.csv"
REVIEW_COLUMNS: tuple[str, ...] = ("case_id", "structure", "model_value", "flags", "decision", "comment", "reviewer")
WHOLE_CASE = "whole_case"
_REQUIRED = ("case_id", "structure", "decision")
_ACCEPT = frozenset({"accept", "a", "yes"})
_REJECT = frozenset({"reject", "r", "no"})
EAGER_THUMBNAILS = 40
"""Index thumbnails after this many load lazily (as they scroll into view)."""

_RED_FLAGS = frozenset({"empty_mask", "not_hu", "missing_lobe", "unexpected_label"})
FLAG_HELP: dict[str, str] = {
    "missing_lobe": "a structure of the label map has no voxels",
    "volume_out_of_range": "a volume or share is outside the plausible range",
    "touches_fov_edge": "the lung touches the edge of the field of view: partial coverage",
    "fragmented": "a structure is split into separate parts",
    "non_finite_voxels": "NaN/inf voxels in the image were replaced by air: volumes and densities are unreliable",
    "empty_mask": "no lung was found",
    "not_hu": "the image is not CT in Hounsfield units",
    "unexpected_label": "a label outside the label map",
}
_OUTPUT_NAMES = {"overlay": "Overlay (PNG)", "gradcam": "Grad-CAM (PNG)", "nifti": "Label map (NIfTI)",
                 "dicom_seg": "DICOM SEG", "statistics_csv": "Statistics (CSV)",
                 "statistics_json": "Statistics (JSON)"}
_STATUS = {"done": ("done", "ok"), "skipped": ("done earlier", "muted"), "failed": ("failed", "red"),
           "input_problem": ("not a case", "amber")}

# ------------------------------------------------------------------------------------------------ loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path) from None
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, found {type(data).__name__}", path)
    return data


@dataclass
class _Case:
    """A finished case folder: its case.json, statistics.json (if any) and when it was written."""

    folder: Path
    data: dict[str, Any]
    stats: dict[str, Any] | None
    processed: str

    @property
    def case_id(self) -> str:
        return str(self.data["case_id"])

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    def image(self) -> str | None:
        """The overlay / Grad-CAM file name when it exists."""
        name = self.data["outputs"].get("gradcam" if self.kind == "xray" else "overlay")
        return name if name and (self.folder / name).is_file() else None


_CASE_DEFAULTS: dict[str, type] = {"outputs": dict, "timings": dict, "summary": dict, "flags": list, "notes": list}


def _load_case(case_dir: Path) -> _Case:
    path = case_dir / CASE_FILE
    if not path.is_file():
        raise InputError(f"no {CASE_FILE}: not a finished medseg case folder", case_dir)
    data = _read_json(path)
    missing = [key for key in ("case_id", "kind", "status") if not isinstance(data.get(key), str)]
    if missing:
        raise InputError(f"{', '.join(missing)} missing (not a medseg case record)", path)
    for key, kind in _CASE_DEFAULTS.items():
        value = data.setdefault(key, kind())
        if not isinstance(value, kind):
            raise InputError(f"{key} must be a JSON {'object' if kind is dict else 'list'}", path)
    stats_name = data["outputs"].get("statistics_json", STATS_FILE)
    stats = _read_json(case_dir / stats_name) if (case_dir / stats_name).is_file() else None
    stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _Case(case_dir, data, stats, stamp)


def _read_run(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"no {RUN_FILE}: not the output folder of `medseg run`", out_dir)
    record = _read_json(path)
    if not isinstance(record.get("cases", []), list):
        raise InputError("cases must be a list", path)
    return record


def _case_folders(out_dir: Path) -> list[Path]:
    """Folders under `out_dir` holding a case.json with status done (hidden work folders left out)."""
    found = []
    for path in sorted(out_dir.rglob(CASE_FILE)):
        parts = path.parent.relative_to(out_dir).parts
        if parts and not any(part.startswith(".") for part in parts):
            found.append(path.parent)
    return found


def _finished_cases(out_dir: Path, record: dict[str, Any] | None) -> list[_Case]:
    """Finished cases, in run.json order first, then any other case folders by path."""
    cases = [case for case in map(_load_case, _case_folders(out_dir)) if case.data["status"] == "done"]
    order = {entry.get("case_id"): n for n, entry in enumerate((record or {}).get("cases", []))
             if isinstance(entry, dict)}
    return sorted(cases, key=lambda case: order.get(case.case_id, len(order)))


# ------------------------------------------------------------------------------------------------ HTML helpers

CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2430;
       margin: 0; background: #f3f4f6; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 28px 48px; }
a { color: #1f4e79; }
h1 { font-size: 24px; margin: 6px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid #d7dbe1; padding-bottom: 4px; }
code { background: #e7eaee; padding: 1px 5px; border-radius: 3px; font-size: 12.5px; word-break: break-all; }
.top { font-size: 13px; color: #5a6575; display: flex; justify-content: space-between; }
.meta { color: #4a5568; margin: 3px 0; }
.muted { color: #6b7686; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0 6px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 8px 16px; min-width: 120px; }
.card .label { color: #5a6575; font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card.red .value { color: #a32121; } .card.amber .value { color: #8a5a00; }
.pill, .flag { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600;
               line-height: 19px; white-space: nowrap; border: 1px solid transparent; margin: 1px 2px 1px 0; }
.pill.ok { background: #e5f1e9; color: #1e6b3a; } .pill.muted { background: #eceef1; color: #4a5568; }
.pill.kind { background: #e6edf5; color: #1f4e79; }
.pill.red, .flag.red { background: #fde8e8; color: #8b1a1a; border-color: #eab0b0; }
.pill.amber, .flag.amber { background: #fff3d1; color: #7a5300; border-color: #ebcd7d; }
.panel { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 16px; margin: 14px 0; }
.panel.amber { background: #fffaeb; border-left: 5px solid #e0a800; }
.panel.red { background: #fff5f5; border-left: 5px solid #d64545; }
.panel.ok { border-left: 5px solid #3c8d5a; color: #1e6b3a; }
.panel h3 { margin: 0 0 6px; font-size: 14px; }
.flaglist { list-style: none; margin: 0; padding: 0; }
.flaglist li { margin: 5px 0; }
.flaglist .where { font-weight: 600; margin-right: 4px; }
.tablewrap { overflow-x: auto; background: #fff; border: 1px solid #dde1e7; border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
.tablewrap.compact { display: inline-block; min-width: 480px; max-width: 100%; }
th, td { padding: 6px 10px; text-align: right; vertical-align: middle; white-space: nowrap; }
th { background: #eef0f3; font-size: 12px; color: #333d4b; font-weight: 600; }
th.l, td.l { text-align: left; }
td.wrap { white-space: normal; min-width: 240px; }
tbody tr { border-top: 1px solid #eceef1; }
tbody tr.summary { background: #f4f6f9; font-weight: 600; }
tbody tr.flagged td:first-child { box-shadow: inset 4px 0 #e0a800; }
tbody tr.flagged.red td:first-child { box-shadow: inset 4px 0 #d64545; }
tbody tr.positive { background: #fff3d1; font-weight: 600; }
th button { all: unset; cursor: pointer; }
th button::after { content: " \\2195"; color: #9aa3af; }
th[aria-sort=ascending] button::after { content: " \\25B2"; color: #1f4e79; }
th[aria-sort=descending] button::after { content: " \\25BC"; color: #1f4e79; }
th button:focus-visible { outline: 2px solid #1f4e79; }
img.thumb { display: block; height: 64px; width: auto; max-width: 320px; object-fit: contain;
            background: #000; border-radius: 3px; }
figure { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; margin: 14px 0; padding: 12px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; background: #000; }
figcaption { color: #4a5568; font-size: 13px; margin-top: 6px; }
.pbar { display: inline-block; width: 120px; height: 8px; background: #e7eaee; border-radius: 4px;
        vertical-align: middle; margin-left: 8px; overflow: hidden; }
.pbar span { display: block; height: 100%; background: #5b7290; }
tr.positive .pbar span { background: #c98a00; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 0 24px; }
ul.plain { margin: 0; padding-left: 18px; } ul.plain li { margin: 3px 0; }
.missing { color: #a32121; }
"""

CHECK_JS = ("addEventListener('load',function(){var m=[].slice.call(document.images),d=document.body.dataset;"
            "d.imagesTotal=m.length;d.imagesLoaded=m.filter(function(i){return i.complete&&i.naturalWidth>0})"
            ".length;});")
"""Self check: <body data-images-loaded=N data-images-total=M> once the page has loaded."""

SORT_JS = """
document.querySelectorAll('table.sortable th button').forEach(function (button) {
  button.addEventListener('click', function () {
    var th = button.parentNode, table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var num = th.dataset.type === 'num', dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    table.querySelectorAll('th[aria-sort]').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    var keyed = [].map.call(body.rows, function (row) {
      var cell = row.cells[col], v = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
      return [num ? (v === '' ? -Infinity : parseFloat(v)) : v.toLowerCase(), row];
    });
    keyed.sort(function (a, b) { return (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0) * dir; });
    var fragment = document.createDocumentFragment();
    keyed.forEach(function (pair) { fragment.appendChild(pair[1]); });
    body.appendChild(fragment);
  });
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _href(path: str | Path) -> str:
    """A relative URL for a relative file path (spaces, '#' and '%' escaped)."""
    return _e(quote(Path(path).as_posix(), safe="/"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "–"


def _flag_class(code: str) -> str:
    return "red" if code in _RED_FLAGS else "amber"


def _flagged(codes: Iterable[str]) -> str:
    """Row class: `flagged` (amber bar) or `flagged red` when any flag is red; '' without flags."""
    codes = list(codes)
    return "" if not codes else "flagged red" if any(c in _RED_FLAGS for c in codes) else "flagged"


def _badge(code: str) -> str:
    return f"<span class='flag {_flag_class(code)}' title='{_e(FLAG_HELP.get(code, code))}'>{_e(code)}</span>"


def _status_pill(status: str) -> str:
    text, colour = _STATUS.get(status, (status, "muted"))
    return f"<span class='pill {colour}'>{_e(text)}</span>"


def _kind_pill(kind: str) -> str:
    return f"<span class='pill kind'>{'X-ray' if kind == 'xray' else _e(kind.upper())}</span>"


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body><main>{body}</main><script>{CHECK_JS}{script}</script></body></html>\n")


def _write_text(path: Path, text: str) -> Path:
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _table(head: Iterable[tuple[str, str]], rows: Iterable[str], css: str = "") -> str:
    """head: (label, 'l' or 'r'); rows: ready <tr> strings."""
    cells = "".join(f"<th class={align}>{label}</th>" for label, align in head)
    return (f"<div class='tablewrap {css}'><table><thead><tr>{cells}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


# ------------------------------------------------------------------------------------------------ case page


def _case_flags(case: _Case) -> list[tuple[str, str | None, str]]:
    """(code, structure or None, message): statistics.json's flags, then codes only case.json names."""
    flags = [(str(f.get("code", "")), f.get("label"), str(f.get("message", "")))
             for f in (case.stats or {}).get("flags", []) if isinstance(f, dict)]
    known = {code for code, _, _ in flags}
    flags += [(str(code), None, FLAG_HELP.get(str(code), "")) for code in case.data["flags"] if code not in known]
    return flags


def _flags_panel(case: _Case) -> str:
    flags = _case_flags(case)
    if not flags:
        return "<div class='panel ok'><b>No QC flags.</b></div>"
    colour = "red" if any(_flag_class(code) == "red" for code, _, _ in flags) else "amber"
    items = "".join(f"<li>{_badge(code)}<span class=where>{_e(where or 'case')}</span>{_e(message)}</li>"
                    for code, where, message in flags)
    return (f"<div class='panel {colour}'><h3>QC flags ({len(flags)}): check before accepting</h3>"
            f"<ul class=flaglist>{items}</ul></div>")


def _figure(case: _Case) -> str:
    xray = case.kind == "xray"
    name = case.image()
    if name is None:
        wanted = case.data["outputs"].get("gradcam" if xray else "overlay")
        what = "Grad-CAM" if xray else "overlay"
        text = f"{_e(wanted)} is missing" if wanted else f"no {what} image was written (enable it in the workflow)"
        return f"<div class='panel amber'>{text}.</div>"
    caption = ("Input radiograph, then Grad-CAM per reported class (warm colours: regions that raised the score)."
               if xray else "Segmentation overlay: three axial slices, a coronal and a right-lung sagittal slice "
                            "(radiological convention: patient right on the viewer's left).")
    return (f"<figure><img src='{_href(name)}' alt='{_e(case.case_id)} {'Grad-CAM' if xray else 'overlay'}'>"
            f"<figcaption>{caption}</figcaption></figure>")


def _stats_table(case: _Case) -> str:
    rows = [r for r in (case.stats or {}).get("rows", []) if isinstance(r, dict)]
    if not rows:
        volumes = case.data["summary"].get("volumes_ml", {})
        body = [f"<tr><td class=l>{_e(name)}</td><td>{_num(ml)}</td></tr>" for name, ml in volumes.items()]
        return _table([("Structure", "l"), ("Volume (mL)", "r")], body) if body else "<p class=muted>None.</p>"
    body = []
    for row in rows:
        css = f"{'summary ' if row.get('label') is None else ''}{_flagged(row.get('flags') or [])}".strip()
        parts = row.get("n_components")
        body.append(
            f"<tr class='{css}'><td class=l>{_e(row.get('name', ''))}</td><td>{_num(row.get('volume_ml'))}</td>"
            f"<td>{_num(row.get('share_percent'))}</td><td>{_num(row.get('mean_hu'), 0)}</td>"
            f"<td>{_num(row.get('median_hu'), 0)}</td><td>{_num(row.get('pd15_hu'), 0)}</td>"
            f"<td>{_num(row.get('laa950_percent'), 2)}</td><td>{'–' if parts is None else _e(parts)}</td>"
            f"<td>{_num(row.get('largest_component_ml'))}</td>"
            f"<td class=l>{''.join(_badge(code) for code in row.get('flags') or [])}</td></tr>")
    head = [("Structure", "l"), ("Volume (mL)", "r"), ("Share (%)", "r"), ("Mean HU", "r"), ("Median HU", "r"),
            ("PD15 (HU)", "r"), ("LAA-950 (%)", "r"), ("Parts", "r"), ("Largest part (mL)", "r"), ("Flags", "l")]
    legend = ("<p class=muted>PD15: 15th percentile of HU. LAA-950: % of voxels below −950 HU. Parts: separate "
              "connected components. Shaded rows are sums over the structures above.</p>")
    return _table(head, body) + legend


def _probability_table(case: _Case) -> str:
    probabilities = case.data["summary"].get("probabilities", {})
    calls = case.data["summary"].get("calls", {})
    body = []
    for name, p in probabilities.items():
        called = bool(calls.get(name))
        width = f"{100 * p:.1f}" if _finite(p) else "0"
        body.append(f"<tr class='{'positive' if called else ''}'><td class=l>{_e(name)}</td>"
                    f"<td>{_num(p, 3)}<span class=pbar><span style='width:{width}%'></span></span></td>"
                    f"<td class=l>{'positive' if called else 'negative'}</td></tr>")
    if not body:
        return "<p class=muted>No probabilities recorded.</p>"
    return _table([("Finding", "l"), ("Probability", "r"), ("Call", "l")], body, "compact") + (
        "<p class=muted>Calls use the model's stored thresholds; highlighted rows are called positive.</p>")


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _outputs_list(case: _Case) -> str:
    items = []
    for key, name in [*case.data["outputs"].items(), ("case_record", CASE_FILE)]:
        label = _OUTPUT_NAMES.get(key, "Case record (JSON)" if key == "case_record" else key)
        path = case.folder / name
        if path.is_file():
            items.append(f"<li><a href='{_href(name)}'>{_e(label)}</a> <span class=muted>{_e(name)} · "
                         f"{_size(path.stat().st_size)}</span></li>")
        else:
            items.append(f"<li>{_e(label)} <span class=missing>{_e(name)} missing</span></li>")
    return f"<ul class=plain>{''.join(items)}</ul>"


def _timings(case: _Case) -> str:
    rows = [f"<tr><td class=l>{_e(step)}</td><td>{_num(seconds, 3)}</td></tr>"
            for step, seconds in case.data["timings"].items()]
    rows.append(f"<tr class=summary><td class=l>case total</td><td>{_num(case.data.get('seconds'), 3)}</td></tr>")
    note = ("<p class=muted>Reading runs ahead in a background thread while the previous case computes, so it is "
            "not part of the case total.</p>") if "read" in case.data["timings"] else ""
    return _table([("Step", "l"), ("Seconds", "r")], rows) + note


def _index_href(case_dir: Path) -> str:
    """Relative link to the run's index.html: the nearest parent holding run.json (default ../index.html)."""
    for parent in list(case_dir.resolve().parents)[:6]:
        if (parent / RUN_FILE).is_file():
            return _href(os.path.relpath(parent / INDEX_FILE, case_dir.resolve()))
    return _href(Path("..") / INDEX_FILE)


def _case_body(case: _Case, title: str) -> str:
    data = case.data
    meta = (f"{_kind_pill(case.kind)} {_status_pill(data['status'])} · processed {_e(case.processed)} · "
            f"{_num(data.get('seconds'), 2)} s")
    parts = [f"<div class=top><a href='{_index_href(case.folder)}'>← All cases</a><span>medseg review</span></div>",
             f"<h1>{_e(title)}</h1><p class=meta>{meta}</p>",
             f"<p class=meta>Source <code>{_e(data.get('source', ''))}</code></p>"]
    if data.get("reason"):
        parts.append(f"<div class='panel red'><b>Reason:</b> {_e(data['reason'])}</div>")
    parts += [_flags_panel(case), _figure(case)]
    if case.kind == "xray":
        parts += ["<h2>Findings</h2>", _probability_table(case)]
    else:
        parts += ["<h2>Volumes and densities</h2>", _stats_table(case)]
    notes = "".join(f"<li>{_e(note)}</li>" for note in data["notes"]) or "<li class=muted>none</li>"
    parts.append(f"<div class=grid><div><h2>Outputs</h2>{_outputs_list(case)}<h2>Notes</h2>"
                 f"<ul class=plain>{notes}</ul></div><div><h2>Timings</h2>{_timings(case)}</div></div>")
    return "".join(parts)


def write_case_page(case_dir: Path, title: str | None = None) -> Path:
    """`case_dir/review.html` from its case.json (and statistics.json when present)."""
    return _write_case(_load_case(Path(case_dir)), title)


def _write_case(case: _Case, title: str | None = None) -> Path:
    title = title or f"Case {case.case_id}"
    return _write_text(case.folder / PAGE_FILE, _page(title, _case_body(case, title)))


# ------------------------------------------------------------------------------------------------ index


def _total_ml(case: _Case) -> float | None:
    volumes = [v for v in case.data["summary"].get("volumes_ml", {}).values() if _finite(v)]
    return sum(volumes) if volumes else None


def _top_finding(case: _Case) -> tuple[str, float | None, bool]:
    probabilities = {k: v for k, v in case.data["summary"].get("probabilities", {}).items() if _finite(v)}
    if not probabilities:
        return "", None, False
    calls = case.data["summary"].get("calls", {})
    called = [k for k in probabilities if calls.get(k)]   # thresholds differ per class: a call outranks a
    name = max(called or probabilities, key=probabilities.__getitem__)   # higher uncalled probability
    return name, probabilities[name], bool(calls.get(name))


def _index_row(case: _Case, status: str, out_dir: Path, position: int, kinds: set[str]) -> str:
    folder = case.folder.relative_to(out_dir)
    image = case.image()
    lazy = " loading=lazy" if position >= EAGER_THUMBNAILS else ""
    thumb = (f"<a href='{_href(folder / PAGE_FILE)}'><img class=thumb{lazy} src='{_href(folder / image)}' "
             f"alt='{_e(case.case_id)}'></a>") if image else "<span class=muted>no image</span>"
    flags = [str(code) for code in case.data["flags"]]
    cells = [f"<td class=l>{thumb}</td>",
             f"<td class=l><a href='{_href(folder / PAGE_FILE)}'>{_e(case.case_id)}</a></td>",
             f"<td class=l>{_kind_pill(case.kind)}</td>",
             f"<td class=l data-v='{_e(status)}'>{_status_pill(status)}</td>"]
    if "ct" in kinds:
        total = _total_ml(case)
        cells.append(f"<td data-v='{'' if total is None else f'{total:.3f}'}'>{_num(total)}</td>")
    if "xray" in kinds:
        name, p, called = _top_finding(case)
        mark = " <span class='pill amber'>positive</span>" if called else ""
        cells += [f"<td class=l>{_e(name)}{mark}</td>", f"<td data-v='{'' if p is None else p}'>{_num(p, 3)}</td>"]
    severity = {"": 0, "flagged": 1, "flagged red": 2}[_flagged(flags)]
    cells += [f"<td class=l data-v='{severity}{len(flags):03d} {_e(' '.join(flags))}'>"
              f"{''.join(_badge(code) for code in flags) or '<span class=muted>–</span>'}</td>",
              f"<td>{_num(case.data.get('seconds'), 2)}</td>"]
    return f"<tr class='{_flagged(flags)}'>{''.join(cells)}</tr>"


def _cases_table(cases: list[_Case], statuses: dict[str, str], out_dir: Path) -> str:
    kinds = {case.kind for case in cases}
    head = [("Preview", "l", ""), ("Case", "l", "text"), ("Kind", "l", "text"), ("Status", "l", "text")]
    if "ct" in kinds:
        head.append(("Total lung (mL)", "r", "num"))
    if "xray" in kinds:
        head += [("Top finding", "l", "text"), ("Probability", "r", "num")]
    head += [("QC flags", "l", "text"), ("Time (s)", "r", "num")]
    cells = "".join(f"<th class={align}" + (f" data-type={kind}><button>{label}</button></th>" if kind
                                            else f">{label}</th>") for label, align, kind in head)
    rows = [_index_row(case, statuses.get(case.case_id, "done"), out_dir, n, kinds) for n, case in enumerate(cases)]
    return (f"<div class=tablewrap><table class=sortable><thead><tr>{cells}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            "<p class=muted>Click a column header to sort. Bar on the left: the case carries QC flags (red: a "
            "structure is missing or the image is unusable).</p>")


def _problems_table(problems: list[dict[str, Any]]) -> str:
    rows = [f"<tr><td class=l>{_status_pill(str(p.get('status', '')))}</td>"
            f"<td class=l>{_e(p.get('case_id') or '–')}</td><td class='l wrap'><code>{_e(p.get('source', ''))}"
            f"</code></td><td class='l wrap'>{_e(p.get('reason', ''))}</td></tr>" for p in problems]
    return _table([("Status", "l"), ("Case", "l"), ("Source", "l"), ("Reason", "l")], rows)


def _when(stamp: Any) -> str:
    """An ISO time stamp of run.json as 'YYYY-MM-DD HH:MM UTC' (as given when it does not parse)."""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp or "?")
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if moment.tzinfo is not None else "")


def _card(label: str, value: int, colour: str = "") -> str:
    return (f"<div class='card {colour if value else ''}'><div class=label>{_e(label)}</div>"
            f"<div class=value>{value}</div></div>")


def _index_body(record: dict[str, Any], cases: list[_Case], out_dir: Path) -> str:
    entries = [c for c in record.get("cases", []) if isinstance(c, dict)]
    problems = [c for c in entries if c.get("status") in ("failed", "input_problem")]
    listed = {case.case_id for case in cases}
    problems += [{**c, "status": "failed", "reason": "case folder or case.json missing"} for c in entries
                 if c.get("status") in ("done", "skipped") and c.get("case_id") not in listed]
    count = {s: sum(c.get("status") == s for c in entries) for s in _STATUS}
    flagged = sum(bool(case.data["flags"]) for case in cases)
    name = record.get("workflow", "") or out_dir.name
    version = (record.get("packages") or {}).get("medseg", "")
    when = f"{_when(record.get('started'))} → {_when(record.get('finished'))}"
    parts = [f"<div class=top><span>medseg review</span><span>{'medseg ' + _e(version) if version else ''}</span>"
             "</div>", f"<h1>Run {_e(name)}</h1>",
             f"<p class=meta>{_e(when)} · output <code>{_e(out_dir.resolve().name)}</code></p>",
             "<div class=cards>", _card("cases", len(entries)), _card("done", count["done"]),
             _card("done earlier", count["skipped"]) if count["skipped"] else "",
             _card("failed", count["failed"], "red"), _card("not a case", count["input_problem"], "amber"),
             _card("flagged", flagged, "amber"), "</div>"]
    for sheet in (NEW_SHEET_FILE, SHEET_FILE):
        if (out_dir / sheet).is_file():
            parts.append(f"<p class=meta>Review sheet: <a href='{_href(sheet)}'>{_e(sheet)}</a> (fill in "
                         "<code>decision</code> with accept / reject, and <code>reviewer</code>).</p>")
            break
    if problems:
        parts += [f"<h2>Not processed ({len(problems)})</h2>", _problems_table(problems)]
    statuses = {str(c.get("case_id")): str(c.get("status")) for c in entries}
    parts += [f"<h2>Cases ({len(cases)})</h2>",
              _cases_table(cases, statuses, out_dir) if cases else "<p class=muted>No finished case.</p>"]
    return "".join(parts)


def write_index(out_dir: Path) -> Path:
    """`out_dir/index.html` from run.json and each finished case's case.json."""
    out_dir = Path(out_dir)
    record = _read_run(out_dir)
    return _write_index(out_dir, record, _finished_cases(out_dir, record))


def _write_index(out_dir: Path, record: dict[str, Any], cases: list[_Case]) -> Path:
    title = f"Run {record.get('workflow') or out_dir.name} · review"
    return _write_text(out_dir / INDEX_FILE, _page(title, _index_body(record, cases, out_dir), SORT_JS))


# ------------------------------------------------------------------------------------------------ review sheet


def _sheet_rows(case: _Case) -> list[dict[str, str]]:
    """One row per structure (CT: statistics rows then whole_case; X-ray: each class)."""
    def row(structure: str, value: str, flags: Iterable[str]) -> dict[str, str]:
        return {"case_id": case.case_id, "structure": structure, "model_value": value, "flags": ";".join(flags),
                "decision": "", "comment": "", "reviewer": ""}

    summary = case.data["summary"]
    if case.kind == "xray":
        calls = summary.get("calls", {})
        return [row(name, f"{_num(p, 4)} ({'positive' if calls.get(name) else 'negative'})", [])
                for name, p in summary.get("probabilities", {}).items()]
    stats = [r for r in (case.stats or {}).get("rows", []) if isinstance(r, dict)]
    if stats:
        rows = [row(str(r.get("name", "")), f"{_num(r.get('volume_ml'))} mL ({_num(r.get('share_percent'))} %)",
                    r.get("flags") or []) for r in stats]
    else:
        rows = [row(name, f"{_num(ml)} mL", []) for name, ml in summary.get("volumes_ml", {}).items()]
    total = _total_ml(case)
    rows.append(row(WHOLE_CASE, f"total {_num(total)} mL", [str(code) for code in case.data["flags"]]))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("no such review sheet", path) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text: save the sheet as 'CSV UTF-8'", path) from None


def _reader(text: str) -> csv.DictReader:
    """A DictReader with the delimiter of the header line (',' ';' or tab: spreadsheets differ)."""
    header = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=header.count)
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)


def _has_decisions(path: Path) -> bool:
    """Whether an existing sheet holds any decision (or content this module cannot read: keep it too)."""
    try:
        reader = _reader(_read_text(path))
        if "decision" not in [name.strip().lower() for name in reader.fieldnames or []]:
            return bool(path.stat().st_size)
        return any((value or "").strip() for row in reader for key, value in row.items()
                   if key and key.strip().lower() == "decision")
    except (InputError, csv.Error):
        return True


def write_review_csv(out_dir: Path) -> Path:
    """`out_dir/review.csv`, or `review.new.csv` when review.csv already holds decisions; returns the path."""
    out_dir = Path(out_dir)
    record = _read_run(out_dir) if (out_dir / RUN_FILE).is_file() else None
    return _write_sheet(out_dir, _finished_cases(out_dir, record))


def _write_sheet(out_dir: Path, cases: list[_Case]) -> Path:
    rows = [row for case in cases for row in _sheet_rows(case)]
    target = out_dir / SHEET_FILE
    if target.is_file() and _has_decisions(target):
        target = out_dir / NEW_SHEET_FILE
        log.warning("%s already holds review decisions: left unchanged, wrote %s", out_dir / SHEET_FILE, target)

    def write(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(REVIEW_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)

    return write_atomically(target, write)


# ------------------------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class Acceptance:
    """Decisions on one structure (or `overall`); every reviewer's decision counts once."""

    structure: str
    reviewed: int
    accepted: int
    rejected: int
    rate: float
    """accepted / reviewed (NaN when nothing was reviewed), with its Wilson 95 % interval [low, high]."""
    low: float
    high: float
    cases: int
    cases_with_rejection: int


@dataclass(frozen=True)
class Agreement:
    """Two reviewers on the (case, structure) items both decided: raw agreement and Cohen's kappa."""

    reviewer_a: str
    reviewer_b: str
    items: int
    agreement: float
    kappa: float
    """NaN when undefined (e.g. both reviewers gave a single identical answer throughout)."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@dataclass
class ReviewSummary:
    path: str
    decisions: int
    pending: int
    """Rows without a decision yet."""
    reviewers: list[str]
    structures: list[Acceptance]
    overall: Acceptance
    agreement: list[Agreement] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; NaN becomes None."""
        return _clean(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent, allow_nan=False)


@dataclass(frozen=True)
class _Decision:
    case_id: str
    structure: str
    reviewer: str
    accepted: bool


def _decision(value: str, line: int, path: Path) -> bool | None:
    word = value.strip().lower()
    if not word:
        return None
    if word in _ACCEPT or word in _REJECT:
        return word in _ACCEPT
    raise InputError(f"line {line}: decision {value.strip()!r} is not accept or reject (also a / r, yes / no)", path)


def _read_decisions(path: Path) -> tuple[list[_Decision], int]:
    """Decisions of a filled sheet and the number of rows still undecided."""
    reader = _reader(_read_text(path))
    columns = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [name for name in _REQUIRED if name not in columns]
    if missing:
        raise InputError(f"line 1: missing column(s) {', '.join(missing)}; a review sheet has "
                         f"{', '.join(REVIEW_COLUMNS)}", path)
    reader.fieldnames = columns
    decisions, pending, seen = [], 0, {}
    try:
        for raw in reader:
            line = reader.line_num
            row = {key: (value or "").strip() for key, value in raw.items() if key}
            if not row.get("case_id") or not row.get("structure"):
                raise InputError(f"line {line}: case_id and structure must not be empty", path)
            accepted = _decision(row["decision"], line, path)
            if accepted is None:
                pending += 1
                continue
            item = _Decision(row["case_id"], row["structure"], row.get("reviewer", ""), accepted)
            key = (item.case_id, item.structure, item.reviewer)
            if key in seen:
                who = f"reviewer {item.reviewer!r}" if item.reviewer else "the unnamed reviewer"
                raise InputError(f"line {line}: {item.case_id} / {item.structure} was already decided by {who} "
                                 f"on line {seen[key]}", path)
            seen[key] = line
            decisions.append(item)
    except csv.Error as exc:
        raise InputError(f"line {reader.line_num}: {exc}", path) from None
    return decisions, pending


def _acceptance(name: str, items: list[_Decision]) -> Acceptance:
    accepted = sum(item.accepted for item in items)
    low, high = wilson_interval(accepted, len(items))
    return Acceptance(name, len(items), accepted, len(items) - accepted,
                      accepted / len(items) if items else math.nan, low, high, len({i.case_id for i in items}),
                      len({item.case_id for item in items if not item.accepted}))


def _agreement(decisions: list[_Decision], a: str, b: str) -> Agreement | None:
    from sklearn.metrics import cohen_kappa_score

    by = {r: {(d.case_id, d.structure): d.accepted for d in decisions if d.reviewer == r} for r in (a, b)}
    common = sorted(by[a].keys() & by[b].keys())
    if not common:
        return None
    first = ["accept" if by[a][key] else "reject" for key in common]
    second = ["accept" if by[b][key] else "reject" for key in common]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = float(cohen_kappa_score(first, second, labels=["accept", "reject"]))
    agree = sum(x == y for x, y in zip(first, second, strict=True)) / len(common)
    return Agreement(a, b, len(common), agree, kappa)


def summarize_review(path: Path) -> ReviewSummary:
    """Acceptance per structure and overall (Wilson 95 % CI); kappa for each pair of named reviewers."""
    path = Path(path)
    decisions, pending = _read_decisions(path)
    names = list(dict.fromkeys(d.structure for d in decisions))
    structures = [_acceptance(name, [d for d in decisions if d.structure == name]) for name in names]
    reviewers = sorted({d.reviewer for d in decisions if d.reviewer})
    pairs = [_agreement(decisions, a, b) for a, b in combinations(reviewers, 2)]
    return ReviewSummary(str(path), len(decisions), pending, reviewers, structures,
                         _acceptance("overall", decisions), [p for p in pairs if p is not None])


# ------------------------------------------------------------------------------------------------ package


def write_review_package(out_dir: Path) -> dict[str, Path]:
    """Case pages for every finished case folder, review.csv and index.html.

    Returns {"index": ..., "review_csv": ..., "case:<case_id>": page, ...}; review_csv may be review.new.csv.
    """
    out_dir = Path(out_dir)
    record = _read_run(out_dir)
    cases = _finished_cases(out_dir, record)
    written = {f"case:{case.case_id}": _write_case(case) for case in cases}
    written["review_csv"] = _write_sheet(out_dir, cases)
    written["index"] = _write_index(out_dir, record, cases)
    return written
