"""The Hydra app behind ``scripts/train.py`` and ``scripts/evaluate.py``.

``train(cfg)`` builds everything from the composed config with ``hydra.utils.instantiate``, trains and
prunes, and writes the run's outputs into Hydra's run directory (the working directory is never changed):

- ``pruned_model.pt``: the whole pruned network (load it with :func:`lightning_prune.app.export.load_model`);
- ``summary.json``: dense and pruned params and MACs, CPU latency, final val accuracy, the config;
- ``layer_report.txt``: the per-layer table;
- with ``mode=sparsify`` (``SparsifyCallback`` instead of ``PruningCallback``, keys under ``sparsify.``): also
  ``sparsity_report.txt`` and the sparsity in ``summary.json``; ``sparsify.compact=true`` removes the zeroed
  channels (:func:`lightning_prune.compact`) before the model is saved;
- ``checkpoints/last.ckpt`` and the best checkpoint by ``val/acc``; ``logs/``: the CSV logger's metrics.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_method, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..callback import PruningCallback
from ..checkpoint import restore_pruned
from ..distributed import check_strategy_supported
from ..engine.compact import compact
from ..engine.latency import compare_latency, measure_latency
from ..engine.report import count_macs_params, layer_report, render_layer_report
from ..engine.sparsity import render_sparsity_report
from ..lightning_compat import spawns_ranks
from ..sparsify import SparsifyCallback
from .config import build_mode_callback, validate
from .export import load_model, save_json, save_model
from .module import ClassifierModule

log = logging.getLogger(__name__)


def output_dir() -> Path:
    """Hydra's run directory for this job (the current directory outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def build_model(model_cfg: DictConfig, num_classes: int, in_channels: int) -> nn.Module:
    """Instantiate the configured network for ``num_classes``; ``in_channels`` only if it takes one.

    Any callable returning an ``nn.Module`` works as ``_target_`` (e.g. ``torchvision.models.resnet18``).
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    try:
        params = inspect.signature(get_method(model_cfg._target_)).parameters
    except (TypeError, ValueError):
        params = {}
    if "in_channels" in params:
        kwargs["in_channels"] = in_channels
    elif in_channels != 3:
        raise ValueError(f"model {model_cfg._target_} takes no in_channels, but the data has {in_channels} channels")
    return instantiate(model_cfg, **kwargs)


def build_module(cfg: DictConfig, network: nn.Module, num_classes: int) -> ClassifierModule:
    scheduler_cfg = cfg.lr_scheduler.scheduler
    return ClassifierModule(
        network,
        num_classes=num_classes,
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(scheduler_cfg) if scheduler_cfg is not None else None,
        lr_interval=cfg.lr_scheduler.interval,
        label_smoothing=cfg.label_smoothing,
    )


def _check_ckpt_path(ckpt_path: str | None) -> None:
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise ValueError(f"ckpt_path={ckpt_path!r} is not a file; give the path of a Lightning checkpoint (.ckpt)")


def _val_accuracy(trainer: pl.Trainer) -> float:
    value = trainer.callback_metrics.get("val/acc")
    return float(value) if value is not None else math.nan


def summarize(
    cfg: DictConfig, dense: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], batch_size: int, val_acc: float
) -> dict[str, Any]:
    """The ``summary.json`` of a run: sizes, MACs at the data's input size, CPU latency, accuracy, config."""
    example = torch.zeros(1, *input_shape)
    dense_macs, dense_params = count_macs_params(dense, example)
    macs, params = count_macs_params(pruned, example)
    latency: dict[str, Any] = {}
    dense_cpu, pruned_cpu = copy.deepcopy(dense).cpu(), copy.deepcopy(pruned).cpu()
    for batch in sorted({1, batch_size}):
        inputs = torch.randn(batch, *input_shape)
        dense_s, pruned_s = compare_latency(dense_cpu, pruned_cpu, inputs, repeats=cfg.latency_repeats)
        latency[f"batch_{batch}"] = {"dense_ms": dense_s * 1e3, "pruned_ms": pruned_s * 1e3,
                                     "ratio": pruned_s / dense_s}
    return {
        "val_acc": val_acc,
        "input_shape": list(input_shape),
        "params": {"dense": dense_params, "pruned": params, "ratio": params / dense_params},
        "macs": {"dense": dense_macs, "pruned": macs, "ratio": macs / dense_macs},
        "cpu_latency": latency,
        "torch_threads": torch.get_num_threads(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


@dataclass
class RunResult:
    """What :func:`run_training` leaves besides its files."""

    val_acc: float
    module: ClassifierModule
    callback: PruningCallback | SparsifyCallback
    summary: dict[str, Any] | None  # None on ranks other than zero


def run_training(cfg: DictConfig, out: Path) -> RunResult:
    """Train and prune as configured, writing the run's outputs into ``out``."""
    validate(cfg)
    _check_ckpt_path(cfg.ckpt_path)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    input_shape = tuple(datamodule.input_shape)
    network = build_model(cfg.model, datamodule.num_classes, input_shape[0])
    dense = copy.deepcopy(network)
    module = build_module(cfg, network, datamodule.num_classes)
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, str):
        check_strategy_supported(strategy)  # before anything is built
    pruning = build_mode_callback(cfg)
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best-{epoch}", monitor="val/acc", mode="max", save_last=True
    )
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[pruning, checkpoints], logger=CSVLogger(out, name="logs"), default_root_dir=out
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    val_acc = _val_accuracy(trainer)
    if spawns_ranks(trainer):
        # spawned ranks trained copies: take the pruned model from rank 0's last checkpoint
        restore_pruned(module, checkpoints.last_model_path or out / "checkpoints" / "last.ckpt")
    summary = None
    if trainer.is_global_zero:
        example = torch.zeros(1, *input_shape)
        sparsity = _sparsify_outputs(cfg, pruning, module, example, out)
        save_model(module.model, out / "pruned_model.pt")
        rows = layer_report(module.model, example, baseline=layer_report(dense, example))
        (out / "layer_report.txt").write_text(render_layer_report(rows) + "\n")
        summary = summarize(cfg, dense, module.model, input_shape, datamodule.batch_size, val_acc)
        if sparsity is not None:
            summary["sparsity"] = sparsity
        save_json(summary, out / "summary.json")
        print(
            f"final val accuracy: {val_acc:.4f}\n"
            f"params: {summary['params']['dense']:,} -> {summary['params']['pruned']:,} "
            f"({summary['params']['ratio']:.1%})\n"
            f"MACs:   {summary['macs']['dense']:,} -> {summary['macs']['pruned']:,} ({summary['macs']['ratio']:.1%})\n"
            f"pruned model saved to {out / 'pruned_model.pt'}"
        )
    return RunResult(val_acc, module, pruning, summary)


def _sparsify_outputs(
    cfg: DictConfig, callback: PruningCallback | SparsifyCallback, module: ClassifierModule, example: torch.Tensor,
    out: Path,
) -> dict[str, Any] | None:
    """``mode=sparsify``: write ``sparsity_report.txt``, compact if asked; returns the summary's ``sparsity``."""
    if not isinstance(callback, SparsifyCallback):
        return None
    rows = callback.report
    (out / "sparsity_report.txt").write_text(render_sparsity_report(rows) + "\n")
    if cfg.sparsify.compact:
        compact(module.model, example)
    return {"granularity": callback.spec.granularity, "target": callback.spec.sparsity,
            "reached": rows[-1].sparsity if rows else 0.0, "compacted": bool(cfg.sparsify.compact)}


def train(cfg: DictConfig) -> float:
    """Train and prune as configured; returns the final validation accuracy (for sweepers such as Optuna).

    In a multirun, a failing job writes its error into ``summary.json`` and returns NaN, so the sweep goes
    on and the sweep summary lists the failure.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:
        return run_training(cfg, output_dir()).val_acc
    try:
        return run_training(cfg, output_dir()).val_acc
    except Exception as err:  # noqa: BLE001 - one failed job must not stop the sweep
        log.exception("job failed")
        save_json({"error": f"{type(err).__name__}: {err}"}, output_dir() / "summary.json")
        return math.nan


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate a saved whole model on the configured data: accuracy, params, MACs and CPU latency."""
    if not Path(cfg.model_path).is_file():
        raise ValueError(f"model_path={cfg.model_path!r} is not a file; give a pruned_model.pt written by train.py")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    model = load_model(cfg.model_path).eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in datamodule.test_dataloader():
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    shape = tuple(datamodule.input_shape)
    macs, params = count_macs_params(model, torch.zeros(1, *shape))
    latency = measure_latency(model, torch.randn(1, *shape), repeats=cfg.latency_repeats)
    result = {"accuracy": correct / total, "params": params, "macs": macs, "cpu_latency_ms_batch_1": latency * 1e3}
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value:,}")
    return result
