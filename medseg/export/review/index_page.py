"""The run's index.html: counts, the cases that were not processed with their reasons, a sortable case table."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.export.html import card, escape, href, number, pill, table
from medseg.export.review.parts import (
    INDEX_FILE,
    PAGE_FILE,
    SORT_JS,
    STATUS,
    badge,
    flagged,
    kind_pill,
    severity,
    status_pill,
    write_review_page,
)
from medseg.export.review.records import (
    NEW_SHEET_FILE,
    SHEET_FILE,
    ReviewCase,
    finished_cases,
    read_run,
    top_finding,
    total_ml,
)

__all__ = ["EAGER_THUMBNAILS", "write_index", "write_run_index"]

EAGER_THUMBNAILS = 40
"""Index thumbnails after this many load lazily (as they scroll into view)."""


def _index_row(case: ReviewCase, status: str, out_dir: Path, position: int, kinds: set[str]) -> str:
    folder = case.folder.relative_to(out_dir)
    image = case.image()
    lazy = " loading=lazy" if position >= EAGER_THUMBNAILS else ""
    thumb = (f"<a href='{href(folder / PAGE_FILE)}'><img class=thumb{lazy} src='{href(folder / image)}' "
             f"alt='{escape(case.case_id)}'></a>") if image else "<span class=muted>no image</span>"
    flags = [str(code) for code in case.data["flags"]]
    cells = [f"<td class=l>{thumb}</td>",
             f"<td class=l><a href='{href(folder / PAGE_FILE)}'>{escape(case.case_id)}</a></td>",
             f"<td class=l>{kind_pill(case.kind)}</td>",
             f"<td class=l data-v='{escape(status)}'>{status_pill(status)}</td>"]
    if "ct" in kinds:
        total = total_ml(case)
        cells.append(f"<td data-v='{'' if total is None else f'{total:.3f}'}'>{number(total)}</td>")
    if "xray" in kinds:
        name, p, called = top_finding(case)
        mark = f" {pill('positive', 'amber')}" if called else ""
        cells += [f"<td class=l>{escape(name)}{mark}</td>",
                  f"<td data-v='{'' if p is None else p}'>{number(p, 3)}</td>"]
    rank = {"": 0, "flagged info": 1, "flagged": 2, "flagged red": 3}[flagged(flags)]
    cells += [f"<td class=l data-v='{rank}{len(flags):03d} {escape(' '.join(flags))}'>"
              f"{''.join(badge(code) for code in sorted(flags, key=severity)) or '<span class=muted>–</span>'}</td>",
              f"<td>{number(case.data.get('seconds'), 2)}</td>"]
    return f"<tr class='{flagged(flags)}'>{''.join(cells)}</tr>"


def _cases_table(cases: list[ReviewCase], statuses: dict[str, str], out_dir: Path) -> str:
    kinds = {case.kind for case in cases}
    head = [("Preview", "l", ""), ("Case", "l", "text"), ("Kind", "l", "text"), ("Status", "l", "text")]
    if "ct" in kinds:
        head.append(("Total lung (mL)", "r", "num"))
    if "xray" in kinds:
        head += [("Top finding", "l", "text"), ("Probability", "r", "num")]
    head += [("QC flags", "l", "text"), ("Time (s)", "r", "num")]
    sortable = [(f"<button>{label}</button>", align, f"data-type={kind}") if kind else (label, align)
                for label, align, kind in head]
    rows = [_index_row(case, statuses.get(case.case_id, "done"), out_dir, n, kinds) for n, case in enumerate(cases)]
    return (table(sortable, rows, table_css="sortable") +
            "<p class=muted>Click a column header to sort. Bar on the left: the case carries QC flags (red: a "
            "structure is missing or mislabelled, or the image is unusable; grey: low-severity flags only). Hover "
            "over a flag for what it means; the case page gives each flag's reason.</p>")


def _problems_table(problems: list[dict[str, Any]]) -> str:
    rows = [f"<tr><td class=l>{status_pill(str(p.get('status', '')))}</td>"
            f"<td class=l>{escape(p.get('case_id') or '–')}</td><td class='l wrap'><code>{escape(p.get('source', ''))}"
            f"</code></td><td class='l wrap'>{escape(p.get('reason', ''))}</td></tr>" for p in problems]
    return table([("Status", "l"), ("Case", "l"), ("Source", "l"), ("Reason", "l")], rows)


def _when(stamp: Any) -> str:
    """An ISO time stamp of run.json as 'YYYY-MM-DD HH:MM UTC' (as given when it does not parse)."""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp or "?")
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if moment.tzinfo is not None else "")


def _count(label: str, value: int, colour: str = "") -> str:
    return card(label, str(value), colour=colour if value else "")


def _index_body(record: dict[str, Any], cases: list[ReviewCase], out_dir: Path) -> str:
    entries = [c for c in record.get("cases", []) if isinstance(c, dict)]
    problems = [c for c in entries if c.get("status") in ("failed", "input_problem")]
    listed = {case.case_id for case in cases}
    problems += [{**c, "status": "failed", "reason": "case folder or case.json missing"} for c in entries
                 if c.get("status") in ("done", "skipped") and c.get("case_id") not in listed]
    count = {s: sum(c.get("status") == s for c in entries) for s in STATUS}
    n_flagged = sum(flagged(case.data["flags"]) in ("flagged", "flagged red") for case in cases)
    n_info = sum(flagged(case.data["flags"]) == "flagged info" for case in cases)
    name = record.get("workflow", "") or out_dir.name
    version = (record.get("packages") or {}).get("medseg", "")
    when = f"{_when(record.get('started'))} → {_when(record.get('finished'))}"
    parts = [f"<div class=top><span>medseg review</span><span>{'medseg ' + escape(version) if version else ''}</span>"
             "</div>", f"<h1>Run {escape(name)}</h1>",
             f"<p class=meta>{escape(when)} · output <code>{escape(out_dir.resolve().name)}</code></p>",
             "<div class=cards>", _count("cases", len(entries)), _count("done", count["done"]),
             _count("done earlier", count["skipped"]) if count["skipped"] else "",
             _count("failed", count["failed"], "red"), _count("not a case", count["input_problem"], "amber"),
             _count("flagged", n_flagged, "amber"),
             _count("low-severity flags only", n_info) if n_info else "", "</div>"]
    for sheet in (NEW_SHEET_FILE, SHEET_FILE):
        if (out_dir / sheet).is_file():
            parts.append(f"<p class=meta>Review sheet: <a href='{href(sheet)}'>{escape(sheet)}</a> (fill in "
                         "<code>decision</code> with accept / reject, and <code>reviewer</code>).</p>")
            break
    if problems:
        parts += [f"<h2>Not processed ({len(problems)})</h2>", _problems_table(problems)]
    statuses = {str(c.get("case_id")): str(c.get("status")) for c in entries}
    parts += [f"<h2>Cases ({len(cases)})</h2>",
              _cases_table(cases, statuses, out_dir) if cases else "<p class=muted>No finished case.</p>"]
    return "".join(parts)


def write_run_index(out_dir: Path, record: dict[str, Any], cases: list[ReviewCase]) -> Path:
    """`out_dir/index.html` from an already read run.json and its finished cases."""
    title = f"Run {record.get('workflow') or out_dir.name} · review"
    return write_review_page(out_dir / INDEX_FILE, title, _index_body(record, cases, out_dir), SORT_JS)


def write_index(out_dir: Path) -> Path:
    """`out_dir/index.html` from run.json and each finished case's case.json."""
    out_dir = Path(out_dir)
    record = read_run(out_dir)
    return write_run_index(out_dir, record, finished_cases(out_dir, record))
