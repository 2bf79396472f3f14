"""Pruning under data-parallel training: one decision applied on every rank, and DDP rebuilt after it.

**Who decides.** Rank 0 ranks the channels (:meth:`ChannelPruner.prune_to`) and broadcasts the step's plain
history, the ``[module_name, is_out, indices]`` records, with ``strategy.broadcast``. Every other rank applies
exactly those records with :meth:`ChannelPruner.replay`. We chose this over all-reducing importance scores
and letting each rank choose, because:

- *It is exact for every criterion.* The ranks apply the same integer indices, whatever produced them.
  All-reduced scores would only cover criteria whose inputs can be summed. ``random`` draws from a
  generator that each rank may seed differently (``seed_everything(seed + rank)``). Custom ``Importance``
  objects may keep state of their own or read data that differs between ranks, such as BatchNorm running
  statistics. Even with equal scores, each rank would still have to break ties and apply the per-layer cap
  (``max_layer_ratio``) bit for bit alike. (``taylor`` reads gradients that DDP has already all-reduced, so
  only rank 0 sums them.)
- *The payload is small, and rank 0 runs the single-process code unchanged.* The payload is a list of ints,
  at most one per pruned channel, sent once per pruning epoch. Rank 0 ranks and prunes exactly as a
  single-process run does, so DDP follows the single-process schedule.
- *A failure cannot go unnoticed.* If one rank raises while pruning, the others wait in the next collective
  until Lightning's launcher ends them: the subprocess launcher kills the other ranks, and ``ddp_spawn``
  terminates them when it joins.

The other ranks wait while rank 0 ranks the channels: one pass over the weights per pruning epoch.

**Rebuilding the DDP wrapper.** torch-pruning replaces every pruned ``nn.Parameter`` with a new object.
``DistributedDataParallel`` registers its autograd hooks and gradient buckets on the parameters it finds
when it is built. The new parameters have no such hooks, so the old wrapper all-reduces none of their
gradients. With gloo the ranks then silently train apart; depending on DDP's options, the reducer may
instead fail at the next step while it waits for gradients of parameters that are gone.

:func:`rewrap_ddp` unwraps the LightningModule and calls the strategy's own ``configure_ddp()``. That is the
path Lightning took at set-up (``_setup_model``, then ``_register_ddp_hooks``), so the user's DDP arguments
(``find_unused_parameters``, ``static_graph``, ``bucket_cap_mb``, ``gradient_as_bucket_view``, ...) and
communication hooks apply again. Unless ``init_sync=False`` is given, the ``DistributedDataParallel``
constructor checks that parameter shapes agree across ranks. It then broadcasts rank 0's parameters and
buffers, which also re-synchronises the BatchNorm statistics that drifted per rank during the epoch. The
model is already on its device and :func:`~lightning_prune.engine.surgery.remap_optimizer` has already moved the
optimizers over, so nothing else is set up again.

**Spawned ranks (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``).** Training works as with ``ddp``. At the end
of ``fit``, Lightning copies rank 0's final ``state_dict()`` with ``load_state_dict`` into the module of the
launching process, which never trained. ``load_state_dict`` cannot change shapes, so after a prune the copy
fails with a size mismatch, once training is over. :func:`keep_main_process_model` stops that copy, and the
module in the launching process stays as it was before ``fit``. A rank-zero warning says so at set-up. To
keep the pruned model, save it from rank 0 during ``fit`` (a callback's ``on_fit_end`` with
``trainer.is_global_zero``), or use ``strategy="ddp"``, where the launching process is rank 0 itself.

**Unsupported set-ups, refused at set-up.**

- Sharding strategies: FSDP (flat, sharded parameters), DeepSpeed (ZeRO partitions, and it owns the
  optimizer) and ``ModelParallelStrategy`` (DTensors). No rank holds a layer's whole weight tensor, so
  channels cannot be cut out of it. XLA strategies are not supported either.
- Averaged copies of the weights: Lightning's ``StochasticWeightAveraging`` and ``WeightAveraging`` (EMA)
  callbacks, and ``torch.optim.swa_utils.AveragedModel`` inside the module. The copy keeps the unpruned
  shapes, and the callback does not keep it in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import StochasticWeightAveraging
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
    StrategyRegistry,
)
from lightning.pytorch.strategies.single_xla import SingleDeviceXLAStrategy
from lightning.pytorch.strategies.xla import XLAStrategy
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from .engine.compat import register_state_dict_post_hook
from .engine.pruner import ChannelPruner, PruneStep
from .lightning_compat import reset_static_graph_delay

try:  # Lightning >= 2.5
    from lightning.pytorch.callbacks import WeightAveraging
except ImportError:  # pragma: no cover - older Lightning
    WeightAveraging = StochasticWeightAveraging

SUPPORTED_STRATEGIES = (
    "auto (one device)",
    "single_device",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "their *_find_unused_parameters_* variants",
    "DDPStrategy(...)",
)

_WHOLE = "so no rank holds a layer's whole weight tensor to cut channels out of (or to mask)"
_UNSUPPORTED: tuple[tuple[type, str], ...] = (
    # DeepSpeed and XLA subclass DDPStrategy: they are checked before DDP is accepted
    (DeepSpeedStrategy, f"DeepSpeed partitions parameters and optimizer state (ZeRO) and owns the optimizer, {_WHOLE}"),
    (XLAStrategy, "XLA strategies are not supported"),
    (SingleDeviceXLAStrategy, "XLA strategies are not supported"),
    (FSDPStrategy, f"FSDP flattens and shards parameters, {_WHOLE}"),
    (ModelParallelStrategy, f"it shards parameters as DTensors, {_WHOLE}"),
)


def _describe(strategy: Strategy | type | str, owner: str) -> tuple[str, type | None]:
    """A printable name and the strategy's class (None for ``"auto"``)."""
    if isinstance(strategy, str):
        if strategy == "auto":
            return "'auto'", None
        if strategy not in StrategyRegistry:
            supported = ", ".join(SUPPORTED_STRATEGIES)
            raise ValueError(f"strategy {strategy!r} is unknown to Lightning; {owner} supports {supported}")
        return repr(strategy), StrategyRegistry[strategy]["strategy"]
    cls = strategy if isinstance(strategy, type) else type(strategy)
    return cls.__name__, cls


def check_strategy_supported(strategy: Strategy | type | str, owner: str = "PruningCallback") -> None:
    """Raise ``ValueError`` unless channel pruning (or sparsity, ``owner`` naming the callback) works under
    ``strategy``.

    ``strategy`` is a Strategy instance (``trainer.strategy``), a Strategy class, or a name from Lightning's
    registry (such as ``"ddp_spawn"`` or ``"fsdp"``), so an application can check its configuration before
    it builds a Trainer.

    >>> check_strategy_supported("ddp_spawn")
    >>> check_strategy_supported("fsdp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: PruningCallback does not support the strategy 'fsdp' (FSDPStrategy): FSDP flattens ...
    """
    name, cls = _describe(strategy, owner)
    if cls is None:
        return
    label = name if name == cls.__name__ else f"{name} ({cls.__name__})"
    supported = ", ".join(SUPPORTED_STRATEGIES)
    for unsupported, reason in _UNSUPPORTED:
        if issubclass(cls, unsupported):
            raise ValueError(
                f"{owner} does not support the strategy {label}: {reason}. Supported strategies: {supported}."
            )
    if not issubclass(cls, DDPStrategy | SingleDeviceStrategy):
        raise ValueError(
            f"{owner} does not support the strategy {label}: only single-device training and "
            f"DistributedDataParallel are supported. Supported strategies: {supported}."
        )


PRUNING_AVERAGING_HINT = (
    "Pruning changes the parameters' shapes, and PruningCallback does not keep averaged copies in step. "
    "Remove the weight averaging from the pruning run, or average weights in a later fit of the pruned model."
)


def check_no_weight_averaging(
    trainer: pl.Trainer, pl_module: torch.nn.Module, owner: str = "PruningCallback", hint: str = PRUNING_AVERAGING_HINT
) -> None:
    """Raise ``ValueError`` if the trainer or module keeps an averaged copy of the weights (SWA, EMA).

    Such a copy has the unpruned shapes (or, for ``SparsifyCallback``, the parameters before they were
    re-parametrised), and the callback ``owner`` does not keep it in step; ``hint`` says why and what to do.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, StochasticWeightAveraging | WeightAveraging):
            raise ValueError(f"{owner} cannot run with the {type(callback).__name__} callback. {hint}")
        for attr, value in vars(callback).items():
            if isinstance(value, AveragedModel):
                raise ValueError(
                    f"{owner} cannot run with {type(callback).__name__}, which keeps an AveragedModel "
                    f"in {attr!r}. {hint}"
                )
    for name, module in pl_module.named_modules():
        if isinstance(module, AveragedModel):
            raise ValueError(
                f"{owner} cannot run on {type(pl_module).__name__}: its submodule {name or '<root>'!r} "
                f"is a torch.optim.swa_utils.AveragedModel. {hint}"
            )


def prune_in_sync(
    pruner: ChannelPruner, decide: Callable[[], tuple[PruneStep, Any]], strategy: Strategy | None = None
) -> tuple[PruneStep, Any]:
    """Prune on every rank alike: rank 0 runs ``decide()``, the other ranks replay its choice.

    ``decide`` prunes ``pruner`` (e.g. ``lambda: (pruner.prune_to(0.3), None)``) and returns the step and any
    plain extra information (a budget search), which every rank gets back. With one process (or no strategy)
    this is ``decide()``. Every rank must call it at the same point, as with any collective. Each rank gets
    back its own :class:`PruneStep`, whose ``changes`` name its own parameter objects, for
    :func:`~lightning_prune.engine.surgery.remap_optimizer`.
    """
    if strategy is None or getattr(strategy, "world_size", 1) <= 1:  # SingleDeviceStrategy has no world_size
        return decide()
    if strategy.is_global_zero:
        step, info = decide()
        strategy.broadcast(
            {"history": step.history, "groups": step.groups, "target": step.target, "info": info}, src=0
        )
        return step, info
    decision = strategy.broadcast(None, src=0)
    step = pruner.replay(decision["history"])
    step.target, step.groups = float(decision["target"]), int(decision["groups"])
    return step, decision["info"]


def decide_on_rank_zero(decide: Callable[[], Any], strategy: Strategy | None = None) -> Any:
    """``decide()`` on rank 0, its result broadcast to every rank (every rank must call it, as with any
    collective); ``decide()`` itself with one process. The result is pickled: give CPU tensors.

    >>> decide_on_rank_zero(lambda: {"mask": [1, 0]})
    {'mask': [1, 0]}
    """
    if strategy is None or getattr(strategy, "world_size", 1) <= 1:
        return decide()
    return strategy.broadcast(decide() if strategy.is_global_zero else None, src=0)


def rewrap_ddp(trainer: pl.Trainer) -> bool:
    """Rebuild the strategy's ``DistributedDataParallel`` wrapper over the module's current parameters.

    Call it on every rank after parameters were replaced. Returns whether a wrapper was rebuilt (False
    when the model is not wrapped, as on one device).
    """
    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        return False
    if not isinstance(strategy, DDPStrategy):  # pragma: no cover - check_strategy_supported refuses these
        raise TypeError(f"cannot rebuild the DDP wrapper of strategy {type(strategy).__name__}")
    strategy.model = strategy.lightning_module
    strategy.configure_ddp()  # Lightning's own path: _setup_model (DDP kwargs) and _register_ddp_hooks
    reset_static_graph_delay(strategy)  # the new wrapper has its first static-graph step again
    return True


SPAWN_WARNING = (
    "PruningCallback: the ranks run in processes started with start_method={start_method!r}. At the end of fit, "
    "Lightning copies rank 0's weights back into the model object of the launching process with "
    "load_state_dict, which cannot change shapes. The pruned weights are therefore not copied back: that model "
    "object stays as it was before fit. Save the pruned model from rank 0 during fit (for example in a "
    "callback's on_fit_end when trainer.is_global_zero), or use strategy='ddp' to keep it in the launching "
    "process."
)


def keep_main_process_model(pl_module: torch.nn.Module) -> None:
    """Make ``pl_module.state_dict()`` return an empty dict from now on, in a spawned rank at the end of fit.

    The next call is the one Lightning's spawn launcher makes to copy rank 0's weights back into the
    launching process. That copy would fail on the pruned shapes, after training is over. Call this
    last, in the ``teardown`` hook of a spawned rank; nothing else runs in that process afterwards.
    """

    def drop_everything(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        if not prefix:  # the root module's call: everything below it has been collected by now
            state_dict.clear()

    register_state_dict_post_hook(pl_module, drop_everything)


def shut_down_process_group() -> None:
    """Destroy the default process group, if one is up: call it when a rank's last trainer call has ended.

    Lightning leaves the group alive when a fit ends; a gloo group still alive when its process exits
    can abort the process at exit ("terminate called without an active exception", SIGABRT), after a fit
    that succeeded. Seen with spawned and re-launched CPU ranks alike.

    >>> shut_down_process_group()  # no group: nothing to do
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
