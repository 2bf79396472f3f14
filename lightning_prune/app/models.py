"""The image classifiers torchvision and timm lack, and loading weights files into any model.

torchvision and timm build every other model (``conf/model/*.yaml`` name their builders as ``_target_``);
this module keeps only what neither library has:

- :class:`CifarResNet` (:func:`resnet20`, :func:`resnet56`): the CIFAR-10 ResNets of He et al., "Deep
  Residual Learning for Image Recognition" (CVPR 2016, section 4.2), the models of the Torch-Pruning paper's
  CIFAR-10 table;
- :class:`SmallCNN`: a small CNN for the 8x8 digits.

:func:`load_backbone_weights` loads a ``state_dict`` (a torchvision or timm weights file, or one of ours)
into a model, keeping the model's own head where its size differs; :func:`torchvision_weights` resolves a
torchvision weights name such as ``DEFAULT`` for a builder (downloaded by torchvision on first use).

>>> model = resnet20(num_classes=10)
>>> model(torch.zeros(1, 3, 32, 32)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CifarBasicBlock",
    "CifarResNet",
    "SmallCNN",
    "load_backbone_weights",
    "load_weights",
    "resnet20",
    "resnet56",
    "small_cnn",
    "torchvision_weights",
]

log = logging.getLogger(__name__)

WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: the identity, or where the shape changes a 1x1 strided
    projection conv with BatchNorm (He et al.'s option B).

    >>> CifarBasicBlock(16, 32, stride=2)(torch.zeros(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet of He et al. (2016, section 4.2): depth ``6n + 2``.

    A 3x3 conv with 16 filters, then three stages (``layer1``-``layer3``) of ``n`` :class:`CifarBasicBlock`
    each, with 16, 32 and 64 filters on feature maps of 32, 16 and 8 pixels (the first block of stages 2 and 3
    has stride 2), global average pooling and a linear head ``fc``: ResNet-20 is ``n = 3``, ResNet-56
    ``n = 9``.

    Shortcuts are **option B**: identity, except a 1x1 projection (conv + BN) in the two blocks that halve the
    resolution and double the width. The paper's CIFAR models used option A (identity with zero-padded extra
    channels); option B is what Torch-Pruning's CIFAR benchmarks prune, and it is structurally prunable,
    whereas a zero-padding shortcut fixes the channel count. It adds 2,752 parameters (0.27M for ResNet-20
    and 0.86M for ResNet-56 in all, against the paper's 0.27M and 0.85M). Convolutions get Kaiming normal
    initialisation (fan out), BatchNorm weight 1 and bias 0.

    >>> model = CifarResNet(depth=20, num_classes=10)
    >>> [len(stage) for stage in (model.layer1, model.layer2, model.layer3)]
    [3, 3, 3]
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth} is invalid; a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(width, width, n, stride=1)
        self.layer2 = self._make_stage(width, 2 * width, n, stride=2)
        self.layer3 = self._make_stage(2 * width, 4 * width, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = [CifarBasicBlock(in_planes, planes, stride)]
        stage += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (three stages of 3 blocks, 16/32/64 filters).

    >>> sum(p.numel() for p in resnet20().parameters())
    272474
    """
    return CifarResNet(depth=20, num_classes=num_classes, in_channels=in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR-10 (three stages of 9 blocks, 16/32/64 filters).

    >>> sum(p.numel() for p in resnet56().parameters())
    855770
    """
    return CifarResNet(depth=56, num_classes=num_classes, in_channels=in_channels)


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

    >>> load_backbone_weights(resnet20(num_classes=2), resnet20().state_dict())
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


def torchvision_weights(builder: Callable[..., nn.Module], name: str) -> Any | None:
    """The torchvision weights ``name`` (``DEFAULT``, ``IMAGENET1K_V1``, ...) of a torchvision model builder;
    None when ``builder`` has no torchvision weights enum. An unknown name raises ``ValueError`` listing the
    builder's names.

    >>> import torchvision
    >>> torchvision_weights(torchvision.models.resnet18, "DEFAULT")
    ResNet18_Weights.IMAGENET1K_V1
    >>> torchvision_weights(resnet20, "DEFAULT") is None
    True
    """
    try:
        from torchvision.models import get_model_weights
    except ImportError:  # pragma: no cover - torchvision is in the app extra
        return None
    try:
        enum = get_model_weights(builder)
    except (ValueError, TypeError):
        return None
    try:
        return enum.verify(name)
    except KeyError:
        names = [member.name for member in enum] + ["DEFAULT"]
        raise ValueError(
            f"model.weights={name!r} is neither a file nor one of {enum.__name__}'s weights; "
            f"give the path of a weights file or one of {names}"
        ) from None


def load_weights(
    model: nn.Module, weights: str | os.PathLike, builder: Callable[..., nn.Module] | None = None
) -> list[str]:
    """What ``model.weights=...`` does: load a weights file, or a torchvision weights name, into ``model``.

    ``weights`` is the path of a ``state_dict`` file (a torchvision or timm weights file, or ours; read
    offline) or, for a torchvision ``builder``, the name of one of its weights (``DEFAULT``,
    ``IMAGENET1K_V1``, ...), which torchvision downloads once into its cache (``$TORCH_HOME/hub/checkpoints``;
    a file already there is used offline). Either way :func:`load_backbone_weights` loads it, skipping a head
    (or stem) of another size; returns the skipped keys.
    """
    if Path(weights).is_file():
        return load_backbone_weights(model, weights)
    member = torchvision_weights(builder, os.fspath(weights)) if builder is not None else None
    if member is None:
        raise ValueError(
            f"model.weights={os.fspath(weights)!r} is not a file; give the path of a weights file "
            "(a state_dict saved with torch.save, e.g. torchvision's resnet18-f37072fd.pth), or a torchvision "
            "weights name such as DEFAULT for a torchvision model"
        )
    return load_backbone_weights(model, member.get_state_dict(progress=True))
