"""``PruningCallback``: scheduled structured pruning inside ``trainer.fit``.

The callback is thin on purpose: schedules (``schedules``), criteria (``criteria``), the dependency-graph
engine (``pruner``), optimizer surgery (``surgery``), reports (``report``) and pruning to a MACs, parameter
or latency budget (``budget``) live in their own modules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from .attention import attention_kwargs
from .budget import (
    BUDGET_TARGETS,
    TARGETS,
    BudgetSearch,
    BudgetTracker,
    intermediate_budget,
    resolve_ratio_overrides,
)
from .checkpoint import RECORD_KEY, RestructureOnLoad, make_record
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
from .inputs import resolve_example_inputs, shapes, to_device, untraceable_error
from .pruner import (
    PRUNABLE_TYPES,
    ChannelPruner,
    PruneStep,
    call_model,
    find_output_layers,
    match_layer_patterns,
    preserved_training_modes,
)
from .report import LayerRow, layer_report, prune_metrics, render_layer_report
from .rollback import Snapshot, forward_check, step_error
from .safety import ON_UNSAFE, describe, unsafe_layers_to_ignore
from .schedules import SCHEDULES, Schedule, get_schedule, scheduled_ratio
from .surgery import remap_optimizer

log = logging.getLogger(__name__)

CONTEXTS = ("global", "local")


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
        example_inputs: inputs for tracing; default: ``LightningModule.example_input_array`` or the first
            training batch. Every tensor is cut to its first sample (see :mod:`lightning_prune.inputs`).
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
        on_unsafe: what to do with layers whose channels reach an operation torch-pruning mis-prunes (channel
            shuffle, a view/reshape to a fixed size, chunk/split feeding a concatenation; see
            :mod:`lightning_prune.safety`): ``"ignore"`` leaves them unpruned with a warning naming them,
            ``"raise"`` refuses at set-up with a ``ValueError`` naming them.
        graph_build_warn_s: warn when building the dependency graph takes longer than this many seconds.
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
        on_unsafe: Literal["ignore", "raise"] = "ignore",
        graph_build_warn_s: float = 60.0,
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
        if on_unsafe not in ON_UNSAFE:
            raise ValueError(f"on_unsafe={on_unsafe!r} is unknown; choose one of {list(ON_UNSAFE)}")
        if isinstance(graph_build_warn_s, bool) or not isinstance(graph_build_warn_s, int | float) or not (
            graph_build_warn_s > 0
        ):
            raise ValueError(f"graph_build_warn_s={graph_build_warn_s!r} is invalid; it must be seconds > 0")
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
        self.on_unsafe = on_unsafe
        self.graph_build_warn_s = float(graph_build_warn_s)
        self.unsafe_ignored: list[str] = []  # layers left unpruned because of unsafe operations (setup)
        self.optimizer_state = optimizer_state

        # set in setup(), per fit
        self.pruner: ChannelPruner | None = None
        self.baseline: list[LayerRow] = []
        self.report: list[LayerRow] = []
        self._end_epoch: int = -1
        self._inputs: Any = None
        self._output_shapes: list[tuple[int, ...]] = []
        self._grad_sums: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._load_hook: Any = None
        self._random_state: torch.Tensor | None = None  # restored before the pruner exists
        self._override_layers: dict[nn.Module, float] = {}  # layer -> its final ratio (ratio_overrides)
        self._budget: BudgetTracker | None = None  # with a budget target
        self._n_kept = 0  # ignored and output layers
        # checkpointed state
        self.pruned_ratio = 0.0  # channel ratio reached so far
        self.pruned_fraction = 0.0  # schedule value reached so far
        self.events: list[dict[str, Any]] = []

    # -- budget (see lightning_prune.budget.BudgetTracker) --------------------------------------------
    @property
    def smallest_reachable(self) -> float | None:
        """The smallest reachable value of the budget target, as a fraction of dense (set at set-up)."""
        return None if self._budget is None else self._budget.smallest_reachable

    @property
    def budget_plan(self) -> BudgetSearch | None:
        """The search for the final budget on the weights before training (an estimate)."""
        return None if self._budget is None else self._budget.plan

    @property
    def last_search(self) -> BudgetSearch | None:
        """The budget search of the latest pruning epoch."""
        return None if self._budget is None else self._budget.last_search

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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy_supported(trainer.strategy)
        check_no_weight_averaging(trainer, pl_module)
        if spawns_ranks(trainer):
            rank_zero_warn(SPAWN_WARNING.format(start_method=getattr(trainer.strategy, "_start_method", "spawn")))
        self._end_epoch = self._resolve_end_epoch(trainer)
        model = pl_module
        inputs = resolve_example_inputs(trainer, pl_module, self.example_inputs)
        matched = match_layer_patterns(model, self.ignored_layers)
        try:
            with torch.no_grad(), preserved_training_modes(model):
                model.eval()  # a train-mode pass would update BatchNorm statistics before training
                self._output_shapes = shapes(call_model(model, inputs))
            output_layers = find_output_layers(model, inputs)
        except Exception as err:  # tracing failures surface here, before any training
            raise untraceable_error(pl_module, inputs, err) from err
        ignored = {name for names in matched.values() for name in names} | set(output_layers)
        custom_types = tuple(k for k in (self.pruner_kwargs.get("customized_pruners") or {}) if isinstance(k, type))
        unsafe = unsafe_layers_to_ignore(model, inputs, self.on_unsafe, PRUNABLE_TYPES + custom_types, sorted(ignored))
        if unsafe:
            rank_zero_warn(f"PruningCallback: not pruning layers that feed unsafe operations: {describe(unsafe)}")
        self.unsafe_ignored = [op.module for op in unsafe]
        ignored |= set(self.unsafe_ignored)
        overrides = resolve_ratio_overrides(model, self.ratio_overrides, never_pruned=ignored)
        self._override_layers = {
            model.get_submodule(name): ratio for names, ratio in overrides.values() for name in names
        }
        pruner_kwargs = dict(self.pruner_kwargs)
        pruner_kwargs = attention_kwargs(model, pruner_kwargs)  # attention heads pruned consistently
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
            raise untraceable_error(pl_module, inputs, err) from err
        if self.pruner.build_seconds > self.graph_build_warn_s:
            rank_zero_warn(
                f"PruningCallback: building the dependency graph took {self.pruner.build_seconds:.1f}s "
                f"(graph_build_warn_s={self.graph_build_warn_s:g}); where the model allows, pass smaller "
                "example_inputs (e.g. a smaller image size)"
            )
        self._inputs = inputs
        self.baseline = layer_report(model, inputs)
        self._restore_random_state()
        self._load_hook = pl_module.register_load_state_dict_pre_hook(RestructureOnLoad(lambda: self.pruner, trainer))
        goal = f"{self.ratio:.0%} of channels" if self.budget is None else f"{self.budget:.0%} of dense {self.target}"
        rank_zero_info(
            f"PruningCallback: {self.pruner.prunable_channels} prunable channels; output layers kept: "
            f"{output_layers}; pruning to {goal} over epochs {self.start_epoch}..{self._end_epoch}"
        )
        self._n_kept = len(ignored)
        if self.target in ("macs", "params"):  # device-independent: resolve now; latency at fit start
            self._resolve_budget(trainer, pl_module)

    def _resolve_budget(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.pruner is not None and self.budget is not None
        self._budget = BudgetTracker(self.target, self.budget, self._inputs, strategy=trainer.strategy)
        hint = f" and ratio_overrides={self.ratio_overrides}" if self.ratio_overrides else ""
        self._budget.resolve(self.pruner, pl_module, self._overrides_at(1.0), n_kept=self._n_kept, hint=hint)
        plan = self._budget.plan
        assert plan is not None
        rank_zero_info(
            f"PruningCallback: {self.target} budget {self.budget:.1%} of dense ({self._budget.dense_value:.6g}); "
            f"smallest reachable {self.smallest_reachable:.1%}; at the current weights it takes removing "
            f"{plan.ratio:.1%} of channels (search: {plan.trials} trials, {plan.seconds:.2f}s)"
        )

    def _overrides_at(self, fraction: float) -> dict[nn.Module, float]:
        """Per-layer ratios of ``ratio_overrides`` at schedule value ``fraction``."""
        return {module: ratio * fraction for module, ratio in self._override_layers.items()}

    def _fraction(self, epoch: int) -> float:
        """The schedule's value after ``epoch``, in [0, 1]."""
        return scheduled_ratio(epoch, 1.0, self.schedule, self.start_epoch, self._end_epoch)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the checkpoint (if any) is restored and the strategy has moved the model to its device by now
        self._remove_load_hook()
        self._inputs = to_device(self._inputs, pl_module.device)
        if self.pruner is not None and self.target == "latency":  # measured on the training device
            self._resolve_budget(trainer, pl_module)

    def _remove_load_hook(self) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._grad_sums = {}
        self._remove_load_hook()
        if self._budget is not None:
            self._budget.strategy = None
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
        metrics = prune_metrics(pl_module, self._inputs, self.baseline[-1], step.achieved)
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
            f"params {metrics['prune/params_ratio']:.1%}, MACs {metrics['prune/macs_ratio']:.1%} of dense"
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
        """Prune now (see :meth:`_prune_unchecked`), then run one forward pass with the example inputs. If the
        step fails or changes the output shapes, the model, the pruning history and the optimizers are rolled
        back to their state before the step and :class:`~lightning_prune.rollback.PruningStepError` names the
        step and the first group that breaks the model on its own."""
        assert self.pruner is not None
        self.pruner.aim_heads(fraction)  # whole attention heads, if asked, on the schedule
        snapshot = Snapshot.take(self.pruner, trainer.optimizers)
        pruned_ratio, done = self.pruned_ratio, len(self.pruner.history())
        try:
            return self._prune_unchecked(trainer, pl_module, target, budget=budget, fraction=fraction)
        except Exception as err:
            history = self.pruner.history()[done:]
            snapshot.restore()
            self.pruned_ratio = pruned_ratio
            if history:
                rewrap_ddp(trainer)
            where = f"epoch {trainer.current_epoch} (to {target:.1%} of channels)"
            check = forward_check(self._inputs, self._output_shapes)
            raise step_error(self.pruner, history, err, where, check) from err

    def _prune_unchecked(
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
        pruner, tracker = self.pruner, self._budget
        overrides = self._overrides_at(fraction)
        if budget is not None and tracker is None:
            raise RuntimeError("a budget prune needs a budget target (PruningCallback(target=..., budget=...))")

        def decide() -> tuple[PruneStep, Any]:  # runs on rank 0 only
            if budget is None:
                return pruner.prune_to(target, overrides), None
            return tracker.prune(pruner, budget, target, overrides), tracker.last_search

        gradient_based = needs_gradients(pruner.importance) and trainer.is_global_zero
        if gradient_based:
            for param in pl_module.parameters():
                param.grad = self._grad_sums.get(param, torch.zeros_like(param))
        try:
            step, search = prune_in_sync(pruner, decide, trainer.strategy)
            if tracker is not None:
                tracker.last_search = search
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
        forward_check(self._inputs, self._output_shapes)(pl_module)  # failures roll back in prune()
        return step

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
