"""Radiograph classification inference: inputs -> probabilities and yes/no calls per class.

    classifier = RadiographClassifier("runs/cxr/best.safetensors")
    for result in classifier.classify(collect_radiographs(["scans/", "extra.png"]).items):
        print(result.item.image_id, result.probabilities, result.calls, result.error)

Files are read and preprocessed (the checkpoint's own X-ray chain) in background threads while the model
runs on the previous batch; a file that cannot be read becomes a result with an `error`, the rest go on.
Calls use the per-class thresholds stored in the checkpoint by `medseg train` (score >= threshold).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.errors import ConfigError, InputError, MedsegError

log = logging.getLogger(__name__)

__all__ = ["ClassificationResult", "RadiographClassifier", "RadiographInput", "RadiographInputs",
           "collect_radiographs"]

_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
COMPILE_MIN_IMAGES = 64
"""From this many images on, CPU fp32 inference traces and freezes the model first (`compile_for_cpu`)."""


@dataclass(frozen=True)
class RadiographInput:
    path: Path
    image_id: str
    """What the `image` column of the predictions says: the manifest's image entry, or the path as found."""


@dataclass
class RadiographInputs:
    items: list[RadiographInput] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for files in input folders that are not radiographs."""


def _from_manifest(path: Path, splits: Sequence[str] | None) -> list[RadiographInput]:
    from medseg.data.manifest import load_manifest, resolve_path

    manifest = load_manifest(path)
    cases = [case for case in manifest.cases if not splits or case.split in splits]
    if not cases:
        raise InputError(f"no cases{f' in splits {list(splits)}' if splits else ''} in this manifest", path)
    return [RadiographInput(resolve_path(path.parent, case.image), case.image) for case in cases]


def collect_radiographs(inputs: Iterable[str | os.PathLike[str]], *, splits: Sequence[str] | None = None
                        ) -> RadiographInputs:
    """Radiographs named by `inputs`: image/DICOM files, folders (searched recursively) or manifests."""
    from medseg.io.xray import is_radiograph_file

    found = RadiographInputs()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError("no such file or folder", path)
        if path.is_file() and path.suffix.lower() in _MANIFEST_SUFFIXES:
            found.items.extend(_from_manifest(path, splits))
        elif path.is_file():
            found.items.append(RadiographInput(path, str(raw)))
        else:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in file.relative_to(path).parts):
                    continue
                if is_radiograph_file(file):
                    found.items.append(RadiographInput(file, str(file)))
                else:
                    found.skipped.append((str(file), "not a radiograph (PNG/JPEG or single-frame CR/DX DICOM)"))
    if not found.items:
        where = ", ".join(str(p) for p in inputs)
        raise InputError(f"no radiographs found in {where}"
                         + (f" ({len(found.skipped)} other files skipped)" if found.skipped else ""))
    return found


@dataclass
class ClassificationResult:
    item: RadiographInput
    probabilities: np.ndarray | None = None
    calls: np.ndarray | None = None
    image: np.ndarray | None = None
    """The preprocessed model input `(H, W)` (kept for explanations)."""
    error: str | None = None


class RadiographClassifier:
    """A classification checkpoint ready for inference (eval mode, channels-last, the checkpoint's chain)."""

    def __init__(self, checkpoint: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                 batch_size: int = 32, precision: str = "fp32") -> None:
        from medseg.configfile import validate_config
        from medseg.models import load_checkpoint
        from medseg.transforms import PreprocessingConfig
        from medseg.transforms.chains import build_xray_chain

        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
        self.precision = precision
        self.device = torch.device(device)
        self.model, self.card = load_checkpoint(checkpoint, device=self.device)
        if self.card.task != "classification":
            raise ConfigError(f"this is a {self.card.task!r} checkpoint, not a classification model", checkpoint)
        self.classes = [self.card.labels.get(i, f"class_{i}") for i in range(self.card.out_channels)]
        self.multilabel = bool(self.card.extra.get("multilabel", True))
        stored = self.card.extra.get("thresholds")
        if stored:
            self.thresholds = np.array([float(stored[name]) for name in self.classes])
            self.operating_point = str(self.card.extra.get("operating_point", "stored"))
        else:
            log.warning("%s has no stored operating points; calls use 0.5", checkpoint)
            self.thresholds = np.full(len(self.classes), 0.5)
            self.operating_point = "0.5 (none stored)"
        self.preprocessing = validate_config(PreprocessingConfig, self.card.preprocessing, checkpoint)
        if self.preprocessing.modality != "xray":
            raise ConfigError("the checkpoint's preprocessing is not an X-ray chain", checkpoint)
        self.chain = build_xray_chain(self.preprocessing)
        self.batch_size = batch_size
        self.model.eval()
        self._runner: torch.nn.Module | torch.jit.ScriptModule = self.model
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)

    def compile_for_cpu(self) -> None:
        """Trace + freeze the model for CPU fp32 inference (BatchNorm folded into convolutions).

        Costs about 2-3 s once and gains ~15 % (benchmarks/RESULTS.md), so it pays off for many images only;
        Grad-CAM keeps using the eager model. `torch.jit` is deprecated in torch 2.13; without it this is a no-op.
        """
        if self.device.type != "cpu" or self.precision != "fp32" or self._runner is not self.model:
            return
        import warnings

        example = torch.zeros(2, 1, *self.preprocessing.image_size).contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still fastest here
                self._runner = torch.jit.freeze(torch.jit.trace(self.model, example))
        except (AttributeError, RuntimeError) as exc:  # a torch without TorchScript: stay eager
            log.info("tracing the classifier failed (%s); running it eagerly", exc)

    def prepare(self, path: str | os.PathLike[str]) -> np.ndarray:
        """`(1, H, W)` float32 model input for one file; refuses images no classifier can read (too small,
        extreme aspect ratio, no contrast: `medseg.io.xray.check_usable`) instead of calling them."""
        from medseg.io.xray import read_radiograph
        from medseg.transforms.chains import prepare_radiograph

        return prepare_radiograph(read_radiograph(path, usable=True), self.chain)

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """`(B, C)` probabilities for `(B, 1, H, W)` inputs."""
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.device.type == "cpu":
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self._runner(tensor).float()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        return probs.cpu().numpy()

    def calls(self, probabilities: np.ndarray) -> np.ndarray:
        """0/1 per class: probability >= the class's stored threshold."""
        return (probabilities >= self.thresholds).astype(np.int8)

    def classify(self, items: Sequence[RadiographInput], *, readers: int = 2, keep_images: bool = False,
                 progress: Callable[[int], None] | None = None) -> Iterator[ClassificationResult]:
        """Results in input order; reading runs `readers` files ahead in threads while the model computes."""
        from medseg.readahead import read_ahead

        if len(items) >= COMPILE_MIN_IMAGES:
            self.compile_for_cpu()
        loads = read_ahead(items, lambda item: self.prepare(item.path), ahead=self.batch_size * 2,
                           workers=readers)
        chunk: list[tuple[RadiographInput, np.ndarray | None, str | None]] = []
        for loaded in loads:
            error = loaded.error
            if error is None:
                chunk.append((loaded.item, loaded.value, None))
            elif isinstance(error, (MedsegError, OSError, ValueError, RuntimeError)):
                chunk.append((loaded.item, None, str(error)))
            else:
                raise error
            if len(chunk) == self.batch_size:
                yield from self._classify_chunk(chunk, keep_images, progress)
                chunk = []
        if chunk:
            yield from self._classify_chunk(chunk, keep_images, progress)

    def _classify_chunk(self, chunk: list[tuple[RadiographInput, np.ndarray | None, str | None]],
                        keep_images: bool, progress: Callable[[int], None] | None
                        ) -> Iterator[ClassificationResult]:
        loaded = [image for _, image, _ in chunk if image is not None]
        probs = self.predict(np.stack(loaded)) if loaded else np.zeros((0, len(self.classes)))
        calls = self.calls(probs)
        row = 0
        for item, image, error in chunk:
            if image is None:
                yield ClassificationResult(item, error=error)
                continue
            yield ClassificationResult(item, probs[row], calls[row], image[0] if keep_images else None)
            row += 1
        if progress is not None:
            progress(len(chunk))
