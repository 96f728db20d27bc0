"""Review pages for a `medseg run` output folder, and the review sheet radiologists fill in.

`write_review_package(out)` writes, for every finished case folder, `review.html` (QC flags, overlay or
Grad-CAM, statistics or probabilities, outputs, timings, notes), then `review.csv` (one row per case and
structure: accept / reject) and `index.html` (run counts, failures with their reasons, a sortable table of the
cases). `summarize_review` reads a filled sheet back: acceptance rates with Wilson intervals and, with several
reviewers, Cohen's kappa per pair.

The pages are static: inline CSS, a few lines of inline JS (header sorting; an image-load self check that sets
`data-images-loaded` / `data-images-total` on <body> at window load), relative links only, no network.

Modules: `records` (reading run.json and case folders), `parts` (badges, pills, review CSS), `case_page`,
`index_page`, `sheet` (review.csv), `summary` (decision statistics); the HTML kit is `medseg.export.html`.
"""

from __future__ import annotations

from pathlib import Path

from medseg.export.review.case_page import write_case, write_case_page
from medseg.export.review.index_page import write_index, write_run_index
from medseg.export.review.parts import FLAG_HELP, INDEX_FILE, PAGE_FILE
from medseg.export.review.records import NEW_SHEET_FILE, SHEET_FILE, finished_cases, read_run
from medseg.export.review.sheet import REVIEW_COLUMNS, WHOLE_CASE, write_review_csv, write_sheet
from medseg.export.review.summary import Acceptance, Agreement, ReviewSummary, summarize_review

__all__ = [
    "FLAG_HELP",
    "INDEX_FILE",
    "NEW_SHEET_FILE",
    "PAGE_FILE",
    "REVIEW_COLUMNS",
    "SHEET_FILE",
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


def write_review_package(out_dir: Path) -> dict[str, Path]:
    """Case pages for every finished case folder, review.csv and index.html.

    Returns {"index": ..., "review_csv": ..., "case:<case_id>": page, ...}; review_csv may be review.new.csv.
    """
    out_dir = Path(out_dir)
    record = read_run(out_dir)
    cases = finished_cases(out_dir, record)
    written = {f"case:{case.case_id}": write_case(case) for case in cases}
    written["review_csv"] = write_sheet(out_dir, cases)
    written["index"] = write_run_index(out_dir, record, cases)
    return written
