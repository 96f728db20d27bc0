"""Reference runner for lungmask's inference pipeline (R231, random weights), for speed comparisons.

lungmask (https://github.com/JoHof/lungmask) segments the lungs slice by slice with a 2D U-Net on 256x256
crops. Its published weights are downloaded from GitHub at run time, which this project's machines cannot
reach, so this module runs lungmask's *own* public inference code path -- ``LMInferer(...).apply(image)``
(or the older ``lungmask.mask.apply`` where ``LMInferer`` does not exist) -- with the R231 architecture and
**randomly initialised weights**:

- preprocessing (per-slice body mask, crop, resize to 256x256, HU clipping and scaling), the batched network
  forward passes, postprocessing (3D connected components, relabelling of small components, hole filling with
  ``fill_voids``) and the resampling back to the input grid are all lungmask's unmodified code;
- only the weight download is replaced: ``torch.hub.load_state_dict_from_url``, which ``lungmask.mask.get_model``
  calls for the R231 URL, is patched for the duration of the call to return the state dict of a freshly
  built, seeded ``lungmask.resunet.UNet`` with the R231 configuration. ``get_model`` itself still builds the
  UNet, infers the class count from the state dict, loads it and switches to eval mode, as it does with the
  real weights.

This measures **speed only**. The masks are meaningless and lungmask's accuracy is not measured. The
network's cost does not depend on the weights, but the postprocessing's does (it loops over the connected
components of the raw prediction), so the postprocessing time with random weights is only an estimate of the
time with the real weights; the per-stage timings returned by :func:`run_lungmask` show how much it weighs.

Install (without letting pip replace the installed torch)::

    pip install --no-deps lungmask fill_voids fastremap more-itertools

Quick run on the first 12 slices of a series, on 2 threads::

    python benchmarks/lungmask_reference.py --input DICOM_DIR_OR_NIFTI --threads 2 --slices 12
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk
    import torch

INSTALL_HINT = "pip install --no-deps lungmask fill_voids (install torch first)"
"""How to install lungmask without letting pip touch torch."""

R231_NAME = "R231"
R231_ARCHITECTURE: dict[str, Any] = {
    "n_classes": 3,
    "padding": True,
    "depth": 5,
    "up_mode": "upsample",
    "batch_norm": True,
    "residual": False,
}
"""``lungmask.resunet.UNet`` keyword arguments of the R231 model (as in ``lungmask.mask.get_model``)."""

DEFAULT_SEED = 0


def lungmask_available() -> bool:
    """Return True when lungmask and everything its inference needs (torch, fill_voids, ...) can be imported."""
    try:
        _import_lungmask()
    except ImportError:
        return False
    return True


def _import_lungmask() -> Any:
    """Import and return ``lungmask.mask``, or raise an ImportError that says how to install it."""
    try:
        import lungmask.mask as lm_mask
        import lungmask.resunet  # noqa: F401  (the UNet used to make the random weights)
    except ImportError as exc:
        missing = f" (missing module: {exc.name})" if exc.name else ""
        raise ImportError(
            f"the lungmask reference runner needs lungmask{missing}: {INSTALL_HINT}; "
            "its other dependencies, if missing: pip install --no-deps fastremap more-itertools tqdm"
        ) from exc
    return lm_mask


def random_r231_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """State dict of a freshly initialised R231 ``lungmask.resunet.UNet`` (PyTorch's default init, seeded).

    The global torch RNG state is left as it was.
    """
    import torch
    from lungmask.resunet import UNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(**R231_ARCHITECTURE)
    return model.state_dict()


@contextlib.contextmanager
def _random_weights_download(state_dict: dict[str, torch.Tensor], calls: list[str]) -> Iterator[None]:
    """Make ``torch.hub.load_state_dict_from_url`` return ``state_dict`` for lungmask's R231 URL.

    Any other URL raises, so a lungmask version that loads another model fails loudly instead of
    silently timing something else (or trying the network).
    """
    import torch.hub

    lm_mask = _import_lungmask()
    r231_url = lm_mask.MODEL_URLS[R231_NAME][0] if hasattr(lm_mask, "MODEL_URLS") else None

    def fake_load(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if r231_url is not None and url != r231_url:
            raise RuntimeError(f"lungmask asked for weights other than R231: {url}")
        calls.append(url)
        return {key: value.clone() for key, value in state_dict.items()}

    with mock.patch.object(torch.hub, "load_state_dict_from_url", fake_load):
        yield


@contextlib.contextmanager
def _timed(module: Any, name: str, timings: dict[str, float], key: str) -> Iterator[None]:
    """Wrap ``module.name`` so that the time spent in it is added to ``timings[key]`` (the original still runs)."""
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings[key] += time.perf_counter() - start

    with mock.patch.object(module, name, wrapper):
        yield


@contextlib.contextmanager
def _timed_forward(model: torch.nn.Module, timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the time of every forward pass of ``model`` to ``timings[key]`` (forward hooks, removed afterwards)."""
    starts: list[float] = []

    def pre_hook(_module: Any, _inputs: Any) -> None:
        starts.append(time.perf_counter())

    def post_hook(_module: Any, _inputs: Any, _output: Any) -> None:
        timings[key] += time.perf_counter() - starts.pop()

    handles = [model.register_forward_pre_hook(pre_hook), model.register_forward_hook(post_hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(threads)`` (None: leave it as it is), restoring the old value afterwards."""
    import torch

    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_lungmask(
    image: sitk.Image,
    threads: int | None = None,
    batch_size: int = 20,
    seed: int = DEFAULT_SEED,
) -> tuple[np.ndarray, dict[str, float]]:
    """Run lungmask's R231 inference pipeline with random weights on ``image``, on the CPU.

    Args:
        image: CT volume in HU as a SimpleITK image (what ``lungmask.utils.load_input_image`` returns).
        threads: torch intra-op threads for the call (restored afterwards); None leaves torch's setting.
        batch_size: slices per forward pass (lungmask's default is 20).
        seed: seed of the random weights.

    Returns:
        The mask as lungmask returns it (uint8, (slices, rows, columns), 0 background, 1 right and 2 left
        lung -- meaningless here), and timings in seconds: ``total_s`` (the whole call: model construction
        by lungmask plus ``apply``), ``load_model_s`` (``LMInferer`` construction), ``apply_s``, and within
        ``apply``: ``preprocess_s`` (``utils.preprocess``), ``network_s`` (the forward passes),
        ``postprocess_s`` (``utils.postprocessing``) and ``other_s`` (the rest: batching, argmax,
        resampling the mask back, reorientation). ``slices`` is the number of slices.

    Raises:
        ImportError: lungmask (or one of its dependencies) is not installed.
    """
    lm_mask = _import_lungmask()
    import lungmask.utils as lm_utils

    state_dict = random_r231_state_dict(seed)
    calls: list[str] = []
    keys = ("load_model_s", "apply_s", "preprocess_s", "network_s", "postprocess_s")
    timings: dict[str, float] = dict.fromkeys(keys, 0.0)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_torch_threads(threads))
        stack.enter_context(_random_weights_download(state_dict, calls))
        stack.enter_context(_timed(lm_utils, "preprocess", timings, "preprocess_s"))
        stack.enter_context(_timed(lm_utils, "postprocessing", timings, "postprocess_s"))

        start = time.perf_counter()
        if hasattr(lm_mask, "LMInferer"):
            inferer = lm_mask.LMInferer(
                modelname=R231_NAME,
                force_cpu=True,
                batch_size=batch_size,
                volume_postprocessing=True,
                tqdm_disable=True,
            )
            built = time.perf_counter()
            _check_model(inferer.model, state_dict)
            check_s = time.perf_counter() - built  # not lungmask's time: excluded from the totals
            stack.enter_context(_timed_forward(inferer.model, timings, "network_s"))
            apply_start = time.perf_counter()
            mask = inferer.apply(image)
            end = time.perf_counter()
            timings["load_model_s"] = built - start
            timings["apply_s"] = end - apply_start
            timings["total_s"] = end - start - check_s
        else:  # lungmask < 0.2.13: module-level apply(image, model=...) builds nothing when given a model
            from lungmask.resunet import UNet

            model = UNet(**R231_ARCHITECTURE)
            model.load_state_dict(state_dict)
            model.eval()
            stack.enter_context(_timed_forward(model, timings, "network_s"))
            start = time.perf_counter()
            mask = lm_mask.apply(image, model=model, force_cpu=True, batch_size=batch_size, volume_postprocessing=True)
            end = time.perf_counter()
            timings["apply_s"] = end - start
            timings["total_s"] = end - start

    timings["other_s"] = max(
        0.0, timings["apply_s"] - timings["preprocess_s"] - timings["network_s"] - timings["postprocess_s"]
    )
    timings["slices"] = float(image.GetSize()[2])
    return np.asarray(mask), timings


def _check_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Check that lungmask built the R231 UNet in eval mode and loaded exactly the random weights."""
    import torch
    from lungmask.resunet import UNet

    if not isinstance(model, UNet):
        raise RuntimeError(f"lungmask built {type(model).__name__}, expected lungmask.resunet.UNet")
    if model.training:
        raise RuntimeError("lungmask's model is not in eval mode")
    loaded = model.state_dict()
    if loaded.keys() != state_dict.keys() or not all(
        torch.equal(loaded[key].cpu(), value) for key, value in state_dict.items()
    ):
        raise RuntimeError("lungmask's model does not hold the injected random R231 weights")


def read_image(path: Path) -> sitk.Image:
    """Read a CT volume: a DICOM series directory (its largest series) with ``ImageSeriesReader``, else a file."""
    import SimpleITK as sitk

    if path.is_dir():
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series_ids:
            raise FileNotFoundError(f"no DICOM series in {path}")
        file_lists = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid) for sid in series_ids]
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(max(file_lists, key=len))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def main(argv: list[str] | None = None) -> None:
    """Command line: time lungmask's R231 pipeline (random weights) on one series and print the seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="DICOM series directory or NIfTI/NRRD/MHA file")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--slices", type=int, default=None, help="keep only the first N slices (quick runs)")
    parser.add_argument("--batch-size", type=int, default=20, help="slices per forward pass (lungmask's default: 20)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the random weights")
    args = parser.parse_args(argv)

    if not lungmask_available():
        _import_lungmask()  # raises the ImportError with the install hint

    start = time.perf_counter()
    image = read_image(args.input)
    read_s = time.perf_counter() - start
    if args.slices is not None:
        if args.slices < 1:
            parser.error("--slices must be >= 1")
        image = image[:, :, : args.slices]
    size = image.GetSize()

    mask, timings = run_lungmask(image, threads=args.threads, batch_size=args.batch_size, seed=args.seed)
    n_slices = size[2]
    print(f"input: {args.input} ({size[0]}x{size[1]}x{n_slices}), read in {read_s:.2f} s (not included below)")
    print(f"lungmask R231, random weights, CPU, {args.threads} threads, batch size {args.batch_size}")
    for key in ("load_model_s", "preprocess_s", "network_s", "postprocess_s", "other_s"):
        print(f"  {key[:-2]:<12} {timings[key]:8.2f} s")
    print(f"  {'total':<12} {timings['total_s']:8.2f} s  ({timings['total_s'] / n_slices:.3f} s/slice)")
    print(f"mask: {mask.shape} {mask.dtype}, labels {np.unique(mask).tolist()}")


if __name__ == "__main__":
    main()
