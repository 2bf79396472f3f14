"""``PruningCallback``: scheduled structured pruning inside ``trainer.fit``.

The callback is thin on purpose: schedules (``schedules``), criteria (``criteria``), the dependency-graph
engine (``pruner``), optimizer surgery (``surgery``), reports (``report``) and pruning to a MACs, parameter
or latency budget (``budget``) live in their own modules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from .budget import (
    BUDGET_TARGETS,
    MAX_RATIO,
    TARGETS,
    BudgetSearch,
    intermediate_budget,
    make_metric,
    prune_to_budget,
    resolve_ratio_overrides,
    search_channel_ratio,
    trial_value,
)
from .checkpoint import RECORD_KEY, check_same_architecture, first_shape_mismatch, make_record, pruning_record
from .criteria import CRITERIA, Importance, SeededRandomImportance, needs_gradients
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
    preserved_training_modes,
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


class _SharedHook:
    """A hook that copies of the module share instead of deep-copying (it refers to the trainer)."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        self.fn(*args)

    def __deepcopy__(self, memo: dict) -> _SharedHook:
        return self


def _untraceable(pl_module: pl.LightningModule, inputs: Any, err: Exception) -> ValueError:
    shape = [tuple(t.shape) for t in output_tensors(inputs)]
    return ValueError(
        f"torch-pruning cannot trace {type(pl_module).__name__} with example inputs of shape {shape}: "
        f"{type(err).__name__}: {err}. Pass PruningCallback(example_inputs=...) that the model's "
        "forward accepts, or ignore the offending layers with ignored_layers=[...]"
    )


class PruningCallback(Callback):
    r"""Physically remove channels on a schedule while the model trains.

    At the end of every epoch from ``start_epoch`` to ``end_epoch`` the share of removed channels becomes
    ``ratio * schedule(p)``, ``p`` being the progress over those epochs (see
    :func:`lightning_prune.schedules.progress`). Ratios are measured against the ORIGINAL widths and never
    compound; an epoch whose scheduled value does not grow prunes nothing.

    After each prune the trainer's optimizers point at the new parameters with their state sliced to the
    kept channels (momentum, Adam moments), LR schedulers continue untouched, frozen parameters stay
    frozen, train/eval modes are restored and the output layer is never pruned.

    Checkpoints carry a pruning record (see :mod:`lightning_prune.checkpoint`), so
    ``trainer.fit(fresh_module, ckpt_path=...)`` re-structures the fresh module before its weights load, for
    any LightningModule. A checkpoint saved at validation end of epoch N (``save_on_train_epoch_end=False``)
    holds the model from before that epoch's prune; on resume Lightning finishes epoch N again, so the
    prune is applied exactly once.

    With ``target="macs"``, ``"params"`` or ``"latency"`` the schedule runs in that unit instead: after each
    pruning epoch the model has at most ``1 - (1 - budget) * schedule(p)`` of the dense model's MACs,
    parameters or latency, and at the last one at most ``budget``, at most one pruning granule below it. The
    channel ratio that meets it is searched at every pruning epoch on copies of the model (bisection; see
    :mod:`lightning_prune.budget`). A budget below what ``max_layer_ratio``, ``ignored_layers`` and
    ``ratio_overrides`` allow is rejected before training with the smallest reachable value. Latency is the
    median of timed forward passes on the training device with the example inputs (resolved at fit start,
    once the model is on its device); it is noisy, so it is met as measured.

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
        ratio: final share of prunable channels removed, in [0, 1); used with ``target="channels"`` only.
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
        target: what the schedule prunes toward: ``"channels"`` (``ratio``), or a budget of ``"macs"``,
            ``"params"`` or ``"latency"``.
        budget: the final model's MACs, parameters or latency as a fraction of the dense model's, in (0, 1);
            required for, and only for, a budget target.
        ratio_overrides: fnmatch patterns on module names, relative to the LightningModule like
            ``ignored_layers`` (``{"model.layer4.*": 0.2}``), mapped to their own channel ratio in [0, 1)
            through torch-pruning's ``pruning_ratio_dict``: the layers one pattern matches are ranked together
            (``"global"``) or one by one (``"local"``) and lose that share of their channels, on the same
            schedule and under ``max_layer_ratio``. A budget search moves only the other layers.
        optimizer_state: ``"slice"`` carries each pruned parameter's optimizer state over to its kept entries;
            ``"reset"`` drops it, so the optimizer starts those parameters afresh (an ablation baseline:
            ``scripts/bench_accuracy.py`` measures the difference).

    Example::

        trainer = Trainer(max_epochs=10, callbacks=[PruningCallback(ratio=0.5, schedule="agp")])
        trainer.fit(model, datamodule)
        # half the compute instead of half the channels:
        PruningCallback(target="macs", budget=0.5, schedule="agp")
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
        target: Literal["channels", "macs", "params", "latency"] = "channels",
        budget: float | None = None,
        ratio_overrides: Mapping[str, float] | None = None,
        optimizer_state: Literal["slice", "reset"] = "slice",
    ) -> None:
        super().__init__()
        if optimizer_state not in ("slice", "reset"):
            raise ValueError(f"optimizer_state={optimizer_state!r} is unknown; choose 'slice' or 'reset'")
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
        if target not in TARGETS:
            raise ValueError(f"target={target!r} is unknown; choose one of {list(TARGETS)}")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int | float) or not 0.0 < budget < 1.0
        ):
            raise ValueError(
                f"budget={budget!r} is invalid; it must lie in (0, 1), a fraction of the dense model's {target}"
            )
        if target == "channels" and budget is not None:
            raise ValueError(
                f"budget={budget!r} needs a budget target; set target to one of {list(BUDGET_TARGETS)} "
                "(target='channels' prunes to ratio)"
            )
        if target != "channels" and budget is None:
            raise ValueError(
                f"target={target!r} needs budget in (0, 1), e.g. budget=0.5 for half the dense model's "
                f"{target}; got budget=None"
            )
        if ratio_overrides is not None and not isinstance(ratio_overrides, Mapping):
            raise ValueError(
                f"ratio_overrides={ratio_overrides!r} is invalid; it must map module-name patterns to ratios"
            )
        for pattern, value in (ratio_overrides or {}).items():
            if not isinstance(pattern, str) or isinstance(value, bool) or not isinstance(value, int | float) or not (
                0.0 <= value < 1.0
            ):
                raise ValueError(
                    f"ratio_overrides[{pattern!r}]={value!r} is invalid; patterns must be strings and ratios "
                    "must lie in [0, 1)"
                )
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
        self.target = target
        self.budget = None if budget is None else float(budget)
        self.ratio_overrides = {str(k): float(v) for k, v in (ratio_overrides or {}).items()}
        self.optimizer_state = optimizer_state

        # set in setup(), per fit
        self.pruner: ChannelPruner | None = None
        self.baseline: list[LayerRow] = []
        self.report: list[LayerRow] = []
        self._end_epoch: int = -1
        self._inputs: Any = None
        self._output_shapes: list[tuple[int, ...]] = []
        self._grad_sums: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._trainer: pl.Trainer | None = None
        self._load_hook: Any = None
        self._random_state: torch.Tensor | None = None  # restored before the pruner exists
        self._override_layers: dict[nn.Module, float] = {}  # layer -> its final ratio (ratio_overrides)
        self._metric: Any = None  # absolute measure of the budget target
        self._dense_value = 0.0
        self._strategy: Any = None  # to share latency readings between processes
        self._sharing = True  # False while rank 0 alone searches a budget
        self._n_kept = 0  # ignored and output layers
        self.smallest_reachable: float | None = None  # of the budget target, as a fraction of dense
        self.budget_plan: BudgetSearch | None = None  # the search for the final budget, before training
        self.last_search: BudgetSearch | None = None  # the search of the latest pruning epoch
        # checkpointed state
        self.pruned_ratio = 0.0  # channel ratio reached so far
        self.pruned_fraction = 0.0  # schedule value reached so far
        self.events: list[dict[str, Any]] = []

    # -- set-up ---------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        if self.target == "channels":
            return self._generate_state_key(ratio=self.ratio, context=self.context)
        return self._generate_state_key(target=self.target, budget=self.budget, context=self.context)

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
        self._strategy = trainer.strategy
        model = pl_module
        inputs = _to_device(self._resolve_inputs(trainer, pl_module), pl_module.device)
        matched = match_layer_patterns(model, self.ignored_layers)
        try:
            with torch.no_grad(), preserved_training_modes(model):
                model.eval()  # a train-mode pass would update BatchNorm statistics before training
                self._output_shapes = _shapes(call_model(model, inputs))
            output_layers = find_output_layers(model, inputs)
        except Exception as err:  # tracing failures surface here, before any training
            raise _untraceable(pl_module, inputs, err) from err
        ignored = {name for names in matched.values() for name in names} | set(output_layers)
        overrides = resolve_ratio_overrides(model, self.ratio_overrides, never_pruned=ignored)
        self._override_layers = {
            model.get_submodule(name): ratio for names, ratio in overrides.values() for name in names
        }
        pruner_kwargs = dict(self.pruner_kwargs)
        if overrides:  # one torch-pruning scope per pattern
            pruner_kwargs["pruning_ratio_dict"] = {
                **(pruner_kwargs.get("pruning_ratio_dict") or {}),
                **{tuple(model.get_submodule(n) for n in names): ratio for names, ratio in overrides.values()},
            }
        try:
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
                **pruner_kwargs,
            )
        except Exception as err:
            raise _untraceable(pl_module, inputs, err) from err
        self._inputs = inputs
        self.baseline = layer_report(model, inputs)
        self._trainer = trainer
        self._restore_random_state()
        self._load_hook = pl_module.register_load_state_dict_pre_hook(_SharedHook(self._restructure_before_load))
        goal = f"{self.ratio:.0%} of channels" if self.budget is None else f"{self.budget:.0%} of dense {self.target}"
        rank_zero_info(
            f"PruningCallback: {self.pruner.prunable_channels} prunable channels; output layers kept: "
            f"{output_layers}; pruning to {goal} over epochs {self.start_epoch}..{self._end_epoch}"
        )
        self._n_kept = len(ignored)
        if self.target in ("macs", "params"):  # device-independent: resolve now; latency at fit start
            self._resolve_budget(pl_module)

    def _resolve_budget(self, pl_module: pl.LightningModule) -> None:
        """Measure the dense model, reject an unreachable budget, and search the final budget's channel ratio
        on the current weights (an estimate: the search is repeated at every pruning epoch)."""
        assert self.pruner is not None and self.budget is not None
        self._metric = make_metric(self.target, self._inputs)
        self._dense_value = self._shared(float(self._metric(pl_module)))
        if self._dense_value <= 0:
            raise ValueError(f"the dense model has {self.target}={self._dense_value}; a budget needs a positive one")
        overrides = self._overrides_at(1.0)
        self.smallest_reachable = trial_value(self.pruner, self._measure, MAX_RATIO, overrides)
        if self.budget < self.smallest_reachable:
            extra = f" and ratio_overrides={self.ratio_overrides}" if self.ratio_overrides else ""
            raise ValueError(
                f"budget={self.budget} for target={self.target!r} cannot be reached: the smallest reachable "
                f"{self.target} ratio is {self.smallest_reachable:.6f}, with every prunable layer cut to "
                f"max_layer_ratio={self.max_layer_ratio}{extra} and {self._n_kept} ignored or output layer(s) kept "
                f"whole. Use budget >= {self.smallest_reachable:.6f}, a larger max_layer_ratio or fewer "
                "ignored_layers"
            )
        self.budget_plan = search_channel_ratio(self.pruner, self._measure, self.budget, 0.0, overrides)
        rank_zero_info(
            f"PruningCallback: {self.target} budget {self.budget:.1%} of dense ({self._dense_value:.6g}); "
            f"smallest reachable {self.smallest_reachable:.1%}; at the current weights it takes removing "
            f"{self.budget_plan.ratio:.1%} of channels (search: {self.budget_plan.trials} trials, "
            f"{self.budget_plan.seconds:.2f}s)"
        )

    def _measure(self, model: nn.Module) -> float:
        """The budget target's measure of ``model`` as a fraction of the dense model's."""
        return self._shared(self._metric(model)) / self._dense_value

    def _shared(self, value: float) -> float:
        """Latency differs between processes: every rank uses rank zero's readings, so that all ranks take
        the same search path and prune the same channels. MACs and parameters agree already."""
        if self.target != "latency" or self._strategy is None or not self._sharing:
            return value
        return float(self._strategy.broadcast(value, src=0))

    def _overrides_at(self, fraction: float) -> dict[nn.Module, float]:
        """Per-layer ratios of ``ratio_overrides`` at schedule value ``fraction``."""
        return {module: ratio * fraction for module, ratio in self._override_layers.items()}

    def _fraction(self, epoch: int) -> float:
        """The schedule's value after ``epoch``, in [0, 1]."""
        return scheduled_ratio(epoch, 1.0, self.schedule, self.start_epoch, self._end_epoch)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the checkpoint (if any) is restored and the strategy has moved the model to its device by now
        self._remove_load_hook()
        self._inputs = _to_device(self._inputs, pl_module.device)
        if self.pruner is not None and self.target == "latency":  # measured on the training device
            self._resolve_budget(pl_module)

    def _remove_load_hook(self) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._grad_sums = {}
        self._remove_load_hook()
        self._strategy = None
        if stage == "fit" and self.pruned_ratio > 0 and spawns_ranks(trainer):
            keep_main_process_model(pl_module)  # Lightning's copy back would fail on the pruned shapes

    # -- gradients for taylor -------------------------------------------------------------------------
    def _prunes_at(self, epoch: int) -> bool:
        if self.budget is None and not self._override_layers:
            target = scheduled_ratio(epoch, self.ratio, self.schedule, self.start_epoch, self._end_epoch)
            return target > self.pruned_ratio + 1e-12
        return self._fraction(epoch) > self.pruned_fraction + 1e-12

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
        fraction = self._fraction(epoch)
        budget = None if self.budget is None else intermediate_budget(self.budget, fraction)
        if budget is None:
            target = scheduled_ratio(epoch, self.ratio, self.schedule, self.start_epoch, self._end_epoch)
        else:
            target = self.pruned_ratio  # the search starts where the last prune ended
        step = self.prune(trainer, pl_module, target, budget=budget, fraction=fraction)
        self.pruned_fraction = fraction
        macs, params = count_macs_params(pl_module, self._inputs)
        dense = self.baseline[-1]
        metrics = {
            "prune/ratio": step.achieved,
            "prune/params": float(params),
            "prune/macs": float(macs),
            "prune/params_ratio": params / dense.params,
            "prune/macs_ratio": macs / dense.macs,
        }
        extra: dict[str, Any] = {}
        if budget is not None and self.last_search is not None:
            metrics["prune/budget_target"] = budget
            if self.target == "latency":
                metrics["prune/latency_ratio"] = self.last_search.value
            extra["search"] = self.last_search.as_dict()
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        self.events.append({"epoch": epoch, "target": step.target, **metrics, **extra})
        scheduled = f"scheduled {target:.1%}" if budget is None else f"{self.target} budget {budget:.1%}"
        rank_zero_info(
            f"PruningCallback: epoch {epoch}: removed {step.achieved:.1%} of channels ({scheduled}); "
            f"params {params / dense.params:.1%}, MACs {macs / dense.macs:.1%} of dense"
        )
        if self.last_search is not None and budget is not None and not self.last_search.met:
            rank_zero_warn(
                f"PruningCallback: epoch {epoch}: the {self.target} budget {budget:.1%} was missed: "
                f"{self.last_search.value:.1%} of dense after pruning to {step.achieved:.1%} of channels"
            )

    def prune(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        target: float,
        budget: float | None = None,
        fraction: float = 1.0,
    ) -> PruneStep:
        """Prune now and carry the trainer's optimizers over to the new parameters.

        Without ``budget``, ``target`` is the share of the ORIGINAL channels removed. With ``budget`` (a
        fraction of the dense model's ``self.target`` measure), the smallest channel ratio ``>= target``
        that meets it is searched and applied (:func:`lightning_prune.budget.prune_to_budget`; the search is
        in ``last_search``). ``ratio_overrides`` are scaled by the schedule value ``fraction``.

        Under DDP every rank must call it: rank 0 decides, the others replay its choice, and the DDP
        wrapper is rebuilt over the new parameters.
        """
        assert self.pruner is not None
        pruner = self.pruner
        overrides = self._overrides_at(fraction)
        if budget is not None and self._metric is None:
            raise RuntimeError("a budget prune needs the budget resolved first (PruningCallback.setup)")

        def decide() -> tuple[PruneStep, Any]:  # runs on rank 0 only
            if budget is None:
                return pruner.prune_to(target, overrides), None
            self._sharing = False  # only rank 0 measures now: no collective inside the search
            try:
                return prune_to_budget(pruner, self._measure, budget, target, overrides)
            finally:
                self._sharing = True

        gradient_based = needs_gradients(pruner.importance) and trainer.is_global_zero
        if gradient_based:
            for param in pl_module.parameters():
                param.grad = self._grad_sums.get(param, torch.zeros_like(param))
        try:
            step, self.last_search = prune_in_sync(pruner, decide, trainer.strategy)
        finally:
            self._grad_sums = {}
            if gradient_based:
                for param in pl_module.parameters():
                    param.grad = None
        for optimizer in trainer.optimizers:
            remap_optimizer(optimizer, step.changes, carry_state=self.optimizer_state == "slice")
        if step.history:  # the same on every rank (broadcast), so all ranks join the rebuild's collectives
            rewrap_ddp(trainer)
        self.pruned_ratio = step.target
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
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.pruner is not None:
            checkpoint[RECORD_KEY] = make_record(self.pruner.history(), self._inputs)

    def _restructure_before_load(self, module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        """Load-state-dict pre-hook: bring a fresh module to the checkpoint's pruned shapes before the weights
        load, for any LightningModule. Lightning loads the model's weights before any callback state, and
        hands no public hook to callbacks in between, so the record is read from the checkpoint that
        Lightning has just loaded (``_checkpoint_connector._loaded_checkpoint``)."""
        if prefix or self.pruner is None or self._trainer is None:
            return
        checkpoint = getattr(self._trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}
        record = pruning_record(checkpoint)
        if record is None or record["history"] == self.pruner.history():
            return
        check_same_architecture(module, state_dict)
        if first_shape_mismatch(module, state_dict) is None:
            self.pruner.adopt_history(record["history"])  # the module re-structured itself (on_load_checkpoint)
            return
        if self.pruner.history():
            raise ValueError("the model was already pruned in this fit; resume with a fresh, unpruned module")
        self.pruner.replay(record["history"])
        mismatch = first_shape_mismatch(module, state_dict)
        if mismatch is not None:
            raise ValueError(f"the pruning record does not reproduce the checkpoint's shapes; first layer: {mismatch}")

    def _restore_random_state(self) -> None:
        importance = self.pruner.importance if self.pruner is not None else None
        if isinstance(importance, SeededRandomImportance) and self._random_state is not None:
            importance.generator.set_state(self._random_state)

    def state_dict(self) -> dict[str, Any]:
        importance = self.pruner.importance if self.pruner is not None else None
        state: dict[str, Any] = {
            "pruned_ratio": self.pruned_ratio,
            "pruned_fraction": self.pruned_fraction,
            "events": [dict(e) for e in self.events],
        }
        if isinstance(importance, SeededRandomImportance):
            state["random_state"] = importance.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_ratio = float(state_dict.get("pruned_ratio", 0.0))
        derived = self.pruned_ratio / self.ratio if self.ratio > 0 and self.budget is None else 0.0
        self.pruned_fraction = float(state_dict.get("pruned_fraction", derived))
        self.events = [dict(e) for e in state_dict.get("events", [])]
        self._random_state = state_dict.get("random_state")
        self._restore_random_state()
