"""Epoch-seeded shuffling and RNG streams, so that a run resumed from an epoch's checkpoint repeats the
uninterrupted run exactly (with ``trainer.deterministic=true``).

Lightning calls ``set_epoch`` on a dataloader's sampler at the start of every epoch; :class:`EpochShuffle`
re-seeds its generator there, so the order of epoch ``e`` is a function of ``(seed, e)`` alone, whatever ran
before. The same generator seeds the DataLoader's workers. :class:`EpochSeeding` does the same for the
global RNGs that augmentations and dropout draw from in the main process.

>>> sampler = EpochShuffle(range(5), seed=0)
>>> sampler.set_epoch(3); first = list(sampler)
>>> sampler.set_epoch(1); _ = list(sampler); sampler.set_epoch(3); list(sampler) == first
True
>>> list(sampler) == first  # the next pass without set_epoch is epoch 4's
False
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Sampler
from typing_extensions import override


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed``.

    >>> epoch_seed(0, 1) != epoch_seed(1, 0)
    True
    """
    return (seed * 1_000_003 + epoch) % 2**63


class EpochShuffle(Sampler[int]):
    """A random permutation per epoch, a function of ``seed`` and the epoch only: drawn from a generator
    seeded afresh when iteration starts, so no other draw (a DataLoader's worker seed, a second iterator) can
    shift it. ``generator`` is re-seeded per epoch too, for the DataLoader's worker seeds."""

    def __init__(self, data_source: Sized, seed: int) -> None:
        self.size, self.seed, self.epoch = len(data_source), seed, 0
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch) + 1)

    def __iter__(self) -> Iterator[int]:
        order = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        # a plain loop that never calls set_epoch still gets a new order every pass; Lightning sets the epoch
        self.epoch += 1
        return iter(torch.randperm(self.size, generator=order).tolist())

    def __len__(self) -> int:
        return self.size


class EpochSeeding(pl.Callback):
    """Re-seed torch, numpy and random at the start of every training epoch from ``(seed, epoch)``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = epoch_seed(self.seed, trainer.current_epoch) + trainer.global_rank
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)
