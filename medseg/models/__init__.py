"""Models: a name -> builder registry, ResNet-encoder UNets, ImageNet encoders, self-describing checkpoints.

    model = create_model("unet_resnet18", in_channels=3, out_channels=6, pretrained="resnet18.pth")
    save_checkpoint("lobes.safetensors", model, ModelCard.from_model(model, task="lobes", labels={...}))
    model, card = load_checkpoint("lobes.safetensors")
"""

from medseg.models import classifier as _classifier  # noqa: F401  (registers the classifiers)
from medseg.models import unet as _unet  # noqa: F401  (registers the built-in UNets)
from medseg.models.checkpoint import ModelCard, load_checkpoint, read_model_card, save_checkpoint
from medseg.models.config import create_model_from_config, load_model_config, validate_model_config
from medseg.models.pretrained import LoadReport, adapt_input_conv, load_torchvision_resnet
from medseg.models.registry import create_model, get_model_entry, list_models, register_model, validate_model_args

__all__ = [
    "LoadReport",
    "ModelCard",
    "adapt_input_conv",
    "create_model",
    "create_model_from_config",
    "get_model_entry",
    "list_models",
    "load_checkpoint",
    "load_model_config",
    "load_torchvision_resnet",
    "read_model_card",
    "register_model",
    "save_checkpoint",
    "validate_model_args",
    "validate_model_config",
]
