"""Where do we stand against what a user would pick instead? One protocol, five systems, matched MACs.

Every arm trains the same model from the same initial ``state_dict`` (one per seed) on the same tensors
(saved once to ``<work>/data.pt``, the same train/val split), with the same optimizer (AdamW), the same
one-cycle LR schedule (per step: warm-up over the first quarter, cosine down, momentum cycled 0.95 → 0.85 →
0.95, fastai's ``fit_one_cycle`` defaults, mirrored with ``torch.optim.lr_scheduler.OneCycleLR``), the same
batch size, epochs and seeds. Arms:

- ``dense``: no pruning.
- ``ours/<schedule>/<criterion>``: :class:`~lightning_prune.PruningCallback` with ``target="macs"`` at each
  MACs level (2x and 3x fewer, and fasterai's own operating point: the MACs its ``pruning_ratio=0.4`` run
  reached), pruning from ``--prune-start`` to ``--prune-end``.
- ``fasterai``: fasterai 0.4's ``PruneCallback`` (``context="global"``, ``criteria=large_final``,
  ``schedule=agp``) inside fastai's ``Learner.fit_one_cycle``, run by ``scripts/frontier_fasterai.py`` in its
  own virtual environment (``.venv-fasterai``, created by this script). Its ``pruning_ratio`` is searched by
  bisection on a dry prune (all its steps, no training) of the initial model, then re-solved on seed 0's
  trained fits until the trained model lands within 0.01 of each level's MACs (training moves fasterai's
  magnitude ranking, so a dry prune alone can land far off).
- ``torch_pruning/once`` and ``torch_pruning/iterative``: Torch-Pruning alone, as its README does it:
  ``tp.pruner.MetaPruner`` (``GroupMagnitudeImportance(p=2)``, global) prunes the *trained dense model* of the
  same seed once, or in ``--tp-steps`` steps each followed by an equal share of the fine-tuning, to the level's
  MACs (ratio bisected on a dry prune), then fine-tunes ``--epochs`` epochs with a fresh optimizer and
  schedule. It therefore trains twice as many epochs as the other arms (reported as ``epochs_trained``).
- ``modelpruning/ln_structured`` and ``modelpruning/l1_unstructured``: Lightning's masked ``ModelPruning``
  at the same sparsity as ``ours`` at that level (channel share for the structured one, weight share for the
  unstructured one), applied once at the end of ``--prune-start``. Masks keep dense shapes and dense speed.

Reported per arm: accuracy mean ± std over seeds (evaluated here, by one function, for every system), MACs
and params ratios, CPU latency ratio at batch 1 and 32 timed interleaved with dense (seed 0's model), fit
time and pruning overhead (time inside the pruning callback's hooks, or in Torch-Pruning's search and
steps). Outputs: ``scripts/results/frontier_<config>.json`` and ``.png``; ``update_benchmark_docs.py`` turns
them into the tables of docs/benchmarks.md.

    python scripts/bench_frontier.py --config digits32                    # CPU protocol (see --help)
    python scripts/bench_frontier.py --config cifar10 --train-per-class 200
    python scripts/bench_frontier.py --config cifar10 --model resnet56 --full   # GPU protocol, 200 epochs
    python scripts/bench_frontier.py --smoke --out /tmp/frontier.json    # seconds, no fasterai

``--full`` is Torch-Pruning's CIFAR ResNet-56 recipe (SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch
128, 200 epochs, the full 50,000/10,000 split) and trains on a GPU where there is one (latency stays a CPU
measurement); it has not been run here.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    bisect_ratio,
    evaluate_accuracy,
    latency_vs_dense,
    load_average,
    machine_info,
    markdown_table,
    modelpruning_callback,
    pyplot,
    save_figure,
    set_threads,
    time_hooks,
    write_json,
)
from frontier_pieces import cifar10, make_model  # noqa: E402
from update_benchmark_docs import frontier_leaders  # noqa: E402

from lightning_prune import PruningCallback  # noqa: E402
from lightning_prune.app.module import ClassifierModule  # noqa: E402
from lightning_prune.engine.attention import width  # noqa: E402
from lightning_prune.engine.report import count_macs_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {"2x": 1 / 2, "3x": 1 / 3}  # MACs fraction of dense; "fasterai" is added from its own run
FASTERAI_NOMINAL_RATIO = 0.4  # fasterai's own operating point (the "same nominal setting")
FASTERAI_VENV = ROOT / ".venv-fasterai"
PINNED = ("torch==2.14.1", "torchvision==0.29.1")
OUR_HOOKS = ("setup", "on_fit_start", "on_train_epoch_end", "on_before_optimizer_step", "on_fit_end", "teardown")
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

for name in ("lightning.pytorch", "lightning.fabric", "lightning_prune"):
    logging.getLogger(name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


# -- data and models: small functions, to be switched to the project's CIFAR pieces (issue 13) --------
def digits32() -> dict[str, torch.Tensor]:
    """scikit-learn digits upsampled to 32x32, 3 channels, the project's stratified split (seed 0)."""
    from lightning_prune.app.data import DigitsDataModule  # noqa: PLC0415

    data = DigitsDataModule(size=32, channels=3, seed=0)
    data.setup("fit")
    (tx, ty), (vx, vy) = data.train_dataset.tensors, data.val_dataset.tensors
    return {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}


CONFIGS: dict[str, dict[str, Any]] = {
    "digits32": dict(data="digits32", model="resnet18", epochs=8, batch_size=64, lr=3e-3, weight_decay=1e-4,
                     optimizer="adamw", prune_start=1, prune_end=4),
    "cifar10": dict(data="cifar10", model="resnet20", epochs=8, batch_size=128, lr=3e-3, weight_decay=1e-4,
                    optimizer="adamw", prune_start=1, prune_end=4, train_per_class=500, val_per_class=200),
}
FULL = dict(epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4, optimizer="sgd", prune_start=10, prune_end=100,
            train_per_class=None, val_per_class=None)  # Torch-Pruning's ResNet-56 CIFAR recipe (GPU)


def load_data(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    if args.smoke:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(96, 3, 16, 16, generator=g), torch.arange(96) % 10
        return {"train_x": x[:64], "train_y": y[:64], "val_x": x[64:], "val_y": y[64:]}
    if args.data == "digits32":
        return digits32()
    return cifar10(Path(args.archive), args.train_per_class, args.val_per_class)


def build_model(args: argparse.Namespace) -> nn.Module:
    return make_model("tiny" if args.smoke else args.model)


# -- the one recipe -----------------------------------------------------------------------------------
def optimizer_factory(args: argparse.Namespace) -> Any:
    if args.optimizer == "sgd":
        return partial(torch.optim.SGD, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return partial(torch.optim.AdamW, lr=args.lr, weight_decay=args.weight_decay)


def scheduler_factory(args: argparse.Namespace) -> Any:
    """fastai's ``fit_one_cycle`` defaults (pct_start 0.25, div 25, div_final 1e5, moms 0.95/0.85/0.95) in
    torch's OneCycleLR (its final_div_factor is relative to the initial lr: 1e5 / 25)."""
    return partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=args.lr, pct_start=0.25, div_factor=25.0,
                   final_div_factor=1e5 / 25, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                   max_momentum=0.95)


def make_module(model: nn.Module, args: argparse.Namespace) -> ClassifierModule:
    return ClassifierModule(model, num_classes=10, optimizer=optimizer_factory(args),
                            lr_scheduler=scheduler_factory(args), lr_interval="step")


def loaders(data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(TensorDataset(data["train_x"], data["train_y"]), batch_size=args.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(data["val_x"], data["val_y"]), batch_size=256)
    return train, val


def fit(module: ClassifierModule, data: dict, args: argparse.Namespace, seed: int, epochs: int,
        callbacks: list = ()) -> float:
    """Train ``epochs`` epochs (no validation loop); returns the wall seconds."""
    pl.seed_everything(seed, verbose=False)
    trainer = pl.Trainer(accelerator="auto" if args.full else "cpu", devices=1, max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))
    began = time.perf_counter()
    trainer.fit(module, train_dataloaders=loaders(data, args, seed)[0])
    return time.perf_counter() - began


# -- arms ---------------------------------------------------------------------------------------------
def init_model(args: argparse.Namespace, work: Path, seed: int) -> nn.Module:
    model = build_model(args)
    model.load_state_dict(torch.load(work / f"init_{seed}.pt"))
    return model


def run_dense(args, data, work: Path, seed: int) -> dict[str, Any]:
    module = make_module(init_model(args, work, seed), args)
    seconds = fit(module, data, args, seed, args.epochs)
    torch.save(module.model.state_dict(), work / f"dense_{seed}.pt")
    return {"model": module.model, "fit_s": seconds, "prune_s": 0.0, "epochs_trained": args.epochs}


# Named recipes of our callback (arms ``ours/<recipe>``): PruningCallback options, plus ``from_dense`` (start
# from this seed's trained dense model, as Torch-Pruning's arms do: twice the training, reported in
# ``epochs_trained``) and ``distill`` (DistillationCallback: from the fit-start copy with ``from_dense``, else
# from the trained dense model given as teacher).
PRUNED_FIRST = dict(schedule="one_shot", from_dense=True, prune_on_fit_start=True)
RECIPES: dict[str, dict[str, Any]] = {
    "finetune": dict(criterion="l2", from_dense=True),
    "finetune_large_final": dict(criterion="large_final", from_dense=True),
    "finetune_distill": dict(criterion="l2", from_dense=True, distill=True),
    "finetune_distill_large_final": dict(criterion="large_final", from_dense=True, distill=True),
    "finetune_distill_latency": dict(criterion="l2", channel_cost="latency", round_to=8, from_dense=True,
                                     distill=True),
    "finetune_distill_sparse": dict(criterion="l2", sparse_training=1e-3, from_dense=True, distill=True),
    "latency_large_final": dict(criterion="large_final", channel_cost="latency", round_to=8),
    # the level's fraction as a LATENCY budget (target="latency": channel_cost="latency" by default)
    "latency_budget": dict(criterion="l2", target="latency"),
    "latency_budget_large_final": dict(criterion="large_final", target="latency"),
    "finetune_distill_latency_budget": dict(criterion="l2", target="latency", from_dense=True, distill=True),
    "large_final": dict(criterion="large_final"),
    "sparse": dict(criterion="l2", sparse_training=1e-3),
    "cost": dict(criterion="l2", channel_cost="macs_memory", round_to=8),
    "latency": dict(criterion="l2", channel_cost="latency", round_to=8),
    "latency_per_mac": dict(criterion="l2", channel_cost="latency_per_mac", round_to=8),
    "finetune_distill_latency_per_mac": dict(criterion="l2", channel_cost="latency_per_mac", round_to=8,
                                             from_dense=True, distill=True),
    # the same costs without rounding widths to multiples of 8 (which lands under the MACs budget)
    "finetune_distill_latency_exact": dict(criterion="l2", channel_cost="latency", from_dense=True, distill=True),
    "finetune_distill_latency_per_mac_exact": dict(criterion="l2", channel_cost="latency_per_mac", from_dense=True,
                                                   distill=True),
    "finetune_latency_per_mac": dict(criterion="l2", channel_cost="latency_per_mac", round_to=8, from_dense=True),
    "finetune_latency": dict(criterion="l2", channel_cost="latency", round_to=8, from_dense=True),
    # the trained model pruned once when the fine-tuning fit starts (prune_on_fit_start), then fine-tuned
    "pruned_first": dict(criterion="l2", **PRUNED_FIRST),
    "pruned_first_latency_per_mac": dict(criterion="l2", channel_cost="latency_per_mac", round_to=8, **PRUNED_FIRST),
    "pruned_first_round8": dict(criterion="l2", round_to=8, **PRUNED_FIRST),
    "pruned_first_latency": dict(criterion="l2", channel_cost="latency", round_to=8, **PRUNED_FIRST),
    "pruned_first_cost": dict(criterion="l2", channel_cost="macs_memory", round_to=8, **PRUNED_FIRST),
    "pruned_first_large_final": dict(criterion="large_final", **PRUNED_FIRST),
    "pruned_first_large_final_latency_per_mac": dict(criterion="large_final", channel_cost="latency_per_mac",
                                                     round_to=8, **PRUNED_FIRST),
    # ... ranked by BatchNorm scales (network slimming's criterion) instead of weight norms
    "pruned_first_bn_scale_round8": dict(criterion="bn_scale", round_to=8, **PRUNED_FIRST),
    "pruned_first_bn_scale_latency": dict(criterion="bn_scale", channel_cost="latency", round_to=8, **PRUNED_FIRST),
    "pruned_first_bn_scale_latency_per_mac": dict(criterion="bn_scale", channel_cost="latency_per_mac", round_to=8,
                                                  **PRUNED_FIRST),
    # Torch-Pruning's sparse learning: the dense fit from init with group-norm regularisation, pruned at its end
    # (one_shot), then fine-tuned as above (the same 2 x epochs)
    "sparse_first": dict(criterion="l2", sparse_training=1e-3, sparse_first=True),
    "sparse_first_strong": dict(criterion="l2", sparse_training=1e-2, sparse_first=True),
    "sparse_first_latency_per_mac": dict(criterion="l2", sparse_training=1e-3, sparse_first=True,
                                         channel_cost="latency_per_mac", round_to=8),
    "sparse_first_large_final_latency_per_mac": dict(criterion="large_final", sparse_training=1e-3, sparse_first=True,
                                                     channel_cost="latency_per_mac", round_to=8),
    # ... with units of 4 channels: a timed cost can leave a slow kernel width (16) for a fast one (12)
    "pruned_first_latency_round4": dict(criterion="l2", channel_cost="latency", round_to=4, **PRUNED_FIRST),
    "pruned_first_bn_scale_latency_round4": dict(criterion="bn_scale", channel_cost="latency", round_to=4,
                                                 **PRUNED_FIRST),
    # ... distilling from the trained dense model (copied at set-up, before the prune) while fine-tuning
    "pruned_first_round8_distill": dict(criterion="l2", round_to=8, distill=True, **PRUNED_FIRST),
    "pruned_first_latency_per_mac_distill": dict(criterion="l2", channel_cost="latency_per_mac", round_to=8,
                                                 distill=True, **PRUNED_FIRST),
    # everything at the end of the first epoch, the rest fine-tuning (as Torch-Pruning's "once", one epoch later)
    "finetune_once": dict(criterion="l2", schedule="one_shot", start_epoch=0, end_epoch=0, from_dense=True),
    "finetune_distill_once": dict(criterion="l2", schedule="one_shot", start_epoch=0, end_epoch=0, from_dense=True,
                                  distill=True),
    "finetune_distill_latency_per_mac_once": dict(criterion="l2", channel_cost="latency_per_mac", round_to=8,
                                                  schedule="one_shot", start_epoch=0, end_epoch=0, from_dense=True,
                                                  distill=True),
    "round8": dict(criterion="l2", round_to=8),
    "distill": dict(criterion="l2", distill=True),
    "distill_large_final": dict(criterion="large_final", distill=True),
    "distill_sparse": dict(criterion="l2", sparse_training=1e-3, distill=True),
}


def run_ours(args, data, work, seed, schedule: str, criterion: str, budget: float,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    options = dict(options or {})
    distill, from_dense = options.pop("distill", False), options.pop("from_dense", False)
    sparse_first = options.pop("sparse_first", False)
    options.setdefault("criterion", criterion)
    model = init_model(args, work, seed)
    if from_dense:
        model.load_state_dict(torch.load(work / f"dense_{seed}.pt"))
    module = make_module(model, args)
    if sparse_first:  # the dense fit again from init, regularised, pruned once at its end; then fine-tuned
        last = args.epochs - 1
        options = {"target": "macs", "schedule": "one_shot", "start_epoch": last, "end_epoch": last, **options}
    elif options.get("prune_on_fit_start"):  # one prune before the first step: no pruning epochs
        options = {"target": "macs", **options}
    else:
        options = {"target": "macs", "schedule": schedule, "start_epoch": args.prune_start,
                   "end_epoch": args.prune_end, **options}  # a recipe may set its own schedule and epochs
    callback = PruningCallback(budget=budget, example_inputs=data["train_x"][:1], verbose=False, **options)
    callbacks: list = [callback]
    hooks = time_hooks(callback, OUR_HOOKS)
    if distill:
        from lightning_prune import DistillationCallback  # noqa: PLC0415

        teacher = None  # from_dense: the fit-start copy is the trained dense model
        if not from_dense:
            teacher = init_model(args, work, seed)
            teacher.load_state_dict(torch.load(work / f"dense_{seed}.pt"))
        callbacks.append(DistillationCallback(teacher=teacher, student="model"))  # its cost is in fit_s
    seconds = fit(module, data, args, seed, args.epochs, callbacks)
    if sparse_first:  # fine-tuned as the other prune-then-fine-tune arms: a fresh fit of the pruned model
        seconds += fit(make_module(module.model, args), data, args, seed, args.epochs)
    return {"model": module.model, "fit_s": seconds, "prune_s": sum(map(sum, hooks.values())),
            "epochs_trained": 2 * args.epochs if distill or from_dense or sparse_first else args.epochs,
            "channel_ratio": callback.pruner.channel_ratio()}


def tp_pruner(model: nn.Module, example: torch.Tensor, ratio: float, steps: int) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, iterative_steps=steps, global_pruning=True,
                                ignored_layers=[model.fc])


def tp_dry_macs(dense: nn.Module, example: torch.Tensor, ratio: float, steps: int, dense_macs: int) -> float:
    """MACs fraction left after all ``steps`` of a Torch-Pruning prune of a copy (no training between)."""
    model = copy.deepcopy(dense)
    pruner = tp_pruner(model, example, ratio, steps)
    for _ in range(steps):
        pruner.step()
    return count_macs_params(model, example)[0] / dense_macs


def run_torch_pruning(args, data, work, seed, fraction: float, steps: int, dense_fit_s: float) -> dict[str, Any]:
    """Torch-Pruning's README workflow on the trained dense model of this seed."""
    model = init_model(args, work, seed)
    model.load_state_dict(torch.load(work / f"dense_{seed}.pt"))
    model.eval()
    example = data["train_x"][:1]
    dense_macs = count_macs_params(model, example)[0]
    began = time.perf_counter()
    ratio, _ = bisect_ratio(lambda r: tp_dry_macs(model, example, r, steps, dense_macs), fraction)
    pruner = tp_pruner(model, example, ratio, steps)
    prune_s, fit_s = time.perf_counter() - began, 0.0
    per_round = [args.epochs // steps + (1 if i < args.epochs % steps else 0) for i in range(steps)]
    for epochs in per_round:
        began = time.perf_counter()
        pruner.step()
        prune_s += time.perf_counter() - began
        model.train()  # torch-pruning's tracing leaves modules in eval mode
        if epochs:
            fit_s += fit(make_module(model, args), data, args, seed, epochs)
    return {"model": model, "fit_s": dense_fit_s + fit_s + prune_s, "prune_s": prune_s,
            "epochs_trained": 2 * args.epochs, "tp_ratio": ratio}


def run_modelpruning(args, data, work, seed, kind: str, amount: float) -> dict[str, Any]:
    module = make_module(init_model(args, work, seed), args)
    callback = modelpruning_callback(kind, module.model, amount, args.prune_start)
    hooks = time_hooks(callback, ("on_train_epoch_end", "on_train_end"))
    seconds = fit(module, data, args, seed, args.epochs, [callback])
    return {"model": module.model, "fit_s": seconds, "prune_s": sum(map(sum, hooks.values())),
            "epochs_trained": args.epochs, "amount": amount}


# -- fasterai, in its own venv ------------------------------------------------------------------------
def ensure_fasterai_venv(venv: Path = FASTERAI_VENV) -> Path:
    """``venv`` with the pinned torch pair installed FIRST (so pip never resolves a bare torch), then fastai and
    fasterai 0.4 under a constraint that holds torch and torchvision there; its python."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import fasterai, fastai, torch; assert torch.__version__.startswith('2.14.1')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *PINNED], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(PINNED) + "\n")
    subprocess.run([*pip, "-c", str(constraints), "fastai", "fasterai==0.4.*"], check=True)
    subprocess.run(check, check=True)
    return python


def run_fasterai(args, work: Path, targets: dict[str, float | None]) -> dict[str, Any]:
    """Every fasterai arm (all levels and seeds) in one subprocess; returns its JSON."""
    spec = {"work": str(work), "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "weight_decay": args.weight_decay, "optimizer": args.optimizer,
            "targets": targets, "model": args.model,
            "nominal_ratio": FASTERAI_NOMINAL_RATIO, "threads": args.threads,
            "device": "cuda" if args.full and torch.cuda.is_available() else "cpu"}
    (work / "fasterai_spec.json").write_text(json.dumps(spec))
    python = ensure_fasterai_venv()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    worker = [str(python), str(ROOT / "scripts" / "frontier_fasterai.py"), str(work / "fasterai_spec.json")]
    log = work / "fasterai_log.txt"  # written as it runs
    with log.open("w") as stream:
        proc = subprocess.run(worker, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"fasterai worker failed: {log.read_text()[-2000:]}")
    return json.loads((work / "fasterai_result.json").read_text())


# -- results ------------------------------------------------------------------------------------------
def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer (seed 0's model, the one whose latency is timed)."""
    return {name: width(m) for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)}


def summarize(arm: str, system: str, level: str | None, runs: list[dict], extra: dict | None = None) -> dict:
    """One arm's record from its per-seed runs (accuracy, MACs and params ratios, times; latency from seed 0)."""
    accs = [r["acc"] for r in runs]
    mean = lambda key: statistics.mean(r[key] for r in runs)  # noqa: E731
    return {
        "arm": arm, "system": system, "level": level, "seeds": [r["seed"] for r in runs], "acc": accs,
        "acc_mean": statistics.mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "macs_ratio": mean("macs_ratio"), "params_ratio": mean("params_ratio"),
        "latency_ratio_b1": runs[0].get("latency_ratio_b1"), "latency_ratio_b32": runs[0].get("latency_ratio_b32"),
        "load_1min": runs[0].get("load_1min"),
        "fit_s": mean("fit_s"), "prune_s": mean("prune_s"), "epochs_trained": runs[0]["epochs_trained"],
        **({"widths": runs[0]["widths"]} if "widths" in runs[0] else {}), **(extra or {}),
    }


def table(arms: list[dict]) -> str:
    return markdown_table(
        ["arm", "level", "accuracy %", "MACs", "params", "latency b1", "latency b32", "fit s", "prune s"],
        [[a["arm"], a["level"] or "—", f"{100 * a['acc_mean']:.2f} ± {100 * a['acc_std']:.2f}", a["macs_ratio"],
          a["params_ratio"], a["latency_ratio_b1"], a["latency_ratio_b32"], a["fit_s"], a["prune_s"]] for a in arms])


def plot(result: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    styles = {"dense": ("k", "*"), "ours": ("C0", "o"), "fasterai": ("C1", "D"), "torch_pruning": ("C2", "^"),
              "modelpruning": ("C3", "s")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in ((axes[0], "latency_ratio_b32", "CPU latency ratio at batch 32 (pruned / dense)"),
                           (axes[1], "macs_ratio", "MACs ratio (masked models count as dense)")):
        seen = set()
        for a in result["arms"]:
            if a.get(key) is None:
                continue
            color, marker = styles.get(a["system"], ("grey", "x"))
            ax.errorbar(a[key], 100 * a["acc_mean"], yerr=100 * a["acc_std"], fmt=marker, color=color, alpha=0.75,
                        capsize=2, label=None if a["system"] in seen else a["system"])
            seen.add(a["system"])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val accuracy (%), mean ± std over seeds")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['config_name']}: accuracy against latency and compute")
    return save_figure(fig, path, dpi=110)


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    torch.save(data, work / "data.pt")
    for seed in args.seeds:
        torch.manual_seed(seed)
        torch.save(build_model(args).state_dict(), work / f"init_{seed}.pt")
    example = data["train_x"][:1]
    dense_macs, dense_params = count_macs_params(build_model(args), example)
    arms: list[dict] = []
    errors: list[str] = []
    dense_ref: dict[int, nn.Module] = {}
    val_loader = loaders(data, args, 0)[1]
    shape = tuple(data["val_x"].shape[1:])

    def record(seed: int, out: dict) -> dict:
        model = out.pop("model").eval()
        macs, params = count_macs_params(model, example)
        out.update(seed=seed, acc=evaluate_accuracy(model, val_loader), macs_ratio=macs / dense_macs,
                   params_ratio=params / dense_params)
        if seed == args.seeds[0] and dense_ref:
            out["load_1min"] = load_average()  # what else ran while latency was timed
            out["widths"] = layer_widths(model)
            for batch in (1, 32):
                out[f"latency_ratio_b{batch}"] = latency_vs_dense(model, dense_ref[0], torch.randn(batch, *shape),
                                                                  args.latency_pairs)[0]
        return out

    def arm(name: str, system: str, level: str | None, runs: list[dict], extra: dict | None = None) -> dict:
        result = summarize(name, system, level, runs, extra)
        arms.append(result)
        partial_out = Path(args.out).with_suffix(".partial.json")  # what has run so far, if the run is cut short
        write_json(partial_out, {"config": vars(args) | {"levels": levels}, "arms": arms})
        print(f"{name:30s} {level or '':8s} acc {result['acc_mean']:.4f} ± {result['acc_std']:.4f} "
              f"MACs {result['macs_ratio']:.3f} lat32 {fmt_opt(result['latency_ratio_b32'])} "
              f"(load {fmt_opt(result['load_1min'])}; {result['fit_s']:.0f}s/fit)", flush=True)
        return result

    levels = dict(args.levels)
    dense_runs = []
    for seed in args.seeds:
        out = run_dense(args, data, work, seed)
        if seed == args.seeds[0]:
            dense_ref[0] = copy.deepcopy(out["model"]).eval()
        dense_runs.append(record(seed, out))
    dense_runs[0]["latency_ratio_b1"] = dense_runs[0]["latency_ratio_b32"] = 1.0
    dense_ms = {b: latency_vs_dense(dense_ref[0], copy.deepcopy(dense_ref[0]), torch.randn(b, *shape),
                                    args.latency_pairs)[1] for b in (1, 32)}
    dense = arm("dense", "dense", None, dense_runs)
    dense_fit_s = {r["seed"]: r["fit_s"] for r in dense_runs}

    fasterai: dict[str, Any] | None = None
    if not args.skip_fasterai and not args.skip_peers:
        try:
            fasterai = run_fasterai(args, work, {**levels, "fasterai": None})
        except Exception as err:  # noqa: BLE001 - a failed peer is reported, not hidden
            errors.append(f"fasterai: {type(err).__name__}: {str(err)[-500:]}")
    if fasterai is not None:
        fa_models = {}
        for level, per_seed in fasterai["arms"].items():
            runs = []
            for r in per_seed:
                model = torch.load(work / r["model_file"], weights_only=False)
                runs.append(record(r["seed"], {"model": model, "fit_s": r["fit_s"], "prune_s": r["prune_s"],
                                               "epochs_trained": args.epochs, "fastai_acc": r["fastai_acc"]}))
                fa_models[(level, r["seed"])] = r
            arm("fasterai", "fasterai", level, runs,
                {"pruning_ratio": per_seed[0]["ratio"], "dry_macs_ratio": per_seed[0]["dry_macs_ratio"],
                 "ratio_fits": fasterai["searches"][level]["fits"],
                 "fastai_acc": [r["fastai_acc"] for r in runs]})
        own = next(a for a in arms if a["system"] == "fasterai" and a["level"] == "fasterai")
        if not args.no_fasterai_level:
            levels["fasterai"] = own["macs_ratio"]

    for level, fraction in levels.items():
        ours = {}
        for schedule in args.schedules:
            for criterion in args.criteria:
                runs = [record(s, run_ours(args, data, work, s, schedule, criterion, fraction)) for s in args.seeds]
                extra = {"schedule": schedule, "criterion": criterion, "macs_budget": fraction,
                         "channel_ratio": statistics.mean(r["channel_ratio"] for r in runs)}
                ours[(schedule, criterion)] = arm(f"ours/{schedule}/{criterion}", "ours", level, runs, extra)
        for recipe in args.recipes:
            runs = [record(s, run_ours(args, data, work, s, "agp", "l2", fraction, RECIPES[recipe]))
                    for s in args.seeds]
            extra = {"schedule": RECIPES[recipe].get("schedule", "agp"), "recipe": recipe,
                     "options": RECIPES[recipe], "macs_budget": fraction,
                     "channel_ratio": statistics.mean(r["channel_ratio"] for r in runs)}
            arm(f"ours/{recipe}", "ours", level, runs, extra)
        if args.skip_peers:
            continue
        for name, steps in (("once", 1), ("iterative", args.tp_steps)):
            runs = [record(s, run_torch_pruning(args, data, work, s, fraction, steps, dense_fit_s[s]))
                    for s in args.seeds]
            arm(f"torch_pruning/{name}", "torch_pruning", level, runs,
                {"steps": steps, "tp_ratio": statistics.mean(r["tp_ratio"] for r in runs), "macs_budget": fraction})
        ref = ours.get(("agp", "l2")) or next(iter(ours.values()))
        for kind in args.modelpruning:
            amount = ref["channel_ratio"] if kind == "ln_structured" else 1.0 - ref["params_ratio"]
            runs = [record(s, run_modelpruning(args, data, work, s, kind, amount)) for s in args.seeds]
            arm(f"modelpruning/{kind}", "modelpruning", level, runs, {"amount": amount, "matched_to": ref["arm"]})

    config = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    return {
        "benchmark": "frontier", "config_name": args.config_name, "machine": machine_info(threads),
        "config": config, "protocol": args.protocol, "levels": levels,
        "dense": {"macs": dense_macs, "params": dense_params, "acc_mean": dense["acc_mean"],
                  "latency_ms_b1": dense_ms[1], "latency_ms_b32": dense_ms[32]},
        "fasterai": None if fasterai is None else {k: v for k, v in fasterai.items() if k != "arms"},
        "leaders": {level: {k: v and v["arm"] for k, v in frontier_leaders(arms, level).items()} for level in levels},
        "errors": errors, "arms": arms,
    }


def fmt_opt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits32", choices=list(CONFIGS))
    p.add_argument("--model", help="override the config's model (e.g. resnet56)")
    p.add_argument("--full", action="store_true", help="the 200-epoch GPU protocol (not run on CPU here)")
    p.add_argument("--smoke", action="store_true", help="tiny model and data, no fasterai: seconds (tests)")
    p.add_argument("--out", help="default scripts/results/frontier_<config>.json")
    p.add_argument("--work", help="scratch folder for tensors, inits and models (default: /tmp)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--prune-start", type=int)
    p.add_argument("--prune-end", type=int)
    p.add_argument("--schedules", nargs="+", default=["agp"])
    p.add_argument("--criteria", nargs="+", default=["l2", "l1"])
    p.add_argument("--recipes", nargs="+", default=[], choices=list(RECIPES),
                   help="extra arms of our callback, ours/<recipe> (agp schedule)")
    p.add_argument("--skip-peers", action="store_true", help="only dense and ours (recipe exploration)")
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--modelpruning", nargs="+", default=["ln_structured", "l1_unstructured"])
    p.add_argument("--tp-steps", type=int, default=3, help="pruning steps of torch_pruning/iterative")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--val-per-class", type=int)
    p.add_argument("--archive", default=str(CIFAR_ARCHIVE))
    p.add_argument("--skip-fasterai", action="store_true")
    p.add_argument("--no-fasterai-level", action="store_true",
                   help="report fasterai's own operating point without running every other arm there too")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-pairs", type=int, default=60)
    p.add_argument("--protocol", default=None, help="a label for the JSON (what ran)")
    args = p.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    if args.full:
        cfg.update(FULL)
    for key, value in cfg.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.model = args.model or cfg["model"]
    args.config_name = f"{args.config}/{args.model}" + ("/full" if args.full else "")
    if args.smoke:
        args.seeds, args.epochs, args.prune_start, args.prune_end, args.batch_size = [0, 1], 2, 0, 0, 8
        args.levels, args.criteria, args.skip_fasterai, args.latency_pairs = ["2x"], ["l2"], True, 3
        args.tp_steps, args.config_name = 2, "smoke/tiny"
        args.recipes = args.recipes or ["finetune_distill"]  # a recipe arm: fine-tune the dense model, distil
    args.levels = {level: LEVELS[level] for level in args.levels}
    args.protocol = args.protocol or ("full" if args.full else "smoke" if args.smoke else "cpu")
    args.out = args.out or str(RESULTS_DIR / f"frontier_{args.config}{'_full' if args.full else ''}.json")
    args.work = args.work or f"/tmp/frontier_{Path(args.out).stem}"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    png = plot(result, out.with_suffix(".png"))
    result["plot"] = png.name if png else None
    print(table(result["arms"]))
    for level, who in result["leaders"].items():
        print(f"{level}: accuracy led by {who['accuracy']}, batch-32 latency by {who['latency']} "
              f"(within 1 point of dense: {who['latency_usable']})")
    if result["errors"]:
        print("errors:", *result["errors"], sep="\n  ")
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
