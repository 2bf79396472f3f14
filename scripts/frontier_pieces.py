"""The data and model pieces of ``bench_frontier.py``, kept free of Lightning and of this package so that the
fasterai worker (``frontier_fasterai.py``, in its own virtual environment) builds the very same models, and so
that they can be switched to the project's CIFAR-10 data module and CIFAR ResNets (issue 13) once merged.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch
from torch import nn

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar10(archive: Path, train_per_class: int | None, val_per_class: int | None) -> dict[str, torch.Tensor]:
    """CIFAR-10 from the JPEG archive (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), a class-balanced
    subset, normalised with the usual CIFAR mean and std, no augmentation. A minimal stand-in until the
    project's CIFAR-10 data module (issue 13) is merged."""
    from PIL import Image  # noqa: PLC0415

    wanted = {"train": train_per_class, "test": val_per_class}
    with tarfile.open(archive) as tar:  # one pass in archive order (a gzip stream seeks backwards slowly)
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name.endswith(".jpg")}
    classes = sorted({Path(name).parent.name for name in files})
    images: dict[str, list] = {"train": [], "test": []}
    counts: dict[tuple[str, str], int] = {}
    for name in sorted(files):  # the first files of each class by name: the same subset on every machine
        split, cls = Path(name).parts[-3:-1]
        n = counts.get((split, cls), 0)
        if split not in images or (wanted[split] is not None and n >= wanted[split]):
            continue
        counts[(split, cls)] = n + 1
        img = Image.open(io.BytesIO(files[name])).convert("RGB")
        images[split].append((torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8), classes.index(cls)))
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def stack(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([r[0] for r in rows]).view(-1, 32, 32, 3).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std, torch.tensor([r[1] for r in rows])

    (tx, ty), (vx, vy) = stack(images["train"]), stack(images["test"])
    return {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # option B (1x1 conv), as Torch-Pruning's CIFAR ResNets
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2: 20, 56), widths 16/32/64; a stand-in until issue 13's."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(_Block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_model(name: str) -> nn.Module:
    if name == "resnet18":
        import torchvision  # noqa: PLC0415

        return torchvision.models.resnet18(num_classes=10)
    if name.startswith("resnet") and name[6:].isdigit():
        return CifarResNet(int(name[6:]))
    if name == "tiny":  # --smoke
        return tiny_model()
    raise ValueError(f"unknown model {name!r}")


def tiny_model() -> nn.Module:
    """A two-conv network with an ``fc`` head, for ``--smoke``."""
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16)
            self.c2, self.b2 = nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
            return self.fc(x.mean((2, 3)))

    return Tiny()
