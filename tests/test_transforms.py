"""medseg.transforms: HU windows, CLAHE, 2.5D stacks, label-aware flips, augmentation, configs, chains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medseg.errors import ConfigError, InputError
from medseg.transforms import (
    CLAHE,
    LUNG_SIDE_SWAP,
    AugmentationConfig,
    CLAHEd,
    HUWindow,
    HUWindowd,
    PreprocessingConfig,
    RandFlipSwapLabelsd,
    SliceStack,
    WindowConfig,
    build_ct_chain,
    build_xray_chain,
    load_preprocessing_config,
    lobe_swap_map,
    preprocessing_config_from_dict,
    segmentation_augmentation,
    slice_stack,
    window_channels,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "preprocessing"
LUNG = WindowConfig(center=-600, width=1500, name="lung")
MEDIASTINUM = WindowConfig(center=40, width=400, name="mediastinum")


def _ct(**overrides) -> PreprocessingConfig:
    return preprocessing_config_from_dict({"modality": "ct", "windows": [[-600, 1500]], **overrides})


# --- HU windows -----------------------------------------------------------------------------------------------


def test_window_values_exact_at_known_hu() -> None:
    hu = np.array([[-2000, -1350, -600, 150, 3000]], dtype=np.int16)  # (H=1, W=5): no channel axis
    out = window_channels(hu, [LUNG])
    assert out.shape == (1, 1, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])


def test_multi_window_channel_order_is_window_major() -> None:
    hu = np.stack([np.full((4, 4), -600.0), np.full((4, 4), 40.0)])  # (K=2, H, W)
    out = window_channels(hu, [LUNG, (40, 400)])
    assert out.shape == (4, 4, 4)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, (40 + 1350) / 1500, 0.0, 0.5], rtol=1e-6)


def test_window_torch_keeps_type_and_metadata() -> None:
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    hu = MetaTensor(torch.tensor([-1350.0, -600.0, 150.0]).reshape(1, 1, 3, 1), affine=affine)
    out = HUWindow([LUNG, MEDIASTINUM])(hu)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == (2, 1, 3, 1)
    torch.testing.assert_close(out.affine, affine)
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([0.0, 0.5, 1.0]))
    plain = HUWindowd("image", [LUNG])({"image": torch.zeros(5, 6, dtype=torch.int16)})["image"]
    assert type(plain) is torch.Tensor and plain.shape == (1, 5, 6)
    bare_volume = window_channels(np.zeros((3, 4, 5)), [LUNG, MEDIASTINUM], channel_first=False)
    assert bare_volume.shape == (2, 3, 4, 5)


# --- CLAHE ----------------------------------------------------------------------------------------------------


def _low_contrast(size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0:size, 0:size] / size
    image = 0.4 + 0.1 * rows + 0.04 * np.sin(cols * 25) + rng.normal(0, 0.01, (size, size))
    return image.astype(np.float32)


def _local_std(image: np.ndarray, tile: int = 16) -> float:
    h, w = image.shape
    return float(np.mean(image.reshape(h // tile, tile, w // tile, tile).std(axis=(1, 3))))


def test_clahe_range_shape_dtype_and_local_contrast() -> None:
    image = _low_contrast()
    out = CLAHE(clip_limit=2.0, tile_grid=(8, 8))(np.stack([image, image[::-1]]))
    assert out.shape == (2, 128, 128) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert _local_std(out[0]) > 2 * _local_std(image)
    uint8_out = CLAHE()(np.rint(image[None] * 255).astype(np.uint8))
    np.testing.assert_allclose(uint8_out, out[:1], atol=1.5 / 255)
    as_torch = CLAHEd("image", bits=16)({"image": torch.from_numpy(image[None])})["image"]
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32


def test_clahe_agrees_with_skimage() -> None:
    from skimage.exposure import equalize_adapthist

    image = _low_contrast()
    ours = CLAHE(clip_limit=2.0, tile_grid=(8, 8))(image[None])[0]
    reference = equalize_adapthist(image, kernel_size=(16, 16), clip_limit=2.0 / 256, nbins=256)
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.9


# --- 2.5D stacks ----------------------------------------------------------------------------------------------


def test_slice_stack_centre_and_edge_clamping() -> None:
    volume = np.broadcast_to(np.arange(5, dtype=np.float32), (2, 3, 5)).copy()  # value = slice index
    assert slice_stack(volume, 2, 3)[:, 0, 0].tolist() == [1, 2, 3]
    assert slice_stack(volume, 0, 5)[:, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert slice_stack(volume, 4, 3)[:, 0, 0].tolist() == [3, 4, 4]
    np.testing.assert_array_equal(slice_stack(volume, 3, 1)[0], volume[..., 3])
    with pytest.raises(ConfigError):
        slice_stack(volume, 2, 2)
    with pytest.raises(InputError):
        slice_stack(volume, 5, 3)


@pytest.mark.parametrize("as_torch", [False, True])
def test_slice_stack_all_slices_match_single(as_torch: bool) -> None:
    volume = np.random.default_rng(0).random((2, 4, 3, 6), dtype=np.float32)  # (C, H, W, D)
    source = torch.from_numpy(volume) if as_torch else volume
    stacks = SliceStack(3)(source)
    assert tuple(stacks.shape) == (6, 6, 4, 3)
    for i in range(6):
        np.testing.assert_array_equal(np.asarray(stacks[i]), np.asarray(slice_stack(source, i, 3)))
    single = SliceStack(5)(volume[0])  # (H, W, D) -> (D, k, H, W)
    assert single.shape == (6, 5, 4, 3)
    np.testing.assert_array_equal(single[0, 2], volume[0, ..., 0])


# --- flips ----------------------------------------------------------------------------------------------------


def test_flip_swaps_side_labels_and_mirrors_image() -> None:
    image = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    label = np.zeros((1, 4, 6), dtype=np.int64)
    label[..., :3], label[..., 3:] = 1, 2  # columns run left-right: 1 on one side, 2 on the other
    flip = RandFlipSwapLabelsd(["image"], "label", spatial_axis=1, prob=1.0, swap=LUNG_SIDE_SWAP)
    out = flip({"image": image, "label": label})
    np.testing.assert_array_equal(np.asarray(out["image"]), image[..., ::-1])
    # the 1-side moved right and became 2, the 2-side moved left and became 1: label map is unchanged
    np.testing.assert_array_equal(np.asarray(out["label"]), label)
    unflipped = RandFlipSwapLabelsd(["image"], "label", 1, prob=0.0, swap=LUNG_SIDE_SWAP)({"label": label})
    np.testing.assert_array_equal(unflipped["label"], label)
    lobes = np.array([[[0, 1, 2, 3, 4, 5]]])
    swapped = RandFlipSwapLabelsd([], "label", 1, prob=1.0, swap=lobe_swap_map())({"label": lobes})["label"]
    assert np.asarray(swapped).ravel().tolist() == [2, 4, 1, 5, 3, 0]  # mirrored, then 1<->3, 2<->5, 4 kept


def test_lobe_config_refuses_flip_without_swap() -> None:
    assert _ct().augmentation.flip_lr is False
    with pytest.raises(ConfigError, match="swap"):
        _ct(augmentation={"flip_lr": True, "flip_axis": 0})
    with pytest.raises(ConfigError, match="swap"):
        _ct(labels="lung_sides", augmentation={"flip_lr": True, "flip_axis": 0})
    with pytest.raises(ConfigError, match="own inverse"):
        _ct(augmentation={"flip_lr": "swap", "flip_axis": 0, "swap": {1: 3}})
    allowed = _ct(augmentation={"flip_lr": "swap", "flip_axis": 0, "swap": lobe_swap_map()})
    assert allowed.augmentation.swap == {1: 3, 3: 1, 2: 5, 5: 2}
    plain = preprocessing_config_from_dict(
        {"modality": "xray", "augmentation": {"flip_lr": True, "flip_axis": 1}}
    )  # side-agnostic labels may flip
    assert plain.augmentation.flips


# --- augmentation ---------------------------------------------------------------------------------------------


def _sample(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros((1, 160, 128), dtype=np.float32)
    label[0, 30:130, 10:60], label[0, 30:80, 70:120], label[0, 80:130, 70:120] = 1, 3, 5
    return {"image": rng.random((3, 160, 128), dtype=np.float32), "label": label}


def test_augmentation_is_deterministic_and_keeps_label_values() -> None:
    config = AugmentationConfig(
        spatial_prob=1.0, intensity_prob=1.0, gamma_prob=1.0, noise_prob=1.0,
        flip_lr="swap", flip_axis=0, flip_prob=0.5, swap=LUNG_SIDE_SWAP,
    )  # fmt: skip
    runs = []
    threads = torch.get_num_threads()
    for _ in range(2):
        chain = segmentation_augmentation(config)
        chain.set_random_state(1234)
        runs.append([chain(_sample()) for _ in range(3)])
    for first, second in zip(*runs, strict=True):
        torch.testing.assert_close(first["image"], second["image"])
        torch.testing.assert_close(first["label"], second["label"])
    assert not torch.equal(runs[0][0]["image"], runs[0][1]["image"])
    assert torch.get_num_threads() == threads  # the chain runs single-threaded and restores the setting
    for out in runs[0]:
        assert out["image"].shape == (3, 160, 128) and out["label"].shape == (1, 160, 128)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0, 3.0, 5.0}
    names = [type(t).__name__ for t in segmentation_augmentation(config).transforms]
    assert names[:2] == ["RandFlipSwapLabelsd", "RandAffined"] and "RandAdjustContrastd" in names
    elastic = segmentation_augmentation(config.model_copy(update={"elastic": True, "flip_lr": False}))
    elastic.set_random_state(0)
    out = elastic(_sample())
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 3.0, 5.0}


def test_affine_scale_is_isotropic() -> None:
    chain = segmentation_augmentation(AugmentationConfig(spatial_prob=1.0, scale=(0.5, 2.0)))
    grid = chain.transforms[0].rand_affine.rand_affine_grid
    grid.set_random_state(3)
    for _ in range(3):
        grid.randomize()
        assert grid.scale_params[0] == grid.scale_params[1] != 1.0


# --- configs --------------------------------------------------------------------------------------------------


def test_unknown_key_names_file_location_and_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("modality: ct\nwindos:\n  - [-600, 1500]\n")
    with pytest.raises(ConfigError) as info:
        load_preprocessing_config(path)
    assert (
        "bad.yaml" in str(info.value) and "'windos'" in str(info.value) and "did you mean 'windows'" in str(info.value)
    )
    path.write_text("modality: ct\nwindows: [[-600, 1500]]\naugmentation:\n  rotate_degree: 5\n")
    with pytest.raises(ConfigError, match=r"augmentation.*'rotate_degree'.*did you mean 'rotate_degrees'"):
        load_preprocessing_config(path)
    with pytest.raises(ConfigError, match="odd"):
        _ct(stack=2)
    with pytest.raises(ConfigError, match="X-ray only"):
        _ct(image_size=[256, 256])


def test_shipped_configs_load_and_round_trip() -> None:
    lobes = load_preprocessing_config(CONFIGS / "lobes_ct.yaml")
    assert lobes.modality == "ct" and lobes.labels == "lobes" and lobes.stack == 5
    assert lobes.windows[0].center == -600 and lobes.windows[0].width == 1500
    assert lobes.spacing == (2.0, 2.0, 2.5) and lobes.augmentation.flip_lr is False
    cxr = load_preprocessing_config(CONFIGS / "cxr.yaml")
    assert cxr.image_size == (256, 256) and cxr.clahe is not None and cxr.augmentation.flip_lr is False
    for config in (lobes, cxr, _ct(augmentation={"flip_lr": "swap", "flip_axis": 0, "swap": lobe_swap_map()})):
        assert PreprocessingConfig.model_validate(config.model_dump()) == config
        assert PreprocessingConfig.model_validate(config.model_dump(mode="json")) == config


# --- chains ---------------------------------------------------------------------------------------------------


def test_ct_chain_lps_volume_to_ras_at_config_spacing() -> None:
    config = load_preprocessing_config(CONFIGS / "lobes_ct.yaml")
    shape, spacing = (64, 48, 20), (0.7, 0.7, 2.0)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # array axes run to L, P, S
    affine[:3, 3] = [10.0, 20.0, -30.0]
    hu = np.full((1, *shape), -1000.0, dtype=np.float32)
    hu[0, :8] = 500.0  # a block at the patient's right (low i in LPS)
    mask = np.zeros((1, *shape), dtype=np.uint8)
    mask[0, 20:40, 10:40, 4:16] = 1  # the "lungs": the crop box is this plus 10 mm, clipped
    chain = build_ct_chain(config)
    source = {"image": MetaTensor(torch.from_numpy(hu), affine=torch.from_numpy(affine)),
              "mask": MetaTensor(torch.from_numpy(mask), affine=torch.from_numpy(affine))}
    data = chain(source)
    image = data["image"]
    assert image.shape[0] == 1 and image.dtype == torch.int16  # HU on the model grid; windows come later
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], config.spacing, rtol=0.05)
    # the box in x: voxels 20-39 of 0.7 mm plus ceil(10 / 0.7) = 15 -> 5..54 (50 voxels = 35 mm, R is high x)
    assert image.shape[1] == round(50 * 0.7 / config.spacing[0])
    profile = image[0, :, image.shape[2] // 2, image.shape[3] // 2]
    assert profile[-1] > 0 and profile[0] == -1000  # the block (source x 5-7, blurred) is now at the high-x end
    data["pred"] = MetaTensor((image[:1] > 0).to(torch.uint8), meta=dict(image.meta))
    back = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert back.shape == (1, *shape)
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-6)
    assert back[0, 5:7].min() == 1 and back[0, 10:].max() == 0 and back[0, :4].max() == 0  # outside the box: 0


def test_xray_chain_letterbox_and_clahe() -> None:
    config = load_preprocessing_config(CONFIGS / "cxr.yaml")
    raw = (np.random.default_rng(0).random((1, 300, 200)) * 4095).astype(np.float32)  # portrait, 12-bit
    out = build_xray_chain(config)({"image": raw})["image"]
    assert tuple(out.shape) == (1, 256, 256) and out.dtype == torch.float16  # what training keeps in memory
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    columns = out[0].amax(dim=0)
    # 300x200 fits as 256x171 (aspect kept), padded with 42 | 43 zero columns
    assert columns[:42].max() == 0 and columns[42 + 171 :].max() == 0 and columns[42 : 42 + 171].min() > 0
    with pytest.raises(ConfigError):
        build_ct_chain(config)
