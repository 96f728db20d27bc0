"""The review sheet (review.csv): one row per case and structure for a reviewer's accept / reject decision."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from pathlib import Path

from medseg.errors import InputError
from medseg.export.html import number
from medseg.export.review.records import (
    NEW_SHEET_FILE,
    RUN_FILE,
    SHEET_FILE,
    ReviewCase,
    finished_cases,
    read_run,
    total_ml,
)
from medseg.io.atomic import write_atomically

__all__ = ["REVIEW_COLUMNS", "WHOLE_CASE", "read_sheet_text", "sheet_reader", "write_review_csv", "write_sheet"]

log = logging.getLogger(__name__)

REVIEW_COLUMNS: tuple[str, ...] = ("case_id", "structure", "model_value", "flags", "decision", "comment", "reviewer")
WHOLE_CASE = "whole_case"


def _sheet_rows(case: ReviewCase) -> list[dict[str, str]]:
    """One row per structure (CT: statistics rows then whole_case; X-ray: each class)."""
    def row(structure: str, value: str, flags: Iterable[str]) -> dict[str, str]:
        return {"case_id": case.case_id, "structure": structure, "model_value": value, "flags": ";".join(flags),
                "decision": "", "comment": "", "reviewer": ""}

    summary = case.data["summary"]
    if case.kind == "xray":
        calls = summary.get("calls", {})
        return [row(name, f"{number(p, 4)} ({'positive' if calls.get(name) else 'negative'})", [])
                for name, p in summary.get("probabilities", {}).items()]
    stats = [r for r in (case.stats or {}).get("rows", []) if isinstance(r, dict)]
    if stats:
        rows = [row(str(r.get("name", "")), f"{number(r.get('volume_ml'))} mL ({number(r.get('share_percent'))} %)",
                    r.get("flags") or []) for r in stats]
    else:
        rows = [row(name, f"{number(ml)} mL", []) for name, ml in summary.get("volumes_ml", {}).items()]
    rows.append(row(WHOLE_CASE, f"total {number(total_ml(case))} mL", [str(code) for code in case.data["flags"]]))
    return rows


def read_sheet_text(path: Path) -> str:
    """A sheet's text (a spreadsheet's UTF-8 byte-order mark dropped); `InputError` when missing or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("no such review sheet", path) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text: save the sheet as 'CSV UTF-8'", path) from None


def sheet_reader(text: str) -> csv.DictReader:
    """A DictReader with the delimiter of the header line (',' ';' or tab: spreadsheets differ)."""
    header = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=header.count)
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)


def _has_decisions(path: Path) -> bool:
    """Whether an existing sheet holds any decision (or content this module cannot read: keep it too)."""
    try:
        reader = sheet_reader(read_sheet_text(path))
        if "decision" not in [name.strip().lower() for name in reader.fieldnames or []]:
            return bool(path.stat().st_size)
        return any((value or "").strip() for row in reader for key, value in row.items()
                   if key and key.strip().lower() == "decision")
    except (InputError, csv.Error):
        return True


def write_sheet(out_dir: Path, cases: list[ReviewCase]) -> Path:
    """review.csv for `cases`, or review.new.csv when review.csv already holds decisions (never overwritten)."""
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


def write_review_csv(out_dir: Path) -> Path:
    """`out_dir/review.csv`, or `review.new.csv` when review.csv already holds decisions; returns the path."""
    out_dir = Path(out_dir)
    record = read_run(out_dir) if (out_dir / RUN_FILE).is_file() else None
    return write_sheet(out_dir, finished_cases(out_dir, record))
