"""One fit's scheduled pruning, framework-free: what ``PruningCallback`` dispatches into.

:class:`ScheduledPruning` assembles the pruner for a model (ignored, output and unsafe layers, ratio
overrides, attention heads), runs the schedule over epochs, sums gradients for gradient criteria (squared
ones for ``hessian``), prunes with verification and rollback, and keeps the run's progress in ONE place:
:attr:`ScheduledPruning.events`, one record per prune (what a checkpoint stores; everything else is derived
from it).

Distributed training plugs in through two callables: ``sync(pruner, decide)`` runs ``decide`` on the rank
that chooses and replays its choice elsewhere, ``after_change()`` runs after parameters were replaced.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten())
>>> session = ScheduledPruning(net, torch.zeros(1, 3, 8, 8), PruningSpec(ratio=0.5, schedule="one_shot"), end_epoch=0)
>>> event = session.on_epoch_end(0)
>>> net[0].out_channels, session.aimed_ratio, session.prunes_at(0)
(4, 0.5, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .budget import BudgetSearch, BudgetTracker, intermediate_budget, resolve_ratio_overrides
from .cost import CostAwareImportance, measure_costs
from .criteria import SeededRandomImportance, get_criterion, needs_gradients, squares_gradients
from .hf import conv1d_types
from .inputs import shapes, to_device, untraceable_error
from .pruner import (
    PRUNABLE_TYPES,
    ChannelPruner,
    LeftOut,
    NothingToPruneError,
    PruneStep,
    TracingError,
    call_model,
    find_output_layers,
    match_layer_patterns,
    preserved_training_modes,
)
from .regularize import GroupSparsity
from .report import LayerRow, layer_report, prune_metrics
from .rollback import Snapshot, forward_check, step_error
from .safety import UnsafeOp, describe, unsafe_layers_to_ignore
from .schedules import get_schedule, scheduled_ratio
from .spec import PruningSpec
from .surgery import remap_optimizer

FIT_START = -1  # the epoch recorded for a prune before the first epoch (``prune_on_fit_start``)
Sync = Callable[[ChannelPruner, Callable[[], tuple[PruneStep, Any]]], tuple[PruneStep, Any]]


def _single_process(pruner: ChannelPruner, decide: Callable[[], tuple[PruneStep, Any]]) -> tuple[PruneStep, Any]:
    return decide()


class ScheduledPruning:
    """The pruner of one fit and the schedule that drives it.

    Args:
        model: the module to prune in place (a LightningModule in a fit; names are relative to it).
        example_inputs: one-sample inputs for tracing (see :mod:`lightning_prune.engine.inputs`).
        spec: the validated parameters.
        end_epoch: the epoch at whose end the full ratio (or budget) is reached.
        seed: seeds the ``random`` criterion.
    """

    def __init__(
        self, model: nn.Module, example_inputs: Any, spec: PruningSpec, end_epoch: int, seed: int = 0
    ) -> None:
        self.model, self.spec, self.end_epoch = model, spec, end_epoch
        self.schedule = get_schedule(spec.schedule)
        self.inputs = example_inputs  # the one copy; move_inputs() follows the model to its device
        self.events: list[dict[str, Any]] = []  # progress: one record per prune (checkpointed)
        # gradient criteria: per parameter, the sum of its gradients (taylor) or squared gradients (hessian)
        # over the optimizer steps of a pruning epoch, and how many steps it had a gradient in
        self.grad_sums: dict[nn.Parameter, torch.Tensor] = {}
        self.grad_counts: dict[nn.Parameter, int] = {}
        self.budget: BudgetTracker | None = None
        self.chooses = True  # this process chooses the channels (rank 0 under DDP): it sums gradients
        matched = match_layer_patterns(model, spec.ignored_layers)
        try:
            with torch.no_grad(), preserved_training_modes(model):
                model.eval()  # a train-mode pass would update BatchNorm statistics before training
                self.output_shapes = shapes(call_model(model, example_inputs))
            self.output_layers = find_output_layers(model, example_inputs)
        except Exception as err:  # tracing failures surface here, before any training
            raise untraceable_error(model, example_inputs, err) from err
        ignored = {name for names in matched.values() for name in names} | set(self.output_layers)
        custom = tuple(k for k in (spec.pruner_kwargs.get("customized_pruners") or {}) if isinstance(k, type))
        custom += tuple(conv1d_types(model))
        self.unsafe: list[UnsafeOp] = unsafe_layers_to_ignore(
            model, example_inputs, spec.on_unsafe, PRUNABLE_TYPES + custom, sorted(ignored)
        )
        ignored |= {op.module for op in self.unsafe}
        self.n_kept = len(ignored)
        overrides = resolve_ratio_overrides(model, spec.ratio_overrides, never_pruned=ignored)
        self.override_layers = {model.get_submodule(n): ratio for names, ratio in overrides.values() for n in names}
        kwargs = dict(spec.pruner_kwargs)
        if overrides:  # one torch-pruning scope per pattern
            kwargs["pruning_ratio_dict"] = {
                **(kwargs.get("pruning_ratio_dict") or {}),
                **{tuple(model.get_submodule(n) for n in names): r for names, r in overrides.values()},
            }
        importance = get_criterion(spec.criterion, seed=seed)
        # with a channel cost, scores are divided by what each channel costs (re-measured before each prune)
        self.cost_aware = (CostAwareImportance(importance, per_mac=spec.cost_kind == "latency_per_mac")
                           if spec.cost_kind else None)
        try:
            self.pruner = ChannelPruner(
                model,
                example_inputs,
                importance=self.cost_aware or importance,
                global_pruning=spec.context == "global",
                ignored_layers=[model.get_submodule(n) for n in sorted(ignored)],
                round_to=spec.round_to,
                max_layer_ratio=spec.max_layer_ratio,
                seed=seed,
                **kwargs,
            )
        except TracingError as err:
            raise untraceable_error(model, example_inputs, err) from err
        self.left_out: list[LeftOut] = self.pruner.left_out  # mis-grouped by torch-pruning: left unpruned
        if spec.prunes_anything and self.pruner.prunable_channels == 0:
            raise NothingToPruneError(nothing_prunable(model, self.output_layers, ignored, self.left_out))
        self.baseline: list[LayerRow] = layer_report(model, example_inputs)
        self.measure_costs()
        sparse_end = end_epoch if spec.sparse_end_epoch is None else spec.sparse_end_epoch
        self.sparsity: GroupSparsity | None = (
            GroupSparsity(self.pruner, spec.sparse_training, spec.sparse_start_epoch, sparse_end)
            if spec.sparse_training > 0
            else None
        )

    # -- what the user hears ------------------------------------------------------------------------
    def setup_warnings(self) -> list[str]:
        """Layers left unpruned and why, and a slow graph build."""
        found = []
        if self.unsafe:
            found.append(f"not pruning layers that feed unsafe operations: {describe(self.unsafe)}")
        if self.left_out:
            found.append(f"not pruning {describe_left_out(self.left_out)}")
        seconds, limit = self.pruner.build_seconds, self.spec.graph_build_warn_s
        if seconds > limit:
            found.append(
                f"building the dependency graph took {seconds:.1f}s (graph_build_warn_s={limit:g}); where the "
                "model allows, pass smaller example_inputs (e.g. a smaller image size)"
            )
        return found

    def describe_setup(self) -> str:
        spec = self.spec
        extras = []
        if self.sparsity is not None:
            extras.append(
                f"sparse training (group-norm strength {spec.sparse_training:g}) in epochs "
                f"{self.sparsity.start_epoch}..{self.sparsity.end_epoch}"
            )
        if spec.cost_kind:
            extras.append(f"channels ranked by importance per unit of {spec.cost_kind} cost")
        when = ("once at fit start, before the first training step" if spec.prune_on_fit_start
                else f"over epochs {spec.start_epoch}..{self.end_epoch}")
        return (
            f"{self.pruner.prunable_channels} prunable channels; output layers kept: {self.output_layers}; "
            f"pruning to {spec.goal()} {when}"
            + "".join(f"; {e}" for e in extras)
        )

    def describe_budget(self) -> str:
        """The resolved budget: the dense value, the smallest reachable, and the plan's channel share."""
        tracker = self.budget
        assert tracker is not None and tracker.plan is not None, "describe_budget needs resolve_budget first"
        plan = tracker.plan
        return (
            f"{self.spec.target} budget {self.spec.budget:.1%} of dense ({tracker.dense_value:.6g}); smallest "
            f"reachable {tracker.smallest_reachable:.1%}; at the current weights it takes removing "
            f"{plan.ratio:.1%} of channels (search: {plan.trials} trials, {plan.seconds:.2f}s)"
        )

    def budget_missed(self, event: dict[str, Any]) -> str | None:
        """Why a budget step of ``event`` missed its budget, or None if it met it (or had no budget)."""
        search = self.last_search
        if search is None or "search" not in event or search.met:
            return None
        return (
            f"{describe_epoch(event['epoch'])}: the {self.spec.target} budget {event['prune/budget_target']:.1%} "
            "was missed: "
            f"{search.value:.1%} of dense after pruning to {event['prune/ratio']:.1%} of channels"
        )

    # -- inputs and budget --------------------------------------------------------------------------
    def move_inputs(self, device: torch.device | str) -> None:
        """Move the example inputs to ``device`` (the model's, once the strategy has moved it)."""
        self.inputs = to_device(self.inputs, device)

    def resolve_budget(self, strategy: object = None) -> BudgetSearch:
        """Measure the dense model for the budget target and plan the final budget (see
        :class:`~lightning_prune.engine.budget.BudgetTracker`); returns the plan."""
        spec = self.spec
        assert spec.budget is not None, "resolve_budget needs a budget target"
        self.budget = BudgetTracker(spec.target, spec.budget, lambda: self.inputs, strategy=strategy)
        hint = f" and ratio_overrides={spec.ratio_overrides}" if spec.ratio_overrides else ""
        self.budget.resolve(self.pruner, self.model, self.overrides_at(1.0), n_kept=self.n_kept, hint=hint)
        assert self.budget.plan is not None
        return self.budget.plan

    # -- schedule and progress ----------------------------------------------------------------------
    def fraction(self, epoch: int) -> float:
        """The schedule's value after ``epoch``, in [0, 1]."""
        return scheduled_ratio(epoch, 1.0, self.schedule, self.spec.start_epoch, self.end_epoch)

    def scheduled_ratio(self, epoch: int) -> float:
        """The channel ratio the schedule asks for after ``epoch`` (``target="channels"``)."""
        return scheduled_ratio(epoch, self.spec.ratio, self.schedule, self.spec.start_epoch, self.end_epoch)

    @property
    def pruned_fraction(self) -> float:
        """The schedule value reached by the last prune (0 before any)."""
        if not self.events:
            return 0.0
        return 1.0 if self.events[-1]["epoch"] == FIT_START else self.fraction(self.events[-1]["epoch"])

    @property
    def aimed_ratio(self) -> float:
        """The channel ratio the last prune was aimed at (0 before any); the achieved share is
        ``pruner.channel_ratio()``."""
        return float(self.events[-1]["target"]) if self.events else 0.0

    def prunes_at(self, epoch: int) -> bool:
        """Whether the schedule grows at the end of ``epoch`` (never with ``prune_on_fit_start``)."""
        if self.spec.prune_on_fit_start:
            return False
        if not self.spec.by_fraction:
            return self.scheduled_ratio(epoch) > self.aimed_ratio + 1e-12
        return self.fraction(epoch) > self.pruned_fraction + 1e-12

    def overrides_at(self, fraction: float) -> dict[nn.Module, float]:
        """Per-layer ratios of ``ratio_overrides`` at schedule value ``fraction``."""
        return {module: ratio * fraction for module, ratio in self.override_layers.items()}

    @property
    def criterion(self) -> Any:
        """The importance criterion (inside the cost weighting, if any)."""
        importance = self.pruner.importance
        return importance.base if isinstance(importance, CostAwareImportance) else importance

    # -- gradients for gradient criteria (taylor, hessian) ------------------------------------------
    @property
    def needs_gradients(self) -> bool:
        return needs_gradients(self.criterion)

    def add_gradients(self, parameters: Sequence[nn.Parameter]) -> None:
        """Add the current gradients (squared for ``hessian``) to the sums a gradient criterion scores with.

        ``hessian`` keeps its own sums rather than ``GroupHessianImportance.accumulate_grad``, which keeps
        only the last step's squared gradient (see :mod:`lightning_prune.engine.compat`).
        """
        square = squares_gradients(self.criterion)
        for param in parameters:
            if param.grad is not None:
                total = self.grad_sums.get(param)
                grad = param.grad.detach()
                grad = grad.square() if square else grad
                self.grad_sums[param] = grad.clone() if total is None else total.add_(grad)
                self.grad_counts[param] = self.grad_counts.get(param, 0) + 1

    def clear_gradients(self) -> None:
        """Drop the gradient sums (after each prune, and when the fit ends)."""
        self.grad_sums, self.grad_counts = {}, {}

    def scoring_gradients(self) -> dict[nn.Parameter, torch.Tensor]:
        """What ``.grad`` holds while a gradient criterion scores: the gradient sums (``taylor``), or the
        mean squared gradients, the Hessian diagonal ``GroupHessianImportance`` reads (``hessian``)."""
        if not squares_gradients(self.criterion):
            return dict(self.grad_sums)
        return {param: total / self.grad_counts[param] for param, total in self.grad_sums.items()}

    # -- sparse training and channel costs -----------------------------------------------------------
    def regularize(self, epoch: int) -> bool:
        """Add the sparse-training gradient if ``epoch`` is in its window (after backward, before the
        optimizer step; every rank, the gradients being the same); returns whether it applied."""
        return self.sparsity is not None and self.sparsity.apply(epoch)

    def measure_costs(self) -> None:
        """Re-measure the channel costs the ranking divides by (with ``channel_cost``), at the current widths,
        on the inputs' device; a no-op without."""
        if self.cost_aware is not None and self.chooses:
            assert self.spec.cost_kind is not None
            self.cost_aware.costs = measure_costs(self.model, self.inputs, self.spec.cost_kind,
                                                 unit=self.spec.round_to)

    # -- pruning ------------------------------------------------------------------------------------
    def on_epoch_end(
        self,
        epoch: int,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        sync: Sync = _single_process,
        after_change: Callable[[], object] = lambda: None,
    ) -> dict[str, Any] | None:
        """Prune as the schedule asks after ``epoch``; returns the event recorded (None when nothing is due).

        The event holds the epoch, the channel target, the ``prune/*`` metrics and, for a budget, the search.
        """
        if not self.prunes_at(epoch):
            return None
        return self._scheduled_prune(epoch, self.fraction(epoch), self.scheduled_ratio(epoch), optimizers, sync,
                                     after_change)

    def on_fit_start(
        self,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        sync: Sync = _single_process,
        after_change: Callable[[], object] = lambda: None,
        checkpoint: object = None,
    ) -> dict[str, Any] | None:
        """With ``prune_on_fit_start``, prune to the full goal now, before any training step (the optimizers
        have no state yet, so they start fresh on the pruned model); returns the event, recorded with epoch
        ``FIT_START`` (-1). None without the option, or when the prune is done already (a resumed fit).

        ``checkpoint`` names the checkpoint the fit resumes from, if any: one without a pruning record holds
        optimizer state for the dense shapes, so it is refused (ValueError) before anything is pruned."""
        if not self.spec.prune_on_fit_start or self.events:
            return None
        if checkpoint is not None:
            raise ValueError(
                f"prune_on_fit_start=True: ckpt_path={checkpoint!r} has no pruning record, so its optimizer state "
                "is for the dense model; load its weights into the module "
                "(module.load_state_dict(torch.load(path)['state_dict'])) and call trainer.fit without ckpt_path"
            )
        return self._scheduled_prune(FIT_START, 1.0, self.spec.ratio, optimizers, sync, after_change)

    def _scheduled_prune(
        self,
        epoch: int,
        fraction: float,
        ratio: float,
        optimizers: Sequence[torch.optim.Optimizer],
        sync: Sync,
        after_change: Callable[[], object],
    ) -> dict[str, Any]:
        """Prune to schedule value ``fraction`` (channel ratio ``ratio``, or the budget at ``fraction``) and
        record the event under ``epoch``."""
        budget = None if self.spec.budget is None else intermediate_budget(self.spec.budget, fraction)
        # a budget search starts where the last prune ended
        target = ratio if budget is None else self.aimed_ratio
        where = f"{describe_epoch(epoch)} (to {target:.1%} of channels)"
        step = self.prune(target, budget, fraction, optimizers, sync, after_change, where=where)
        metrics = prune_metrics(self.model, self.inputs, self.baseline[-1], step.achieved)
        event: dict[str, Any] = {"epoch": epoch, "target": step.target, **metrics}
        search = self.last_search
        if budget is not None and search is not None:
            event["prune/budget_target"] = budget
            if self.spec.target == "latency":
                event["prune/latency_ratio"] = search.value
            event["search"] = search.as_dict()
        self.events.append(event)
        return event

    @property
    def last_search(self) -> BudgetSearch | None:
        """The budget search of the latest pruning epoch."""
        return None if self.budget is None else self.budget.last_search

    def prune(
        self,
        target: float,
        budget: float | None = None,
        fraction: float = 1.0,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        sync: Sync = _single_process,
        after_change: Callable[[], object] = lambda: None,
        where: str = "",
    ) -> PruneStep:
        """Prune to channel ratio ``target`` (or the smallest ratio ``>= target`` that meets ``budget``), carry
        ``optimizers`` over to the new parameters, and check one forward pass. On any failure the model, the
        pruning history and the optimizers are rolled back and a
        :class:`~lightning_prune.engine.rollback.PruningStepError` names the first group that breaks the model.
        """
        pruner = self.pruner
        pruner.aim_heads(fraction)  # whole attention heads, if asked, on the schedule
        self.measure_costs()
        snapshot = Snapshot.take(pruner, list(optimizers))
        done = len(pruner.history())
        try:
            step = self._prune_unchecked(target, budget, fraction, optimizers, sync)
            if step.history:  # the same on every rank (broadcast), so all ranks join the rebuild's collectives
                after_change()
            forward_check(self.inputs, self.output_shapes)(self.model)
            return step
        except Exception as err:
            history = pruner.history()[done:]
            snapshot.restore()
            if history:
                after_change()
            if isinstance(err, NothingToPruneError):
                raise
            check = forward_check(self.inputs, self.output_shapes)
            raise step_error(pruner, history, err, where or f"ratio {target:.1%}", check) from err
        finally:
            if self.sparsity is not None:
                self.sparsity.refresh()  # the groups' channels changed (or were rolled back)

    def _prune_unchecked(
        self,
        target: float,
        budget: float | None,
        fraction: float,
        optimizers: Sequence[torch.optim.Optimizer],
        sync: Sync,
    ) -> PruneStep:
        pruner, tracker = self.pruner, self.budget
        overrides = self.overrides_at(fraction)
        if budget is not None and tracker is None:
            raise RuntimeError("a budget prune needs a budget target (PruningCallback(target=..., budget=...))")

        def decide() -> tuple[PruneStep, Any]:  # runs on the choosing rank only
            if budget is None:
                return pruner.prune_to(target, overrides), None
            assert tracker is not None
            return tracker.prune(pruner, budget, target, overrides), tracker.last_search

        gradient_based = self.needs_gradients and self.chooses
        if gradient_based:
            grads = self.scoring_gradients()
            for param in self.model.parameters():
                param.grad = grads.get(param, torch.zeros_like(param))
        try:
            step, search = sync(pruner, decide)
            if tracker is not None:
                tracker.last_search = search
        finally:
            self.clear_gradients()
            if gradient_based:
                for param in self.model.parameters():
                    param.grad = None
        for optimizer in optimizers:
            remap_optimizer(optimizer, step.changes, carry_state=self.spec.optimizer_state == "slice")
        return step

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What continuing needs: the events and the ``random`` criterion's generator."""
        state: dict[str, Any] = {"events": [dict(e) for e in self.events]}
        if isinstance(self.criterion, SeededRandomImportance):
            state["random_state"] = self.criterion.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = [dict(e) for e in state.get("events", [])]
        if state.get("random_state") is not None and isinstance(self.criterion, SeededRandomImportance):
            self.criterion.generator.set_state(state["random_state"])


def describe_left_out(left_out: Sequence[LeftOut]) -> str:
    """The layers left out, grouped by reason: ``"a, b (reason); c (reason)"``.

    >>> describe_left_out([LeftOut("a", "why"), LeftOut("b", "why")])
    'a, b (why)'
    """
    by_reason: dict[str, list[str]] = {}
    for item in left_out:
        by_reason.setdefault(item.reason, []).append(item.name)
    return "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())


def nothing_prunable(
    model: nn.Module, output_layers: Sequence[str], kept: set[str], left_out: Sequence[LeftOut]
) -> str:
    """Why a model has no prunable channels, for the error at set-up."""
    layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if not layers:
        cause = (
            "it has no Linear or convolution layer (register custom layers with "
            "pruner_kwargs={'customized_pruners': ...})"
        )
    else:
        cause = (
            f"each of its {len(layers)} Linear/convolution layers is an output layer ({list(output_layers)}), "
            f"ignored or unsafe ({sorted(kept - set(output_layers))[:8]}), or left out "
            f"({[o.name for o in left_out][:8]}), or feeds only those"
        )
    return f"{type(model).__name__} has 0 prunable channels: {cause}"


def logged_metrics(event: dict[str, Any]) -> dict[str, float]:
    """The ``prune/*`` metrics of a pruning event, what the loggers receive."""
    return {name: value for name, value in event.items() if name.startswith("prune/")}


def describe_epoch(epoch: int) -> str:
    """Where a prune happened, in words: ``"epoch 3"`` (at its end), or ``"fit start"`` for ``FIT_START``."""
    return "fit start" if epoch == FIT_START else f"epoch {epoch}"


def describe_event(event: dict[str, Any], target: str) -> str:
    """One log line for a pruning event of a run with ``target`` (see :meth:`ScheduledPruning.on_epoch_end`)."""
    budget = event.get("prune/budget_target")
    scheduled = f"scheduled {event['target']:.1%}" if budget is None else f"{target} budget {budget:.1%}"
    return (
        f"{describe_epoch(event['epoch'])}: removed {event['prune/ratio']:.1%} of channels ({scheduled}); "
        f"params {event['prune/params_ratio']:.1%}, MACs {event['prune/macs_ratio']:.1%} of dense"
    )
