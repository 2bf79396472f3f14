"""Every use of Lightning's (and torch.nn.Module's) private API, one function per need.

A Lightning upgrade that moves one of these edits this file only. Each function names the private
attribute it reads or writes and why there is no public way.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher


def first_training_batch(trainer: pl.Trainer) -> Any:
    """The first batch of the fit's training dataloader, during ``setup``.

    Lightning builds the dataloader only after ``setup``; the fit loop's ``_data_source`` is the one place
    that can produce it before (from a LightningModule or a LightningDataModule alike).
    """
    return next(iter(trainer.fit_loop._data_source.dataloader()))


def loaded_checkpoint(trainer: Any) -> dict[str, Any]:
    """The checkpoint Lightning is restoring in this fit, or ``{}``.

    Lightning loads the model's weights before any callback state and gives callbacks no public hook in
    between; ``_checkpoint_connector._loaded_checkpoint`` holds the checkpoint meanwhile.
    """
    connector = getattr(trainer, "_checkpoint_connector", None)
    return getattr(connector, "_loaded_checkpoint", None) or {}


def spawns_ranks(trainer: pl.Trainer) -> bool:
    """Whether the ranks run in processes started by ``fit`` whose results Lightning copies back into the
    launching process (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``): their launcher is the private
    ``_MultiProcessingLauncher``."""
    return isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)


def start_method(strategy: Any) -> str:
    """The multiprocessing start method of a spawning strategy (``DDPStrategy._start_method``)."""
    return str(getattr(strategy, "_start_method", "spawn"))


def reset_static_graph_delay(strategy: Any) -> None:
    """After a new DDP wrapper is built: with ``static_graph=True`` Lightning delays its first step's
    hook registration once (``_pl_static_graph_delay_done``); the new wrapper needs that delay again."""
    if hasattr(strategy, "_pl_static_graph_delay_done"):
        strategy._pl_static_graph_delay_done = False


def copy_without_trainer(module: Any, trainer: Any) -> Any:
    """A deep copy of ``module`` that leaves ``trainer`` out (the copy's references to it become ``None``).

    A LightningModule keeps its trainer in the private ``_trainer`` and has no public way to detach from it for a
    copy; a plain ``copy.deepcopy`` would copy the whole trainer with it (its callbacks, data loaders and
    loggers). Mapping the trainer to ``None`` in deepcopy's memo names no private attribute and covers every
    reference to it, a child LightningModule's included.
    """
    return copy.deepcopy(module, {id(trainer): None})
