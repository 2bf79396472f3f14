"""Small models and data shared by the tests (no torchvision, no downloads)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class PlainNet(nn.Module):
    """A VGG-style stack: no coupled layers, so every conv is its own pruning group."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), conv_bn(16, 24), nn.MaxPool2d(2), conv_bn(24, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ResidualNet(nn.Module):
    """A stem, one residual block (coupled channels) and a linear head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.block = nn.Sequential(conv_bn(16, 24), nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def random_loader(n: int = 64, batch_size: int = 16, num_classes: int = 4, size: int = 8, seed: int = 0, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=g)


def quiet_trainer(**kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.fixture(autouse=True)
def _seed():
    pl.seed_everything(0, verbose=False)


@pytest.fixture
def macs_as_latency(monkeypatch) -> list[torch.device]:
    """A latency budget's timings replaced by a deterministic stand-in (MACs x 1e-9 s), so that a test of
    what the budget does is not at the mercy of a shared machine's timing noise. Returns the devices the
    measured models were on, one per measured pass series."""
    import lightning_prune.engine.budget as budget_module
    from lightning_prune import count_macs_params

    devices: list[torch.device] = []

    def seconds(model: nn.Module, inputs: object) -> float:
        devices.append(next(model.parameters()).device)
        return count_macs_params(model, inputs)[0] * 1e-9

    def fake_latency(model, inputs, repeats=20, warmup=3):
        return seconds(model, inputs)

    def fake_pairwise(models, inputs, repeats=20, warmup=3, clock=None):
        return [[seconds(model, inputs)] for model in models]

    monkeypatch.setattr(budget_module, "measure_latency", fake_latency)
    monkeypatch.setattr(budget_module, "pairwise_latencies", fake_pairwise)
    return devices
