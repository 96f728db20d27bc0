"""Benchmark one synthetic 1024x1024 PA chest radiograph end to end (`medseg synth cxr`).

Times `synthesize_radiograph` (phantom model, coronal-slab render, attenuation, projection, exposure, noise,
processing) plus writing its PNG and DICOM DX, best and median of N runs in one process (the first run,
which pays imports and allocator warm-up, is reported separately), and a per-stage breakdown of one more
run. Prints a Markdown section for benchmarks/RESULTS.md. BLAS threads are left to the environment unless
`--blas-threads` is given (the phantom's per-slice texture uses small matrix products, which a
multi-threaded BLAS can slow down on a busy 2-core machine).

    python benchmarks/cxr_synth_bench.py [--repeats N] [--size 1024] [--seed S] [--blas-threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs ({cpu})"


def _one(seed: int, size: int, findings: tuple[str, ...], out: Path) -> float:
    from medseg.data.radiograph.dataset import dx_info, save_radiograph
    from medseg.data.radiograph.synth import synthesize_radiograph

    started = time.perf_counter()
    cxr = synthesize_radiograph(seed, findings, size=size)
    save_radiograph(cxr, out / "bench.png", out / "bench.dcm", dx_info(cxr, "BENCH", (seed,)))
    return time.perf_counter() - started


def _stages(seed: int, size: int, findings: tuple[str, ...]) -> dict[str, float]:
    """Seconds per stage of one radiograph, timed by running the pipeline's steps one by one."""
    import numpy as np

    from medseg.data.phantom import ScannerSettings, build_chest_model, render
    from medseg.data.phantom.model import component_rng
    from medseg.data.radiograph.ctr import measure_ctr
    from medseg.data.radiograph.detector import expose, process, sample_exposure, to_stored, window
    from medseg.data.radiograph.projection import project_pa, projection_grid
    from medseg.data.radiograph.synth import PHANTOM_COMPONENTS, RenderSettings, _upsample, sample_geometry

    settings = RenderSettings()
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = now - clock
        clock = now

    model = build_chest_model(seed, findings=findings, posture="upright", components=PHANTOM_COMPONENTS,
                              vessel_density=settings.vessel_density)
    lap("phantom model")
    rng = component_rng(seed, "radiograph")
    geometry, exposure = sample_geometry(rng, model), sample_exposure(rng)
    grid = projection_grid(model, geometry, settings.spacing_mm, settings.slab_mm)
    image = render(model, grid, ScannerSettings(noise_sd=0.0, kernel_sigma_mm=0.0), quantize=False)
    lap(f"render {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]}")
    mu = settings.attenuation(image.hu)
    coarse = project_pa(mu, grid, geometry, int(np.ceil(2.0 * geometry.detector_mm / settings.spacing_mm)))
    lap("attenuation + projection")
    measure_ctr(image, model, grid)
    lap("CTR")
    integral = _upsample(coarse, size)
    pixel = geometry.detector_mm / size
    processed = process(expose(integral, exposure, pixel, component_rng(seed, "quantum noise")), exposure, pixel)
    window(to_stored(processed, integral > 1.0, exposure))
    lap("detector + processing")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--findings", default="effusion", help="comma-separated finding kinds ('' for none)")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="rerun in a subprocess with OPENBLAS/OMP/MKL_NUM_THREADS set to this")
    args = parser.parse_args()
    if args.blas_threads is not None and os.environ.get("_CXR_BENCH_CHILD") != "1":
        env = dict(os.environ, _CXR_BENCH_CHILD="1", **{name: str(args.blas_threads) for name in _THREAD_VARIABLES})
        return subprocess.call([sys.executable, *sys.argv], env=env)

    findings = tuple(name for name in args.findings.split(",") if name)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        first = _one(args.seed, args.size, findings, out)
        runs = [_one(args.seed, args.size, findings, out) for _ in range(args.repeats)]
    stages = _stages(args.seed, args.size, findings)
    best, median = min(runs), statistics.median(runs)
    threads = ", ".join(f"{name}={os.environ[name]}" for name in _THREAD_VARIABLES if name in os.environ) or \
        "BLAS threads: library default"
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"## cxr_synth_bench: one synthetic PA radiograph ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print()
    print(f"- Machine: {_machine()}; {threads}")
    print(f"- Command: `{command}` (from the repository root)")
    print(f"- Target: one {args.size}x{args.size} radiograph <= {TARGET_S:g} s on 2 cores, end to end (phantom model, "
          "render, projection, detector, PNG + DICOM written).")
    print()
    print("| image | findings | first run (s) | best (s) | median (s) | runs |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| {args.size}x{args.size} | {', '.join(findings) or 'none'} | {first:.2f} | {best:.2f} | {median:.2f} | "
          f"{len(runs)} |")
    print()
    print("Stages of one more run (s): " + ", ".join(f"{name} {seconds:.3f}" for name, seconds in stages.items()))
    print(f"Target: **{'met' if best <= TARGET_S else 'NOT met'}** ({best:.2f} s best, {median:.2f} s median).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
