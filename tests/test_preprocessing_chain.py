"""THE preprocessing chain per modality: training and inference build bit-identical model inputs for the same
scan or radiograph, and the CT chain's exact geometry survives the way back (`Invertd`, `Compose.inverse`,
the slab-wise `ModelGrid.back_slabs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from monai.transforms.utils import allow_missing_keys_mode
from torch import nn

from medseg.io import Volume
from medseg.labels import label_map
from medseg.models import ModelCard, create_model, save_checkpoint
from medseg.transforms import ModelGrid, preprocessing_config_from_dict
from medseg.transforms.chains import build_ct_chain, ct_sample
from medseg.transforms.geometry import model_grid_slices

NO_AUGMENTATION = {"spatial_prob": 0.0, "intensity_prob": 0.0, "gamma_prob": 0.0, "noise_prob": 0.0}
CT = {"modality": "ct", "windows": [[-600, 1500], [0, 2000]], "stack": 3, "spacing": [4.0, 4.0, 5.0],
      "roi_margin_mm": 8, "augmentation": NO_AUGMENTATION}


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return index @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, np.ndarray]:
    """A small chest phantom (96 x 96 x 40, LPS-ordered like DICOM) and its lobe map."""
    from medseg.data.phantom.acquisition import sample_acquisition
    from medseg.data.phantom.model import build_chest_model, component_rng
    from medseg.data.phantom.render import ScannerSettings, render

    chest = build_chest_model(11, findings=())
    grid = sample_acquisition(component_rng(11, "acquisition"), chest, size=96, slices=40,
                              truncation_probability=0.0).grid
    image = render(chest, grid, ScannerSettings(noise_sd=15.0))
    return Volume(np.asarray(image.hu), grid.affine), np.asarray(image.lobes).astype(np.uint8)


class _Recorder(nn.Module):
    """Runs the wrapped model and keeps every input batch it was given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.inputs.append(batch.detach().clone())
        return self.model(batch)


def _lobe_checkpoint(path: Path, preprocessing) -> Path:
    model = create_model("unet_resnet18", in_channels=preprocessing.in_channels, out_channels=6, spatial_dims=2,
                         decoder_channels=[32, 16, 16, 8, 8])
    card = ModelCard.from_model(model, task="lobes", labels=label_map("lobes").names(background=True),
                                preprocessing=preprocessing.model_dump(mode="json"),
                                spacing=list(preprocessing.spacing))
    save_checkpoint(path, model, card)
    return path


def test_ct_training_and_inference_model_inputs_are_bit_identical(phantom, tmp_path: Path) -> None:
    from medseg.infer.segment import LobeSegmenter
    from medseg.io import write_nifti
    from medseg.train.segmentation import _Batches
    from medseg.train.segmentation_data import SliceSampler, cache_case

    volume, lobes = phantom
    preprocessing = preprocessing_config_from_dict(CT)
    image_path = write_nifti(volume, tmp_path / "ct.nii.gz")
    label_path = write_nifti(Volume(lobes, volume.affine), tmp_path / "lobes.nii.gz", label=True)

    # training: the cached case (written, then read back from the cache) and one epoch's first batch
    prepared = cache_case("c0", image_path, label_path, preprocessing, tmp_path / "cache")
    case = cache_case("c0", image_path, label_path, preprocessing, tmp_path / "cache")
    assert case.image.dtype == np.int16 and np.array_equal(case.image, prepared.image)
    depth, height, width = case.image.shape
    batches = _Batches([case], preprocessing, (height, width), batch_size=12, seed=3)
    train_images, _ = next(batches(epoch=1))
    replay = SliceSampler([case], preprocessing.stack, (height, width), seed=3 * 1000 + 1)
    indices = []
    for _ in range(len(train_images)):
        case_index, index = replay.draw()
        replay.take(case_index, index)
        indices.append(index)

    # inference: what `medseg segment` feeds the network for the same scan (read from the same file)
    from medseg.io import load_volume

    segmenter = LobeSegmenter(_lobe_checkpoint(tmp_path / "lobes.safetensors", preprocessing), batch_size=7)
    recorder = _Recorder(segmenter.model)
    segmenter.model = recorder
    segmenter(load_volume(image_path))
    infer_images = torch.cat(recorder.inputs)
    assert infer_images.shape[:2] == (depth, preprocessing.in_channels)
    assert infer_images.shape[2] % 32 == 0 and infer_images.shape[3] % 32 == 0

    assert len(set(indices)) > 3
    for sample, index in zip(train_images, indices, strict=True):
        assert torch.equal(sample, infer_images[index, :, :height, :width]), index
    # the padding up to a multiple of 32 is windowed air, as training pads its patches
    air = train_images.new_tensor([(-1024 + 1350) / 1500] * 3 + [0.0] * 3)      # lung window; wide clips to 0
    assert torch.equal(infer_images[0, :, height:, 0], air[:, None].expand(-1, infer_images.shape[2] - height))


def test_radiograph_training_and_inference_model_inputs_are_bit_identical(tmp_path: Path) -> None:
    from PIL import Image

    from medseg.infer.classify import RadiographClassifier
    from medseg.train.classification_data import ClassificationBatches, ClassificationSet, preprocess_images

    rng = np.random.default_rng(5)
    pixels = np.clip(rng.normal(110, 30, size=(90, 70)), 0, 255).astype(np.uint8)   # portrait: letterboxed
    path = tmp_path / "cxr.png"
    Image.fromarray(pixels).save(path)
    preprocessing = preprocessing_config_from_dict({"modality": "xray", "image_size": [64, 64],
                                                    "clahe": {"clip_limit": 2.0}})
    model = create_model("resnet18", in_channels=1, out_channels=2)
    card = ModelCard.from_model(model, task="classification", labels={0: "a", 1: "b"},
                                preprocessing=preprocessing.model_dump(mode="json"), extra={"multilabel": True})
    checkpoint = tmp_path / "cxr.safetensors"
    save_checkpoint(checkpoint, model, card)

    images = preprocess_images([path], preprocessing, threads=1, progress=False)
    data = ClassificationSet(["c0"], ["cxr.png"], images, np.zeros((1, 2), np.float32), ["a", "b"])
    train_batch, _ = next(ClassificationBatches(data, None, batch_size=2, seed=0)(epoch=0))
    inference = torch.from_numpy(RadiographClassifier(checkpoint).prepare(path))
    assert inference.dtype == torch.float32 and inference.shape == (1, 64, 64)
    assert torch.equal(train_batch[0], inference) and torch.equal(train_batch[1], inference)
    assert float(inference.min()) >= 0.0 and float(inference.max()) <= 1.0


AFFINES = {
    "lps": np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 95.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]]),
    "sagittal": np.array([[0, 0, 1.5, -20.0], [-0.75, 0, 0, 60.0], [0, -0.75, 0, 30.0], [0, 0, 0, 1]]),
}


SLOPE = np.array([6.0, -4.0, 5.0])
"""HU per mm along x, y, z of the linear test field."""


def _linear_hu(world: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return (world - centre) @ SLOPE


def _linear_scan(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU that are a linear function of world position (0 at the volume centre, within +-1000 HU), a box-shaped
    two-label map around the centre, and the mask of that box."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = _world(affine, index)
    hu = _linear_hu(world, _centre(affine, shape)).astype(np.float32)
    centre = _centre(affine, shape)
    inside = np.all(np.abs(world - centre) <= [18.0, 14.0, 16.0], axis=-1)
    label = np.where(inside & (world[..., 0] > centre[0]), 2, np.where(inside, 1, 0)).astype(np.uint8)
    return hu, label, label > 0


def _centre(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    return _world(affine, (np.array(shape, dtype=float) - 1) / 2)


@pytest.mark.parametrize("name", list(AFFINES))
def test_ct_chain_geometry_is_exact_and_inverts_to_the_source_grid(name: str) -> None:
    affine, shape = AFFINES[name], (80, 72, 30)
    hu, label, mask = _linear_scan(affine, shape)
    volume = Volume(hu, affine)
    config = preprocessing_config_from_dict({**CT, "spacing": [1.0, 1.0, 2.0]})   # < 1.5x shrink: no pre-blur
    chain = build_ct_chain(config, label_key="label")
    data = chain(ct_sample(volume, label=label, mask=mask.astype(np.uint8)))
    image, grid_affine = data["image"], data["image"].affine.numpy()
    assert image.dtype == torch.int16 and data["label"].dtype == torch.uint8
    np.testing.assert_allclose(np.linalg.norm(grid_affine[:3, :3], axis=0), [1.0, 1.0, 2.0], rtol=0.05)
    assert np.all(np.argmax(np.abs(grid_affine[:3, :3]), axis=0) == [0, 1, 2])    # RAS order
    assert np.all(np.diag(grid_affine[:3, :3]) > 0)

    # every model-grid voxel holds the HU of its world position (rounded), interior of the box
    index = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape[1:]], indexing="ij"), -1).astype(float)
    expected = _linear_hu(_world(grid_affine, index), _centre(affine, shape))
    inner = (slice(1, -1),) * 3
    assert np.abs(image[0].numpy()[inner] - expected[inner]).max() <= 0.5 + 1e-3

    # the box: the mask's bounding box plus 8 mm, nothing of the mask outside it
    box = ModelGrid.of(image).box
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for axis, (piece, n) in enumerate(zip(box, shape, strict=True)):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = int(np.ceil(8 / spacing[axis]))
        assert (piece.start, piece.stop) == (max(0, present[0] - margin), min(n, present[-1] + 1 + margin))

    # a prediction (here: the label itself) back on the source grid: same shape and affine, world positions kept
    data["pred"] = MetaTensor(data["label"].clone(), meta=dict(data["label"].meta))
    back = Invertd("pred", transform=chain, orig_keys="label", nearest_interp=True)(data)["pred"]
    assert tuple(back.shape) == (1, *shape) and back.dtype == torch.uint8
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-9)
    restored = back[0].numpy()
    for value in (1, 2):
        here, there = np.argwhere(restored == value), np.argwhere(label == value)
        shift = _world(affine, here.mean(0)) - _world(affine, there.mean(0))
        assert np.linalg.norm(shift) < 1.0, (value, shift)                       # mm, grid voxel 1-2 mm
        assert 2 * np.sum((restored == value) & (label == value)) / (len(here) + len(there)) > 0.9

    # the image back with Compose.inverse (trilinear): the linear field again, on the source grid
    with allow_missing_keys_mode(chain):
        full = chain.inverse({"image": image.float()})["image"]
    assert tuple(full.shape) == (1, *shape)
    np.testing.assert_allclose(full.affine.numpy(), affine, atol=1e-9)
    inside = tuple(slice(s.start + 3, s.stop - 3) for s in box)
    assert np.abs(full[0].numpy()[inside] - hu[inside]).max() < 1.0

    # the slab-wise way back that inference uses gives the same values as the full inverse
    grid = ModelGrid.of(image)
    slabs = np.zeros(shape, dtype=np.float32)
    region = grid.source_region(slabs)
    for k0, values in grid.back_slabs(model_grid_slices(image.float())[None], slab=4):
        region[:, :, k0:k0 + values.shape[1]] = np.moveaxis(values[0].numpy(), 0, 2)
    np.testing.assert_array_equal(slabs[box], full[0].numpy()[box])
