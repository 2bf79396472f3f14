"""``PruningCallback``: scheduled structured pruning inside ``trainer.fit``.

The callback is thin on purpose: schedules (``schedules``), criteria (``criteria``), the dependency-graph
engine (``pruner``), optimizer surgery (``surgery``) and reports (``report``) live in their own modules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .criteria import CRITERIA, Importance, needs_gradients
from .distributed import (
    SPAWN_WARNING,
    check_no_weight_averaging,
    check_strategy_supported,
    keep_main_process_model,
    prune_in_sync,
    rewrap_ddp,
    spawns_ranks,
)
from .pruner import (
    ChannelPruner,
    PruneStep,
    call_model,
    find_output_layers,
    match_layer_patterns,
    output_tensors,
)
from .report import LayerRow, count_macs_params, layer_report, render_layer_report
from .schedules import SCHEDULES, Schedule, get_schedule, scheduled_ratio
from .surgery import remap_optimizer

log = logging.getLogger(__name__)

CONTEXTS = ("global", "local")


def _first_sample(batch: Any) -> Any:
    """One sample of a training batch, as model inputs: the first element of a (inputs, target) pair."""
    if isinstance(batch, tuple | list) and batch:
        batch = batch[0]
    if torch.is_tensor(batch):
        return batch[:1]
    if isinstance(batch, dict):
        return {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    raise ValueError(
        f"cannot take example inputs from a training batch of type {type(batch).__name__}; "
        "pass PruningCallback(example_inputs=...) or set LightningModule.example_input_array"
    )


def _to_device(inputs: Any, device: torch.device) -> Any:
    if torch.is_tensor(inputs):
        return inputs.to(device)
    if isinstance(inputs, tuple | list):
        return type(inputs)(_to_device(x, device) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _to_device(v, device) for k, v in inputs.items()}
    return inputs


def _shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in output_tensors(output)]


class PruningCallback(Callback):
    r"""Physically remove channels on a schedule while the model trains.

    At the end of every epoch from ``start_epoch`` to ``end_epoch`` the share of removed channels becomes
    ``ratio * schedule(p)``, ``p`` being the progress over those epochs (see
    :func:`lightning_prune.schedules.progress`). Ratios are measured against the ORIGINAL widths and never
    compound; an epoch whose scheduled value does not grow prunes nothing.

    After each prune the trainer's optimizers point at the new parameters with their state sliced to the
    kept channels (momentum, Adam moments), LR schedulers continue untouched, frozen parameters stay
    frozen, train/eval modes are restored and the output layer is never pruned.

    The ``taylor`` criterion needs gradients: the callback sums the gradients of every optimizer step of a
    pruning epoch (taken in ``on_before_optimizer_step``, so after gradient accumulation and AMP unscaling)
    and scores channels with that sum, so a single noisy batch never decides.

    Under DDP (``strategy="ddp"``, ``"ddp_spawn"``, ...) rank 0 chooses the channels and every other rank
    applies exactly its choice, so all ranks keep identical models for every criterion. The DDP wrapper
    is rebuilt over the new parameters after each prune, so gradients keep synchronising (see
    :mod:`lightning_prune.distributed`). With ``ddp_spawn`` the model object in the launching process is
    not updated at the end of fit (Lightning's copy back cannot change shapes): save the pruned model from
    rank 0 during fit, or use ``"ddp"``. Sharding strategies (FSDP, DeepSpeed) and weight-averaging copies
    (SWA, EMA) are refused at set-up.

    Args:
        ratio: final share of prunable channels removed, in [0, 1).
        schedule: a name from :data:`lightning_prune.schedules.SCHEDULES` or a callable ``p -> fraction``.
        criterion: a name from :data:`lightning_prune.criteria.CRITERIA` or a torch-pruning ``Importance``.
        context: ``"global"`` ranks channels across layers, ``"local"`` prunes every layer by the ratio.
        start_epoch: first epoch at whose end pruning may happen.
        end_epoch: epoch at whose end the full ratio is reached; default: the trainer's last epoch.
        example_inputs: inputs for tracing; default: ``LightningModule.example_input_array`` or one sample
            of the first training batch.
        ignored_layers: module-name patterns (fnmatch) never pruned; output layers are always kept.
        round_to: keep channel counts multiples of this.
        max_layer_ratio: no single layer loses more than this share of its channels, in (0, 1].
        seed: seeds the ``random`` criterion; default: the seed of ``seed_everything`` (or 0).
        pruner_kwargs: passed through to ``torch_pruning.pruner.BasePruner``, e.g. ``customized_pruners``
            and ``unwrapped_parameters`` for custom layers.
        verbose: print the per-layer report at the end of fit (rank zero only).

    Example::

        trainer = Trainer(max_epochs=10, callbacks=[PruningCallback(ratio=0.5, schedule="agp")])
        trainer.fit(model, datamodule)
    """

    def __init__(
        self,
        ratio: float = 0.4,
        schedule: str | Schedule = "agp",
        criterion: str | Importance = "l2",
        context: Literal["global", "local"] = "global",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        example_inputs: torch.Tensor | None = None,
        ignored_layers: Sequence[str] = (),
        round_to: int | None = None,
        max_layer_ratio: float = 0.9,
        seed: int | None = None,
        pruner_kwargs: dict[str, Any] | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio={ratio!r} is invalid; it must lie in [0, 1)")
        if not callable(schedule) and schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is unknown; choose one of {sorted(SCHEDULES)} or a callable")
        if not isinstance(criterion, Importance) and criterion not in CRITERIA:
            raise ValueError(
                f"criterion={criterion!r} is unknown; choose one of {sorted(CRITERIA)} "
                "or a torch_pruning.importance.Importance instance"
            )
        if context not in CONTEXTS:
            raise ValueError(f"context={context!r} is unknown; choose one of {list(CONTEXTS)}")
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch={start_epoch!r} is invalid; it must be an integer >= 0")
        if end_epoch is not None and (not isinstance(end_epoch, int) or end_epoch < start_epoch):
            raise ValueError(
                f"end_epoch={end_epoch!r} is invalid; it must be an integer >= start_epoch ({start_epoch})"
            )
        if not isinstance(max_layer_ratio, int | float) or not 0.0 < max_layer_ratio <= 1.0:
            raise ValueError(f"max_layer_ratio={max_layer_ratio!r} is invalid; it must lie in (0, 1]")
        if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"round_to={round_to!r} is invalid; it must be None or an integer >= 1")
        if isinstance(ignored_layers, str):
            ignored_layers = [ignored_layers]
        self.ratio = float(ratio)
        self.schedule = get_schedule(schedule)
        self.criterion = criterion
        self.context = context
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.example_inputs = example_inputs
        self.ignored_layers = list(ignored_layers)
        self.round_to = round_to
        self.max_layer_ratio = float(max_layer_ratio)
        self.seed = seed
        self.pruner_kwargs = dict(pruner_kwargs or {})
        self.verbose = verbose

        # set in setup(), per fit
        self.pruner: ChannelPruner | None = None
        self.baseline: list[LayerRow] = []
        self.report: list[LayerRow] = []
        self._end_epoch: int = -1
        self._inputs: Any = None
        self._output_shapes: list[tuple[int, ...]] = []
        self._grad_sums: dict[torch.nn.Parameter, torch.Tensor] = {}
        # checkpointed state
        self.pruned_ratio = 0.0  # scheduled ratio reached so far
        self.events: list[dict[str, Any]] = []

    # -- set-up ---------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(ratio=self.ratio, context=self.context)

    def _resolve_end_epoch(self, trainer: pl.Trainer) -> int:
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            if self.end_epoch is None:
                raise ValueError("the trainer has no max_epochs; set PruningCallback(end_epoch=...)")
            return self.end_epoch
        if self.start_epoch >= max_epochs:
            raise ValueError(
                f"start_epoch={self.start_epoch} is at or past max_epochs={max_epochs}; "
                f"it must lie in [0, {max_epochs - 1}]"
            )
        end = max_epochs - 1 if self.end_epoch is None else self.end_epoch
        if end >= max_epochs:
            raise ValueError(
                f"end_epoch={end} is at or past max_epochs={max_epochs}; it must lie in "
                f"[{self.start_epoch}, {max_epochs - 1}] so that the full ratio is reached"
            )
        return end

    def _resolve_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        if self.example_inputs is not None:
            return self.example_inputs
        if pl_module.example_input_array is not None:
            return pl_module.example_input_array
        # Taking a batch must not shift the RNG streams the training run will use.
        import random

        import numpy as np

        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            batch = next(iter(trainer.fit_loop._data_source.dataloader()))
        random.setstate(py_state)
        np.random.set_state(np_state)
        return _first_sample(batch)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy_supported(trainer.strategy)
        check_no_weight_averaging(trainer, pl_module)
        if spawns_ranks(trainer):
            rank_zero_warn(SPAWN_WARNING.format(start_method=getattr(trainer.strategy, "_start_method", "spawn")))
        self._end_epoch = self._resolve_end_epoch(trainer)
        model = pl_module
        inputs = _to_device(self._resolve_inputs(trainer, pl_module), pl_module.device)
        matched = match_layer_patterns(model, self.ignored_layers)
        try:
            with torch.no_grad():
                self._output_shapes = _shapes(call_model(model, inputs))
            output_layers = find_output_layers(model, inputs)
            ignored = {name for names in matched.values() for name in names} | set(output_layers)
            seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            self.pruner = ChannelPruner(
                model,
                inputs,
                importance=self.criterion,
                global_pruning=self.context == "global",
                ignored_layers=[model.get_submodule(n) for n in sorted(ignored)],
                round_to=self.round_to,
                max_layer_ratio=self.max_layer_ratio,
                seed=seed,
                **self.pruner_kwargs,
            )
        except Exception as err:  # tracing failures surface here, before any training
            shape = [tuple(t.shape) for t in output_tensors(inputs)]
            raise ValueError(
                f"torch-pruning cannot trace {type(pl_module).__name__} with example inputs of shape {shape}: "
                f"{type(err).__name__}: {err}. Pass PruningCallback(example_inputs=...) that the model's "
                "forward accepts, or ignore the offending layers with ignored_layers=[...]"
            ) from err
        self._inputs = inputs
        self.baseline = layer_report(model, inputs)
        rank_zero_info(
            f"PruningCallback: {self.pruner.prunable_channels} prunable channels; output layers kept: "
            f"{output_layers}; pruning to {self.ratio:.0%} over epochs {self.start_epoch}..{self._end_epoch}"
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the strategy has moved the model to its device by now
        self._inputs = _to_device(self._inputs, pl_module.device)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._grad_sums = {}
        if stage == "fit" and self.pruned_ratio > 0 and spawns_ranks(trainer):
            keep_main_process_model(pl_module)  # Lightning's copy back would fail on the pruned shapes

    # -- gradients for taylor -------------------------------------------------------------------------
    def _prunes_at(self, epoch: int) -> bool:
        target = scheduled_ratio(epoch, self.ratio, self.schedule, self.start_epoch, self._end_epoch)
        return target > self.pruned_ratio + 1e-12

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.pruner is None or not needs_gradients(self.pruner.importance):
            return
        if not trainer.is_global_zero:  # only rank 0 chooses channels; DDP has already all-reduced the gradients
            return
        if not self._prunes_at(trainer.current_epoch):
            return
        for param in pl_module.parameters():
            if param.grad is not None:
                total = self._grad_sums.get(param)
                grad = param.grad.detach()
                self._grad_sums[param] = grad.clone() if total is None else total.add_(grad)

    # -- pruning --------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.pruner is None or not self._prunes_at(epoch):
            return
        target = scheduled_ratio(epoch, self.ratio, self.schedule, self.start_epoch, self._end_epoch)
        step = self.prune(trainer, pl_module, target)
        macs, params = count_macs_params(pl_module, self._inputs)
        dense = self.baseline[-1]
        metrics = {
            "prune/ratio": step.achieved,
            "prune/params": float(params),
            "prune/macs": float(macs),
            "prune/params_ratio": params / dense.params,
            "prune/macs_ratio": macs / dense.macs,
        }
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        self.events.append({"epoch": epoch, "target": target, **metrics})
        rank_zero_info(
            f"PruningCallback: epoch {epoch}: removed {step.achieved:.1%} of channels (scheduled "
            f"{target:.1%}); params {params / dense.params:.1%}, MACs {macs / dense.macs:.1%} of dense"
        )

    def prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float) -> PruneStep:
        """Prune to ``target`` now and carry the trainer's optimizers over to the new parameters.

        Under DDP every rank must call it: rank 0 chooses, the others replay its choice, and the DDP
        wrapper is rebuilt over the new parameters.
        """
        assert self.pruner is not None
        gradient_based = needs_gradients(self.pruner.importance) and trainer.is_global_zero
        if gradient_based:
            for param in pl_module.parameters():
                param.grad = self._grad_sums.get(param, torch.zeros_like(param))
        try:
            step = prune_in_sync(self.pruner, target, trainer.strategy)
        finally:
            self._grad_sums = {}
            if gradient_based:
                for param in pl_module.parameters():
                    param.grad = None
        for optimizer in trainer.optimizers:
            remap_optimizer(optimizer, step.changes)
        if step.history:  # the same on every rank (broadcast), so all ranks join the rebuild's collectives
            rewrap_ddp(trainer)
        self.pruned_ratio = target
        self._check_forward(pl_module, step)
        return step

    def _check_forward(self, pl_module: pl.LightningModule, step: PruneStep) -> None:
        with torch.no_grad():
            training = pl_module.training
            pl_module.eval()
            try:
                shapes = _shapes(call_model(pl_module, self._inputs))
            finally:
                pl_module.train(training)
        if shapes != self._output_shapes:
            raise RuntimeError(
                f"pruning to {step.target:.1%} changed the model's output shapes from {self._output_shapes} "
                f"to {shapes}"
            )

    # -- reporting ------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruner is None:
            return
        self.report = layer_report(pl_module, self._inputs, baseline=self.baseline)
        if self.verbose:
            rank_zero_info("PruningCallback: per-layer report\n" + render_layer_report(self.report))

    # -- checkpointing --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned_ratio": self.pruned_ratio,
            "events": [dict(e) for e in self.events],
            "history": self.pruner.history() if self.pruner is not None else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_ratio = float(state_dict.get("pruned_ratio", 0.0))
        self.events = [dict(e) for e in state_dict.get("events", [])]
