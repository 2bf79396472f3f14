"""Image classifiers without torchvision: ResNet-18/34/50 in torchvision's ``state_dict`` layout, a small CNN.

The ResNets reproduce torchvision's module names, tensor shapes and initialisation exactly (v1.5 Bottleneck:
the stride sits on the 3x3 conv), so torchvision's published ImageNet weights files load with
:func:`load_backbone_weights`.

>>> model = resnet18(num_classes=2)
>>> model(torch.zeros(1, 3, 64, 64)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "Attention",
    "SmallCNN",
    "TransformerBlock",
    "VisionTransformer",
    "load_backbone_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "small_cnn",
]

log = logging.getLogger(__name__)

WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual connection (ResNet-18/34).

    >>> BasicBlock(64, 64)(torch.zeros(1, 64, 8, 8)).shape
    torch.Size([1, 64, 8, 8])
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as in torchvision's v1.5), 1x1 expand by 4, and a residual (ResNet-50).

    >>> block = Bottleneck(256, 64)
    >>> block(torch.zeros(1, 256, 8, 8)).shape
    torch.Size([1, 256, 8, 8])
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet whose ``state_dict`` keys and shapes are torchvision's.

    ``block`` is :class:`BasicBlock` or :class:`Bottleneck`, ``layers`` the number of blocks per stage.

    >>> model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, in_channels=1)
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _first_keys(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def load_backbone_weights(model: nn.Module, path_or_state_dict: WeightsSource) -> list[str]:
    """Load a torchvision-style ``state_dict`` into ``model``, skipping tensors whose shape differs.

    A file is read with ``torch.load(..., map_location="cpu", weights_only=True)``. Tensors whose shape
    differs from the model's (a 1000-class ``fc`` head for a 2-class model, a 3-channel ``conv1`` for
    ``in_channels=1``) keep the model's own initialisation; their keys are logged and returned. Keys missing
    from the weights or unknown to the model raise ``ValueError``, except BatchNorm's ``num_batches_tracked``
    counters, which older files lack.

    >>> load_backbone_weights(resnet18(num_classes=2), resnet18().state_dict())
    ['fc.weight', 'fc.bias']
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "the given state_dict"
        weights = path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        weights = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(weights, Mapping):
            raise ValueError(f"{source} holds a {type(weights).__name__}, not a state_dict")

    own = model.state_dict()
    missing = [key for key in own if key not in weights and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in weights if key not in own]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {_first_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_first_keys(unexpected)}")
        raise ValueError(f"weights in {source} do not match {type(model).__name__}: {'; '.join(problems)}")

    skipped = [key for key, tensor in weights.items() if tensor.shape != own[key].shape]
    for key in skipped:
        log.info(
            "not loading %s: shape %s in the weights, %s in the model",
            key,
            tuple(weights[key].shape),
            tuple(own[key].shape),
        )
    own.update({key: tensor for key, tensor in weights.items() if key not in skipped})
    model.load_state_dict(own)
    return skipped


def _resnet(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    num_classes: int,
    weights: str | os.PathLike | None,
    in_channels: int,
) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes, in_channels=in_channels)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def resnet18(
    num_classes: int = 1000, weights: str | os.PathLike | None = None, in_channels: int = 3
) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); ``weights``: a torchvision weights file, loaded without its head.

    >>> resnet18(num_classes=10, in_channels=1)(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 10])
    """
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, weights, in_channels)


def resnet34(
    num_classes: int = 1000, weights: str | os.PathLike | None = None, in_channels: int = 3
) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); ``weights``: a torchvision weights file, loaded without its head.

    >>> resnet34(num_classes=2)(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2])
    """
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, weights, in_channels)


def resnet50(
    num_classes: int = 1000, weights: str | os.PathLike | None = None, in_channels: int = 3
) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); ``weights``: a torchvision weights file, loaded without its head.

    >>> resnet50(num_classes=2)(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2])
    """
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, weights, in_channels)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (``width``, ``2*width``, ``4*width``, ``4*width``) for 32x32 inputs.

    Max pooling halves the resolution after each of the first three blocks; a global average pool feeds the
    linear head ``fc``. Any input size of 8x8 or more works.

    >>> SmallCNN(num_classes=10, in_channels=1, width=8)(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2),
            _conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * width, 4 * width),
            nn.MaxPool2d(2),
            _conv_bn_relu(4 * width, 4 * width),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> SmallCNN:
    """Build a :class:`SmallCNN`.

    >>> small_cnn(num_classes=4, width=8)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)


class Attention(nn.Module):
    """timm-style multi-head self-attention: one ``qkv`` Linear, stored ``num_heads`` and ``head_dim`` (the
    callback keeps both right when it prunes head dims or whole heads)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block; attention by :class:`Attention` or ``nn.MultiheadAttention`` (``torch_mha``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, torch_mha: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.torch_mha = torch_mha
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True) if torch_mha else Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + (self.attn(y, y, y, need_weights=False)[0] if self.torch_mha else self.attn(y))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A ViT: ``patch``-sized patches, class token, position embedding, ``depth`` blocks, linear ``head``.

    >>> VisionTransformer(num_classes=3, dim=16, depth=1, heads=2, image=8, patch=4)(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        image: int = 224,
        patch: int = 16,
        mlp_ratio: int = 4,
        torch_mha: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio, torch_mha) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])
