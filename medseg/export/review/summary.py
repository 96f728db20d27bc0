"""Decision statistics of a filled review sheet: acceptance rates with Wilson intervals, Cohen's kappa per pair."""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.evaluate.roc import wilson_interval
from medseg.export.review.sheet import REVIEW_COLUMNS, read_sheet_text, sheet_reader
from medseg.jsonable import dumps_json, finite_json

__all__ = ["Acceptance", "Agreement", "ReviewSummary", "summarize_review"]

_REQUIRED = ("case_id", "structure", "decision")
_ACCEPT = frozenset({"accept", "a", "yes"})
_REJECT = frozenset({"reject", "r", "no"})


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


@dataclass
class ReviewSummary:
    """What `summarize_review` found in a sheet."""

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
        return finite_json(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return dumps_json(asdict(self), indent=indent)


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
    reader = sheet_reader(read_sheet_text(path))
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
