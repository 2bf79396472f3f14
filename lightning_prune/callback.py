"""``PruningCallback``: scheduled structured pruning inside ``trainer.fit``.

The callback is a thin Lightning layer: its arguments are checked by one spec
(:class:`~lightning_prune.engine.spec.PruningSpec`), and its hooks dispatch into the framework-free engine
(:class:`~lightning_prune.engine.session.ScheduledPruning`), adding only what Lightning owns: the example
inputs of a fit, the trainer's optimizers, DDP (:mod:`lightning_prune.distributed`), checkpoints
(:mod:`lightning_prune.checkpoint`), rank-zero logging and the loggers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from .checkpoint import RECORD_KEY, RestructureOnLoad, make_record
from .distributed import (
    SPAWN_WARNING,
    check_no_weight_averaging,
    check_strategy_supported,
    keep_main_process_model,
    prune_in_sync,
    rewrap_ddp,
)
from .engine.budget import BudgetSearch
from .engine.criteria import Importance
from .engine.pruner import ChannelPruner, PruneStep
from .engine.report import LayerRow, layer_report, render_layer_report
from .engine.schedules import Schedule
from .engine.session import ScheduledPruning, describe_event, logged_metrics
from .engine.spec import PruningSpec, resolve_end_epoch, schedule_warnings
from .lightning_compat import spawns_ranks, start_method
from .session_callback import SessionCallback


def _in_step(trainer: pl.Trainer) -> dict[str, Any]:
    """How every prune keeps the ranks in step: rank 0's choice replayed on all, then DDP rewrapped."""
    return {"sync": partial(prune_in_sync, strategy=trainer.strategy), "after_change": partial(rewrap_ddp, trainer)}


class PruningCallback(SessionCallback):
    r"""Physically remove channels on a schedule while the model trains.

    At the end of every epoch from ``start_epoch`` to ``end_epoch`` the share of removed channels becomes
    ``ratio * schedule(p)``, ``p`` being the progress over those epochs. Ratios are measured against the
    ORIGINAL widths and never compound. After each prune the optimizers point at the new parameters with
    their state sliced to the kept channels; LR schedulers continue; frozen parameters stay frozen; modes
    are restored and output layers are never pruned. Every prune is verified with a forward pass and rolled
    back, naming the offending group, if it breaks the model.

    With ``target="macs"``, ``"params"`` or ``"latency"`` the schedule runs in that unit: after each pruning
    epoch the model has at most ``1 - (1 - budget) * schedule(p)`` of the dense model's measure, found by a
    search on copies of the model. An unreachable budget is rejected before training. Checkpoints carry a
    pruning record, so ``trainer.fit(fresh_module, ckpt_path=...)`` re-structures a fresh module before its
    weights load. Under DDP rank 0 chooses and the other ranks replay its choice. See ``docs/`` for budgets,
    resume, DDP and custom layers.

    Args:
        ratio: final share of prunable channels removed, in [0, 1); used with ``target="channels"`` only.
        schedule: a name from :data:`lightning_prune.SCHEDULES` or a callable ``p -> fraction``.
        criterion: a name from :data:`lightning_prune.CRITERIA` or a torch-pruning ``Importance``.
        context: ``"global"`` ranks channels across layers, ``"local"`` prunes every layer by the ratio.
        start_epoch: first epoch at whose end pruning may happen.
        end_epoch: epoch at whose end the full ratio is reached; default: the trainer's second-to-last epoch,
            so that the last epoch fine-tunes the pruned model (a warning says when no epoch is left for that).
        example_inputs: inputs for tracing; default: ``example_input_array`` or the first training batch,
            cut to one sample.
        ignored_layers: module-name patterns (fnmatch) never pruned; a pattern matching nothing is an error.
        round_to: keep channel counts multiples of this.
        max_layer_ratio: no single layer loses more than this share of its channels, in (0, 1].
        seed: seeds the ``random`` criterion; default: the seed of ``seed_everything`` (or 0).
        pruner_kwargs: passed to ``torch_pruning.pruner.BasePruner`` (``customized_pruners``, ...).
        verbose: log the per-layer report at the end of fit (rank zero only).
        target: ``"channels"`` (prune to ``ratio``), or a budget of ``"macs"``, ``"params"`` or ``"latency"``.
        budget: the final MACs, parameters or latency as a fraction of the dense model's, in (0, 1).
        ratio_overrides: module-name patterns mapped to their own final channel ratio in [0, 1).
        on_unsafe: layers feeding operations torch-pruning mis-prunes: ``"ignore"`` them with a warning, or
            ``"raise"``.
        graph_build_warn_s: warn when building the dependency graph takes longer than this.
        optimizer_state: ``"slice"`` carries optimizer state to the kept entries; ``"reset"`` drops it.
        sparse_training: strength of group-norm sparse training (torch-pruning's ``GroupNormPruner``
            regulariser over the groups that will be pruned, added to the gradients before every optimizer
            step), >= 0; 0 turns it off. Pair it with ``criterion="l2"``. See docs/recipes.md.
        sparse_start_epoch: first epoch of sparse training.
        sparse_end_epoch: last epoch of sparse training; default: ``end_epoch`` (the last pruning epoch).
        channel_cost: rank channels by importance per unit of cost (global context only): ``"latency"``
            (each layer's time on the training device, or what units of ``round_to`` save), ``"macs_memory"``
            (MACs plus memory traffic),
            ``"latency_per_mac"`` (that time per MAC saved: slow-for-their-MACs layers first), ``"none"``,
            or ``"auto"`` (``"latency"`` with ``target="latency"``, else none).
        prune_on_fit_start: prune once, to the full ratio or budget, when the fit starts (after the optimizers
            are built, before their first step, so they and the LR schedulers start fresh on the pruned model),
            then fine-tune in every epoch: the recipe for a trained model. Needs ``schedule="one_shot"`` and a
            weight criterion; its ``prune/*`` metrics go to the loggers at step 0.

    Example::

        >>> from lightning import Trainer
        >>> callback = PruningCallback(ratio=0.5, schedule="agp")
        >>> trainer = Trainer(max_epochs=4, callbacks=[callback], logger=False, enable_progress_bar=False)
        >>> PruningCallback(target="macs", budget=0.5).spec.goal()   # half the compute
        '50% of dense macs'
    """

    def __init__(
        self,
        ratio: float = 0.4,
        schedule: str | Schedule = "agp",
        criterion: str | Importance = "l2",
        context: Literal["global", "local"] = "global",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        example_inputs: Any = None,
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
        sparse_training: float = 0.0,
        sparse_start_epoch: int = 0,
        sparse_end_epoch: int | None = None,
        channel_cost: Literal["auto", "none", "latency", "macs_memory", "latency_per_mac"] = "auto",
        prune_on_fit_start: bool = False,
    ) -> None:
        super().__init__()
        arguments = dict(locals())
        self.spec = PruningSpec(**{name: arguments[name] for name in PruningSpec.__dataclass_fields__})
        self.session: ScheduledPruning | None = None  # one per fit, built in setup
        self.report: list[LayerRow] = []
        self._load_hook: Any = None

    # -- read-only views of the session ---------------------------------------------------------------
    @property
    def pruner(self) -> ChannelPruner | None:
        return None if self.session is None else self.session.pruner

    @property
    def events(self) -> list[dict[str, Any]]:
        """One record per prune of this fit (epoch, target, ``prune/*`` metrics, budget search)."""
        return [] if self.session is None else self.session.events

    @property
    def pruned_ratio(self) -> float:
        """The share of prunable channels removed so far, as achieved (0 before any prune); the ratio the
        schedule aimed at is in ``events[-1]["target"]``."""
        return float(self.events[-1]["prune/ratio"]) if self.events else 0.0

    @property
    def baseline(self) -> list[LayerRow]:
        return [] if self.session is None else self.session.baseline

    @property
    def unsafe_ignored(self) -> list[str]:
        """Layers left unpruned because they feed unsafe operations."""
        return [] if self.session is None else [op.module for op in self.session.unsafe]

    @property
    def left_out(self) -> list[str]:
        """Layers (and bare parameters) left unpruned because torch-pruning cannot group them correctly."""
        return [] if self.session is None else [o.name for o in self.session.left_out]

    @property
    def example_inputs(self) -> Any:
        """The fit's one-sample example inputs, on the model's device once the fit has started."""
        return None if self.session is None else self.session.inputs

    @property
    def smallest_reachable(self) -> float | None:
        return None if self.session is None or self.session.budget is None else self.session.budget.smallest_reachable

    @property
    def budget_plan(self) -> BudgetSearch | None:
        """The search for the final budget on the weights before training (an estimate)."""
        return None if self.session is None or self.session.budget is None else self.session.budget.plan

    @property
    def last_search(self) -> BudgetSearch | None:
        return None if self.session is None else self.session.last_search

    @property
    @override
    def state_key(self) -> str:
        if self.spec.target == "channels":
            return self._generate_state_key(ratio=self.spec.ratio, context=self.spec.context)
        return self._generate_state_key(target=self.spec.target, budget=self.spec.budget, context=self.spec.context)

    # -- set-up ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy_supported(trainer.strategy)
        check_no_weight_averaging(trainer, pl_module)
        if spawns_ranks(trainer):
            rank_zero_warn(SPAWN_WARNING.format(start_method=start_method(trainer.strategy)))
        spec = self.spec
        end_epoch = resolve_end_epoch(spec.start_epoch, spec.end_epoch, trainer.max_epochs, "PruningCallback", "ratio")
        for message in schedule_warnings(spec, end_epoch, trainer.max_epochs):
            rank_zero_warn(f"PruningCallback: {message}")
        session = self.session = ScheduledPruning(
            pl_module, self._fit_inputs(trainer, pl_module), spec, end_epoch, seed=self._fit_seed()
        )
        session.chooses = trainer.is_global_zero
        session.load_state_dict(self._state)
        for message in session.setup_warnings():
            rank_zero_warn(f"PruningCallback: {message}")
        self._load_hook = pl_module.register_load_state_dict_pre_hook(RestructureOnLoad(lambda: self.pruner, trainer))
        rank_zero_info(f"PruningCallback: {session.describe_setup()}")
        if self.spec.target in ("macs", "params"):  # device-independent: resolve now; latency at fit start
            self._resolve_budget(trainer)

    def _resolve_budget(self, trainer: pl.Trainer) -> None:
        assert self.session is not None and self.session.budget is None
        self.session.resolve_budget(strategy=trainer.strategy)
        rank_zero_info(f"PruningCallback: {self.session.describe_budget()}")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the checkpoint (if any) is restored and the strategy has moved the model to its device by now
        self._remove_load_hook()
        if self.session is None:
            return
        self.session.move_inputs(pl_module.device)
        if self.spec.target == "latency":  # measured on the training device
            self._resolve_budget(trainer)
        # optimizers and LR schedulers exist by now, with no step taken: they carry over to the pruned model
        event = self.session.on_fit_start(trainer.optimizers, checkpoint=trainer.ckpt_path, **_in_step(trainer))
        if event is not None:
            for logger in trainer.loggers:  # self.log is not allowed in on_fit_start; loggers log on rank 0
                logger.log_metrics(logged_metrics(event), step=trainer.global_step)
            self._announce(event)

    def _remove_load_hook(self) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_load_hook()
        if self.session is None:
            return
        self.session.clear_gradients()
        if self.session.budget is not None:
            self.session.budget.strategy = None
        if stage == "fit" and self.session.events and spawns_ranks(trainer):
            keep_main_process_model(pl_module)  # Lightning's copy back would fail on the pruned shapes

    # -- pruning --------------------------------------------------------------------------------------
    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # after gradient accumulation and AMP unscaling; DDP has all-reduced the gradients already
        session = self.session
        if session is not None and session.needs_gradients and session.chooses and session.prunes_at(
            trainer.current_epoch
        ):
            session.add_gradients(list(pl_module.parameters()))
        if session is not None:
            session.regularize(trainer.current_epoch)  # sparse training, if on: after the gradient sums

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        event = self.session.on_epoch_end(trainer.current_epoch, trainer.optimizers, **_in_step(trainer))
        if event is None:
            return
        for name, value in logged_metrics(event).items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        self._announce(event)

    def _announce(self, event: dict[str, Any]) -> None:
        """Log a pruning event on rank zero, with a warning if it missed its budget."""
        assert self.session is not None
        rank_zero_info(f"PruningCallback: {describe_event(event, self.spec.target)}")
        missed = self.session.budget_missed(event)
        if missed:
            rank_zero_warn(f"PruningCallback: {missed}")

    def prune(
        self, trainer: pl.Trainer, target: float, budget: float | None = None, fraction: float = 1.0
    ) -> PruneStep:
        """Prune now to channel ratio ``target`` (or to ``budget``), outside the schedule; every rank must call
        it. A failed step is rolled back (see :meth:`ScheduledPruning.prune`)."""
        if self.session is None:
            raise RuntimeError("PruningCallback.prune needs a fit that has been set up (trainer.fit)")
        where = f"epoch {trainer.current_epoch} (to {target:.1%} of channels)"
        return self.session.prune(target, budget, fraction, trainer.optimizers, where=where, **_in_step(trainer))

    # -- reporting ------------------------------------------------------------------------------------
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        self.report = layer_report(pl_module, self.session.inputs, baseline=self.session.baseline)
        if self.spec.verbose:
            rank_zero_info("PruningCallback: per-layer report\n" + render_layer_report(self.report))

    # -- checkpointing --------------------------------------------------------------------------------
    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.session is not None:
            checkpoint[RECORD_KEY] = make_record(self.session.pruner.history(), self.session.inputs)
