"""Lungs and lobes on every real chest CT in ../shared, with label-free figures and an overlay per case.

    .venv/bin/python benchmarks/real_ct.py --model runs/lobes/best.safetensors [--tta both|on|off]
        [--shared ../shared] [--out /tmp/medseg_real_ct]

Cases (REAL scans, see ../shared/realdata*/README.md): the four Lung-PET-CT-Dx whole-thorax series (two
patients, two reconstruction kernels each), the abdomen reaching the lung bases (TotalSegmentator lobes as
reference), the chest CTA crop. Without `--model` only the classical lung mask is measured.

Figures (one table, also written as JSON and markdown under --out, with a montage PNG per case to look at):
- lung mask: right / left mL, right share (expected 35-65 %), lung outside the body (mL), sides correct
  (right-lung centroid to the patient's right of the left one);
- lobes: per-lobe shares against the published mean +/- 3 SD (configs/qc/lobes.yaml), anatomical order
  (left lobes left of right lobes, upper lobes above their lower lobe, RML anterior to the RLL) and the other
  label-free QC flags, all from `medseg.export.statistics` (what every output gets), lobe-output lungs vs the
  classical lung mask;
- kernel consistency: per-lobe Dice between the two reconstructions of one acquisition (L vs B, B70f vs B40f);
- abdomen_lung_bases vs TotalSegmentator: lungs Dice of the lung mask and of the lobe output, per-lobe Dice
  where TotalSegmentator has the lobe;
- with `--tta both`: every lobe figure with and without left-right flip TTA.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

TOTALSEG_LOBES = {10: "LUL", 11: "LLL", 12: "RUL", 13: "RML", 14: "RLL"}
"""Label values of ../shared/realdata/nifti/abdomen_lung_bases/example_seg.nii.gz (its README)."""
KERNEL_PAIRS = (("Lung_Dx-A0001_L", "Lung_Dx-A0001_B"), ("Lung_Dx-A0002_B70f", "Lung_Dx-A0002_B40f"))


@dataclass
class Case:
    name: str
    path: Path
    reference: Path | None = None
    notes: list[str] = field(default_factory=list)


def real_cases(shared: Path) -> list[Case]:
    """Every real chest CT under `shared` that is present."""
    cases = []
    cohort = shared / "realdata_cohorts" / "ct_lung_pet_ct_dx"
    if (cohort / "SERIES.csv").exists():
        for row in csv.DictReader((cohort / "SERIES.csv").open()):
            cases.append(Case(f"{row['patient_id']}_{row['kernel']}", cohort / row["series_dir"]))
    nifti = shared / "realdata" / "nifti"
    abdomen = nifti / "abdomen_lung_bases"
    if (abdomen / "example_ct_sm.nii.gz").exists():
        cases.append(Case("abdomen_lung_bases", abdomen / "example_ct_sm.nii.gz", abdomen / "example_seg.nii.gz"))
    if (nifti / "chest_cta_crop" / "ct_cropped.nii.gz").exists():
        cases.append(Case("chest_cta_crop", nifti / "chest_cta_crop" / "ct_cropped.nii.gz"))
    return cases


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return float("nan") if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def centroids_ras(labels: np.ndarray, affine: np.ndarray, values: list[int]) -> dict[int, np.ndarray]:
    """RAS centroid (mm) of each present label."""
    found = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, values)
    return {v: affine[:3, :3] @ np.asarray(c) + affine[:3, 3] for v, c in zip(values, found, strict=True)
            if np.all(np.isfinite(c))}


def lung_figures(volume: Any, lungs: np.ndarray) -> dict[str, Any]:
    from medseg.infer.lungmask import LEFT_LUNG, RIGHT_LUNG, body_mask

    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    right, left = np.count_nonzero(lungs == RIGHT_LUNG), np.count_nonzero(lungs == LEFT_LUNG)
    centres = centroids_ras(lungs, volume.affine, [RIGHT_LUNG, LEFT_LUNG])
    body = body_mask(volume)
    return {"right_ml": right * voxel_ml, "left_ml": left * voxel_ml,
            "right_share": right / max(right + left, 1),
            "sides_ok": len(centres) == 2 and centres[RIGHT_LUNG][0] > centres[LEFT_LUNG][0],
            "outside_body_ml": np.count_nonzero((lungs > 0) & ~body) * voxel_ml}


def lobe_figures(volume: Any, lobes: np.ndarray, lungs: np.ndarray, label_map: Any) -> dict[str, Any]:
    """Shares and the label-free QC of `medseg.export.statistics` (the checks every output gets)."""
    from medseg.export.statistics import lobe_statistics

    stats = lobe_statistics(volume, lobes, label_map)
    names = label_map.short_names()
    counts = {names[v]: int(np.count_nonzero(lobes == v)) for v in names}
    total = max(sum(counts.values()), 1)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    flags = [flag for flag in stats.flags if flag.code != "touches_fov_edge"]
    return {"ml": {n: c * voxel_ml for n, c in counts.items()},
            "share_percent": {n: 100.0 * c / total for n, c in counts.items()},
            "all_five": all(c > 0 for c in counts.values()),
            "shares_outside_range": [f.label for f in flags if f.code == "volume_out_of_range" and f.label],
            "order_problems": [f.message for f in flags if f.code == "lobes_out_of_order"],
            "qc_flags": sorted({f.code for f in flags}),
            "lungs_dice_vs_lung_mask": dice(lobes > 0, lungs > 0)}


def reference_figures(case: Case, lungs: np.ndarray, lobes: np.ndarray | None, names: dict[int, str]
                      ) -> dict[str, Any]:
    from medseg.io import load_volume

    reference = np.asarray(load_volume(case.reference).array)
    reference_lungs = np.isin(reference, list(TOTALSEG_LOBES))
    figures: dict[str, Any] = {"lung_mask_dice": dice(lungs > 0, reference_lungs),
                               "trachea_in_lungs_voxels": int(np.count_nonzero((lungs > 0) & (reference == 16)))}
    if lobes is not None:
        value = {short: v for v, short in names.items()}
        figures["lobes_lungs_dice"] = dice(lobes > 0, reference_lungs)
        figures["lobe_dice"] = {short: dice(lobes == value[short], reference == ts)
                                for ts, short in TOTALSEG_LOBES.items() if np.any(reference == ts)}
    return figures


def montage(volume: Any, labels: np.ndarray, label_map: Any, path: Path, title: str) -> None:
    from medseg.export.overlay import save_label_montage

    save_label_montage(volume, labels, path, label_map=label_map, title=title)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from medseg.infer.lungmask import lung_mask
    from medseg.io import load_volume

    cases = real_cases(args.shared)
    if not cases:
        raise SystemExit(f"no real CT found under {args.shared} (see its README)")
    args.out.mkdir(parents=True, exist_ok=True)
    segmenters = {}
    if args.model:
        from medseg.infer.segment import LobeSegmenter

        modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.tta]
        segmenters = {tta: LobeSegmenter(args.model, tta=tta) for tta in modes}
    results: dict[str, Any] = {"model": str(args.model) if args.model else None, "cases": {}}
    outputs: dict[tuple[str, bool], np.ndarray] = {}
    for case in cases:
        volume = load_volume(case.path)
        started = time.perf_counter()
        lungs = lung_mask(volume)
        row: dict[str, Any] = {"shape": list(volume.shape), "spacing": [round(s, 3) for s in volume.spacing],
                               "lung_mask_s": time.perf_counter() - started, "lungs": lung_figures(volume, lungs)}
        montage(volume, lungs, "lungs", args.out / f"{case.name}_lungs.png", f"{case.name} lung mask")
        for tta, segmenter in segmenters.items():
            started = time.perf_counter()
            result = segmenter(volume)
            key = "lobes_tta" if tta else "lobes"
            lobes = np.asarray(result.labels.array)
            outputs[(case.name, tta)] = lobes
            names = segmenter.label_map.short_names()
            row[key] = lobe_figures(volume, lobes, lungs, segmenter.label_map)
            row[key]["seconds"] = time.perf_counter() - started
            if case.reference:
                row[key]["reference"] = reference_figures(case, lungs, lobes, names)
            montage(volume, lobes, segmenter.label_map, args.out / f"{case.name}_{key}.png",
                    f"{case.name} {key}")
        if case.reference:
            row["lungs"]["reference"] = reference_figures(case, lungs, None, {})
        results["cases"][case.name] = row
        print(f"{case.name}: {json.dumps(_rounded(row))}", flush=True)
    for tta in segmenters:
        names = segmenters[tta].label_map.short_names()
        for first, second in KERNEL_PAIRS:
            if (first, tta) in outputs and (second, tta) in outputs:
                a, b = outputs[(first, tta)], outputs[(second, tta)]
                results.setdefault("kernel_consistency", {})[f"{first} vs {second}{' tta' if tta else ''}"] = {
                    short: dice(a == v, b == v) for v, short in names.items()}
    (args.out / "real_ct.json").write_text(json.dumps(_rounded(results), indent=2))
    table = markdown(results)
    (args.out / "real_ct.md").write_text(table)
    print(table)
    return results


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else round(float(value), 3)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def markdown(results: dict[str, Any]) -> str:
    lines = ["| case | R mL | L mL | R share | sides | outside body mL | lobes: shares (%) | order | QC flags "
             "| lobes vs mask Dice |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["cases"].items():
        lung = row["lungs"]
        for key in ("lobes", "lobes_tta"):
            lobes = row.get(key)
            if key == "lobes_tta" and lobes is None:
                continue
            shares = order = stray = agree = "-"
            if lobes:
                shares = " ".join(f"{n} {s:.0f}" for n, s in lobes["share_percent"].items())
                if lobes["shares_outside_range"]:
                    shares += " (out: " + ", ".join(lobes["shares_outside_range"]) + ")"
                order = "ok" if not lobes["order_problems"] else "; ".join(lobes["order_problems"])
                stray, agree = ", ".join(lobes["qc_flags"]) or "-", f"{lobes['lungs_dice_vs_lung_mask']:.3f}"
            label = name + (" (TTA)" if key == "lobes_tta" else "")
            lines.append(f"| {label} | {lung['right_ml']:.0f} | {lung['left_ml']:.0f} | {lung['right_share']:.2f} | "
                         f"{'ok' if lung['sides_ok'] else 'WRONG'} | {lung['outside_body_ml']:.1f} | {shares} | "
                         f"{order} | {stray} | {agree} |")
    for name, row in results["cases"].items():
        for key in ("lungs", "lobes", "lobes_tta"):
            reference = (row.get(key) or {}).get("reference")
            if reference:
                text = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in reference.items()
                                 if not isinstance(v, dict) and v is not None)
                per = reference.get("lobe_dice")
                if per:
                    text += "; per lobe " + " ".join(f"{k} {v:.3f}" for k, v in per.items())
                lines.append(f"\n{name} vs TotalSegmentator ({key}): {text}")
    for pair, scores in results.get("kernel_consistency", {}).items():
        lines.append(f"\nkernel consistency {pair}: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="lobe checkpoint (omit: lung mask only)")
    parser.add_argument("--tta", choices=("both", "on", "off"), default="off")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medseg_real_ct"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
