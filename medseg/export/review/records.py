"""Reading a `medseg run` output folder: run.json and the finished case folders (case.json, statistics.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.export.html import is_number

__all__ = ["CASE_FILE", "NEW_SHEET_FILE", "RUN_FILE", "SHEET_FILE", "STATS_FILE", "ReviewCase", "finished_cases",
           "load_case", "read_run", "top_finding", "total_ml"]

CASE_FILE = "case.json"
RUN_FILE = "run.json"
STATS_FILE = "statistics.json"
SHEET_FILE = "review.csv"
NEW_SHEET_FILE = "review.new.csv"
"""The review sheet is written here instead when review.csv already holds decisions."""

_CASE_DEFAULTS: dict[str, type] = {"outputs": dict, "timings": dict, "summary": dict, "flags": list, "notes": list}


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
class ReviewCase:
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


def load_case(case_dir: Path) -> ReviewCase:
    """The case folder's records; `InputError` naming the file when case.json is missing or malformed."""
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
    return ReviewCase(case_dir, data, stats, stamp)


def read_run(out_dir: Path) -> dict[str, Any]:
    """run.json of a `medseg run` output folder."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"no {RUN_FILE}: not the output folder of `medseg run`", out_dir)
    record = _read_json(path)
    if not isinstance(record.get("cases", []), list):
        raise InputError("cases must be a list", path)
    return record


def _case_folders(out_dir: Path) -> list[Path]:
    """Folders under `out_dir` holding a case.json (hidden work folders left out)."""
    found = []
    for path in sorted(out_dir.rglob(CASE_FILE)):
        parts = path.parent.relative_to(out_dir).parts
        if parts and not any(part.startswith(".") for part in parts):
            found.append(path.parent)
    return found


def finished_cases(out_dir: Path, record: dict[str, Any] | None) -> list[ReviewCase]:
    """Cases with status done, in run.json order first, then any other case folders by path."""
    cases = [case for case in map(load_case, _case_folders(out_dir)) if case.data["status"] == "done"]
    order = {entry.get("case_id"): n for n, entry in enumerate((record or {}).get("cases", []))
             if isinstance(entry, dict)}
    return sorted(cases, key=lambda case: order.get(case.case_id, len(order)))


def total_ml(case: ReviewCase) -> float | None:
    """Sum of the case's structure volumes (mL), None without any."""
    volumes = [v for v in case.data["summary"].get("volumes_ml", {}).values() if is_number(v)]
    return sum(volumes) if volumes else None


def top_finding(case: ReviewCase) -> tuple[str, float | None, bool]:
    """(class, probability, called) of the finding to show first: a called class outranks a higher uncalled
    probability (thresholds differ per class)."""
    probabilities = {k: v for k, v in case.data["summary"].get("probabilities", {}).items() if is_number(v)}
    if not probabilities:
        return "", None, False
    calls = case.data["summary"].get("calls", {})
    called = [k for k in probabilities if calls.get(k)]
    name = max(called or probabilities, key=probabilities.__getitem__)
    return name, probabilities[name], bool(calls.get(name))
