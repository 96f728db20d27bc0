"""Benchmark OpenCV CLAHE (`medseg.transforms.clahe`) against `skimage.exposure.equalize_adapthist`.

Both on one 1024x1024 chest radiograph in [0, 1]: `../shared/realdata/xray/nih_00000001_000_cardiomegaly.png`
when present, else a synthetic chest-like image (two dark lung fields on a bright gradient, plus noise).
Settings match: 8x8 tiles, 256 bins; OpenCV clip 2.0 (x mean bin) = skimage clip_limit 2/256. Reports the
best and median of N runs per library, the speed ratio (the issue quotes ~20x for OpenCV) and the
correlation between the two outputs.

    python benchmarks/clahe_bench.py [--repeats N] [--size 1024] [--synthetic] [--cv-threads N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("clahe_bench")
REAL_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "xray" / "nih_00000001_000_cardiomegaly.png"


def synthetic_chest(size: int, seed: int = 0) -> np.ndarray:
    """A low-contrast chest-like image in [0, 1]: bright mediastinum gradient, two dark lung ellipses, noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size
    image = 0.45 + 0.2 * rows
    for cx in (0.3, 0.7):
        lung = ((cols - cx) / 0.17) ** 2 + ((rows - 0.48) / 0.32) ** 2 < 1
        image[lung] -= 0.2 * (1 - rows[lung] * 0.5)
    image += rng.normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def load_image(size: int, synthetic: bool) -> tuple[np.ndarray, str]:
    if not synthetic and REAL_IMAGE.is_file():
        import cv2

        grey = cv2.imread(str(REAL_IMAGE), cv2.IMREAD_UNCHANGED).astype(np.float32)
        grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA) if grey.shape != (size, size) else grey
        grey = (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6)
        return grey.astype(np.float32), REAL_IMAGE.name
    return synthetic_chest(size), f"synthetic {size}x{size}"


def time_it(fn: Callable[[], np.ndarray], repeats: int) -> tuple[list[float], np.ndarray]:
    out = fn()  # warm-up (imports, allocations)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic image even if the PNG exists")
    parser.add_argument("--cv-threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's own)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import cv2
    import skimage
    from skimage.exposure import equalize_adapthist

    from medseg.transforms.clahe import clahe

    if args.cv_threads is not None:
        cv2.setNumThreads(args.cv_threads)
    image, source = load_image(args.size, args.synthetic)
    tiles = 8
    kernel = (image.shape[0] // tiles, image.shape[1] // tiles)
    cv_times, cv_out = time_it(lambda: clahe(image, clip_limit=2.0, tile_grid=(tiles, tiles)), args.repeats)
    sk_times, sk_out = time_it(
        lambda: equalize_adapthist(image, kernel_size=kernel, clip_limit=2.0 / 256, nbins=256), args.repeats
    )
    corr = float(np.corrcoef(cv_out.ravel(), np.asarray(sk_out, dtype=np.float64).ravel())[0, 1])
    cv_best, sk_best = min(cv_times), min(sk_times)
    log.info(
        "image: %s, %dx%d float32 in [0, 1]; best and median of %d runs; OpenCV threads: %d",
        source,
        *image.shape,
        args.repeats,
        cv2.getNumThreads(),
    )
    log.info("| library | version | best (ms) | median (ms) |")
    log.info("|---|---|---:|---:|")
    log.info(
        "| OpenCV createCLAHE | %s | %.1f | %.1f |", cv2.__version__, cv_best * 1e3, statistics.median(cv_times) * 1e3
    )
    log.info(
        "| skimage equalize_adapthist | %s | %.1f | %.1f |",
        skimage.__version__,
        sk_best * 1e3,
        statistics.median(sk_times) * 1e3,
    )
    log.info("OpenCV is %.1fx faster (best vs best); output correlation %.3f", sk_best / cv_best, corr)


if __name__ == "__main__":
    main()
