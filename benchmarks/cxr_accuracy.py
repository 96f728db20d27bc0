"""Chest X-ray classification accuracy on a held-out synthetic set, for one or more trained models.

    medseg synth cxr --cases 400 --out data/cxr-test --seed 12 --size 256 --workers 2
    .venv/bin/python benchmarks/cxr_accuracy.py --test data/cxr-test \\
        --model weighted=runs/cxr/best.safetensors --model unweighted=runs/cxr-unweighted/best.safetensors

For each model: `medseg classify <test manifest> --model M --out preds.csv`, then `medseg evaluate cls`
against the set's labels.csv (stratified bootstrap CIs, the model's stored operating points); later models
are also compared with the first (DeLong). Prints macro AUC [95 % CI], per-class AUC, and for the rarest
finding of the test set (fewest positives) the sensitivity at 90 % specificity and at the stored operating point; writes
everything under --out (one report folder per model) plus summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stdout}\n{result.stderr}")


def interval(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, required=True, help="Dataset folder from `medseg synth cxr`.")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CKPT")
    parser.add_argument("--out", type=Path, default=Path("runs/cxr-accuracy"))
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    medseg = str(Path(sys.executable).parent / "medseg")
    models = dict(item.split("=", 1) for item in args.model)
    labels = args.test / "labels.csv"
    summary: dict[str, dict] = {}
    first_preds = None
    for name, checkpoint in models.items():
        folder = args.out / name
        preds = folder / "preds.csv"
        started = time.perf_counter()
        run([medseg, "classify", str(args.test / "manifest.yaml"), "--model", checkpoint, "--out", str(preds)])
        seconds = time.perf_counter() - started
        command = [medseg, "evaluate", "cls", "--pred", str(preds), "--labels", str(labels), "--out",
                   str(folder / "report"), "--resamples", str(args.resamples)]
        if first_preds is not None:
            command += ["--compare", str(first_preds)]
        run(command)
        first_preds = first_preds or preds
        report = json.loads((folder / "report" / "report.json").read_text())
        per_class = {c["name"]: c for c in report["per_class"]}
        rarest = min(per_class.values(), key=lambda c: c["positives"])
        summary[name] = {
            "checkpoint": checkpoint, "classify_seconds": round(seconds, 1), "n_images": report["n_images"],
            "macro_auc": report["summary"]["macro_auc"],
            "auc": {k: c["auc"] for k, c in per_class.items()},
            "sensitivity_at_90_specificity": {k: c["sensitivity_at_specificity"] for k, c in per_class.items()},
            "operating_point": {k: {m: c["operating_point"]["metrics"][m]["value"] for m in
                                    ("sensitivity", "specificity", "ppv")} | {
                "threshold": c["operating_point"]["threshold"]} for k, c in per_class.items()},
            "rarest": rarest["name"], "rarest_positives": rarest["positives"],
            "rarest_sensitivity_at_90_specificity": rarest["sensitivity_at_specificity"],
            "rarest_operating_point": {k: rarest["operating_point"]["metrics"][k] for k in
                                       ("sensitivity", "specificity")} | {
                "threshold": rarest["operating_point"]["threshold"]},
            "comparison": [{k: row[k] for k in ("name", "auc_a", "auc_b", "difference", "z", "p_value")}
                           for row in report.get("comparison") or []],
        }
        print(f"== {name}: {checkpoint} ({report['n_images']} images, classify {seconds:.1f} s incl. start-up)")
        print(f"   macro AUC {interval(report['summary']['macro_auc'])}")
        for k, c in per_class.items():
            print(f"   {k:<14} positives {c['positives']:>3}  AUC {interval(c['auc'])}  sens@90%spec "
                  f"{interval(c['sensitivity_at_specificity'])}")
        print(f"   rarest finding {rarest['name']} ({rarest['positives']} positives): sensitivity at 90 % "
              f"specificity {interval(rarest['sensitivity_at_specificity'])}; at the stored operating point "
              f"sens {interval(rarest['operating_point']['metrics']['sensitivity'])}, "
              f"spec {interval(rarest['operating_point']['metrics']['specificity'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"reports: {args.out}/<model>/report/report.html; summary: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
