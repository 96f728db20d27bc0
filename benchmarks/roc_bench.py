"""Speed of the bootstrap AUC confidence interval (`medseg.evaluate.roc.bootstrap_auc_ci`).

Binormal scores (negatives N(0, 1), positives N(1, 1), prevalence 0.3, as in `tests/test_roc.py`); times
`--resamples` resamples at each `--n` and prints best-of-N seconds against the target (2,000 resamples of
n = 400 in under 1 s on 2 CPU cores). `tests/test_roc.py` checks the intervals, not the time.

    python benchmarks/roc_bench.py [--n 400 2000 10000] [--resamples 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

TARGET = (400, 2000, 1.0)
"""(n, resamples, seconds): the budget the test used to assert."""


def binormal(n: int, shift: float = 1.0, prevalence: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(int)
    labels[:2] = (0, 1)
    return labels, rng.normal(size=n) + shift * labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[400, 2000, 10000])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from medseg.evaluate import roc

    missed = False
    for n in args.n:
        labels, scores = binormal(n)
        roc.bootstrap_auc_ci(labels, scores, n_resamples=10, seed=0)  # warm-up (imports, first allocations)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            low, high = roc.bootstrap_auc_ci(labels, scores, n_resamples=args.resamples, seed=7)
            seconds.append(time.perf_counter() - start)
        line = (f"bootstrap_auc_ci n={n:>6} resamples={args.resamples}: best {min(seconds):.3f} s, "
                f"median {float(np.median(seconds)):.3f} s, CI [{low:.3f}, {high:.3f}]")
        if (n, args.resamples) == TARGET[:2]:
            met = min(seconds) < TARGET[2]
            missed |= not met
            line += f" (target < {TARGET[2]} s: {'met' if met else 'MISSED'})"
        print(line)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
