"""What the case pages and the index share: QC flag badges, status and kind pills, the review CSS and scripts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medseg.export.html import page, pill, write_page

__all__ = ["FLAG_HELP", "INDEX_FILE", "INFO_FLAGS", "PAGE_FILE", "RED_FLAGS", "STATUS", "badge", "flag_colour",
           "flagged", "kind_pill", "severity", "status_pill", "write_review_page"]

PAGE_FILE = "review.html"
INDEX_FILE = "index.html"

RED_FLAGS = frozenset({"empty_mask", "not_hu", "missing_lobe", "unexpected_label", "lung_split_failed",
                       "lobes_out_of_order"})
"""Flags that make a case's statistics unusable as they stand (a side or lobe missing or mislabelled)."""
INFO_FLAGS = frozenset({"lung_islands"})
"""Low-severity flags: worth a glance, not a reason to doubt the case (grey, not amber)."""
FLAG_HELP: dict[str, str] = {
    "missing_lobe": "a structure of the label map has no voxels",
    "volume_out_of_range": "a volume or share is outside the plausible range (published mean ± 3 SD)",
    "touches_fov_edge": "the lung touches the edge of the field of view: partial coverage",
    "lobe_fragmented": "a piece of a lobe (or lung) lies inside the lung apart from its main part: a wrong split",
    "lung_islands": "small pieces of the lung mask are detached from the main lungs (low severity)",
    "lung_split_failed": "one lung holds almost none of the lung volume: the left/right split failed",
    "lung_outside_body": "lung labels outside the patient's body: the segmentation leaked",
    "lobes_out_of_order": "lobes or lungs in the wrong anatomical position: labels swapped or misplaced",
    "fragmented": "a structure is split into separate parts (older runs)",
    "non_finite_voxels": "NaN/inf voxels in the image were replaced by air: volumes and densities are unreliable",
    "empty_mask": "no lung was found",
    "not_hu": "the image is not CT in Hounsfield units",
    "unexpected_label": "a label outside the label map",
}
STATUS = {"done": ("done", "ok"), "skipped": ("done earlier", "muted"), "failed": ("failed", "red"),
          "input_problem": ("not a case", "amber")}
"""Case status -> (text shown, pill colour)."""

REVIEW_CSS = """
.top { font-size: 13px; color: #5a6575; display: flex; justify-content: space-between; }
.flaglist { list-style: none; margin: 0; padding: 0; }
.flaglist li { margin: 5px 0; }
.flaglist .where { font-weight: 600; margin-right: 4px; }
td.wrap { white-space: normal; min-width: 240px; }
tbody tr.flagged td:first-child { box-shadow: inset 4px 0 #e0a800; }
tbody tr.flagged.red td:first-child { box-shadow: inset 4px 0 #d64545; }
tbody tr.flagged.info td:first-child { box-shadow: inset 4px 0 #9aa3af; }
.panel.info { border-left: 5px solid #9aa3af; }
tbody tr.positive { background: #fff3d1; font-weight: 600; }
th button { all: unset; cursor: pointer; }
th button::after { content: " \\2195"; color: #9aa3af; }
th[aria-sort=ascending] button::after { content: " \\25B2"; color: #1f4e79; }
th[aria-sort=descending] button::after { content: " \\25BC"; color: #1f4e79; }
th button:focus-visible { outline: 2px solid #1f4e79; }
img.thumb { display: block; height: 64px; width: auto; max-width: 320px; object-fit: contain;
            background: #000; border-radius: 3px; }
figure img { background: #000; }
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


def flag_colour(code: str) -> str:
    """'red' for flags that make a case unusable, 'muted' for low-severity ones, else 'amber'."""
    return "red" if code in RED_FLAGS else "muted" if code in INFO_FLAGS else "amber"


def flagged(codes: Iterable[str]) -> str:
    """Row class: `flagged red` when any flag is red, `flagged` (amber bar) when any is amber, `flagged info`
    (grey bar) for low-severity flags only; '' without flags."""
    codes = list(codes)
    if not codes:
        return ""
    if any(c in RED_FLAGS for c in codes):
        return "flagged red"
    return "flagged info" if all(c in INFO_FLAGS for c in codes) else "flagged"


def severity(code: str) -> int:
    """Sort key: red flags first, then amber, then low-severity ones."""
    return {"red": 0, "amber": 1}.get(flag_colour(code), 2)


def badge(code: str) -> str:
    """A QC flag as a coloured pill; hovering shows what it means."""
    return pill(code, flag_colour(code), kind="pill flag", title=FLAG_HELP.get(code, code))


def status_pill(status: str) -> str:
    text, colour = STATUS.get(status, (status, "muted"))
    return pill(text, colour)


def kind_pill(kind: str) -> str:
    return pill("X-ray" if kind == "xray" else kind.upper(), "kind")


def write_review_page(path: Path, title: str, body: str, script: str = "") -> Path:
    """A review page (shared CSS + review CSS, image self check, `script`) written atomically."""
    return write_page(path, page(title, body, css=REVIEW_CSS, script=CHECK_JS + script))
