"""Time `medseg segment` end to end on a 512x512x300 chest CT DICOM series (target: <= 15 s, <= 3 GiB RSS
on 2 CPU cores), optionally against lungmask's pipeline (random weights) on the same series.

    .venv/bin/python benchmarks/segment_bench.py --model runs/lobes/best.safetensors [--repeats 2]
        [--input DICOM_DIR] [--size 512 --slices 300] [--threads 2] [--device cpu|cuda] [--lungmask]

Each repeat runs `medseg segment INPUT OUT.nii.gz --json` in a fresh process (model load, DICOM read, lung
mask, resample, 2.5D model, back to the source grid, postprocess, NIfTI written) and reports wall time,
the per-stage split printed by the command, and the process's peak RSS. Without --input a synthetic
phantom series is generated once (seed 7) into --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_series(work: Path, size: int, slices: int, seed: int) -> Path:
    folder = work / f"phantom_{size}x{size}x{slices}_seed{seed}"
    if not (folder / "ct").is_dir():
        from medseg.data.phantom.ct_case import synth_ct_case

        synth_ct_case(folder, seed, case_id="bench", size=size, slices=slices, findings=["nodule"])
    return folder / "ct"


def run_medseg(series: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [str(Path(sys.executable).parent / "medseg"), "segment", str(series), str(out), "--json",
               "--device", args.device, "--batch-size", str(args.batch_size)]
    command += ["--model", str(args.model)] if args.model else ["--task", "lungs"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.tta:
        command.append("--tta")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    process = subprocess.Popen(["/usr/bin/time", "-f", "MAXRSS_KB %M", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"medseg segment failed ({process.returncode}):\n{stderr}")
    rss_kb = next(int(line.split()[1]) for line in stderr.splitlines() if line.startswith("MAXRSS_KB"))
    report = json.loads(stdout)
    return {"wall_s": wall, "peak_rss_gib": rss_kb / 1024**2, **report}


def run_lungmask(series: Path, threads: int | None) -> float:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import SimpleITK as sitk
    from lungmask_reference import run_lungmask

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    started = time.perf_counter()
    image = reader.Execute()
    run_lungmask(image, threads=threads)
    return time.perf_counter() - started


def machine() -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        gpu, torch_version = "?", "?"
    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch_version}, {gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="lobe checkpoint; without it the classical lung mask is timed")
    parser.add_argument("--input", type=Path, help="DICOM folder (default: a generated phantom series)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--lungmask", action="store_true", help="also time lungmask's pipeline (random weights)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medseg_segment_bench")
    args = parser.parse_args()

    series = args.input or ensure_series(args.work, args.size, args.slices, args.seed)
    print(f"machine: {machine()}\nseries: {series}")
    runs = []
    for repeat in range(args.repeats):
        result = run_medseg(series, args.work / f"out_{repeat}.nii.gz", args)
        runs.append(result)
        stages = ", ".join(f"{k} {v:.2f}" for k, v in result["timings_s"].items())
        print(f"run {repeat + 1}: {result['wall_s']:.2f} s wall, peak RSS {result['peak_rss_gib']:.2f} GiB "
              f"[{stages}]")
    best = min(r["wall_s"] for r in runs)
    print(f"medseg segment best of {len(runs)}: {best:.2f} s")
    if args.lungmask:
        seconds = run_lungmask(series, args.threads)
        print(f"lungmask pipeline (R231 architecture, random weights): {seconds:.1f} s -> medseg is "
              f"{seconds / best:.1f}x faster")


if __name__ == "__main__":
    main()
