"""Small networks, one per architecture pattern the callback must prune (tests/lightning/test_architectures.py).

Each is a few dozen lines at most and takes 3x16x16 images (the two-input model also a 4-vector).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from conftest import PlainNet, ResidualNet, conv_bn
from torch import nn

__all__ = ["PlainNet", "ResidualNet"]


class InvertedResidualNet(nn.Module):
    """MobileNetV2: expand 1x1, depthwise 3x3, project 1x1, residual add."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.block = nn.Sequential(
            nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16),
        )  # fmt: skip
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        return self.fc(x.mean((2, 3)))


class GroupedNet(nn.Module):
    """ResNeXt: a grouped 3x3 conv (4 groups) inside a bottleneck with a residual add."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.block = nn.Sequential(
            nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32),
        )  # fmt: skip
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class SENet(nn.Module):
    """EfficientNet / MobileNetV3: depthwise conv, squeeze-and-excitation, hard-swish, residual."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32))
        self.se = SqueezeExcite(32, 8)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(nn.functional.hardswish(self.dw(self.expand(x)))))
        return self.fc(x.mean((2, 3)))


class DenseNet(nn.Module):
    """DenseNet: every layer sees the concatenation of all earlier feature maps."""

    def __init__(self, num_classes: int = 4, growth: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layers = nn.ModuleList([conv_bn(16 + i * growth, growth) for i in range(3)])
        self.transition = nn.Conv2d(16 + 3 * growth, 24, 1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(torch.relu(self.transition(x)).mean((2, 3)))


class InceptionNet(nn.Module):
    """Inception: parallel 1x1, 3x3, 5x5 and pool branches concatenated."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 5, padding=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(16, 8, 1))
        self.fc = nn.Linear(36, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1))
        return self.fc(x.mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))  # layer scale: an unwrapped parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)  # channels last
        y = self.gamma * self.fc2(nn.functional.gelu(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    """ConvNeXt: depthwise 7x7, channels-last LayerNorm and MLP, layer scale, residual."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


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


def ViT(num_classes: int = 4, torch_mha: bool = False) -> VisionTransformer:  # noqa: N802 - a model
    """A small ViT: 4x4 patches of 16x16 images, dim 32, 2 blocks of 4 heads, MLP ratio 2."""
    return VisionTransformer(num_classes, dim=32, depth=2, heads=4, image=16, patch=4, mlp_ratio=2, torch_mha=torch_mha)


class TwoInputDictNet(nn.Module):
    """Two inputs (an image and a 4-vector of metadata) and a dict output with two heads."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), conv_bn(16, 24))
        self.meta = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.fuse = nn.Linear(24 + 16, 32)
        self.logits, self.aux = nn.Linear(32, num_classes), nn.Linear(32, 1)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.fuse(torch.cat([self.features(image).mean((2, 3)), self.meta(meta)], 1)))
        return {"logits": self.logits(h), "aux": self.aux(h)}


class ConvHeadNet(nn.Module):
    """SqueezeNet: the classifier is a 1x1 conv to the classes, followed by global pooling."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), conv_bn(16, 32))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(32, num_classes, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.classifier(self.features(x))), 1)


# -- unsafe patterns ------------------------------------------------------------------------------------
class ShuffleNet(nn.Module):
    """ShuffleNetV2 unit: chunk the channels, transform one half, concatenate, shuffle the channels."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.branch = nn.Sequential(conv_bn(8, 8), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1))
        self.tail = conv_bn(16, 24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        return self.fc(self.tail(x).mean((2, 3)))


class FixedViewNet(nn.Module):
    """A LeNet-style flatten that writes the feature size out: ``view(-1, 16 * 4 * 4)``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(2), conv_bn(8, 16), nn.MaxPool2d(2))
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.features(x).view(-1, 16 * 4 * 4))))


class SliceNet(nn.Module):
    """Takes fixed channel positions of a conv output: ``x[:, 4:12]``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(self.stem(x)[:, 4:12])).mean((2, 3)))


class HiddenFixedViewNet(nn.Module):
    """A reshape to a fixed channel count that the static check does not catch (3-D output): only the
    forward pass after a prune reveals it."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.conv = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.stem(x))
        return self.fc(y.reshape(y.shape[0], 8, y.shape[2] * y.shape[3]).mean(2))


# -- a custom layer -------------------------------------------------------------------------------------
class ChannelScale(nn.Module):
    """A user's own layer: a learned per-channel scale that torch-pruning does not know."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class ChannelScalePruner(tp.pruner.BasePruningFunc):
    """Its torch-pruning pruner: input and output channels are the same, one scale per channel."""

    def prune_out_channels(self, layer: ChannelScale, idxs: list[int]) -> ChannelScale:
        keep = [i for i in range(layer.scale.numel()) if i not in set(idxs)]
        layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 0)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: ChannelScale) -> int:
        return layer.scale.numel()

    get_in_channels = get_out_channels


class CustomLayerNet(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.scale, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), ChannelScale(16), conv_bn(16, 24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(torch.relu(self.scale(self.conv1(x)))).mean((2, 3)))
