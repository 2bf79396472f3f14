"""ResNets match torchvision's published ``state_dict`` layout; weights load without their head; SmallCNN."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from lightning_prune.app.data import DigitsDataModule
from lightning_prune.app.models import (
    Bottleneck,
    SmallCNN,
    load_backbone_weights,
    resnet18,
    resnet34,
    resnet50,
    small_cnn,
)

# torchvision.models.resnet18().state_dict(): every key, in order, with its shape.
TORCHVISION_RESNET18 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.bn1.bias": (64,),
    "layer1.0.bn1.running_mean": (64,),
    "layer1.0.bn1.running_var": (64,),
    "layer1.0.bn1.num_batches_tracked": (),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn2.weight": (64,),
    "layer1.0.bn2.bias": (64,),
    "layer1.0.bn2.running_mean": (64,),
    "layer1.0.bn2.running_var": (64,),
    "layer1.0.bn2.num_batches_tracked": (),
    "layer1.1.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn1.weight": (64,),
    "layer1.1.bn1.bias": (64,),
    "layer1.1.bn1.running_mean": (64,),
    "layer1.1.bn1.running_var": (64,),
    "layer1.1.bn1.num_batches_tracked": (),
    "layer1.1.conv2.weight": (64, 64, 3, 3),
    "layer1.1.bn2.weight": (64,),
    "layer1.1.bn2.bias": (64,),
    "layer1.1.bn2.running_mean": (64,),
    "layer1.1.bn2.running_var": (64,),
    "layer1.1.bn2.num_batches_tracked": (),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.bn1.weight": (128,),
    "layer2.0.bn1.bias": (128,),
    "layer2.0.bn1.running_mean": (128,),
    "layer2.0.bn1.running_var": (128,),
    "layer2.0.bn1.num_batches_tracked": (),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.bn2.weight": (128,),
    "layer2.0.bn2.bias": (128,),
    "layer2.0.bn2.running_mean": (128,),
    "layer2.0.bn2.running_var": (128,),
    "layer2.0.bn2.num_batches_tracked": (),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer2.0.downsample.1.bias": (128,),
    "layer2.0.downsample.1.running_mean": (128,),
    "layer2.0.downsample.1.running_var": (128,),
    "layer2.0.downsample.1.num_batches_tracked": (),
    "layer2.1.conv1.weight": (128, 128, 3, 3),
    "layer2.1.bn1.weight": (128,),
    "layer2.1.bn1.bias": (128,),
    "layer2.1.bn1.running_mean": (128,),
    "layer2.1.bn1.running_var": (128,),
    "layer2.1.bn1.num_batches_tracked": (),
    "layer2.1.conv2.weight": (128, 128, 3, 3),
    "layer2.1.bn2.weight": (128,),
    "layer2.1.bn2.bias": (128,),
    "layer2.1.bn2.running_mean": (128,),
    "layer2.1.bn2.running_var": (128,),
    "layer2.1.bn2.num_batches_tracked": (),
    "layer3.0.conv1.weight": (256, 128, 3, 3),
    "layer3.0.bn1.weight": (256,),
    "layer3.0.bn1.bias": (256,),
    "layer3.0.bn1.running_mean": (256,),
    "layer3.0.bn1.running_var": (256,),
    "layer3.0.bn1.num_batches_tracked": (),
    "layer3.0.conv2.weight": (256, 256, 3, 3),
    "layer3.0.bn2.weight": (256,),
    "layer3.0.bn2.bias": (256,),
    "layer3.0.bn2.running_mean": (256,),
    "layer3.0.bn2.running_var": (256,),
    "layer3.0.bn2.num_batches_tracked": (),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer3.0.downsample.1.weight": (256,),
    "layer3.0.downsample.1.bias": (256,),
    "layer3.0.downsample.1.running_mean": (256,),
    "layer3.0.downsample.1.running_var": (256,),
    "layer3.0.downsample.1.num_batches_tracked": (),
    "layer3.1.conv1.weight": (256, 256, 3, 3),
    "layer3.1.bn1.weight": (256,),
    "layer3.1.bn1.bias": (256,),
    "layer3.1.bn1.running_mean": (256,),
    "layer3.1.bn1.running_var": (256,),
    "layer3.1.bn1.num_batches_tracked": (),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer3.1.bn2.weight": (256,),
    "layer3.1.bn2.bias": (256,),
    "layer3.1.bn2.running_mean": (256,),
    "layer3.1.bn2.running_var": (256,),
    "layer3.1.bn2.num_batches_tracked": (),
    "layer4.0.conv1.weight": (512, 256, 3, 3),
    "layer4.0.bn1.weight": (512,),
    "layer4.0.bn1.bias": (512,),
    "layer4.0.bn1.running_mean": (512,),
    "layer4.0.bn1.running_var": (512,),
    "layer4.0.bn1.num_batches_tracked": (),
    "layer4.0.conv2.weight": (512, 512, 3, 3),
    "layer4.0.bn2.weight": (512,),
    "layer4.0.bn2.bias": (512,),
    "layer4.0.bn2.running_mean": (512,),
    "layer4.0.bn2.running_var": (512,),
    "layer4.0.bn2.num_batches_tracked": (),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.0.downsample.1.weight": (512,),
    "layer4.0.downsample.1.bias": (512,),
    "layer4.0.downsample.1.running_mean": (512,),
    "layer4.0.downsample.1.running_var": (512,),
    "layer4.0.downsample.1.num_batches_tracked": (),
    "layer4.1.conv1.weight": (512, 512, 3, 3),
    "layer4.1.bn1.weight": (512,),
    "layer4.1.bn1.bias": (512,),
    "layer4.1.bn1.running_mean": (512,),
    "layer4.1.bn1.running_var": (512,),
    "layer4.1.bn1.num_batches_tracked": (),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
    "layer4.1.bn2.weight": (512,),
    "layer4.1.bn2.bias": (512,),
    "layer4.1.bn2.running_mean": (512,),
    "layer4.1.bn2.running_var": (512,),
    "layer4.1.bn2.num_batches_tracked": (),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}

# torchvision.models.resnet50().state_dict(): the stem, the head, the first and the last bottleneck.
TORCHVISION_RESNET50_SAMPLE = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.bn1.bias": (64,),
    "layer1.0.bn1.running_mean": (64,),
    "layer1.0.bn1.running_var": (64,),
    "layer1.0.bn1.num_batches_tracked": (),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn2.weight": (64,),
    "layer1.0.bn2.bias": (64,),
    "layer1.0.bn2.running_mean": (64,),
    "layer1.0.bn2.running_var": (64,),
    "layer1.0.bn2.num_batches_tracked": (),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.weight": (256,),
    "layer1.0.bn3.bias": (256,),
    "layer1.0.bn3.running_mean": (256,),
    "layer1.0.bn3.running_var": (256,),
    "layer1.0.bn3.num_batches_tracked": (),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.weight": (256,),
    "layer1.0.downsample.1.bias": (256,),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer1.0.downsample.1.running_var": (256,),
    "layer1.0.downsample.1.num_batches_tracked": (),
    "layer4.2.conv1.weight": (512, 2048, 1, 1),
    "layer4.2.bn1.weight": (512,),
    "layer4.2.bn1.bias": (512,),
    "layer4.2.bn1.running_mean": (512,),
    "layer4.2.bn1.running_var": (512,),
    "layer4.2.bn1.num_batches_tracked": (),
    "layer4.2.conv2.weight": (512, 512, 3, 3),
    "layer4.2.bn2.weight": (512,),
    "layer4.2.bn2.bias": (512,),
    "layer4.2.bn2.running_mean": (512,),
    "layer4.2.bn2.running_var": (512,),
    "layer4.2.bn2.num_batches_tracked": (),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.weight": (2048,),
    "layer4.2.bn3.bias": (2048,),
    "layer4.2.bn3.running_mean": (2048,),
    "layer4.2.bn3.running_var": (2048,),
    "layer4.2.bn3.num_batches_tracked": (),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}
RESNET18_PARAMETERS = 11_689_512
RESNET50_PARAMETERS = 25_557_032
RESNET50_KEYS = 320
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_resnet18_layout_is_torchvision_s():
    # the transcribed layout is itself consistent with torchvision's published size
    assert len(TORCHVISION_RESNET18) == 122
    parameters = [shape for key, shape in TORCHVISION_RESNET18.items() if not key.endswith(BUFFER_SUFFIXES)]
    assert sum(math.prod(shape) for shape in parameters) == RESNET18_PARAMETERS

    model = resnet18()
    assert list(shapes(model).items()) == list(TORCHVISION_RESNET18.items())
    assert count_parameters(model) == RESNET18_PARAMETERS


def test_resnet50_layout_is_torchvision_s():
    model = resnet50()
    layout = shapes(model)
    assert len(layout) == RESNET50_KEYS
    assert count_parameters(model) == RESNET50_PARAMETERS
    assert {key: layout.get(key) for key in TORCHVISION_RESNET50_SAMPLE} == TORCHVISION_RESNET50_SAMPLE
    blocks = ("layer1.0.", "layer4.2.")
    assert [key for key in layout if key.startswith(blocks)] == [
        key for key in TORCHVISION_RESNET50_SAMPLE if key.startswith(blocks)
    ]


def test_resnet50_strides_on_the_3x3_conv_like_torchvision_v1_5():
    block = resnet50().layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("factory", [resnet18, resnet34, resnet50])
def test_head_and_input_channels_follow_the_arguments(factory):
    model = factory(num_classes=7, in_channels=1)
    assert model.fc.out_features == 7
    assert model.conv1.in_channels == 1
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_initialisation_is_torchvision_s():
    model = resnet18()
    conv = model.layer4[0].conv1.weight  # kaiming normal, fan_out (twice fan_in here), relu gain
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert conv.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.03)
    assert conv.mean().item() == pytest.approx(0, abs=1e-3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.fixture
def imagenet_weights(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    return path


def test_backbone_loads_and_the_mismatched_head_is_skipped(imagenet_weights, caplog):
    source = torch.load(imagenet_weights, weights_only=True)
    model = resnet18(num_classes=2)
    own_head = model.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="lightning_prune.app.models"):
        skipped = load_backbone_weights(model, imagenet_weights)
    assert skipped == ["fc.weight", "fc.bias"]
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text
    loaded = model.state_dict()
    for key, tensor in source.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], tensor), key
    assert torch.equal(model.fc.weight, own_head)


def test_weights_argument_loads_the_backbone(imagenet_weights):
    source = torch.load(imagenet_weights, weights_only=True)
    model = resnet18(num_classes=2, weights=imagenet_weights)
    assert torch.equal(model.layer3[1].conv2.weight, source["layer3.1.conv2.weight"])
    assert model.fc.out_features == 2


def test_other_input_channels_skip_conv1(imagenet_weights):
    model = resnet18(num_classes=1000, in_channels=1)
    assert load_backbone_weights(model, imagenet_weights) == ["conv1.weight"]


def test_missing_num_batches_tracked_is_tolerated():
    state = {k: v for k, v in resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert load_backbone_weights(resnet18(), state) == []


def test_missing_key_is_named(imagenet_weights, tmp_path):
    state = torch.load(imagenet_weights, weights_only=True)
    del state["layer2.1.bn2.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys 'layer2\.1\.bn2\.bias'"):
        load_backbone_weights(resnet18(), tmp_path / "missing.pth")


def test_renamed_key_is_named(imagenet_weights):
    state = torch.load(imagenet_weights, weights_only=True)
    state["layer1.0.conv1.kernel"] = state.pop("layer1.0.conv1.weight")
    with pytest.raises(ValueError) as error:
        load_backbone_weights(resnet18(), state)
    assert "'layer1.0.conv1.weight'" in str(error.value)
    assert "unexpected keys 'layer1.0.conv1.kernel'" in str(error.value)


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
