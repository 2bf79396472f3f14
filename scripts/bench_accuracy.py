"""What does pruning cost in accuracy, against the references? Every arm on the embedded digits data, one
training budget, several seeds.

Arms (all train ``--epochs`` epochs in total, same optimizer, same data order per seed):

- ``dense``: no pruning.
- ``ours/<schedule>/<criterion>``: :class:`~lightning_prune.PruningCallback` pruning from epoch
  ``--prune-start`` to ``--prune-end`` (global ranking) to a MACs budget of 1/1.5, 1/2 and 1/3 of dense
  (``target="macs"``: the callback searches the channel ratio at every pruning epoch, so every arm ends
  within one pruning granule below the level, whatever its criterion ranks).
- ``modelpruning/l1_unstructured`` and ``modelpruning/ln_structured``: Lightning's ``ModelPruning``, applied
  once at ``--prune-start``'s epoch end and made permanent at the end. Unstructured: the same number of
  weights as an l2 channel pruning of the trained dense model to the level removes (global magnitude; the
  channel ratio calibrated with ``budget.search_channel_ratio``). Structured: L2 norm over conv output
  channels, that same channel share, ``parameters_to_prune`` restricted to conv weights; its default (every
  module's ``weight``) fails on BatchNorm's 1-D weights: the error is recorded in the JSON
  (``modelpruning_default_error``). Masks leave shapes, MACs and latency as dense.
- ``prune_once/l2``: torch-pruning alone, the usual workflow: train ``--prune-end + 1`` epochs dense, prune
  once with ``tp.pruner.MetaPruner`` (group L2, global), fine-tune the remaining epochs with a fresh
  optimizer.
- ``ablation/reset/<schedule>``: our callback with ``optimizer_state="reset"`` (AdamW state of pruned
  parameters dropped at each prune) against the default slicing (the ``ours`` arm of the same settings).

Reported per arm: accuracy mean and std over seeds, MACs and params of the final model, its CPU latency at
batch ``--latency-batch`` (timed interleaved with the dense model; ratio pruned/dense), and a plot of
accuracy against MACs ratio.

    python scripts/bench_accuracy.py --out scripts/results/accuracy.json
    python scripts/bench_accuracy.py --smoke --out /tmp/accuracy.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch_pruning as tp
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    evaluate_accuracy,
    machine_info,
    markdown_table,
    modelpruning_callback,
    pyplot,
    save_figure,
    set_threads,
    write_json,
)
from bench_common import latency_vs_dense as timed_vs_dense  # noqa: E402

from lightning_prune import PruningCallback  # noqa: E402
from lightning_prune.app.data import DigitsDataModule  # noqa: E402
from lightning_prune.app.models import small_cnn  # noqa: E402
from lightning_prune.app.module import ClassifierModule  # noqa: E402
from lightning_prune.engine.budget import search_channel_ratio  # noqa: E402
from lightning_prune.engine.pruner import ChannelPruner  # noqa: E402
from lightning_prune.engine.report import count_macs_params  # noqa: E402

SCHEDULES = ["one_shot", "iterative", "agp", "one_cycle"]
CRITERIA = ["l1", "l2", "taylor", "lamp"]
LEVELS = {"1.5x": 1 / 1.5, "2x": 1 / 2, "3x": 1 / 3}  # target MACs fraction of dense

for name in ("lightning.pytorch", "lightning.fabric", "lightning_prune"):
    logging.getLogger(name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


# -- building blocks -------------------------------------------------------------------------------
def make_model(args: argparse.Namespace) -> nn.Module:
    return small_cnn(num_classes=10, in_channels=1, width=args.width)


def make_module(model: nn.Module, args: argparse.Namespace) -> ClassifierModule:
    return ClassifierModule(model, num_classes=10, optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=1e-4))


def make_data(args: argparse.Namespace) -> DigitsDataModule:
    data = DigitsDataModule(size=args.size, channels=1, batch_size=args.batch_size, seed=0)
    data.setup("fit")
    return data


def trainer(args: argparse.Namespace, epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=args.limit_batches,
        callbacks=callbacks,
    )


def example(args: argparse.Namespace) -> torch.Tensor:
    return torch.zeros(1, 1, args.size, args.size)


def evaluate(module: ClassifierModule, data: DigitsDataModule) -> float:
    """Validation accuracy of ``module`` in eval mode."""
    return evaluate_accuracy(module.model, data.val_dataloader())


def fill_grads(model: nn.Module, data: DigitsDataModule) -> None:
    """Gradients summed over one epoch of training batches, as the callback sums them over a pruning
    epoch for the taylor criterion (a single batch ranks channels differently)."""
    model.zero_grad()
    model.train()
    for x, y in data.train_dataloader():
        nn.functional.cross_entropy(model(x), y).backward()


# -- arms ------------------------------------------------------------------------------------------
def fit_ours(args, data, seed, schedule, criterion, macs_budget, optimizer_state="slice") -> ClassifierModule:
    pl.seed_everything(seed, verbose=False)
    module = make_module(make_model(args), args)
    callback = PruningCallback(
        target="macs", budget=macs_budget, schedule=schedule, criterion=criterion, start_epoch=args.prune_start,
        end_epoch=args.prune_end, example_inputs=example(args), verbose=False, optimizer_state=optimizer_state,
    )
    trainer(args, args.epochs, [callback]).fit(module, datamodule=data)
    return module


def fit_dense(args, data, seed) -> ClassifierModule:
    pl.seed_everything(seed, verbose=False)
    module = make_module(make_model(args), args)
    trainer(args, args.epochs, []).fit(module, datamodule=data)
    return module


def fit_modelpruning(args, data, seed, kind, amount) -> ClassifierModule:
    pl.seed_everything(seed, verbose=False)
    module = make_module(make_model(args), args)
    callback = modelpruning_callback(kind, module.model, amount, args.prune_start)
    trainer(args, args.epochs, [callback]).fit(module, datamodule=data)
    return module


def modelpruning_default_error(args, data) -> str | None:
    """What ``ModelPruning("ln_structured")`` with its default parameters (every ``weight``) does here."""
    module = make_module(make_model(args), args)
    callback = ModelPruning("ln_structured", amount=0.3, pruning_norm=2, pruning_dim=0,
                            use_global_unstructured=False, use_lottery_ticket_hypothesis=False, verbose=0)
    try:
        trainer(args, 1, [callback]).fit(module, datamodule=data)
    except Exception as err:  # noqa: BLE001 - the failure is the result
        return f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return None


def fit_prune_once(args, data, seed, ratio) -> ClassifierModule:
    """torch-pruning alone: train dense, prune once, fine-tune with a fresh optimizer (same total epochs)."""
    pl.seed_everything(seed, verbose=False)
    module = make_module(make_model(args), args)
    trainer(args, args.prune_end + 1, []).fit(module, datamodule=data)
    model = module.model
    pruner = tp.pruner.MetaPruner(
        model, example(args), importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=True, ignored_layers=[model.fc], max_pruning_ratio=0.9,
    )
    pruner.step()
    model.train()  # torch-pruning's tracing left every module in eval mode
    module = make_module(model, args)
    remaining = args.epochs - args.prune_end - 1
    if remaining > 0:
        trainer(args, remaining, []).fit(module, datamodule=data)
    return module


# -- calibration and measurement ----------------------------------------------------------------------
def calibrate(dense: nn.Module, data, args, criterion: str, fraction: float) -> dict[str, float]:
    """Channel ratio that leaves about ``fraction`` of the dense MACs, for ``criterion`` (global ranking)."""
    model = copy.deepcopy(dense)
    if criterion == "taylor":
        fill_grads(model, data)
    dense_macs, dense_params = count_macs_params(dense, example(args))
    pruner = ChannelPruner(model, example(args), importance=criterion, ignored_layers=[model.fc])
    found = search_channel_ratio(pruner, lambda m: count_macs_params(m, example(args))[0] / dense_macs, fraction)
    pruner.prune_to(found.ratio)
    return {"ratio": found.ratio, "macs_ratio": found.value,
            "params_ratio": count_macs_params(model, example(args))[1] / dense_params}


def latency_vs_dense(model: nn.Module, dense: nn.Module, args) -> tuple[float, float]:
    """Median pruned/dense latency ratio at batch ``--latency-batch`` (interleaved), and the model's ms."""
    x = torch.randn(args.latency_batch, 1, args.size, args.size)
    return timed_vs_dense(model, dense, x, args.latency_pairs)


def summarize(arm: str, family: str, level: str | None, runs: list[dict], extra: dict | None = None) -> dict:
    accs = [r["acc"] for r in runs]
    return {
        "arm": arm, "family": family, "level": level, "seeds": [r["seed"] for r in runs], "acc": accs,
        "acc_mean": statistics.mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "macs_ratio": statistics.mean(r["macs_ratio"] for r in runs),
        "params_ratio": statistics.mean(r["params_ratio"] for r in runs),
        "macs": statistics.mean(r["macs"] for r in runs), "params": statistics.mean(r["params"] for r in runs),
        "latency_ratio": runs[0]["latency_ratio"], "latency_ms": runs[0]["latency_ms"],
        "fit_seconds": statistics.mean(r["seconds"] for r in runs), **(extra or {}),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    data = make_data(args)
    dense_ref = make_model(args)
    dense_macs, dense_params = count_macs_params(dense_ref, example(args))
    arms: list[dict] = []
    dense_model: nn.Module | None = None

    def measure(fit, seed: int) -> dict:
        began = time.perf_counter()
        module = fit(seed)
        seconds = time.perf_counter() - began
        macs, params = count_macs_params(module.model, example(args))
        record = {"seed": seed, "acc": evaluate(module, data), "macs": macs, "params": params,
                  "macs_ratio": macs / dense_macs, "params_ratio": params / dense_params, "seconds": seconds,
                  "latency_ratio": None, "latency_ms": None, "model": module.model}
        return record

    def arm(name: str, family: str, level: str | None, fit, extra: dict | None = None) -> dict:
        runs = [measure(fit, seed) for seed in args.seeds]
        if dense_model is not None:
            runs[0]["latency_ratio"], runs[0]["latency_ms"] = latency_vs_dense(runs[0]["model"], dense_model, args)
        else:
            runs[0]["latency_ratio"] = 1.0
        for r in runs:
            r.pop("model")
        result = summarize(name, family, level, runs, extra)
        arms.append(result)
        print(f"{name:32s} {level or '':5s} acc {result['acc_mean']:.4f} ± {result['acc_std']:.4f} "
              f"MACs {result['macs_ratio']:.3f} latency {result['latency_ratio']:.3f} "
              f"({result['fit_seconds']:.1f}s/fit)", flush=True)
        return result

    # dense first: its seed-0 model is the calibration and latency reference
    pl.seed_everything(args.seeds[0], verbose=False)
    dense_module = fit_dense(args, data, args.seeds[0])
    dense_model = copy.deepcopy(dense_module.model).eval()
    arm("dense", "dense", None, lambda s: fit_dense(args, data, s))
    dense_model.latency_ms = latency_vs_dense(dense_model, copy.deepcopy(dense_model), args)[1]

    calibration = {
        level: {c: calibrate(dense_model, data, args, c, fraction) for c in args.criteria}
        for level, fraction in args.levels.items()
    }
    print("calibrated channel ratios:",
          {lv: {c: round(v["ratio"], 3) for c, v in cal.items()} for lv, cal in calibration.items()}, flush=True)
    reference = "l2" if "l2" in args.criteria else args.criteria[0]

    for level, fraction in args.levels.items():
        for schedule in args.schedules:
            for criterion in args.criteria:
                arm(f"ours/{schedule}/{criterion}", "ours", level,
                    lambda s, sc=schedule, c=criterion, f=fraction: fit_ours(args, data, s, sc, c, f),
                    {"schedule": schedule, "criterion": criterion, "macs_budget": fraction})
        ref = calibration[level][reference]
        for kind in ("l1_unstructured", "ln_structured"):
            amount = 1.0 - ref["params_ratio"] if kind == "l1_unstructured" else ref["ratio"]
            arm(f"modelpruning/{kind}", "modelpruning", level,
                lambda s, k=kind, a=amount: fit_modelpruning(args, data, s, k, a), {"amount": amount})
        arm("prune_once/l2", "prune_once", level, lambda s, r=ref["ratio"]: fit_prune_once(args, data, s, r),
            {"channel_ratio": ref["ratio"]})
        if level in args.ablation_levels:
            for schedule in args.ablation_schedules:
                arm(f"ablation/reset/{schedule}", "ablation_reset", level,
                    lambda s, sc=schedule, f=fraction: fit_ours(args, data, s, sc, reference, f, "reset"),
                    {"schedule": schedule, "criterion": reference, "macs_budget": fraction})

    config = {k: v for k, v in vars(args).items() if k != "out"}
    return {
        "benchmark": "accuracy",
        "machine": machine_info(threads),
        "config": config,
        "dense": {"macs": dense_macs, "params": dense_params, "latency_ms": dense_model.latency_ms},
        "calibration": calibration,
        "modelpruning_default_error": modelpruning_default_error(args, data),
        "arms": arms,
    }


# -- report ----------------------------------------------------------------------------------------
def table(arms: list[dict]) -> str:
    return markdown_table(
        ["arm", "level", "accuracy (mean ± std)", "MACs ratio", "params ratio", "latency ratio", "seeds"],
        [[a["arm"], a["level"] or "—", f"{100 * a['acc_mean']:.2f} ± {100 * a['acc_std']:.2f}", a["macs_ratio"],
          a["params_ratio"], a["latency_ratio"], len(a["seeds"])] for a in arms],
    )


def plot(result: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"ours": ("C0", "o"), "modelpruning": ("C3", "s"), "prune_once": ("C2", "^"),
              "ablation_reset": ("C1", "x"), "dense": ("k", "*")}
    seen = set()
    for a in result["arms"]:
        color, marker = styles[a["family"]]
        label = a["family"] if a["family"] not in seen else None
        seen.add(a["family"])
        ax.errorbar(a["macs_ratio"], 100 * a["acc_mean"], yerr=100 * a["acc_std"], fmt=marker, color=color,
                    alpha=0.7, capsize=2, label=label)
    dense = next(a for a in result["arms"] if a["family"] == "dense")
    ax.axhline(100 * dense["acc_mean"], color="k", ls="--", lw=0.8, zorder=0)
    ax.axhline(100 * dense["acc_mean"] - 0.5, color="grey", ls=":", lw=0.8, zorder=0, label="dense − 0.5 points")
    ax.axhline(100 * dense["acc_mean"] - 1.5, color="grey", ls="-.", lw=0.8, zorder=0, label="dense − 1.5 points")
    ax.set_xlabel("MACs of the final model / dense (masked models count as dense)")
    ax.set_ylabel("digits val accuracy (%)")
    ax.set_title("Accuracy against compute, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a few tiny arms that run in seconds (for the tests)")
    p.add_argument("--out", default=str(RESULTS_DIR / "accuracy.json"))
    p.add_argument("--replot", action="store_true", help="only redraw the plot of the JSON at --out")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--schedules", nargs="+", default=SCHEDULES)
    p.add_argument("--criteria", nargs="+", default=CRITERIA)
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--ablation-levels", nargs="+", default=["2x", "3x"])
    p.add_argument("--ablation-schedules", nargs="+", default=["agp", "iterative"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--prune-start", type=int, default=1)
    p.add_argument("--prune-end", type=int, default=4)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--limit-batches", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--latency-pairs", type=int, default=200)
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.schedules, args.criteria = [0, 1], ["one_shot", "agp"], ["l2", "taylor"]
        args.levels, args.ablation_levels, args.ablation_schedules = ["2x"], ["2x"], ["agp"]
        args.epochs, args.prune_start, args.prune_end, args.limit_batches = 3, 0, 1, 4
        args.width, args.size, args.latency_pairs = 8, 12, 5
    args.levels = {level: LEVELS[level] for level in args.levels}
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        result = json.loads(out.read_text())
        plot(result, out.with_suffix(".png"))
        return result
    result = run(args)
    png = plot(result, out.with_suffix(".png"))
    result["plot"] = png.name if png else None
    print(table(result["arms"]))
    if result["modelpruning_default_error"]:
        print("ModelPruning('ln_structured') with default parameters:", result["modelpruning_default_error"])
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
