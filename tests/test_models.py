"""medseg.models: registry, UNets, torchvision ImageNet weights, self-describing checkpoints, configs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medseg.errors import ConfigError, InputError
from medseg.models import (
    ModelCard,
    create_model,
    create_model_from_config,
    list_models,
    load_checkpoint,
    load_model_config,
    read_model_card,
    register_model,
    save_checkpoint,
)
from medseg.models import checkpoint as checkpoint_module
from medseg.models import registry as registry_module

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
SMALL_DECODER = (16, 16, 16, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------- an independent torchvision-layout ResNet (reference)


class _TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # torchvision v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TVResNet(nn.Module):
    """torchvision.models.ResNet's module names and maths, written out (torchvision is not installed)."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 10) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            setattr(self, f"layer{index + 1}", self._make_layer(block, planes, blocks, 1 if index == 0 else 2))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = torch.relu(self.bn1(self.conv1(x)))
        out = [x]
        x = self.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out.append(x)
        return out


def _randomised_torchvision_resnet(depth: int, seed: int) -> _TVResNet:
    block, layers = {18: (_TVBasicBlock, [2, 2, 2, 2]), 50: (_TVBottleneck, [3, 4, 6, 3])}[depth]
    torch.manual_seed(seed)
    model = _TVResNet(block, layers)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif key.endswith("running_var") or (key.endswith(".weight") and tensor.ndim == 1):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.ndim == 1:
                tensor.copy_(torch.randn_like(tensor) * 0.1)
            else:  # conv weights: small enough that deep stacks stay finite
                tensor.copy_(torch.randn_like(tensor) * (2.0 / tensor[0].numel()) ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory) -> dict[int, tuple[Path, _TVResNet]]:
    folder = tmp_path_factory.mktemp("torchvision")
    files = {}
    for depth in (18, 50):
        reference = _randomised_torchvision_resnet(depth, seed=depth)
        path = folder / f"resnet{depth}.pth"
        torch.save(reference.state_dict(), path)
        files[depth] = (path, reference)
    return files


def _expected_first_conv(rgb: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The documented rule: 1 -> sum over RGB; N -> RGB filters repeated cyclically, times 3/N."""
    if in_channels == 1:
        return rgb.sum(dim=1, keepdim=True)
    return rgb[:, [i % 3 for i in range(in_channels)]] * (3.0 / in_channels)


# ------------------------------------------------------------------------------------- registry


def test_registered_unets_are_listed():
    assert list_models("unet_resnet*") == ["unet_resnet18", "unet_resnet34", "unet_resnet50"]
    assert "unet" in list_models()
    assert list_models() == sorted(list_models())


_CHEAP = [(name, channels, upsample) for name in ("unet", "unet_resnet18") for channels in (1, 3, 5)
          for upsample in ("deconv", "bilinear")]
# The larger encoders: every input-channel count and both decoders, not the full product (build time).
_COSTLY = [(name, channels, upsample) for name in ("unet_resnet34", "unet_resnet50")
           for channels, upsample in ((1, "deconv"), (3, "bilinear"), (5, "deconv"))]


@pytest.mark.parametrize(("name", "in_channels", "upsample"), _CHEAP + _COSTLY)
def test_models_build_and_keep_the_input_size(name, in_channels, upsample):
    model = create_model(name, in_channels=in_channels, out_channels=6, upsample=upsample, **_small_args(name)).eval()
    with torch.no_grad():
        output = model(torch.randn(1, in_channels, 64, 64))
    assert output.shape == (1, 6, 64, 64)
    assert model.medseg_architecture == name
    assert model.medseg_architecture_args["in_channels"] == in_channels
    assert "pretrained" not in model.medseg_architecture_args


def test_default_decoder_and_api_example_shape():
    model = create_model("unet_resnet18", in_channels=3, out_channels=6, spatial_dims=2,
                         decoder_channels=(128, 64, 32, 16, 16), upsample="deconv", pretrained=None).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 45)).shape == (1, 6, 70, 45)  # padded to /32 inside, cropped back
    assert create_model("unet_resnet18", out_channels=2).medseg_architecture_args["decoder_channels"] == [
        256, 128, 64, 32, 16]


def test_unknown_model_names_the_closest_matches():
    with pytest.raises(ConfigError, match=r"unknown model 'unet_resnet81'.*did you mean 'unet_resnet18'"):
        create_model("unet_resnet81", out_channels=2)
    with pytest.raises(ConfigError, match="unet_resnet50"):
        create_model("unet-resnet50", out_channels=2)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown argument 'decoder_channel' \(did you mean 'decoder_channels'"):
        create_model("unet_resnet18", out_channels=2, decoder_channel=(1, 2))
    with pytest.raises(ConfigError, match=r"argument 'upsample'.*'deconv' or 'bilinear'"):
        create_model("unet_resnet18", out_channels=2, upsample="nearest")
    with pytest.raises(ConfigError, match="missing required argument 'out_channels'"):
        create_model("unet_resnet34")
    with pytest.raises(ConfigError, match="decoder_channels must be 5"):
        create_model("unet_resnet18", out_channels=2, decoder_channels=(8, 8))
    with pytest.raises(ConfigError, match="has no pretrained"):
        create_model("unet", out_channels=2, pretrained="x.pth")


def test_register_a_custom_builder_and_reject_duplicates():
    @register_model("test_tiny_classifier")
    def tiny(*, in_channels: int = 1, num_classes: int = 2) -> nn.Module:
        return nn.Linear(in_channels, num_classes)

    try:
        assert "test_tiny_classifier" in list_models("test_*")
        model = create_model("test_tiny_classifier", in_channels=4, num_classes="3")  # lax: "3" -> 3
        assert model.out_features == 3
        with pytest.raises(ConfigError, match="already registered"):
            register_model("test_tiny_classifier")(lambda: nn.Identity())
        register_model("test_tiny_classifier", overwrite=True)(tiny)
    finally:
        registry_module._REGISTRY.pop("test_tiny_classifier", None)
    assert "test_tiny_classifier" not in list_models()


# --------------------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def pretrained_models(torchvision_files) -> dict[tuple[int, int], nn.Module]:
    """unet_resnet{18,50} with the fake ImageNet files loaded, for 1, 3 and 5 input channels."""
    return {(depth, channels): create_model(f"unet_resnet{depth}", in_channels=channels, out_channels=3,
                                            decoder_channels=SMALL_DECODER, pretrained=path).eval()
            for depth, (path, _) in torchvision_files.items() for channels in (1, 3, 5)}


@pytest.mark.parametrize("in_channels", [1, 3, 5])
@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_land_in_the_encoder(torchvision_files, pretrained_models, depth, in_channels):
    path, _ = torchvision_files[depth]
    file_state = torch.load(path, weights_only=True)
    model = pretrained_models[depth, in_channels]
    encoder = model.encoder.state_dict()
    expected_keys = {k for k in file_state if not k.startswith("fc.")}
    assert set(encoder) == expected_keys  # torchvision's layout, projection shortcuts included
    for key, tensor in file_state.items():
        if key.startswith("fc."):
            continue
        wanted = _expected_first_conv(tensor, in_channels) if key == "conv1.weight" else tensor
        assert torch.equal(encoder[key], wanted), key
    report = model.medseg_pretrained_report
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert report.missing == [] and report.unexpected == []
    assert report.adapted == ([] if in_channels == 3 else ["conv1.weight"])
    assert len(report.loaded) == len(expected_keys)
    assert "pretrained" not in model.medseg_architecture_args


@pytest.mark.parametrize("depth", [18, 50])
def test_loaded_encoder_computes_what_torchvision_computes(torchvision_files, pretrained_models, depth):
    _, reference = torchvision_files[depth]
    torch.manual_seed(0)
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        wanted = reference.features(grey.repeat(1, 3, 1, 1))
        # RGB model on the RGB image, and the 1-channel model (summed filters) on the grey image itself.
        for channels, image in ((3, grey.repeat(1, 3, 1, 1)), (1, grey)):
            got = pretrained_models[depth, channels].encoder(image)
            assert len(got) == len(wanted) == 5
            for a, b in zip(got, wanted, strict=True):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))  # sum order only


def test_wrapped_and_prefixed_state_dicts_load(tmp_path, torchvision_files):
    path, _ = torchvision_files[18]
    state = torch.load(path, weights_only=True)
    for wrapper in ("state_dict", "model"):
        wrapped = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
        model = create_model("unet_resnet18", in_channels=3, out_channels=2, decoder_channels=SMALL_DECODER,
                             pretrained=wrapped)
        assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_bad_pretrained_files_are_config_errors(tmp_path, torchvision_files):
    def build(path, **kwargs):
        return create_model("unet_resnet18", out_channels=2, decoder_channels=SMALL_DECODER, pretrained=path, **kwargs)

    random_dict = tmp_path / "random.pth"
    torch.save({"foo": torch.zeros(3), "bar": torch.ones(2)}, random_dict)
    with pytest.raises(ConfigError, match="not a torchvision ResNet state dict") as info:
        build(random_dict)
    assert info.value.path == str(random_dict)

    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="cannot read as torch weights") as info:
        build(text)
    assert str(text) in str(info.value)

    with pytest.raises(InputError, match="not found"):
        build(tmp_path / "missing.pth")

    with pytest.raises(ConfigError, match=r"resnet50.*resnet18"):
        build(torchvision_files[50][0])

    state = torch.load(torchvision_files[18][0], weights_only=True)
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(ConfigError, match=r"layer2\.0\.conv1\.weight.*\(128, 64, 5, 5\).*\(128, 64, 3, 3\)") as info:
        build(odd)
    assert info.value.path == str(odd)

    with pytest.raises(ConfigError, match="spatial_dims=2"):
        build(torchvision_files[18][0], spatial_dims=3)


# ---------------------------------------------------------------------------------- checkpoints


def _small_args(name: str) -> dict:
    return {"features": (8, 8, 16, 16, 32, 8)} if name == "unet" else {"decoder_channels": SMALL_DECODER}


def _trained_model(name: str = "unet_resnet18") -> nn.Module:
    torch.manual_seed(1)
    model = create_model(name, in_channels=3, out_channels=6, **_small_args(name))
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))  # moves BatchNorm running statistics off their defaults
    return model.eval()


def _card(model: nn.Module) -> ModelCard:
    return ModelCard.from_model(
        model,
        task="lobes",
        labels={0: "background", 1: "LUL", 2: "LLL", 3: "RUL", 4: "RML", 5: "RLL"},
        preprocessing={"window": (-1000, 400), "stack": 3, "mean": np.float32(0.5)},
        spacing=[0.8, 0.8],
        metrics={"val_dice": np.float64(0.91)},
        extra={"notes": "test"},
    )


def _safetensors_layout(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    data_end = max(info["data_offsets"][1] for key, info in header.items() if key != "__metadata__")
    return header, 8 + length + data_end


def test_checkpoint_round_trip(tmp_path):
    model = _trained_model()
    card = _card(model)
    path = save_checkpoint(tmp_path / "lobes.safetensors", model, card)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lobes.safetensors"]  # no temporary files left

    header, size = _safetensors_layout(path)
    assert size == path.stat().st_size  # a plain safetensors file: header + raw tensor bytes, nothing else
    assert not zipfile.is_zipfile(path) and not path.read_bytes()[8:].startswith(b"\x80")
    assert json.loads(header["__metadata__"]["medseg_card"])["architecture"] == "unet_resnet18"

    loaded, loaded_card = load_checkpoint(path)
    assert not loaded.training
    assert loaded_card == card
    assert loaded_card.labels[4] == "RML" and loaded_card.preprocessing["window"] == [-1000, 400]
    assert loaded_card.architecture_args["decoder_channels"] == list(SMALL_DECODER)
    assert loaded_card.in_channels == 3 and loaded_card.out_channels == 6
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key


def test_read_model_card_does_not_build_the_model(tmp_path, monkeypatch):
    model = _trained_model("unet")
    path = save_checkpoint(tmp_path / "m.safetensors", model, _card(model))

    def refuse(*args, **kwargs):
        raise AssertionError("read_model_card must not build the model")

    monkeypatch.setattr(checkpoint_module, "create_model", refuse)
    card = read_model_card(path)
    assert card.architecture == "unet" and card.task == "lobes" and card.spacing == [0.8, 0.8]


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    model = _trained_model("unet")
    path = save_checkpoint(tmp_path / "m.safetensors", model, _card(model))
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, _card(model))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_shared_tensors_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.a = nn.Linear(size, size)
            self.b = nn.Linear(size, size)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    @register_model("test_tied")
    def tied(*, in_channels: int = 4, out_channels: int = 4) -> nn.Module:
        return Tied(in_channels)

    try:
        model = create_model("test_tied")
        path = save_checkpoint(tmp_path / "tied.safetensors", model, ModelCard.from_model(model, task="test"))
        loaded, _ = load_checkpoint(path)
        assert loaded.b.weight is loaded.a.weight
        assert torch.equal(loaded.a.weight, model.a.weight) and torch.equal(loaded.b.bias, model.b.bias)
    finally:
        registry_module._REGISTRY.pop("test_tied", None)


def test_torch_pt_checkpoints_are_read(tmp_path):
    model = _trained_model("unet")
    card = _card(model)
    path = tmp_path / "m.pt"
    torch.save({"card": card.to_dict(), "state_dict": model.state_dict()}, path)
    assert read_model_card(path) == card
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card == card and not loaded.training
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))


def test_checkpoint_errors(tmp_path):
    from safetensors.torch import save_file

    model = _trained_model("unet")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello, I am not a checkpoint")
    with pytest.raises(ConfigError, match="not a safetensors file") as info:
        read_model_card(junk)
    assert info.value.path == str(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ConfigError, match="no medseg model card"):
        load_checkpoint(bare)
    alien = tmp_path / "alien.safetensors"
    alien_card = _card(model).to_dict() | {"architecture": "unet_resnet1000", "architecture_args": {}}
    save_file({"w": torch.zeros(2)}, str(alien), metadata={"medseg_card": json.dumps(alien_card)})
    with pytest.raises(ConfigError, match="unknown model 'unet_resnet1000'") as info:
        load_checkpoint(alien)
    assert info.value.path == str(alien)
    with pytest.raises(ConfigError, match=r"\.safetensors"):
        save_checkpoint(tmp_path / "m.pt", model, _card(model))
    wrong = _card(model).model_copy(update={"architecture_args": {**model.medseg_architecture_args, "dropout": 0.5}})
    with pytest.raises(ConfigError, match="dropout"):
        save_checkpoint(tmp_path / "m.safetensors", model, wrong)
    with pytest.raises(ConfigError, match="label indices"):
        ModelCard.from_dict(_card(model).to_dict() | {"labels": {"9": "nine"}})


# --------------------------------------------------------------------------------------- configs


def test_repository_model_configs_build_and_feed_the_training_recipes(tmp_path):
    from medseg.train.config import load_train_config

    paths = sorted(CONFIGS.glob("*.yaml"))
    assert any(p.name == "lobes_unet_resnet18.yaml" for p in paths)
    lobes = load_model_config(CONFIGS / "lobes_unet_resnet18.yaml", derived={"in_channels": 15, "out_channels": 6})
    assert lobes["architecture"] == "unet_resnet18"
    assert lobes["architecture_args"] == {"in_channels": 15, "out_channels": 6, "spatial_dims": 2,
                                          "decoder_channels": (128, 64, 32, 16, 16), "upsample": "deconv"}
    for path in paths:
        config = load_model_config(path, derived={"in_channels": 3, "out_channels": 6})
        model = create_model_from_config(config).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape[:2] == (1, 6)
    # the recipes use these files; channels stay derived (the lobes recipe stacks 5 slices, not the 3 once here)
    recipe = load_train_config(CONFIGS.parent / "train" / "lobes.yaml")
    assert recipe.model.architecture == "unet_resnet18" and "in_channels" not in recipe.model.args
    assert recipe.model.args["decoder_channels"] == (128, 64, 32, 16, 16)
    assert load_train_config(CONFIGS.parent / "train" / "cxr.yaml").model.architecture == "densenet121"
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("architecture: unet_resnet18\nin_channels: 3\nout_channels: 6\n")
    train = tmp_path / "train.yaml"
    train.write_text(f"data: {{manifest: m.yaml}}\npreprocessing: p.yaml\nmodel: {fixed.name}\n")
    with pytest.raises(ConfigError, match="in_channels and out_channels must not be set") as info:
        load_train_config(train)
    assert info.value.path == str(fixed)


def test_model_config_errors(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text("architecture: unet_resnet18\nout_channels: 6\ndecoder_channel: [8, 8, 8, 8, 8]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'decoder_channel' \(did you mean 'decoder_channels'") as info:
        load_model_config(config)
    assert info.value.path == str(config)
    config.write_text("architecture: unet_resnet19\nout_channels: 6\n")
    with pytest.raises(ConfigError, match="did you mean 'unet_resnet18'"):
        load_model_config(config)
    config.write_text("architecture: unet_resnet18\nout_channels: six\n")
    with pytest.raises(ConfigError, match="out_channels"):
        load_model_config(config)
    with pytest.raises(InputError):
        load_model_config(tmp_path / "missing.yaml")
