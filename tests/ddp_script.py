"""Fit a tiny CNN with ``PruningCallback`` and write, per rank, what the DDP tests compare.

Lightning's ``strategy="ddp"`` launcher re-runs this file once per extra rank, so it must be a standalone
script (run with ``PYTHONPATH`` set to the repository root, so that every rank imports this checkout's
``lightning_prune``)::

    python tests/ddp_script.py --strategy ddp --devices 2 --out DIR taylor random l2_fit_start

(``l2_fit_start``: criterion ``l2``, pruned once when the fit starts, ``prune_on_fit_start=True``.)

For each criterion, every rank writes ``DIR/<criterion>_rank<r>.json`` with these fields:

- after each epoch, the widths of the prunable layers, the number of prunable channels kept (one count per
  coupled group) and the type of ``trainer.strategy.model`` (the DDP wrapper);
- per-epoch digests of the parameters and of the optimizer state, taken right after the prune. DDP
  broadcasts rank 0's parameters when its wrapper is rebuilt, so a wrong choice of channels would be
  hidden in the parameters, but Adam's moments are never broadcast;
- a digest of the first batch of each epoch, to show that the ranks saw different data;
- a digest of the final parameters.

The launching process also writes ``DIR/<criterion>_launcher.json``: digests of the model object it passed
to ``fit``, before and after ``fit``.

``tests/lightning/test_distributed.py`` imports :func:`run` for the single-process reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from functools import partial
from pathlib import Path

import torch

torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402
from conftest import ResidualNet  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lightning_prune  # noqa: E402
from lightning_prune import PruningCallback  # noqa: E402
from lightning_prune.app.module import ClassifierModule  # noqa: E402

EPOCHS = 4  # prunes at the end of epochs 0, 1 and 2, then trains one epoch on the pruned model
END_EPOCH = 2
CONTEXT = {"taylor": "global", "random": "local", "l2_fit_start": "global"}
SPARSE_TRAINING = {"taylor": 1e-2, "random": 0.0, "l2_fit_start": 0.0}  # sparse training joins the global run
FIT_START_SUFFIX = "_fit_start"  # l2_fit_start: criterion l2, one prune at fit start (prune_on_fit_start=True)
# ... to a MACs budget with round_to=4: rounding lands under it (0.35), and rank 0 puts a unit back (0.43)
FIT_START_BUDGET = dict(target="macs", budget=0.5, round_to=4)


def digest(tensors) -> str:  # noqa: ANN001
    sha = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        sha.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        sha.update(tensor.numpy().tobytes())
    return sha.hexdigest()


def widths(module: nn.Module) -> dict[str, int]:
    return {
        name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


class PerRankSeed(pl.Callback):
    """Seeds every rank differently, as users do for augmentation: the ``random`` criterion then draws a
    different stream on every rank, so ranks that chose channels on their own would disagree."""

    def setup(self, trainer, pl_module, stage):  # noqa: ANN001
        pl.seed_everything(100 + trainer.global_rank, verbose=False)


class Probe(pl.Callback):
    """Records, on its rank, what the test compares; writes it at the end of fit."""

    def __init__(self, path_pattern: str) -> None:
        self.path_pattern = path_pattern
        self.record: dict = {"widths": [], "kept": [], "wrapper": [], "params": [], "optimizer": [], "first_batch": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if batch_idx == 0:
            self.record["first_batch"].append(digest(batch))

    def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001 - runs after PruningCallback's
        optimizer = trainer.optimizers[0]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = [t for p in params for _, t in sorted(optimizer.state.get(p, {}).items()) if t.dim() > 0]
        pruner = next(c for c in trainer.callbacks if isinstance(c, PruningCallback)).pruner
        self.record["widths"].append(widths(pl_module))
        self.record["kept"].append(round(pruner.prunable_channels * (1 - pruner.channel_ratio())))
        self.record["wrapper"].append(type(trainer.strategy.model).__name__)
        self.record["params"].append(digest(pl_module.parameters()))
        self.record["optimizer"].append(digest(state))

    def on_fit_end(self, trainer, pl_module):  # noqa: ANN001
        self.record.update(
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            final_params=digest(pl_module.parameters()),
            sparse_steps=sparsity.steps if (sparsity := pruning_session(trainer).sparsity) is not None else 0,
            units=sum(event.get("search", {}).get("units", 0) for event in pruning_session(trainer).events),
            lightning_prune=lightning_prune.__file__,
        )
        Path(self.path_pattern.format(rank=trainer.global_rank)).write_text(json.dumps(self.record))


def pruning_session(trainer):  # noqa: ANN001, ANN201
    return next(c for c in trainer.callbacks if isinstance(c, PruningCallback)).session


def loader(n: int = 64, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """``n`` random images in batches of 8. With 64 and 2 ranks, DDP's DistributedSampler gives each rank 4
    different batches per epoch. There is no ``generator=`` argument: ddp_spawn pickles the loader, and a
    pickled ``torch.Generator`` fails to rebuild in the spawned process on some machines ("unable to resize
    file")."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=shuffle)


def run(criterion: str, out: str, strategy: str = "auto", devices: int = 1) -> None:
    """Fit once with ``criterion``; every rank writes ``out/<criterion>_rank<r>.json``."""
    pl.seed_everything(0, verbose=False)
    module = ClassifierModule(ResidualNet(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=1e-2))
    at_fit_start = criterion.endswith(FIT_START_SUFFIX)
    when = (dict(schedule="one_shot", prune_on_fit_start=True, **FIT_START_BUDGET) if at_fit_start
            else dict(schedule="linear", end_epoch=END_EPOCH, ratio=0.5))
    pruning = PruningCallback(
        criterion=criterion.removesuffix(FIT_START_SUFFIX), context=CONTEXT[criterion],
        sparse_training=SPARSE_TRAINING[criterion], **when,
    )
    probe = Probe(os.path.join(out, f"{criterion}_rank{{rank}}.json"))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=EPOCHS,
        callbacks=[PerRankSeed(), pruning, probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    before = digest(module.parameters())
    trainer.fit(module, loader(), loader(n=16, seed=1, shuffle=False))  # validation runs through the new wrapper
    if trainer.global_rank == 0:  # the launching process: rank 0 with "ddp", the parent of the ranks with spawn
        after = {"before_fit": before, "after_fit": digest(module.parameters()), "widths": widths(module)}
        Path(out, f"{criterion}_launcher.json").write_text(json.dumps(after))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("criteria", nargs="+")
    args = parser.parse_args(argv)
    for criterion in args.criteria:
        run(criterion, args.out, args.strategy, args.devices)


if __name__ == "__main__":
    from ddp_exit import run_then_shut_down

    run_then_shut_down(main)
