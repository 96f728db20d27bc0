"""Speed of the classical lung mask (`medseg.infer.lungmask.lung_mask`) on a full-size synthetic chest.

The chest is `synthetic_chest` from `tests/test_lungmask.py` (DICOM-like LPS storage, table, trachea, stomach
gas); touching lungs by default, so the erosion split (the slowest path) runs. Loading is excluded: only the
`lung_mask` call is timed. Prints the first-call and best-of-N seconds against the target (2.5 s on 2 CPU cores)
and the Dice per lung (`tests/test_lungmask.py::test_full_size_touching_chest` checks the Dice, not the time).

    python benchmarks/lungmask_bench.py [--repeats 3] [--shape 512 512 300] [--separate] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.0)
    parser.add_argument("--separate", action="store_true", help="lungs apart (skips the erosion split)")
    parser.add_argument("--threads", type=int, default=None, help="torch / BLAS threads (default: as set)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from medseg.infer.lungmask import LEFT_LUNG, RIGHT_LUNG, lung_mask
    from tests.test_lungmask import dice, synthetic_chest

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    started = time.perf_counter()
    volume, truth = synthetic_chest(shape, (args.pixel_mm, args.pixel_mm, args.slice_mm), touching=not args.separate)
    print(f"synthetic chest {'x'.join(map(str, shape))} at {args.pixel_mm} mm "
          f"({'separate' if args.separate else 'touching'} lungs) built in {time.perf_counter() - started:.1f} s")
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        mask = lung_mask(volume)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    print(f"lung_mask: first call {seconds[0]:.2f} s, best of {len(seconds)} {best:.2f} s "
          f"(target <= {TARGET_SECONDS} s: {'met' if best <= TARGET_SECONDS else 'MISSED'})")
    print(f"Dice right {dice(mask == RIGHT_LUNG, truth == RIGHT_LUNG):.4f}, "
          f"left {dice(mask == LEFT_LUNG, truth == LEFT_LUNG):.4f}")
    return 0 if best <= TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
