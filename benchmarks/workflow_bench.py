"""Batch throughput of `medseg run` on chest CT studies (target: >= 4 studies/min at 512x512x~200, 2 cores).

    .venv/bin/python benchmarks/workflow_bench.py --model runs/lobes/best.safetensors [--studies 6]
        [--size 512 --slices 200] [--work DIR] [--no-seg]

Generates `--studies` phantom DICOM studies once (seeds 50..), then runs a workflow in a fresh process:
segment_lobes -> statistics -> export (NIfTI, DICOM SEG, overlays), timing the whole command (model loaded
once, discovery, reading, everything written). Reports studies/min and the per-stage means from run.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WORKFLOW = """\
version: 1
name: bench-lobes
inputs: {{path: {studies}, series: {{min_slices: 30}}}}
steps:
  - segment_lobes: {{model: {model}}}
  - statistics
  - export: {{nifti: true, dicom_seg: {seg}, overlays: true, review_html: false}}
output: {{dir: {out}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg_workflow_bench"))
    parser.add_argument("--no-seg", action="store_true", help="Leave out the DICOM SEG export.")
    args = parser.parse_args()

    from medseg.data.phantom.ct_case import synth_ct_case

    studies = args.work / f"studies_{args.size}x{args.slices}"
    for n in range(args.studies):
        if not (studies / f"s{n:02d}" / "ct").is_dir():
            synth_ct_case(studies / f"s{n:02d}", 50 + n, size=args.size, slices=args.slices)
    out = args.work / "out"
    workflow = args.work / "bench.yaml"
    workflow.write_text(WORKFLOW.format(studies=studies.resolve(), model=args.model.resolve(),
                                        seg=str(not args.no_seg).lower(), out=out.resolve()))
    command = [str(Path(sys.executable).parent / "medseg"), "--quiet", "run", str(workflow), "--force"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(result.stdout + result.stderr)
    record = json.loads((out / "run.json").read_text())
    done = [c for c in record["cases"] if c["status"] == "done"]
    stages = sorted({k for c in done for k in c["timings"]})
    print(json.dumps({
        "studies": len(done), "size": [args.size, args.size, args.slices], "dicom_seg": not args.no_seg,
        "wall_s": round(seconds, 1), "studies_per_min": round(60 * len(done) / seconds, 2),
        "mean_stage_s": {k: round(sum(c["timings"].get(k, 0) for c in done) / len(done), 2) for k in stages},
        "failed": [c["reason"] for c in record["cases"] if c["status"] != "done"],
    }, indent=2))


if __name__ == "__main__":
    main()
