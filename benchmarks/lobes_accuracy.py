"""Lobe accuracy on held-out phantoms (target: mean lobe Dice >= 0.93, every lobe >= 0.88 on 10 cases).

    .venv/bin/python benchmarks/lobes_accuracy.py --model runs/lobes/best.safetensors
        [--cases 10] [--seed 2] [--size 512] [--work DIR] [--tta]

Generates the held-out cases once (`medseg synth ct --seed 2`, a different seed from the training data),
segments each with one loaded model (`LobeSegmenter`, the code behind `medseg segment`), and scores the
labels against each case's `lobes.nii.gz` on the source grid with `medseg.evaluate` (Dice, HD95, ...).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def ensure_cases(work: Path, cases: int, seed: int, size: int) -> Path:
    from medseg.data.phantom.ct_case import synth_ct_dataset

    folder = work / f"heldout_seed{seed}_n{cases}_size{size}"
    if not (folder / "manifest.yaml").exists():
        synth_ct_dataset(folder, cases=cases, seed=seed, size=size)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medseg_lobes_accuracy")
    parser.add_argument("--json", type=Path, help="also write the per-case scores here")
    args = parser.parse_args()

    from medseg.evaluate.segmentation import compare_labels
    from medseg.infer.segment import LobeSegmenter
    from medseg.io import load_volume
    from medseg.labels import label_map

    folder = ensure_cases(args.work, args.cases, args.seed, args.size)
    segmenter = LobeSegmenter(args.model, tta=args.tta)
    lobes = label_map("lobes")                      # the phantoms' lobes.nii.gz convention
    names = lobes.short_names()
    to_reference = np.zeros(256, dtype=np.uint8)    # the model's values -> the reference's, by name
    for label in segmenter.label_map.foreground:
        to_reference[label.value] = lobes.by_name(label.name).value
    rows = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        volume = load_volume(case / "ct")
        reference = load_volume(case / "lobes.nii.gz")
        started = time.perf_counter()
        result = segmenter(volume)
        seconds = time.perf_counter() - started
        scores = compare_labels(to_reference[result.labels.array], reference.array, volume.spacing, names)
        findings = [f["kind"] for f in json.loads((case / "findings.json").read_text()).get("findings", [])]
        dice = {name: scores[name].dice for name in names.values()}
        rows.append({"case": case.name, "shape": list(volume.shape), "seconds": seconds, "findings": findings,
                     "dice": dice, "hd95_mm": {n: scores[n].hd95_mm for n in names.values()}})
        print(f"{case.name} {volume.shape} {seconds:5.1f} s  " + " ".join(f"{n} {d:.3f}" for n, d in dice.items())
              + f"  mean {np.mean(list(dice.values())):.3f}  {','.join(findings) or '-'}", flush=True)
    per_lobe = {name: float(np.mean([r["dice"][name] for r in rows])) for name in names.values()}
    mean = float(np.mean(list(per_lobe.values())))
    print("mean per lobe: " + " ".join(f"{n} {d:.3f}" for n, d in per_lobe.items()) + f" | mean {mean:.3f}")
    print(f"worst case-lobe: {min(min(r['dice'].values()) for r in rows):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"per_lobe": per_lobe, "mean": mean, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
