"""Time one synthetic chest CT case end to end (target: 512x512x300 in <= 20 s on 2 cores).

    .venv/bin/python benchmarks/synth_ct_bench.py [--size 512] [--slices 300] [--repeats 2] [--work DIR]

Prints the total for `synth_ct_case` (model, render, DICOM series, two NIfTI label maps, findings.json)
and a breakdown of one run, plus peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from medseg.data.phantom import build_chest_model, render
from medseg.data.phantom.acquisition import sample_acquisition
from medseg.data.phantom.ct_case import synth_ct_case
from medseg.data.phantom.model import component_rng
from medseg.io.dicom_write import SeriesInfo, write_ct_series
from medseg.io.volume import Volume
from medseg.io.volume_files import write_nifti

FINDINGS = ["nodule", "effusion", "emphysema"]


def breakdown(size: int, slices: int, work: Path, seed: int) -> dict[str, float]:
    times = {}
    start = time.perf_counter()
    model = build_chest_model(seed, findings=FINDINGS)
    times["model (anatomy, fissure calibration, trees)"] = time.perf_counter() - start
    acquisition = sample_acquisition(component_rng(seed, "acquisition"), model, size=size, slices=slices)
    start = time.perf_counter()
    image = render(model, acquisition.grid, acquisition.scanner)
    times["render"] = time.perf_counter() - start
    start = time.perf_counter()
    write_ct_series(image.hu, image.affine, work / "ct", SeriesInfo(study_date="20260101"))
    times["DICOM series"] = time.perf_counter() - start
    start = time.perf_counter()
    write_nifti(Volume(image.lobes, image.affine), work / "lobes.nii.gz", label=True)
    write_nifti(Volume(image.lungs, image.affine), work / "lungs.nii.gz", label=True)
    times["lobes + lungs NIfTI"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg_synth_bench_"))
    totals = []
    for repeat in range(args.repeats):
        target = work / f"case_{repeat}"
        start = time.perf_counter()
        synth_ct_case(target, args.seed, size=args.size, slices=args.slices, findings=FINDINGS)
        totals.append(time.perf_counter() - start)
        shutil.rmtree(target)
    parts = breakdown(args.size, args.slices, work / "parts", args.seed)
    shutil.rmtree(work / "parts", ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"synth_ct_case {args.size}x{args.size}x{args.slices} ({', '.join(FINDINGS)}): "
          f"best {min(totals):.1f} s of {len(totals)} (all: {', '.join(f'{t:.1f}' for t in totals)})")
    for name, seconds in parts.items():
        print(f"  {name}: {seconds:.2f} s")
    print(f"peak RSS: {peak_mb:.0f} MB")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
