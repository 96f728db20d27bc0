"""Benchmark loading a synthetic CT DICOM series with medseg, SimpleITK and MONAI.

Writes a 512x512x300 uncompressed CT series (reused when present), then loads it with each library in a
fresh subprocess, reporting the best wall time of N repeats and the peak RSS increase of the load alone
(peak resident set size minus the RSS just before the load, imports excluded). On Linux the kernel's
peak counter (VmHWM) is reset before each load via /proc/self/clear_refs, so the peak is exact; elsewhere
a psutil sampling thread is used. Also checks that medseg and SimpleITK agree voxel for voxel.

    python benchmarks/io_bench.py [--work DIR] [--repeats N] [--record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LOADERS = ("medseg", "simpleitk", "monai")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_HEADER = """# Benchmark results

Results of the scripts in `benchmarks/`, one section per recorded run (`--record`), newest appended last.
Each section gives the date, the machine, the exact command and the table it printed.
"""
TARGETS = "medseg no slower than SimpleITK; medseg peak memory < 2x the HU volume (int16)"
MIB = 1024 * 1024

Loaded = tuple[Any, np.ndarray]
"""(object that must stay alive, HU array indexed (i, j, k))."""


# --------------------------------------------------------------------------- memory measurement


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class _Sampler(threading.Thread):
    """Fallback peak tracker: polls RSS with psutil every millisecond."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.001):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss)


def measure(load: Callable[[], Loaded]) -> tuple[Loaded, float, int, str]:
    """Run `load` once: (its result, seconds, peak RSS increase in bytes, measuring method)."""
    gc.collect()
    if _reset_peak():
        base = (_status_kib("VmRSS") or 0) * 1024
        start = time.perf_counter()
        result = load()
        seconds = time.perf_counter() - start
        return result, seconds, (_status_kib("VmHWM") or 0) * 1024 - base, "VmHWM"
    sampler = _Sampler()
    base = sampler.peak
    sampler.start()
    start = time.perf_counter()
    result = load()
    seconds = time.perf_counter() - start
    return result, seconds, sampler.stop() - base, "psutil"


# --------------------------------------------------------------------------- loaders (imports happen in prepare)


def _prepare(name: str) -> tuple[Callable[[str], Loaded], str]:
    """Import the library (before the memory baseline) and return (loader, version)."""
    if name == "medseg":
        import medseg
        from medseg.io import load_volume

        def load_medseg(folder: str) -> Loaded:
            volume = load_volume(folder)
            return volume, volume.array

        return load_medseg, medseg.__version__
    if name == "simpleitk":
        import SimpleITK as sitk

        def load_sitk(folder: str) -> Loaded:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
            image = reader.Execute()
            return image, sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # zero-copy (k,j,i) -> (i,j,k)

        return load_sitk, sitk.Version.VersionString()
    if name == "monai":
        import monai
        from monai.transforms import LoadImage

        transform = LoadImage(reader="PydicomReader", image_only=True)

        def load_monai(folder: str) -> Loaded:
            image = transform(folder)
            return image, image.numpy()  # shares memory with the MetaTensor

        return load_monai, monai.__version__
    raise ValueError(f"unknown loader {name!r}")


def _digest(array: np.ndarray) -> str | None:
    """sha256 of the (i, j, k) array as C-ordered int16, or None when its values are not int16-exact."""
    as_int16 = array.astype(np.int16)
    if not np.array_equal(as_int16, array):
        return None
    return hashlib.sha256(np.ascontiguousarray(as_int16).tobytes()).hexdigest()


def run_one(name: str, folder: str, repeats: int) -> dict[str, Any]:
    """Measure one loader in this process (meant to be a fresh subprocess)."""
    load, version = _prepare(name)
    times, peaks = [], []
    result: Loaded | None = None
    method = ""
    for _ in range(repeats):
        result = None  # free the previous load before measuring the next one
        result, seconds, peak, method = measure(lambda: load(folder))
        times.append(seconds)
        peaks.append(peak)
    assert result is not None
    array = result[1]
    return {
        "loader": name, "version": version, "times_s": times, "peaks_bytes": peaks, "peak_method": method,
        "dtype": str(array.dtype), "shape": list(array.shape), "sha256_int16": _digest(array),
    }


def run_compare(folder: str) -> dict[str, Any]:
    """Load with medseg and SimpleITK in one process and compare voxels and affines."""
    import SimpleITK as sitk

    from medseg.io import load_volume
    from medseg.io.volume_files import sitk_affine_ras

    volume = load_volume(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
    image = reader.Execute()
    theirs = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    ours = volume.array.transpose(2, 1, 0)
    same_shape = ours.shape == theirs.shape
    mismatches = int(np.count_nonzero(ours != theirs)) if same_shape else -1
    return {
        "same_shape": same_shape, "mismatched_voxels": mismatches,
        "max_abs_diff": float(np.abs(ours.astype(np.int64) - theirs).max()) if same_shape else None,
        "affine_max_abs_diff_mm": float(np.abs(volume.affine - sitk_affine_ras(image)).max()),
    }


# --------------------------------------------------------------------------- series generation


def ensure_series(work: Path, size: int, slices: int) -> tuple[Path, dict[str, Any]]:
    """Write the phantom series under `work/series` unless a complete one with the same shape is there."""
    folder, marker = work / "series", work / "series.json"
    if marker.exists() and folder.is_dir():
        info = json.loads(marker.read_text())
        files = sorted(folder.glob("slice_*.dcm"))
        if info.get("shape") == [size, size, slices] and len(files) == slices == len(list(folder.iterdir())):
            return folder, {**info, "reused": True}
    from medseg.data.demo_phantom import demo_chest_volume
    from medseg.io.dicom_write import SeriesInfo, write_ct_series

    marker.unlink(missing_ok=True)
    if folder.exists():
        for stale in folder.iterdir():
            stale.unlink()
    start = time.perf_counter()
    hu, affine = demo_chest_volume(size=size, slices=slices)
    phantom_s = time.perf_counter() - start
    write_ct_series(hu, affine, folder, SeriesInfo(series_description="io_bench phantom"))
    info = {
        "shape": list(hu.shape), "phantom_s": round(phantom_s, 2),
        "write_s": round(time.perf_counter() - start - phantom_s, 2),
        "sha256_int16": _digest(hu), "bytes_on_disk": sum(p.stat().st_size for p in folder.iterdir()),
    }
    marker.write_text(json.dumps(info, indent=2))
    return folder, {**info, "reused": False}


# --------------------------------------------------------------------------- driver and report


def _subprocess_json(args: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs ({cpu}), "
            f"{psutil.virtual_memory().total / 1024**3:.1f} GiB RAM")


def build_report(results: list[dict[str, Any]], series: dict[str, Any], compare: dict[str, Any] | None,
                 repeats: int) -> str:
    voxels = int(np.prod(series["shape"]))
    int16_bytes, float32_bytes = 2 * voxels, 4 * voxels
    lines = [
        f"Series: {'x'.join(map(str, series['shape']))} (i x j x k) uncompressed CT, "
        f"{series['bytes_on_disk'] / MIB:.0f} MiB on disk ("
        + ("reused" if series["reused"] else f"generated: phantom {series['phantom_s']} s, "
           f"DICOM write {series['write_s']} s") + "); files in the page cache (warm reads).",
        f"HU volume: {int16_bytes / MIB:.0f} MiB as int16, {float32_bytes / MIB:.0f} MiB as float32. "
        f"Time: best of {repeats} loads in one fresh subprocess per library; peak: largest RSS increase over the "
        "pre-load RSS across those loads (normally the first: allocators keep freed memory for reuse).",
        "",
        "| loader | version | output dtype | best (s) | median (s) | peak ΔRSS (MiB) | peak / int16 vol "
        "| peak / float32 vol | voxels = phantom |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['loader']} | – | – | – | – | – | – | – | error: {r['error']} |")
            continue
        peak = max(r["peaks_bytes"])
        matches = "yes" if r["sha256_int16"] == series["sha256_int16"] else "**no**"
        lines.append(
            f"| {r['loader']} | {r['version']} | {r['dtype']} | {min(r['times_s']):.2f} | "
            f"{statistics.median(r['times_s']):.2f} | {peak / MIB:.0f} | {peak / int16_bytes:.2f}x | "
            f"{peak / float32_bytes:.2f}x | {matches} |")
    lines.append("")
    if compare is not None:
        agree = compare["same_shape"] and compare["mismatched_voxels"] == 0
        lines.append(
            "medseg vs SimpleITK (medseg `.array.transpose(2, 1, 0)` vs SimpleITK (k, j, i) array): "
            + ("**identical**, " if agree else
               f"**DIFFER**: same shape {compare['same_shape']}, {compare['mismatched_voxels']} voxels differ "
               f"(max |diff| {compare['max_abs_diff']}), ")
            + f"affines differ by at most {compare['affine_max_abs_diff_mm']:.2g} mm.")
    by_name = {r["loader"]: r for r in results if "error" not in r}
    if "medseg" in by_name and "simpleitk" in by_name:
        ours, theirs = min(by_name["medseg"]["times_s"]), min(by_name["simpleitk"]["times_s"])
        verdict = "met" if ours <= theirs else "**NOT met**"
        lines.append(f"Target \"medseg no slower than SimpleITK\": {verdict} ({ours:.2f} s vs {theirs:.2f} s).")
    if "medseg" in by_name:
        ratio = max(by_name["medseg"]["peaks_bytes"]) / int16_bytes
        verdict = "met" if ratio < 2 else "**NOT met**"
        lines.append(f"Target \"medseg peak memory < 2x the HU volume\": {verdict} ({ratio:.2f}x int16 volume).")
    return "\n".join(lines)


def record(report: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else RESULTS_HEADER
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    section = (f"\n## io_bench: DICOM series loading ({dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z})\n\n"
               f"- Machine: {_machine()}\n- Command: `{command}` (from the repository root)\n"
               f"- Targets: {TARGETS}.\n\n{report}\n")
    RESULTS.write_text(text.rstrip("\n") + "\n" + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg_io_bench"), help="work folder (reused)")
    parser.add_argument("--repeats", type=int, default=3, help="loads per library (best time is reported)")
    parser.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS))
    parser.add_argument("--size", type=int, default=512, help="rows and columns per slice")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--record", action="store_true", help=f"append the results to {RESULTS.name}")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per loader subprocess")
    parser.add_argument("--one", choices=[*LOADERS, "compare"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.one:  # internal: one measurement in this (fresh) process, JSON on the last stdout line
        result = run_compare(args.folder) if args.one == "compare" else run_one(args.one, args.folder, args.repeats)
        print(json.dumps(result))
        return 0

    start = time.perf_counter()
    folder, series = ensure_series(args.work, args.size, args.slices)
    print(f"series: {folder} ({'reused' if series['reused'] else 'generated'})", file=sys.stderr)
    results = []
    for name in args.loaders:
        print(f"measuring {name} ...", file=sys.stderr)
        try:
            results.append(_subprocess_json(["--one", name, "--folder", str(folder), "--repeats",
                                             str(args.repeats)], args.timeout))
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            print(exc, file=sys.stderr)
            results.append({"loader": name, "error": str(exc).splitlines()[0][:120]})
    compare = None
    if {"medseg", "simpleitk"} <= set(args.loaders):
        compare = _subprocess_json(["--one", "compare", "--folder", str(folder)], args.timeout)
    report = build_report(results, series, compare, args.repeats)
    print(report)
    if args.record:
        record(report)
        print(f"\nappended to {RESULTS}", file=sys.stderr)
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
