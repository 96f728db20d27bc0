"""The predictions CSV that `medseg classify`, workflows and training write and `medseg evaluate cls` reads.

Layout: `image`, one probability column per class, then `<class>_call` (0/1 at the model's operating points)
when every row has calls. Rows with an `error` are not written. Probabilities are written exactly (shortest
round-trip text), so a call always agrees with its probability against the stored threshold: rounding to a
few decimals would flip a probability that equals a threshold chosen on the same data.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError

__all__ = ["CALL_SUFFIX", "PredictionRow", "write_predictions"]

CALL_SUFFIX = "_call"


@dataclass(frozen=True)
class PredictionRow:
    """One classified image: probabilities and 0/1 calls per class (in the model's class order), or an error."""

    image: str
    probabilities: Mapping[str, float] = field(default_factory=dict)
    calls: Mapping[str, int] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def write_predictions(rows: Iterable[PredictionRow], path: str | os.PathLike[str]) -> Path:
    """Write the predictions CSV atomically; returns its path. Classes are the first good row's, in order.

    Raises InputError when no row has probabilities or the rows disagree on their classes.
    """
    from medseg.io.atomic import atomic_path

    path = Path(path)
    good = [row for row in rows if row.ok]
    if not good:
        raise InputError("no classified image to write", path)
    classes = list(good[0].probabilities)
    for row in good:
        if list(row.probabilities) != classes or (row.calls is not None and list(row.calls) != classes):
            raise InputError(f"image {row.image!r} has classes {list(row.probabilities)}, the first row "
                             f"{classes}", path)
    with_calls = all(row.calls is not None for row in good)
    header = ["image", *classes, *((f"{name}{CALL_SUFFIX}" for name in classes) if with_calls else ())]
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in good:
            cells: list[object] = [row.image, *(repr(float(row.probabilities[name])) for name in classes)]
            if with_calls:
                cells += [int(row.calls[name]) for name in classes]  # type: ignore[index]
            writer.writerow(cells)
    return path
