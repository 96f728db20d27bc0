"""Training data for radiograph classification: manifest cases -> preprocessed images in memory -> batches.

Every image is read once (`read_radiograph`: PNG, JPEG or DICOM), put through the checkpoint's X-ray chain
(min-max, letterbox to `image_size`, CLAHE) exactly as `medseg classify` does, and kept as float16. The
stack is cached as `.npy` keyed by the files and the preprocessing, so a second run on the same data starts
at once. Batches: uniform or class-balanced sampling, per-sample augmentation, optional MixUp/CutMix.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ClassificationBatches", "ClassificationSet", "load_classification_set", "preprocess_images"]

_CACHE_VERSION = 1


@dataclass
class ClassificationSet:
    """Images `(N, H, W)` float16 in [0, 1] and targets `(N, C)` float32 (0/1) for `classes`."""

    case_ids: list[str]
    image_ids: list[str]
    images: np.ndarray
    targets: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def positives(self) -> list[int]:
        return [int(n) for n in self.targets.sum(axis=0)]


def _targets(records: Sequence[Any], classes: Sequence[str], unknown: str, manifest: Path) -> np.ndarray:
    targets = np.zeros((len(records), len(classes)), dtype=np.float32)
    for row, record in enumerate(records):
        for column, name in enumerate(classes):
            value = record.labels.get(name)
            if name not in record.labels:
                raise ConfigError(f"case {record.case_id} has no label for class {name!r}", manifest)
            if value is None:
                if unknown == "error":
                    raise ConfigError(f"case {record.case_id}: label {name!r} is null (uncertain); set "
                                      "data.unknown_labels to zeros or ones to train with it", manifest)
                value = 1 if unknown == "ones" else 0
            if value not in (0, 1):
                raise ConfigError(f"case {record.case_id}: label {name!r} must be 0 or 1, got {value!r}", manifest)
            targets[row, column] = float(value)
    return targets


def _cache_key(paths: Sequence[Path], preprocessing: dict[str, Any]) -> str:
    stamps = [(str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)) for p in paths]
    payload = json.dumps([_CACHE_VERSION, stamps, preprocessing], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def preprocess_images(paths: Sequence[Path], preprocessing, *, threads: int = 2, progress: bool = True,
                      description: str = "preprocessing radiographs") -> np.ndarray:
    """`(N, H, W)` float16: each file read and put through the X-ray chain of `preprocessing` (whose output is
    float16-valued, so this is the exact model input `medseg classify` builds for the same file)."""
    from medseg.progress import progress_bar
    from medseg.readahead import read_ahead
    from medseg.transforms.chains import build_xray_chain, prepare_radiograph

    chain = build_xray_chain(preprocessing)
    threads = max(1, threads)

    def one(path: Path) -> np.ndarray:
        return prepare_radiograph(path, chain)[0].astype(np.float16)

    out: list[np.ndarray] = []
    with progress_bar(len(paths), description, enabled=progress) as advance:
        for loaded in read_ahead(paths, one, ahead=2 * threads, workers=threads):
            out.append(loaded.value)
            advance()
    return np.stack(out) if out else np.zeros((0, *preprocessing.image_size), dtype=np.float16)


def load_classification_set(manifest_path: Path, splits: Sequence[str], preprocessing, *,
                            classes: Sequence[str] | None = None, unknown_labels: str = "error",
                            cache_dir: Path | None = None, progress: bool = True) -> ClassificationSet:
    """The cases of `splits` in a classification manifest, preprocessed (or read from the cache)."""
    from medseg.data.manifest import load_manifest, resolve_path

    manifest = load_manifest(manifest_path)
    if manifest.task != "classification":
        raise ConfigError(f"a classification run needs a classification manifest, this one is {manifest.task!r}",
                          manifest_path)
    names = list(classes or manifest.class_names)
    unknown = sorted(set(names) - set(manifest.class_names))
    if unknown:
        raise ConfigError(f"classes {unknown} are not in the manifest's label_map {manifest.class_names}",
                          manifest_path)
    records = [case for case in manifest.cases if case.split in splits]
    if not records:
        raise ConfigError(f"no cases in splits {list(splits)} (splits present: "
                          f"{sorted({str(c.split) for c in manifest.cases})})", manifest_path)
    base = Path(manifest_path).parent
    paths = [resolve_path(base, case.image) for case in records]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} image files are missing, e.g. {missing[0]}", manifest_path)
    targets = _targets(records, names, unknown_labels, Path(manifest_path))

    settings = preprocessing.model_dump(mode="json")
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"cxr-{_cache_key(paths, settings)}.npy"
    if cached is not None and cached.is_file():
        images = np.load(cached)
        log.info("read %d preprocessed radiographs from %s", len(images), cached)
    else:
        images = preprocess_images(paths, preprocessing, progress=progress,
                                   description=f"preprocessing {'/'.join(splits)} radiographs")
        if cached is not None:
            from medseg.io.atomic import atomic_path

            with atomic_path(cached) as temporary:
                np.save(temporary, images)
    return ClassificationSet([c.case_id for c in records], [c.image for c in records], images, targets, names)


class ClassificationBatches:
    """Endless augmented batches `(B, 1, H, W)`, targets `(B, C)` float, seeded by (seed, epoch)."""

    def __init__(self, data: ClassificationSet, augmentation, batch_size: int, seed: int, *,
                 sample_weights: np.ndarray | None = None, mixer=None) -> None:
        from medseg.transforms import segmentation_augmentation

        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.sample_weights = sample_weights
        self.mixer = mixer
        self.augment = segmentation_augmentation(augmentation, label_key=None) if augmentation else None

    def _order(self, rng: np.random.Generator) -> Iterator[int]:
        n = len(self.data)
        while True:
            if self.sample_weights is None:
                yield from rng.permutation(n)
            else:
                yield from rng.choice(n, size=n, replace=True, p=self.sample_weights)

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
        order = self._order(rng)
        while True:
            indices = [next(order) for _ in range(self.batch_size)]
            images = []
            for index in indices:
                image = torch.from_numpy(self.data.images[index].astype(np.float32))[None]
                if self.augment is not None:
                    image = torch.as_tensor(self.augment({"image": image})["image"])
                    image = image.as_tensor() if hasattr(image, "as_tensor") else image
                images.append(image)
            batch = torch.stack(images).float()
            targets = torch.from_numpy(self.data.targets[indices])
            if self.mixer is not None:
                batch, targets = self.mixer(batch, targets)
            yield batch, targets
