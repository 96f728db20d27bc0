"""Radiograph classification throughput (target: >= 20 radiographs/s, DenseNet121 at 224 x 224, 2 CPU cores).

    .venv/bin/python benchmarks/cxr_classify_bench.py [--model CKPT] [--images DIR] [--count 256]
        [--size 224] [--batch-size 32] [--threads 2] [--device cpu|cuda]

Without --model a DenseNet121 checkpoint with random weights (6 classes, `--size` input, CLAHE chain) is
written to --work; speed does not depend on the weights. Without --images, `--count` synthetic 1024 x 1024
PA radiographs (PNG, `medseg synth cxr`) are generated once into --work. Reports the end-to-end rate of
`RadiographClassifier.classify` (read + CLAHE chain in reader threads, model, calls), the model-only rate on
preprocessed batches, and the preprocessing-only rate. The model is loaded (and, for CPU fp32, traced and
frozen: `trace_freeze_seconds`, which `medseg classify` spends once from 64 images on) before timing starts.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def ensure_images(work: Path, count: int) -> Path:
    folder = work / f"cxr_{count}"
    if not (folder / "manifest.yaml").is_file():
        from medseg.data.radiograph import synthesize_cxr_dataset

        synthesize_cxr_dataset(folder, cases=count, seed=21, size=1024, workers=2)
    return folder / "images"


def ensure_model(work: Path, size: int) -> Path:
    from medseg.models import ModelCard, create_model, save_checkpoint

    path = work / f"densenet121_random_{size}.safetensors"
    if not path.is_file():
        classes = ["nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation", "emphysema"]
        model = create_model("densenet121", in_channels=1, out_channels=len(classes))
        card = ModelCard.from_model(model, task="classification", labels=dict(enumerate(classes)),
                                    preprocessing={"modality": "xray", "image_size": [size, size],
                                                   "clahe": {"clip_limit": 2.0, "tile_grid": [8, 8]}},
                                    extra={"multilabel": True, "thresholds": dict.fromkeys(classes, 0.5)})
        save_checkpoint(path, model, card)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2, help="Classify the image list this many times over.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--eager", action="store_true", help="Do not trace + freeze the model (CPU fp32).")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medseg_cxr_bench")
    args = parser.parse_args()

    from medseg.infer.classify import RadiographClassifier, collect_radiographs

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    images = args.images or ensure_images(args.work, args.count)
    checkpoint = args.model or ensure_model(args.work, args.size)
    classifier = RadiographClassifier(checkpoint, device=args.device, batch_size=args.batch_size,
                                      precision=args.precision)
    items = collect_radiographs([images]).items
    size = classifier.preprocessing.image_size

    if args.eager:
        import medseg.infer.classify as classify_module

        classify_module.COMPILE_MIN_IMAGES = 10**9
    started = time.perf_counter()
    if not args.eager:
        classifier.compile_for_cpu()
    compile_seconds = time.perf_counter() - started
    warm = np.zeros((2, 1, *size), dtype=np.float32)
    classifier.predict(warm)
    items = items * args.passes
    started = time.perf_counter()
    results = list(classifier.classify(items, readers=args.readers))
    end_to_end = time.perf_counter() - started
    failed = sum(r.error is not None for r in results)

    started = time.perf_counter()
    prepared = np.stack([classifier.prepare(item.path) for item in items[:64]])
    preprocess = (time.perf_counter() - started) / len(prepared)
    batch = np.repeat(prepared, max(1, -(-len(items) // len(prepared))), axis=0)[: len(items)]
    started = time.perf_counter()
    for start in range(0, len(batch), args.batch_size):
        classifier.predict(batch[start:start + args.batch_size])
    model_only = time.perf_counter() - started

    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "threads": args.threads, "device": args.device, "precision": args.precision, "eager": args.eager,
        "architecture": classifier.card.architecture,
        "input_size": list(size), "images": len(items), "failed": failed, "batch_size": args.batch_size,
        "trace_freeze_seconds": round(compile_seconds, 2),
        "end_to_end_images_per_s": round(len(items) / end_to_end, 1),
        "model_only_images_per_s": round(len(items) / model_only, 1),
        "preprocess_ms_per_image_single_thread": round(preprocess * 1000, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
