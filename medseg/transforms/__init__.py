"""MONAI transforms and preprocessing chains configured from `configs/preprocessing/*.yaml`.

Array transforms (`HUWindow`, `CLAHE`, `SliceStack`) have dict wrappers with a `d` suffix. Arrays are
channel-first `(C, H, W)` or `(C, H, W, D)`, numpy or torch; CT arrays hold Hounsfield units. The CT chain's
invertible exact-geometry transforms (`CropToMaskd`, `ReorientToRASd`, `ResampleToSpacingd`) are in `geometry`.
"""

from medseg.transforms.augment import (
    LUNG_SIDE_SWAP,
    RandFlipSwapLabelsd,
    SingleThreadCompose,
    lobe_swap_map,
    remap_labels,
    segmentation_augmentation,
)
from medseg.transforms.chains import FitResized, build_ct_chain, build_xray_chain, ct_sample
from medseg.transforms.clahe import CLAHE, CLAHEd, clahe
from medseg.transforms.config import (
    AugmentationConfig,
    ClaheConfig,
    PreprocessingConfig,
    WindowConfig,
    load_preprocessing_config,
    preprocessing_config_from_dict,
)
from medseg.transforms.geometry import CropToMaskd, ModelGrid, ReorientToRASd, ResampleToSpacingd
from medseg.transforms.intensity import HUWindow, HUWindowd, RoundHUd, window_channels, window_stacks
from medseg.transforms.stack import SliceStack, slice_stack

__all__ = [
    "CLAHE",
    "LUNG_SIDE_SWAP",
    "AugmentationConfig",
    "CLAHEd",
    "ClaheConfig",
    "CropToMaskd",
    "FitResized",
    "HUWindow",
    "HUWindowd",
    "ModelGrid",
    "PreprocessingConfig",
    "RandFlipSwapLabelsd",
    "ReorientToRASd",
    "ResampleToSpacingd",
    "RoundHUd",
    "SingleThreadCompose",
    "SliceStack",
    "WindowConfig",
    "build_ct_chain",
    "build_xray_chain",
    "clahe",
    "ct_sample",
    "load_preprocessing_config",
    "lobe_swap_map",
    "preprocessing_config_from_dict",
    "remap_labels",
    "segmentation_augmentation",
    "slice_stack",
    "window_channels",
    "window_stacks",
]
