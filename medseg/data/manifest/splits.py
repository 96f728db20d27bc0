"""Deterministic patient-level train / val / test splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from medseg.data.manifest.schema import SPLITS, Split
from medseg.errors import ConfigError

__all__ = ["assign_patient_splits"]


def assign_patient_splits(
    patient_ids: Iterable[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    splits: Sequence[Split] = SPLITS,
) -> dict[str, Split]:
    """Deterministic patient-level split: patient id -> split.

    Patients are ordered by sha256(seed, id), so the result does not depend on input order or platform,
    and each split gets its share by largest remainders (at least one patient for a non-zero fraction
    when there are enough patients).
    """
    if len(fractions) != len(splits):
        raise ConfigError(f"need one fraction per split ({', '.join(splits)}), got {list(fractions)}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    unique = sorted(set(map(str, patient_ids)))
    order = sorted(unique, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    counts = _split_counts(len(order), fractions)
    result: dict[str, Split] = {}
    start = 0
    for split, count in zip(splits, counts, strict=True):
        for pid in order[start:start + count]:
            result[pid] = split
        start += count
    return result


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    for index in sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))[:n - sum(counts)]:
        counts[index] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for index in wanted:
            if counts[index] == 0:
                donor = max(range(len(counts)), key=lambda i: counts[i])
                counts[donor] -= 1
                counts[index] += 1
    return counts
