"""The fasterai arm of ``bench_frontier.py``, run in fasterai's own virtual environment (fastai and fasterai
0.4 with the project's pinned torch pair): ``python scripts/frontier_fasterai.py SPEC.json``.

It reads the tensors and the initial ``state_dict`` files that ``bench_frontier.py`` saved in
the spec's work folder, so the data, split, init, epochs, optimizer (torch's AdamW or SGD through fastai's
``OptimWrapper``), one-cycle schedule (``fit_one_cycle``: pct_start 0.25, div 25, div_final 1e5, moms
0.95/0.85/0.95), batch size and seeds are the same as every other arm's. Weight decay applies to BatchNorm and
bias parameters too (``wd_bn_bias=True``), as torch's optimizers do in the other arms.

For each target MACs fraction, fasterai's ``pruning_ratio`` is bisected on a dry prune of seed 0's initial
model (every ``Pruner.prune_model()`` step of the fit along the schedule, no training; see ``dry_macs``);
the target ``None`` is fasterai's own operating point, ``pruning_ratio`` = the spec's ``nominal_ratio``.
A dry prune is only a first guess: fasterai ranks raw magnitudes across layers, and training moves them, so a
fit can end far from the dry MACs (CIFAR-10/resnet20 at 3x: dry 0.326, trained 0.166). Seed 0 is therefore
trained at the dry ratio, and while its trained MACs miss the target by more than 0.01 the ratio
is re-solved on trained fits (``bench_common.calibrate_on_fits``: interpolation inside a bracket, at most
6 fits); the other seeds use the ratio whose seed-0 fit landed nearest the target.
Then ``PruneCallback`` (global context, ``large_final`` criterion, ``agp`` schedule) trains each seed. The
final models are saved whole (``torch.save``) for the parent to evaluate, count and time; the time spent inside
the callback's hooks is the pruning overhead.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch_pruning as tp
from bench_common import bisect_ratio, calibrate_on_fits, time_hooks
from fastai.callback.schedule import *  # noqa: F403 - fit_one_cycle
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import set_seed
from fasterai.core.criteria import large_final
from fasterai.core.schedule import agp
from fasterai.prune.prune_callback import PruneCallback
from fasterai.prune.pruner import Pruner
from frontier_pieces import make_model

HOOKS = ("before_fit", "before_step", "after_epoch")


def macs(model: torch.nn.Module, example: torch.Tensor) -> float:
    return tp.utils.count_ops_and_params(model, example)[0]


def dry_macs(start: torch.nn.Module, example: torch.Tensor, ratio: float, steps: int, dense_macs: float) -> float:
    """MACs fraction left after ``steps`` pruning steps along the agp schedule, as ``PruneCallback`` takes them
    (one per training step), on a copy of ``start``, with no training in between. A single step to the full
    ratio is no guide: fasterai compares raw magnitudes across layers, and each step thins the inputs of the
    next layers, which lowers their magnitudes for the following steps; stepping reproduces that cascade."""
    model = copy.deepcopy(start)
    pruner = Pruner(model, pruning_ratio=ratio, context="global", criteria=large_final, schedule=agp,
                    example_inputs=example, iterative_steps=steps)
    for _ in range(steps):
        pruner.prune_model()
    return macs(model, example) / dense_macs


def train(spec: dict, data: dict, seed: int, ratio: float, work: Path) -> dict:
    set_seed(seed, reproducible=True)
    model = make_model(spec["model"])
    model.load_state_dict(torch.load(work / f"init_{seed}.pt"))
    train_ds = list(zip(data["train_x"], data["train_y"]))
    val_ds = list(zip(data["val_x"], data["val_y"]))
    dls = DataLoaders(DataLoader(train_ds, bs=spec["batch_size"], shuffle=True),
                      DataLoader(val_ds, bs=256), device=spec.get("device", "cpu"))
    if spec["optimizer"] == "sgd":
        opt = partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9))
    else:
        opt = partial(OptimWrapper, opt=torch.optim.AdamW)
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), opt_func=opt, metrics=accuracy,
                    wd=spec["weight_decay"], wd_bn_bias=True)
    callback = PruneCallback(pruning_ratio=ratio, schedule=agp, context="global", criteria=large_final)
    hooks = time_hooks(callback, HOOKS)
    began = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(spec["epochs"], lr_max=spec["lr"], div=25.0, div_final=1e5, pct_start=0.25,
                            moms=(0.95, 0.85, 0.95), cbs=[callback])
    fit_s = time.perf_counter() - began
    learn.model.eval()
    fastai_acc = float(learn.validate()[1])
    return {"model": learn.model.cpu(), "fit_s": fit_s, "prune_s": sum(map(sum, hooks.values())),
            "fastai_acc": fastai_acc}


def fitted_macs(spec: dict, data: dict, seed: int, work: Path, example: torch.Tensor, dense_macs: float,
                fits: dict[float, dict], ratio: float) -> float:
    """Train ``seed`` at ``ratio`` (the result kept in ``fits[ratio]``); the trained model's MACs fraction."""
    fits[ratio] = train(spec, data, seed, ratio, work)
    trained = macs(fits[ratio]["model"], example) / dense_macs
    print(f"  seed {seed} fit at pruning_ratio {ratio:.4f}: trained MACs {trained:.3f}", flush=True)
    return trained


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    data = torch.load(work / "data.pt")
    example = data["train_x"][:1]
    start = make_model(spec["model"])  # fasterai prunes from the first training step: search on the init
    start.load_state_dict(torch.load(work / f"init_{spec['seeds'][0]}.pt"))
    start.eval()
    dense_macs = macs(start, example)
    steps = spec["epochs"] * -(-len(data["train_x"]) // spec["batch_size"])  # PruneCallback's total steps
    out = {"fasterai": __import__("fasterai").__version__, "fastai": __import__("fastai").__version__,
           "torch": torch.__version__, "torch_pruning": tp.__version__, "searches": {}, "arms": {}}
    for level, target in spec["targets"].items():
        began = time.perf_counter()
        if target is None:
            ratio = spec["nominal_ratio"]
            value = dry_macs(start, example, ratio, steps, dense_macs)
        else:
            ratio, value = bisect_ratio(lambda r: dry_macs(start, example, r, steps, dense_macs), target)
        print(f"fasterai {level}: pruning_ratio {ratio:.4f} -> dry MACs {value:.3f}", flush=True)
        seed0 = spec["seeds"][0]
        fits: dict[float, dict] = {}  # seed 0's fits by ratio
        dry_ratio = ratio
        tried = []
        if target is not None:
            fit_macs = partial(fitted_macs, spec, data, seed0, work, example, dense_macs, fits)
            ratio, tried = calibrate_on_fits(fit_macs, target, ratio)
        seed0_fit = fits.get(ratio)  # reused for its arm; the other fits are dropped
        fits.clear()
        out["searches"][level] = {"target": target, "dry_ratio": dry_ratio, "dry_macs_ratio": value,
                                  "fits": [{"ratio": r, "trained_macs_ratio": m} for r, m in tried],
                                  "ratio": ratio, "seconds": time.perf_counter() - began}
        runs = []
        for seed in spec["seeds"]:
            result = seed0_fit if seed == seed0 and seed0_fit else train(spec, data, seed, ratio, work)
            name = f"fasterai_{level}_{seed}.pt"
            torch.save(result.pop("model"), work / name)
            runs.append({"seed": seed, "ratio": ratio, "dry_macs_ratio": value, "model_file": name, **result})
            print(f"  seed {seed}: fastai acc {result['fastai_acc']:.4f} ({result['fit_s']:.0f}s)", flush=True)
        out["arms"][level] = runs
    (work / "fasterai_result.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
