"""What does the callback cost during training? Graph build, pruning events, and a whole fit.

For each model (resnet18, resnet50; digits upsampled to ``--size``, 3 channels):

- ``graph_build_s``: building the dependency graph once (``ChannelPruner(model, example)``), median.
- ``event_s``: one pruning event inside ``trainer.fit``, as the time of the callback's epoch-end hook
  (ranking, surgery, optimizer re-mapping, output check, MAC counting and logging); ``prune_steps_s`` times
  the bare ``ChannelPruner.prune_to`` steps of a 4-step schedule on a copy.
- Whole fits, ``--epochs`` epochs each, repeated ``--repeats`` times interleaved (C A B C A B ...):
  C = dense, no callback; A = the final architecture from the start, no callback; B = dense with the
  callback pruning ``--ratio`` of channels (``one_shot``, end of epoch 0). B has the dense architecture for
  one epoch and the final one afterwards; the same epochs without a callback cost about
  ``C + (E - 1) * A`` per-epoch, i.e. ``expected = (C + (E - 1) A) / E`` in fit time (start-up costs are in
  both), and ``fit_slowdown = B / expected - 1``.
- ``hook_share``: time spent inside the callback's hooks / B's fit time: what pruning adds to a fit,
  measured directly rather than as a difference of two noisy wall times.

    python scripts/bench_overhead.py --out scripts/results/overhead.json
    python scripts/bench_overhead.py --smoke --out /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    machine_info,
    markdown_table,
    pruned_copy,
    set_threads,
    time_hooks,
    write_json,
)
from torchvision.models import resnet18, resnet50  # noqa: E402

from lightning_prune import PruningCallback  # noqa: E402
from lightning_prune.app.data import DigitsDataModule  # noqa: E402
from lightning_prune.app.models import small_cnn  # noqa: E402
from lightning_prune.app.module import ClassifierModule  # noqa: E402
from lightning_prune.engine.pruner import ChannelPruner  # noqa: E402
from lightning_prune.engine.report import count_macs_params  # noqa: E402

MODELS = {"resnet18": resnet18, "resnet50": resnet50, "small_cnn": lambda num_classes: small_cnn(num_classes, width=8)}
HOOKS = ("setup", "on_fit_start", "on_train_epoch_end", "on_before_optimizer_step", "on_fit_end", "teardown")

for name in ("lightning.pytorch", "lightning.fabric", "lightning_prune"):
    logging.getLogger(name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


class TimedPruningCallback(PruningCallback):
    """The callback, unchanged, with the wall time of each hook call recorded in ``hook_times``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook_times = time_hooks(self, HOOKS)


def event_breakdown(dense: torch.nn.Module, example: torch.Tensor, ratio: float) -> dict[str, float]:
    """The parts of one one-shot pruning event, timed outside the trainer: the prune itself, the MAC and
    parameter count the callback logs after it, and the forward pass that checks the output shapes."""
    model = copy.deepcopy(dense)
    pruner = ChannelPruner(model, example, ignored_layers=[model.fc])
    start = time.perf_counter()
    pruner.prune_to(ratio)
    prune = time.perf_counter() - start
    start = time.perf_counter()
    count_macs_params(model, example)
    count = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        model.eval()(example)
    forward = time.perf_counter() - start
    return {"prune_to": prune, "count_macs_params": count, "forward_check": forward}


def fit_seconds(model: torch.nn.Module, data: DigitsDataModule, args, callbacks: list) -> float:
    module = ClassifierModule(model, num_classes=10, optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_train_batches=args.train_batches, limit_val_batches=args.val_batches, callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def bench_model(name: str, data: DigitsDataModule, args) -> dict[str, Any]:
    example = torch.zeros(1, 3, args.size, args.size)
    torch.manual_seed(0)
    dense = MODELS[name](num_classes=10)
    builds = []
    for _ in range(args.repeats):
        trial = copy.deepcopy(dense)
        start = time.perf_counter()
        ChannelPruner(trial, example, ignored_layers=[trial.fc])
        builds.append(time.perf_counter() - start)
    trial = copy.deepcopy(dense)
    pruner = ChannelPruner(trial, example, ignored_layers=[trial.fc])
    steps = []
    for k in range(1, 5):
        start = time.perf_counter()
        pruner.prune_to(args.ratio * k / 4)
        steps.append(time.perf_counter() - start)
    final = pruned_copy(dense, example, args.ratio)
    dense_macs = count_macs_params(dense, example)[0]
    breakdown = event_breakdown(dense, example, args.ratio)

    fit_seconds(copy.deepcopy(dense), data, args, [])  # warm-up: first-call costs (allocator, kernels)
    fits: dict[str, list[float]] = defaultdict(list)
    hooks: list[dict[str, list[float]]] = []
    callback_macs = []
    for _ in range(args.repeats):
        fits["dense"].append(fit_seconds(copy.deepcopy(dense), data, args, []))
        fits["final_arch"].append(fit_seconds(copy.deepcopy(final), data, args, []))
        callback = TimedPruningCallback(ratio=args.ratio, schedule="one_shot", start_epoch=0, end_epoch=0,
                                        criterion=args.criterion, example_inputs=example, verbose=False)
        model = copy.deepcopy(dense)
        fits["callback"].append(fit_seconds(model, data, args, [callback]))
        hooks.append(dict(callback.hook_times))
        callback_macs.append(count_macs_params(model, example)[0] / dense_macs)
        print(f"{name}: dense {fits['dense'][-1]:.1f}s, final arch {fits['final_arch'][-1]:.1f}s, "
              f"callback {fits['callback'][-1]:.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in fits.items()}
    e = args.epochs
    expected = (med["dense"] + (e - 1) * med["final_arch"]) / e
    hook_totals = [sum(sum(v) for v in h.values()) for h in hooks]
    hook_share = statistics.median(t / f for t, f in zip(hook_totals, fits["callback"]))
    events = [h["on_train_epoch_end"][0] for h in hooks]  # epoch 0 prunes (one_shot)
    return {
        "model": name,
        "graph_build_s": statistics.median(builds),
        "event_s": statistics.median(events),
        "setup_s": statistics.median(h["setup"][0] for h in hooks),
        "prune_steps_s": steps,
        "event_breakdown_s": breakdown,
        "hook_seconds": {k: statistics.median(sum(h.get(k, [0.0])) for h in hooks) for k in HOOKS},
        "hook_share": hook_share,
        "fit_s": med,
        "fit_s_all": dict(fits),
        "expected_fit_s": expected,
        "fit_slowdown": med["callback"] / expected - 1.0,
        "final_arch_macs_ratio": count_macs_params(final, example)[0] / dense_macs,
        "callback_macs_ratio": statistics.median(callback_macs),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    data = DigitsDataModule(size=args.size, channels=3, batch_size=args.batch_size, seed=0)
    data.setup("fit")
    rows = [bench_model(name, data, args) for name in args.models]
    return {
        "benchmark": "overhead",
        "machine": machine_info(threads),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows,
    }


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["model", "graph build s", "setup s", "event s", "hook share", "fit dense s", "fit final-arch s",
         "fit callback s", "expected s", "fit slowdown", "MACs ratio"],
        [[r["model"], r["graph_build_s"], r["setup_s"], r["event_s"], f"{100 * r['hook_share']:.2f}%",
          r["fit_s"]["dense"], r["fit_s"]["final_arch"], r["fit_s"]["callback"], r["expected_fit_s"],
          f"{100 * r['fit_slowdown']:+.1f}%", r["callback_macs_ratio"]] for r in rows],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model and fit that run in seconds")
    p.add_argument("--out", default=str(RESULTS_DIR / "overhead.json"))
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"], choices=sorted(MODELS))
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--criterion", default="l2")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-batches", type=int, default=12)
    p.add_argument("--val-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.epochs, args.size, args.batch_size = ["small_cnn"], 2, 16, 16
        args.train_batches, args.val_batches, args.repeats = 3, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print(table(result["rows"]))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
