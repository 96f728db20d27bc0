"""`medseg review`: review pages for a run's output and the summary of a filled review sheet.

Register with `main.add_command(review)`; the group also works on its own (errors -> one line, exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from medseg.cli.errors import ErrorReportingGroup
from medseg.cli.options import table_console

__all__ = ["review"]


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
def review() -> None:
    """Review pages for `medseg run` output and radiologists' accept / reject sheets."""


def _rate(row: Any) -> str:
    if math.isnan(row.rate):
        return "-"
    return f"{100 * row.rate:.1f} % [{100 * row.low:.1f}, {100 * row.high:.1f}]"


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    console = table_console()
    reviewers = ", ".join(summary.reviewers) or "unnamed"
    console.print(f"{summary.path}: {summary.decisions} decision(s), {summary.pending} row(s) undecided, "
                  f"reviewer(s): {reviewers}", markup=False, highlight=False)
    table = Table(title="acceptance per structure (95 % Wilson interval)", title_justify="left")
    for column in ("structure", "reviewed", "accepted", "rejected", "acceptance", "cases", "cases rejected"):
        table.add_column(column, justify="left" if column == "structure" else "right")

    def add(row: Any) -> None:
        table.add_row(row.structure, str(row.reviewed), str(row.accepted), str(row.rejected), _rate(row),
                      str(row.cases), str(row.cases_with_rejection))

    for row in summary.structures:
        add(row)
    table.add_section()
    add(summary.overall)
    console.print(table)
    if summary.agreement:
        pairs = Table(title="agreement between reviewers (items both decided)", title_justify="left")
        for column in ("reviewers", "items", "agreement", "Cohen's kappa"):
            pairs.add_column(column, justify="left" if column == "reviewers" else "right")
        for pair in summary.agreement:
            kappa = "-" if math.isnan(pair.kappa) else f"{pair.kappa:.3f}"
            pairs.add_row(f"{pair.reviewer_a} / {pair.reviewer_b}", str(pair.items), f"{100 * pair.agreement:.1f} %",
                          kappa)
        console.print(pairs)


@review.command()
@click.argument("sheet", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON only (stdout).")
def summarize(sheet: Path, as_json: bool) -> None:
    """Acceptance rates of a filled review sheet (review.csv), per structure and overall.

    decision: accept / reject (a / r, yes / no, any case); empty rows are counted as undecided. With a
    reviewer column naming two or more reviewers of the same items, Cohen's kappa is shown per pair.
    """
    from medseg.export.review import summarize_review

    summary = summarize_review(sheet)
    if as_json:
        click.echo(summary.to_json())
    else:
        _print_summary(summary)


@review.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
def package(out_dir: Path) -> None:
    """Write review.html per finished case, index.html and review.csv into a `medseg run` output folder.

    An existing review.csv with decisions is never overwritten: the fresh sheet goes to review.new.csv.
    """
    from medseg.export.review import NEW_SHEET_FILE, write_review_package

    written = write_review_package(out_dir)
    pages = sum(key.startswith("case:") for key in written)
    click.echo(f"{pages} case page(s); index: {written['index']}")
    if written["review_csv"].name == NEW_SHEET_FILE:
        click.echo(f"review sheet: {written['review_csv']} (review.csv already holds decisions: left unchanged)")
    else:
        click.echo(f"review sheet: {written['review_csv']}")
