"""The Hydra app behind ``scripts/train.py`` and ``scripts/evaluate.py``.

``train(cfg)`` builds everything from the composed config with ``hydra.utils.instantiate``, trains and
prunes, and writes the run's outputs into Hydra's run directory (the working directory is never changed):

- ``pruned_model.pt``: the whole pruned network (load it with :func:`lightning_prune.app.export.load_model`);
- ``summary.json``: dense and pruned params and MACs, CPU latency, final val accuracy, seconds per epoch, the
  config;
- ``layer_report.txt``: the per-layer table;
- with ``mode=sparsify`` (``SparsifyCallback`` instead of ``PruningCallback``, keys under ``sparsify.``): also
  ``sparsity_report.txt`` and the sparsity in ``summary.json``; ``sparsify.compact=true`` removes the zeroed
  channels (:func:`lightning_prune.compact`) before the model is saved;
- ``checkpoints/last.ckpt`` and the best checkpoint by ``val/acc``; ``logs/``: the CSV logger's metrics.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import shutil
import time
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
from ..checkpoint import check_torch_file, restore_pruned
from ..distributed import check_strategy_supported, shut_down_process_group
from ..engine.compact import compact
from ..engine.latency import compare_latency, measure_latency
from ..engine.report import count_macs_params, layer_report, render_layer_report
from ..engine.sparsity import render_sparsity_report
from ..lightning_compat import spawns_ranks
from ..sparsify import SparsifyCallback
from .config import build_distill_callbacks, build_mode_callback, validate
from .export import export_onnx, load_model, save_json, save_model
from .models import load_weights
from .module import ClassifierModule
from .sampling import EpochSeeding

log = logging.getLogger(__name__)


def output_dir() -> Path:
    """Hydra's run directory for this job (the current directory outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def build_model(model_cfg: DictConfig, num_classes: int, in_channels: int) -> nn.Module:
    """Instantiate the configured network for ``num_classes``, then load ``model.weights`` if set.

    Any callable returning an ``nn.Module`` works as ``_target_`` (``torchvision.models.resnet18``,
    ``timm.create_model``, ...). ``in_channels`` is passed as ``in_channels`` (ours) or ``in_chans`` (timm's)
    if the callable takes one; a model without either (torchvision's) must get 3-channel data. ``weights`` is not
    passed to the callable: :func:`~lightning_prune.app.models.load_weights` loads it afterwards (a weights
    file, or a torchvision weights name), keeping the model's own head where its size differs.
    """
    cfg = OmegaConf.to_container(model_cfg, resolve=True)
    weights = cfg.pop("weights", None)
    builder = get_method(cfg["_target_"])
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    channels_key = next((key for key in ("in_channels", "in_chans") if key in params), None)
    if channels_key is None and getattr(builder, "__module__", "").startswith("timm"):
        channels_key = "in_chans"  # timm.create_model passes it on through **kwargs
    if channels_key is not None:
        kwargs[channels_key] = in_channels
    elif in_channels != 3:
        raise ValueError(
            f"model {cfg['_target_']} takes no in_channels, but the data has {in_channels} channels; "
            "use 3-channel data (e.g. data.channels=3)"
        )
    network = instantiate(cfg, **kwargs)
    if weights is not None:
        load_weights(network, weights, builder)
    return network


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
    if ckpt_path is None:
        return
    if not Path(ckpt_path).is_file():
        raise ValueError(f"ckpt_path={ckpt_path!r} is not a file; give the path of a Lightning checkpoint (.ckpt)")
    check_torch_file(ckpt_path, "ckpt_path")


OUTPUTS = ("pruned_model.pt", "summary.json", "layer_report.txt", "sparsity_report.txt", "checkpoints")


def check_output_dir(out: Path, overwrite: bool, ckpt_path: str | None) -> None:
    """Refuse to write over an earlier run's outputs in ``out``, unless ``overwrite=true`` or the run resumes
    from a checkpoint of that same directory."""
    found = [name for name in OUTPUTS if (out / name).exists()]
    resuming_here = ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(out.resolve())
    if found and not overwrite and not resuming_here:
        raise ValueError(
            f"{out} already holds the outputs of an earlier run ({', '.join(found)}); choose another "
            "hydra.run.dir, or pass overwrite=true to replace them"
        )
    if found and overwrite and not resuming_here:  # replaced as asked: no old checkpoint mixes with the new
        for name in found:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()


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


class EpochTimer(pl.Callback):
    """Wall-clock seconds of every training epoch, its validation and pruning included (``seconds``; logged
    as ``time/epoch_s``). Put it after the pruning callback so that the prune at an epoch's end counts."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        pl_module.log("time/epoch_s", self.seconds[-1])


class SpawnedRankShutdown(pl.Callback):
    """Destroy the process group in each spawned rank (``ddp_spawn``) when its trainer call ends: each
    ``fit`` and ``validate`` spawns its own ranks, and a gloo group left alive can abort a rank at exit (see
    :func:`~lightning_prune.distributed.shut_down_process_group`). Re-launched ranks (``ddp``) keep theirs
    until :func:`run_training` ends."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if spawns_ranks(trainer):
            shut_down_process_group()


@dataclass
class RunResult:
    """What :func:`run_training` leaves besides its files."""

    val_acc: float
    module: ClassifierModule
    callback: PruningCallback | SparsifyCallback
    summary: dict[str, Any] | None  # None on ranks other than zero


def run_training(cfg: DictConfig, out: Path, callbacks: list[pl.Callback] | None = None) -> RunResult:
    """Train and prune as configured, writing the run's outputs into ``out``; ``callbacks`` are added to the
    trainer's."""
    validate(cfg)
    _check_ckpt_path(cfg.ckpt_path)
    check_output_dir(out, cfg.overwrite, cfg.ckpt_path)
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
    # both saved at the end of each training epoch, after that epoch's prune. Lightning's save_last writes only
    # when a top-k checkpoint is written, so last.ckpt comes from its own checkpoint: always the last epoch.
    best = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best-{epoch}", monitor="val/acc", mode="max",
        save_on_train_epoch_end=True,
    )
    last = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="last", save_on_train_epoch_end=True, enable_version_counter=False
    )
    timer = EpochTimer()
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[EpochSeeding(cfg.seed), pruning, *build_distill_callbacks(cfg), best, last, timer,
                   SpawnedRankShutdown(), *(callbacks or [])],
        logger=CSVLogger(out, name="logs"),
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if spawns_ranks(trainer):
        # spawned ranks trained copies: take the pruned model from rank 0's last checkpoint
        restore_pruned(module, out / "checkpoints" / "last.ckpt")
    # the accuracy of the model that is saved: validated after the last prune
    trainer.validate(module, datamodule=datamodule, verbose=False)
    val_acc = _val_accuracy(trainer)
    shut_down_process_group()  # this rank's last collective is done (re-launched "ddp" ranks)
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
        summary["epoch_seconds"] = [round(seconds, 2) for seconds in timer.seconds]
        save_json(summary, out / "summary.json")
        log.info(
            f"final val accuracy (of the saved model): {val_acc:.4f}\n"
            f"params: {summary['params']['dense']:,} -> {summary['params']['pruned']:,} "
            f"({summary['params']['ratio']:.1%})\n"
            f"MACs:   {summary['macs']['dense']:,} -> {summary['macs']['pruned']:,} ({summary['macs']['ratio']:.1%})\n"
            f"seconds per epoch: {', '.join(f'{seconds:.1f}' for seconds in timer.seconds)}\n"
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


def check_model_fits_data(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, name: str) -> None:
    """Raise a ValueError unless ``model`` takes the data's inputs and has one output per class."""
    try:
        with torch.inference_mode():
            output = model(torch.zeros(1, *input_shape))
    except Exception as err:  # noqa: BLE001 - any failure here means the model and the data do not match
        raise ValueError(
            f"{name} does not take this data's inputs of shape {list(input_shape)}: {type(err).__name__}: {err}; "
            "evaluate it on the data it was trained on"
        ) from err
    if output.dim() != 2 or output.shape[1] != num_classes:
        raise ValueError(
            f"{name} has {list(output.shape[1:])} outputs, but the data has {num_classes} classes; "
            "evaluate it on the data it was trained on"
        )


def _saved_model_path(cfg: DictConfig) -> Path:
    path = Path(cfg.model_path)
    if not path.is_file():
        raise ValueError(f"model_path={cfg.model_path!r} is not a file; give a pruned_model.pt written by train.py")
    return path


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate a saved whole model on the configured data: accuracy, params, MACs and CPU latency."""
    model_path = _saved_model_path(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    shape = tuple(datamodule.input_shape)
    model = load_model(model_path).eval()
    check_model_fits_data(model, shape, datamodule.num_classes, cfg.model_path)
    correct = total = 0
    with torch.inference_mode():
        for x, y in datamodule.test_dataloader():
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    macs, params = count_macs_params(model, torch.zeros(1, *shape))
    latency = measure_latency(model, torch.randn(1, *shape), repeats=cfg.latency_repeats)
    result = {"accuracy": correct / total, "params": params, "macs": macs, "cpu_latency_ms_batch_1": latency * 1e3}
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value:,}")
    return result


EXPORT_FORMATS = ("onnx",)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export a saved whole model (``format=onnx``), verify it, and add its latency to the run's summary.json."""
    if cfg.format not in EXPORT_FORMATS:
        raise ValueError(f"format={cfg.format!r} is unknown; choose one of {list(EXPORT_FORMATS)}")
    model_path = _saved_model_path(cfg)
    summary_path = model_path.with_name("summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if cfg.input_shape is not None:
        input_shape = tuple(cfg.input_shape)
    elif summary is not None and "input_shape" in summary:
        input_shape = tuple(summary["input_shape"])
    else:
        raise ValueError(f"no summary.json beside {model_path} gives the input shape; pass input_shape=[C,H,W]")
    model = load_model(model_path)
    result = export_onnx(model, input_shape, model_path.with_suffix(".onnx"), repeats=cfg.latency_repeats)
    if summary is not None:
        summary["onnx"] = result
        save_json(summary, summary_path)
    log.info(
        f"ONNX model written to {result['path']} (max |diff| against PyTorch {result['max_abs_diff']:.2g}); "
        f"batch-1 CPU latency: onnxruntime {result['onnxruntime_ms_batch_1']:.2f} ms, "
        f"PyTorch {result['pytorch_ms_batch_1']:.2f} ms"
    )
    return result
