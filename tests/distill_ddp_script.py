"""Fit a tiny CNN with ``PruningCallback`` and ``DistillationCallback`` under DDP; every rank writes digests.

Run as ``python tests/distill_ddp_script.py --out DIR`` with ``PYTHONPATH`` set to the repository root (Lightning's
``strategy="ddp"`` launcher re-runs this file for rank 1). Each rank builds its module from a different seed, so
only DDP's broadcast of rank 0's weights makes the ranks agree; ``DIR/rank<r>.json`` holds digests of the
module's weights before fit, of the teacher at the first training batch and at the end, and of the final
student. ``tests/lightning/test_distill_ddp.py`` compares them.
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
from conftest import PlainNet, random_loader  # noqa: E402
from ddp_script import digest  # noqa: E402

from lightning_prune import DistillationCallback, PruningCallback  # noqa: E402
from lightning_prune.app.module import ClassifierModule  # noqa: E402


class Probe(pl.Callback):
    def __init__(self, distill: DistillationCallback, out: str, before: str) -> None:
        self.distill, self.out, self.record = distill, out, {"before_fit": before}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if "teacher_at_start" not in self.record:
            self.record["teacher_at_start"] = digest(self.distill.teacher.state_dict().values())
            self.record["strategy_model"] = type(trainer.strategy.model).__name__
            self.record["teacher_in_ddp"] = any(
                p is q for p in self.distill.teacher.parameters() for q in trainer.strategy.model.parameters()
            )

    def on_fit_end(self, trainer, pl_module):  # noqa: ANN001
        self.record["teacher_at_end"] = digest(self.distill.teacher.state_dict().values())
        self.record["student"] = digest(pl_module.parameters())  # BatchNorm statistics stay per rank
        self.record["distill_loss"] = float(trainer.callback_metrics["distill/loss"])
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    pl.seed_everything(rank, verbose=False)  # different initial weights on every rank
    module = ClassifierModule(PlainNet(), num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.05))
    before = digest(module.state_dict().values())  # parameters and buffers: the teacher copies both
    distill = DistillationCallback(temperature=2.0)
    pruning = PruningCallback(ratio=0.5, schedule="one_shot", criterion="l1", verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[pruning, distill, Probe(distill, args.out, before)],
    )
    trainer.fit(module, random_loader(n=32, batch_size=8, shuffle=False))


if __name__ == "__main__":
    from ddp_exit import run_then_shut_down

    run_then_shut_down(main)
