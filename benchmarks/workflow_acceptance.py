"""Issue #6 acceptance: 20 studies + broken inputs through workflows/lung_lobes_ct.yaml, kill -9, rerun.

    .venv/bin/python benchmarks/workflow_acceptance.py --model runs/lobes/best.safetensors \
        [--studies 20] [--size 512 --slices 200] [--kill-after 8] [--work DIR]

1. Builds a tree: `--studies` phantom CT studies (seeds 100..) plus a study with a truncated DICOM file, one
   with a missing slice, an MR series and a folder of non-DICOM files.
2. Runs `medseg run workflows/lung_lobes_ct.yaml --input TREE --output OUT` in a fresh process; a watcher
   thread checks every 20 ms that no visible case folder lacks its case.json (no partial output); after
   `--kill-after` cases the process gets SIGKILL.
3. Reruns: finished cases must be skipped, the rest done, each broken input reported with its reason.
4. Reads one case's DICOM SEG with highdicom and pydicom: its frames must lie on source slice positions and
   describe the same voxels as the NIfTI.
Prints a JSON summary (and writes it to OUT/acceptance.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_tree(tree: Path, studies: int, size: int, slices: int) -> None:
    from medseg.data.phantom.ct_case import synth_ct_case
    from medseg.io.dicom_write import SeriesInfo, write_ct_series

    for n in range(studies):
        if not (tree / f"study_{n:02d}" / "ct").is_dir():
            synth_ct_case(tree / f"study_{n:02d}", 100 + n, size=size, slices=slices)
    if not (tree / "broken_truncated").is_dir():
        folder = synth_ct_case(tree / "broken_truncated", 90, size=size, slices=slices).folder / "ct"
        victim = sorted(folder.iterdir())[slices // 2]
        victim.write_bytes(victim.read_bytes()[: -size * size])               # pixel data cut short
    if not (tree / "broken_gap").is_dir():
        folder = synth_ct_case(tree / "broken_gap", 91, size=size, slices=slices).folder / "ct"
        sorted(folder.iterdir())[slices // 3].unlink()                        # a missing slice
    if not (tree / "broken_mr").is_dir():
        write_ct_series(np.full((64, 64, 40), 300, np.int16), np.diag([3.0, 3.0, 4.0, 1.0]), tree / "broken_mr",
                        SeriesInfo(modality="MR"))
    notes = tree / "broken_not_dicom"
    if not notes.is_dir():
        notes.mkdir(parents=True)
        (notes / "report.txt").write_text("referral letter, not an image\n")
        (notes / "scan.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(2048))


class PartialWatcher(threading.Thread):
    """Looks at the run folder every 20 ms: a visible case folder without case.json is a partial output."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.stop, self.looks, self.partial = out, threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            if self.out.is_dir():
                for folder in self.out.iterdir():
                    visible = folder.is_dir() and not folder.name.startswith(".") and folder.name != "auc_report"
                    if visible and not (folder / "case.json").is_file() and folder.exists():
                        self.partial.append(str(folder))
                self.looks += 1
            time.sleep(0.02)


def run(command: list[str], out: Path, kill_after: int | None) -> tuple[int, float, int]:
    """(return code, seconds, cases done when killed)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = 0
    while process.poll() is None:
        time.sleep(0.2)
        if kill_after is None:
            continue
        try:
            record = json.loads((out / "run.json").read_text())
        except (OSError, ValueError):
            continue
        done = record.get("counts", {}).get("done", 0)
        if done >= kill_after:
            process.send_signal(signal.SIGKILL)
            process.wait()
            break
    output = process.stdout.read() if process.stdout else ""
    if kill_after is None and process.returncode != 0:
        sys.exit(output)
    return process.returncode, time.perf_counter() - started, done


def check_seg(case: Path, source: Path) -> dict:
    import highdicom as hd
    import pydicom

    from medseg.export.dicom_seg import read_dicom_seg_labels
    from medseg.io import load_volume, read_nifti

    seg_path = case / "lobes_seg.dcm"
    seg = hd.seg.segread(seg_path)
    raw = pydicom.dcmread(seg_path)
    volume = load_volume(source)
    normal = volume.affine[:3, 2] / np.linalg.norm(volume.affine[:3, 2])
    slice_positions = {round(float(np.dot(volume.affine[:3, :3] @ [0, 0, k] + volume.affine[:3, 3], normal)), 3)
                       for k in range(volume.shape[2])}
    lps = np.array([[float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
                    for frame in raw.PerFrameFunctionalGroupsSequence])
    ras = lps * np.array([-1, -1, 1])
    frame_positions = {round(float(np.dot(p, normal)), 3) for p in ras}
    off_slice = sorted(frame_positions - slice_positions)
    nifti = read_nifti(case / "lobes.nii.gz")
    from_seg = read_dicom_seg_labels(seg_path, volume)
    return {"segments": len(seg.SegmentSequence), "frames": int(raw.NumberOfFrames),
            "frames_off_source_slices": len(off_slice), "nifti_equals_seg": bool(np.array_equal(nifti.array, from_seg)),
            "nifti_affine_max_diff_mm": float(np.abs(nifti.affine - volume.affine).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--kill-after", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg_workflow_acceptance"))
    args = parser.parse_args()

    tree, out = args.work / "tree", args.work / "out"
    started = time.perf_counter()
    build_tree(tree, args.studies, args.size, args.slices)
    build_seconds = time.perf_counter() - started
    if out.exists():
        import shutil

        shutil.rmtree(out)
    workflow = ROOT / "workflows" / "lung_lobes_ct.yaml"
    command = [str(Path(sys.executable).parent / "medseg"), "--quiet", "run", str(workflow), "--input", str(tree),
               "--output", str(out), "--set", f"steps.1.model={args.model.resolve()}"]
    watcher = PartialWatcher(out)
    watcher.start()
    code, first_seconds, killed_at = run(command, out, args.kill_after)
    after_kill = json.loads((out / "run.json").read_text())
    visible = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    _, second_seconds, _ = run(command, out, None)
    watcher.stop.set()
    watcher.join()
    record = json.loads((out / "run.json").read_text())
    cases = record["cases"]
    broken = {Path(c["source"]).name if not c["case_id"] else c["case_id"]: f"{c['status']}: {c['reason']}"
              for c in cases if c["status"] in ("failed", "input_problem")}
    done_before = set(visible)
    skipped = {c["case_id"] for c in cases if c["status"] == "skipped"}
    first_case = next(c for c in cases if c["status"] in ("done", "skipped") and c["case_id"].startswith("study_"))
    summary = {
        "tree": str(tree), "studies": args.studies, "matrix": f"{args.size}x{args.size}x{args.slices}",
        "build_seconds": round(build_seconds, 1),
        "first_run": {"returncode": code, "seconds": round(first_seconds, 1), "killed_after_done": killed_at,
                      "case_folders_after_kill": len(visible), "counts_in_run_json": after_kill["counts"]},
        "second_run": {"seconds": round(second_seconds, 1), "counts": record["counts"]},
        "skipped_equals_done_before_kill": skipped == done_before,
        "partial_case_folders_seen": len(watcher.partial), "watcher_looks": watcher.looks,
        "partial_dir_left": (out / ".partial").exists(),
        "broken_inputs": broken,
        "seg_check": {first_case["case_id"]: check_seg(out / first_case["case_id"], Path(first_case["source"]))},
        "review_index": (out / "index.html").is_file(),
    }
    (out / "acceptance.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
