"""The app's models: torchvision's and timm's from the configs, our CIFAR ResNets and small CNN; weights load
without their head."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from hydra import compose, initialize_config_dir
from torch import nn

from lightning_prune.app.config import register_configs
from lightning_prune.app.data import DigitsDataModule
from lightning_prune.app.models import (
    CifarBasicBlock,
    CifarResNet,
    SmallCNN,
    load_backbone_weights,
    load_weights,
    resnet20,
    resnet56,
    small_cnn,
)
from lightning_prune.app.run import build_model
from lightning_prune.engine.pruner import ChannelPruner, find_output_layers
from lightning_prune.engine.report import count_macs_params

CONF = str(Path(__file__).resolve().parents[2] / "conf")
register_configs()


def model_config(name: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        return compose("train", overrides=[f"model={name}", *overrides]).model


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# -- the configs build torchvision's and timm's models ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("resnet18", torchvision.models.ResNet),
        ("resnet34", torchvision.models.ResNet),
        ("resnet50", torchvision.models.ResNet),
        ("mobilenet_v3_small", torchvision.models.MobileNetV3),
        ("efficientnet_b0", torchvision.models.EfficientNet),
        ("timm", timm.models.ResNet),
    ],
)
def test_model_configs_build_the_libraries_models(name, cls):
    model = build_model(model_config(name), num_classes=5, in_channels=3)
    assert type(model) is cls
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_resnet18_is_torchvision_s():
    model = build_model(model_config("resnet18"), num_classes=1000, in_channels=3)
    reference = torchvision.models.resnet18()
    shapes = {key: tensor.shape for key, tensor in model.state_dict().items()}
    assert shapes == {key: tensor.shape for key, tensor in reference.state_dict().items()}


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "timm"])
def test_library_models_prune_and_still_run(name):
    """Squeeze-excitation (MobileNetV3, EfficientNet) and timm's blocks prune without breaking the model."""
    model = build_model(model_config(name), num_classes=5, in_channels=3).eval()
    example = torch.randn(2, 3, 32, 32)
    dense_macs = count_macs_params(model, example[:1])[0]
    heads = [model.get_submodule(layer) for layer in find_output_layers(model, example[:1])]
    ChannelPruner(model, example[:1], ignored_layers=heads).prune_to(0.3)
    assert model(example).shape == (2, 5)
    assert count_macs_params(model, example[:1])[0] < 0.8 * dense_macs


# -- ResNet-20/56 for CIFAR-10 ----------------------------------------------------------------------


def cifar_resnet_parameters(n: int, num_classes: int = 10) -> int:
    """Parameters of He et al.'s CIFAR ResNet with 6n+2 layers and option-B shortcuts, counted by hand."""
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731 - a bias-free conv and its BN
    total = conv_bn(3, 16, 3)
    for cin, cout in ((16, 16), (16, 32), (32, 64)):
        total += conv_bn(cin, cout, 3) + conv_bn(cout, cout, 3) + (n - 1) * 2 * conv_bn(cout, cout, 3)
        if cin != cout:
            total += conv_bn(cin, cout, 1)  # the projection shortcut
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(("factory", "n", "paper_millions"), [(resnet20, 3, 0.27), (resnet56, 9, 0.85)])
def test_cifar_resnets_have_the_paper_s_layout(factory, n, paper_millions):
    model = factory(num_classes=10)
    assert isinstance(model, CifarResNet) and model.depth == 6 * n + 2
    convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in name]
    assert len(convs) + 1 == 6 * n + 2  # weighted layers: the convs and the fc
    stages = (model.layer1, model.layer2, model.layer3)
    assert [len(stage) for stage in stages] == [n, n, n]
    assert [stage[-1].conv2.out_channels for stage in stages] == [16, 32, 64]
    shapes = []
    for stage in stages:
        stage.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    model(torch.zeros(1, 3, 32, 32))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    # option B: a projection only where the shape changes
    projections = [name for name, m in model.named_modules() if isinstance(m, CifarBasicBlock) and m.downsample]
    assert projections == ["layer2.0", "layer3.0"]
    assert count_parameters(model) == cifar_resnet_parameters(n)
    # without the two projections (2,752 parameters) the count is the paper's option-A figure
    assert round((count_parameters(model) - 2752) / 1e6, 2) == paper_millions


def test_cifar_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match=r"depth=21 is invalid; a CIFAR ResNet has depth 6n \+ 2"):
        CifarResNet(depth=21)


def test_resnet20_prunes_with_its_residual_channels_coupled():
    model = resnet20(num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    dense_macs = count_macs_params(model, example)[0]
    ChannelPruner(model, example, ignored_layers=[model.fc]).prune_to(0.4)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    streams = []
    for stage in (model.layer1, model.layer2, model.layer3):
        widths = {block.conv2.out_channels for block in stage}  # the residual stream: one width per stage
        assert len(widths) == 1
        streams.append(widths.pop())
        assert all(block.conv2.in_channels == block.conv1.out_channels for block in stage)
    assert model.conv1.out_channels == streams[0]
    assert model.layer2[0].downsample[0].out_channels == streams[1]
    assert model.layer3[0].downsample[0].out_channels == streams[2] == model.fc.in_features
    assert sum(streams) < 16 + 32 + 64  # the coupled residual channels were pruned too
    assert count_macs_params(model, example)[0] < 0.75 * dense_macs


# -- model.weights ------------------------------------------------------------------------------------


@pytest.fixture
def imagenet_weights(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


def test_model_weights_path_loads_a_torchvision_file_without_its_head(imagenet_weights, caplog):
    source = torch.load(imagenet_weights, weights_only=True)
    with caplog.at_level(logging.INFO, logger="lightning_prune.app.models"):
        model = build_model(model_config("resnet18", f"model.weights={imagenet_weights}"), num_classes=2, in_channels=3)
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text
    loaded = model.state_dict()
    for key, tensor in source.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], tensor), key
    assert model.fc.out_features == 2


def test_model_weights_loads_our_resnet20_too(tmp_path):
    trained = resnet20(num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "r20.pt")
    model = build_model(model_config("resnet20", f"model.weights={tmp_path / 'r20.pt'}"), num_classes=10, in_channels=3)
    assert torch.equal(model.layer3[2].conv2.weight, trained.layer3[2].conv2.weight)
    assert torch.equal(model.fc.weight, trained.fc.weight)


def test_a_torchvision_weights_name_is_read_from_torchvision_s_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints"
    cached.mkdir(parents=True)
    source = torchvision.models.resnet18().state_dict()
    torch.save(source, cached / torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1])
    model = build_model(model_config("resnet18", "model.weights=DEFAULT"), num_classes=3, in_channels=3)
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert model.fc.out_features == 3


def test_bad_model_weights_name_the_value_and_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"model.weights='NOPE' is neither a file nor one of ResNet18_Weights.*"
                                         r"\['IMAGENET1K_V1', 'DEFAULT'\]"):
        build_model(model_config("resnet18", "model.weights=NOPE"), num_classes=3, in_channels=3)
    missing = tmp_path / "missing.pth"
    with pytest.raises(ValueError, match=rf"model.weights='{missing}' is not a file"):
        build_model(model_config("resnet20", f"model.weights={missing}"), num_classes=3, in_channels=3)


def test_other_input_channels_skip_the_stem(tmp_path):
    torch.save(resnet20().state_dict(), tmp_path / "r20.pt")
    assert load_weights(resnet20(in_channels=1), tmp_path / "r20.pt") == ["conv1.weight"]


def test_missing_num_batches_tracked_is_tolerated():
    state = {k: v for k, v in resnet20().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert load_backbone_weights(resnet20(), state) == []


def test_missing_and_renamed_keys_are_named(imagenet_weights):
    state = torch.load(imagenet_weights, weights_only=True)
    del state["layer2.1.bn2.bias"]
    state["layer1.0.conv1.kernel"] = state.pop("layer1.0.conv1.weight")
    with pytest.raises(ValueError) as error:
        load_backbone_weights(torchvision.models.resnet18(), state)
    assert "missing keys 'layer1.0.conv1.weight', 'layer2.1.bn2.bias'" in str(error.value)
    assert "unexpected keys 'layer1.0.conv1.kernel'" in str(error.value)


def test_a_model_without_in_channels_refuses_one_channel_data():
    with pytest.raises(ValueError, match=r"torchvision.models.resnet18 takes no in_channels.*1 channels"):
        build_model(model_config("resnet18"), num_classes=10, in_channels=1)
    timm_model = build_model(model_config("timm"), num_classes=10, in_channels=1)  # timm's in_chans
    assert timm_model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


# -- the small CNN -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_channels", "width", "num_classes"), [(3, 32, 10), (1, 8, 4)])
def test_small_cnn_forward(in_channels, width, num_classes):
    model = small_cnn(num_classes=num_classes, in_channels=in_channels, width=width)
    assert isinstance(model, SmallCNN)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == num_classes
    assert model(torch.randn(5, in_channels, 32, 32)).shape == (5, num_classes)


def test_small_cnn_learns_digits():
    datamodule = DigitsDataModule(size=16, batch_size=32)
    datamodule.setup()
    model = small_cnn(num_classes=datamodule.num_classes, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)  # 1e-2 for 2 epochs was seed-lucky
    for _ in range(4):
        for images, labels in datamodule.train_dataloader():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in datamodule.val_dataloader())
    assert correct / len(datamodule.val_dataset) > 0.9


def test_kaiming_initialisation_of_the_cifar_resnet():
    conv = resnet56().layer3[4].conv1.weight  # kaiming normal, fan_out, relu gain
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert conv.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
