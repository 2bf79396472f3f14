"""``ClassifierModule``: a LightningModule around any image classifier ``nn.Module``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from ..checkpoint import PrunedCheckpointMixin

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ClassifierModule(PrunedCheckpointMixin, pl.LightningModule):
    """Cross-entropy training of ``model`` with accuracy for train, val and test.

    A pruned checkpoint reloads with ``ClassifierModule.load_from_checkpoint(path, model=fresh_network)``:
    the fresh network is re-structured to the checkpoint's shapes first. The optimizer and scheduler
    factories are not saved as hyperparameters (they are not plain data, and would make checkpoints unsafe
    to load with ``weights_only=True``).

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` and ``test/acc``. The optimizer and LR
    scheduler are factories (Hydra's ``_partial_: true``): ``optimizer(params)`` and ``lr_scheduler(opt)``.
    A scheduler factory that still lacks ``total_steps`` (OneCycleLR) or ``T_max`` (CosineAnnealingLR) gets
    it from the trainer, in steps for ``lr_interval="step"`` and in epochs for ``"epoch"``.

    >>> from functools import partial
    >>> module = ClassifierModule(nn.Linear(4, 3), num_classes=3, optimizer=partial(torch.optim.SGD, lr=0.1))
    >>> module(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        lr_interval: str = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval={lr_interval!r} is invalid; choose 'epoch' or 'step'")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metric = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.train_acc, self.val_acc, self.test_acc = metric.clone(), metric.clone(), metric.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _shared_step(self, batch: Any, stage: str, accuracy: torchmetrics.Metric) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        accuracy(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def _scheduler_length(self, name: str) -> dict[str, int]:
        factory = self.scheduler_factory
        bound = getattr(factory, "keywords", {}) or {}
        try:
            params = inspect.signature(getattr(factory, "func", factory)).parameters
        except (TypeError, ValueError):
            return {}
        if name not in params or name in bound:
            return {}
        if self.hparams.lr_interval == "step":
            return {name: int(self.trainer.estimated_stepping_batches)}
        return {name: int(self.trainer.max_epochs)}

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        lengths = {**self._scheduler_length("total_steps"), **self._scheduler_length("T_max")}
        scheduler = self.scheduler_factory(optimizer, **lengths)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_interval},
        }
