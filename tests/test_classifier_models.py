"""medseg.models.classifier: registered 2D classifiers, ImageNet weights from local files, Grad-CAM targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet121
from monai.visualize import GradCAM

from medseg.errors import ConfigError, InputError
from medseg.models import create_model, create_model_from_config, list_models, load_model_config
from medseg.models.unet import TorchvisionResNetEncoder

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
CLASSIFIERS = ["densenet121", "efficientnet_b0", "resnet18", "resnet50", "unet_classifier"]
# channels of the Grad-CAM target layer: the last feature map before global pooling
CAM_CHANNELS = {"densenet121": 1024, "efficientnet_b0": 1280, "resnet18": 512, "resnet50": 2048,
                "unet_classifier": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_classifiers_are_registered():
    assert set(CLASSIFIERS) <= set(list_models())


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_give_logits_for_odd_sizes(name, in_channels):
    model = create_model(name, in_channels=in_channels, out_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, 70, 90)).shape == (2, 4)
        assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, 4)
    assert model.medseg_architecture == name
    assert model.medseg_architecture_args["in_channels"] == in_channels
    assert "pretrained" not in model.medseg_architecture_args


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_gradcam_runs_on_every_classifier(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, out_channels=3)
    layer = dict(model.named_modules())[model.medseg_cam_layer]
    shapes = []
    layer.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    heatmap = GradCAM(nn_module=model, target_layers=model.medseg_cam_layer)(torch.randn(2, 1, 36, 44))
    assert len(shapes) == 1 and shapes[0][:2] == (2, CAM_CHANNELS[name])  # called once: the last feature map
    assert heatmap.shape == (2, 1, 36, 44)
    assert torch.isfinite(heatmap).all() and heatmap.min() >= 0 and heatmap.max() <= 1


def test_dropout_sits_before_the_head_and_keeps_parameter_names():
    plain, dropped = create_model("densenet121"), create_model("densenet121", dropout=0.3)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    assert list(dropped.class_layers.named_children())[-2][1].p == 0.3
    assert create_model("resnet18", dropout=0.25).head.dropout.p == 0.25
    assert create_model("efficientnet_b0", dropout=0.1)._dropout.p == 0.1
    with pytest.raises(ConfigError, match="dropout"):
        create_model("resnet18", dropout=1.5)
    with pytest.raises(ConfigError, match="features must be 6"):
        create_model("unet_classifier", features=(8, 16))


def test_cxr_config_builds():
    config = load_model_config(CONFIGS / "cxr_densenet121.yaml", derived={"in_channels": 1, "out_channels": 6})
    assert config["architecture"] == "densenet121"
    model = create_model_from_config(config).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 6)


# ---------------------------------------------------------------------------------- DenseNet ImageNet file


def _torchvision_densenet_state(old_names: bool) -> dict[str, torch.Tensor]:
    """A randomised MONAI DenseNet121 (RGB, 1000 classes) state dict renamed to torchvision's keys."""
    torch.manual_seed(3)
    state = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000).state_dict()
    renamed = {}
    for key, tensor in state.items():
        key = re.sub(r"\.layers\.(norm|conv)([12])\.", r".\1.\2." if old_names else r".\1\2.", key)
        key = key.replace("class_layers.out.", "classifier.")
        if old_names and key.endswith("num_batches_tracked"):
            continue  # the original torchvision download predates num_batches_tracked
        renamed[key] = torch.randn_like(tensor) if tensor.is_floating_point() else tensor
    return renamed


@pytest.mark.parametrize("old_names", [False, True])
def test_densenet_loads_torchvision_weights(tmp_path, old_names):
    state = _torchvision_densenet_state(old_names)
    prefix = "features.denseblock3.denselayer5."
    assert (prefix + ("norm.1.weight" if old_names else "norm1.weight")) in state
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)

    model = create_model("densenet121", in_channels=1, out_channels=6, pretrained=str(path))
    loaded = model.state_dict()
    norm_key = "norm.1" if old_names else "norm1"
    assert torch.equal(loaded[prefix + "layers.norm1.weight"], state[prefix + norm_key + ".weight"])
    assert torch.equal(loaded["features.transition2.conv.weight"], state["features.transition2.conv.weight"])
    assert torch.equal(loaded["features.norm5.running_var"], state["features.norm5.running_var"])
    torch.testing.assert_close(loaded["features.conv0.weight"],
                               state["features.conv0.weight"].sum(dim=1, keepdim=True))
    report = model.medseg_pretrained_report
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]
    assert report.missing == [] and report.unexpected == []
    assert report.adapted == ["features.conv0.weight"]
    assert loaded["class_layers.out.weight"].shape == (6, 1024)  # the new head stays freshly initialised

    rgb = create_model("densenet121", in_channels=3, out_channels=2, pretrained=path)
    assert torch.equal(rgb.state_dict()["features.conv0.weight"], state["features.conv0.weight"])
    assert rgb.medseg_pretrained_report.adapted == []


def test_densenet_bad_files_are_errors_naming_the_file(tmp_path):
    resnet_file = tmp_path / "resnet18.pth"
    torch.save(TorchvisionResNetEncoder("medseg-tv-resnet18").state_dict(), resnet_file)
    with pytest.raises(ConfigError, match="not a torchvision DenseNet state dict") as info:
        create_model("densenet121", pretrained=resnet_file)
    assert info.value.path == str(resnet_file)

    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="cannot read as torch weights") as info:
        create_model("densenet121", pretrained=text)
    assert str(text) in str(info.value)

    state = _torchvision_densenet_state(old_names=False)
    state["features.transition1.conv.weight"] = torch.zeros(64, 256, 3, 3)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(ConfigError, match=r"features\.transition1\.conv\.weight.*\(64, 256, 3, 3\)") as info:
        create_model("densenet121", pretrained=odd)
    assert info.value.path == str(odd)

    with pytest.raises(InputError, match="not found"):
        create_model("densenet121", pretrained=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("densenet121", pretrained=True)


# ------------------------------------------------------------------------------------ ResNet ImageNet file


def test_resnet18_classifier_loads_torchvision_weights(tmp_path):
    # TorchvisionResNetEncoder's parameter names are torchvision's (tests/test_models.py checks this against an
    # independent torchvision re-implementation), so its state dict plus an `fc` head is a torchvision file.
    torch.manual_seed(5)
    state = {key: torch.randn_like(t) if t.is_floating_point() else t
             for key, t in TorchvisionResNetEncoder("medseg-tv-resnet18").state_dict().items()}
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    model = create_model("resnet18", in_channels=1, out_channels=6, pretrained=path)
    encoder = model.encoder.state_dict()
    assert torch.equal(encoder["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert torch.equal(encoder["layer3.0.downsample.1.running_mean"], state["layer3.0.downsample.1.running_mean"])
    torch.testing.assert_close(encoder["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model.medseg_pretrained_report.adapted == ["conv1.weight"]
    assert sorted(model.medseg_pretrained_report.skipped) == ["fc.bias", "fc.weight"]
    assert model.head.fc.weight.shape == (6, 512)

    with pytest.raises(ConfigError, match=r"resnet18.*resnet50") as info:
        create_model("resnet50", pretrained=path)
    assert info.value.path == str(path)
