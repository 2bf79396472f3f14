"""Fit a tiny CNN with ``SparsifyCallback`` and write, per rank, the masks and weights the DDP test compares.

Run with ``PYTHONPATH`` set to the repository root (Lightning's ``strategy="ddp"`` launcher re-runs this file
for rank 1)::

    python tests/sparsify_ddp_script.py --strategy ddp --devices 2 --out DIR

Every rank seeds itself differently (``PerRankSeed``) and the criterion is ``random``: masks that each rank chose
on its own would differ. Each rank writes ``DIR/rank<r>.json``: per epoch, a digest of every mask and of the
parameters right after the sparsity step, the sparsity reached, a digest of the first batch (the ranks see
different data), and a digest of the final parameters. ``tests/lightning/test_sparsify_ddp.py`` imports
:func:`run` for the single-process reference.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path

import torch

torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402
from conftest import PlainNet  # noqa: E402
from ddp_script import PerRankSeed, digest, loader  # noqa: E402

import lightning_prune  # noqa: E402
from lightning_prune import SparsifyCallback  # noqa: E402
from lightning_prune.app.module import ClassifierModule  # noqa: E402

EPOCHS = 3


class Probe(pl.Callback):
    def __init__(self, path_pattern: str) -> None:
        self.path_pattern = path_pattern
        self.record: dict = {"masks": [], "params": [], "sparsity": [], "first_batch": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if batch_idx == 0:
            self.record["first_batch"].append(digest(batch))

    def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001 - after SparsifyCallback's
        callback = next(c for c in trainer.callbacks if isinstance(c, SparsifyCallback))
        self.record["masks"].append({name: digest([mask]) for name, mask in sorted(callback.masks.items())})
        self.record["params"].append(digest(pl_module.parameters()))
        self.record["sparsity"].append(callback.sparsity)

    def on_fit_end(self, trainer, pl_module):  # noqa: ANN001 - before SparsifyCallback's (masks still on)
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size,
                           lightning_prune=lightning_prune.__file__)

    def teardown(self, trainer, pl_module, stage):  # noqa: ANN001 - the masks are permanent by now
        self.record["final_params"] = digest(p for _, p in sorted(pl_module.named_parameters()))
        Path(self.path_pattern.format(rank=trainer.global_rank)).write_text(json.dumps(self.record))


def run(out: str, strategy: str = "auto", devices: int = 1) -> None:
    pl.seed_everything(0, verbose=False)
    module = ClassifierModule(PlainNet(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=1e-2))
    sparsify = SparsifyCallback(0.6, granularity="weight", context="global", criterion="random",
                                schedule="linear", end_epoch=1, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_epochs=EPOCHS,
        callbacks=[PerRankSeed(), sparsify, Probe(os.path.join(out, "rank{rank}.json"))],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run(args.out, args.strategy, args.devices)


if __name__ == "__main__":
    from ddp_exit import run_then_shut_down

    run_then_shut_down(main)
