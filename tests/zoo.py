"""Models people actually train, at toy sizes with random weights, and the checks every one of them must pass
inside ``trainer.fit`` (tests/lightning/test_transformers.py, tests/lightning/test_timm.py).

Each model is built by a function of no arguments (called again, after the same seed, for the fresh copy
that ``restore_pruned`` re-structures). Inputs are token ids (``{"input_ids": ...}``) or images.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from conftest import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_prune import PruningCallback, count_macs_params, restore_pruned
from lightning_prune.app.export import load_model, save_model
from lightning_prune.engine.inputs import output_tensors
from lightning_prune.engine.pruner import call_model

NUM_CLASSES = 4
VOCAB = 100


class Samples(Dataset):
    """``n`` samples of model inputs (a dict of one tensor) and a label in ``[0, NUM_CLASSES)``."""

    def __init__(self, key: str, shape: tuple[int, ...], n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        if key == "input_ids":
            self.x = torch.randint(0, VOCAB, (n, *shape), generator=g)
        else:
            self.x = torch.randn(n, *shape, generator=g)
        self.y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        self.key = key

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {self.key: self.x[i]}, self.y[i]


class ZooModule(pl.LightningModule):
    """Cross-entropy on the logits of a Hugging Face model (keyword inputs) or a timm/torchvision one (``x``)."""

    def __init__(self, net: nn.Module, key: str, lr: float = 1e-3) -> None:
        super().__init__()
        self.net, self.key, self.lr = net, key, lr

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.net(**inputs) if self.key != "x" else self.net(inputs["x"])

    @staticmethod
    def logits(out: Any) -> torch.Tensor:
        logits = out.logits if hasattr(out, "logits") else out
        logits = logits[0] if isinstance(logits, tuple) else logits  # e.g. LeViT's distillation pair
        return logits[:, -1, :NUM_CLASSES] if logits.dim() == 3 else logits[:, :NUM_CLASSES]

    def training_step(self, batch: tuple[dict, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, y = batch
        return nn.functional.cross_entropy(self.logits(self(**inputs)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Probe(pl.Callback):
    """Output shapes and MACs at the start of the fit and after each epoch's prune."""

    def __init__(self, inputs: dict[str, torch.Tensor]) -> None:
        self.inputs = inputs
        self.macs: list[int] = []
        self.shapes: list[list[tuple[int, ...]]] = []

    def measure(self, module: ZooModule) -> None:
        with torch.no_grad():
            training = module.training
            module.eval()
            self.shapes.append([tuple(t.shape) for t in output_tensors(call_model(module, self.inputs))])
            module.train(training)
        self.macs.append(count_macs_params(module, self.inputs)[0])

    def on_fit_start(self, trainer: pl.Trainer, module: ZooModule) -> None:
        self.measure(module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: ZooModule) -> None:
        self.measure(module)


def outputs(module: ZooModule, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        module.eval()
        return module.logits(module(**inputs))


def prune_in_fit(
    make: Callable[[], nn.Module],
    key: str,
    shape: tuple[int, ...],
    context: str,
    tmp_path: Path,
    **callback_kwargs: Any,
) -> tuple[ZooModule, PruningCallback, dict[str, Any]]:
    """Build, fit with ``PruningCallback(ratio=0.5, schedule="linear", end_epoch=1)`` for 2 epochs of 2
    batches, and run every check of the issue; returns the module, the callback and what was measured."""
    pl.seed_everything(0, verbose=False)
    module = ZooModule(make(), key)
    data = Samples(key, shape)
    probe = Probe({key: data.x[:1]})
    callback = PruningCallback(
        ratio=0.5, schedule="linear", end_epoch=1, context=context, verbose=False, **callback_kwargs
    )
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback, probe])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, DataLoader(data, batch_size=4))
    found: dict[str, Any] = {"warnings": [str(w.message) for w in caught], "probe": probe}

    # the fit completed and pruned twice, about half of the prunable channels in the end
    assert len(callback.events) == 2, callback.events
    assert 0.35 <= callback.events[-1]["prune/ratio"] <= 0.65, callback.events[-1]
    # the outputs keep their shape after every prune, and MACs go down
    assert all(s == probe.shapes[0] for s in probe.shapes), probe.shapes
    assert probe.macs[1] < probe.macs[0] and probe.macs[2] < probe.macs[0], probe.macs
    # the optimizer holds exactly the live parameters, with state of their shapes
    optimizer = trainer.optimizers[0]
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in module.parameters()}
    for param, state in optimizer.state.items():
        assert state["exp_avg"].shape == param.shape
    # restore_pruned re-structures a fresh module from the checkpoint and reproduces the outputs
    fresh_x = {key: Samples(key, shape, n=2, seed=1).x}
    expected = outputs(module, fresh_x)
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    pl.seed_everything(1, verbose=False)
    fresh = ZooModule(make(), key)
    restore_pruned(fresh, path)
    torch.testing.assert_close(outputs(fresh, fresh_x), expected)
    # the whole-model save loads back and computes the same
    save_model(module.net, tmp_path / "model.pt")
    loaded = ZooModule(load_model(tmp_path / "model.pt"), key)
    torch.testing.assert_close(outputs(loaded, fresh_x), expected)
    found["expected"] = expected
    return module, callback, found
