"""``SparsifyCallback``: scheduled sparsity (weights, kernels, filters or N:M) inside ``trainer.fit``.

Like :class:`~lightning_prune.PruningCallback`, the callback is a thin Lightning layer: its arguments are
checked by one spec (:class:`~lightning_prune.engine.spec.SparsifySpec`), and its hooks dispatch into the
framework-free engine (:class:`~lightning_prune.engine.sparsify.ScheduledSparsity`), adding only what Lightning
owns: the example inputs of a fit, the trainer's optimizers, DDP (rank 0 decides the masks, every rank
applies them), checkpoints, rank-zero logging and the loggers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from .distributed import check_no_weight_averaging, check_strategy_supported, decide_on_rank_zero
from .engine.schedules import Schedule
from .engine.sparsify import ScheduledSparsity
from .engine.sparsity import Criterion, SparsityRow, render_sparsity_report
from .engine.spec import SparsifySpec, resolve_end_epoch
from .session_callback import SessionCallback

AVERAGING_HINT = (
    "SparsifyCallback re-parametrises the sparsified weights (weight -> weight_orig * weight_mask), so an averaged "
    "copy no longer matches the model's parameters and is not kept sparse. Remove the weight averaging from the "
    "sparsifying run, or average weights in a later fit of the sparse model."
)


class SparsifyCallback(SessionCallback):
    r"""Zero weights on a schedule while the model trains, through ``torch.nn.utils.prune`` masks.

    At the end of every epoch from ``start_epoch`` to ``end_epoch`` the share of zero weights among all
    sparsified weights becomes ``sparsity * schedule(p)``, ``p`` being the progress over those epochs (the
    schedules and epochs of :class:`~lightning_prune.PruningCallback`). The sparsified layers are every
    convolution and ``Linear`` layer but the output layers and ``ignored_layers``; masks only grow, and
    pruned weights stay exactly zero through every optimizer step. At the end of fit the masks are made
    permanent (``prune.remove``: plain parameters) unless ``make_permanent=False``. Checkpoints hold plain
    weights plus the masks in the callback's state, so a resumed fit continues the schedule with the same
    masks. Under DDP rank 0 decides the masks and every rank applies them. See ``docs/sparsify.md``.

    Args:
        sparsity: final share of zero weights, in [0, 1); for ``"N:M"`` at most ``(M - N) / M``.
        granularity: ``"weight"``, ``"kernel"``, ``"filter"`` (with its bias and BatchNorm), or ``"N:M"``
            such as ``"2:4"``.
        context: ``"local"`` zeroes ``sparsity`` of every layer, ``"global"`` ranks all layers together.
        criterion: ``"magnitude"``, ``"random"`` (seeded) or a callable ``weight -> scores`` (same shape).
        schedule: a name from :data:`lightning_prune.SCHEDULES` or a callable ``p -> fraction``.
        start_epoch: first epoch at whose end sparsity may change (grow, or fall back for ``"dsd"``).
        end_epoch: epoch at whose end the full sparsity is reached; default: the trainer's last epoch.
        lottery_ticket: after each step where sparsity grows, reset the surviving weights to their values at
            the start of epoch ``rewind_epoch``, and restart their optimizer state.
        rewind_epoch: the epoch whose starting weights are rewound to (0: the initialisation); at most
            ``start_epoch``.
        example_inputs: inputs to find the output layers and each layer's BatchNorm; default:
            ``example_input_array`` or the first training batch, cut to one sample.
        ignored_layers: module-name patterns (fnmatch) never sparsified; a pattern matching nothing is an error.
        prune_output_layers: sparsify the output layers too.
        make_permanent: ``prune.remove`` the masks at the end of fit (plain parameters).
        seed: seeds the ``random`` criterion; default: the seed of ``seed_everything`` (or 0).
        verbose: log the per-layer sparsity report at the end of fit (rank zero only).

    Example::

        >>> from lightning import Trainer
        >>> callback = SparsifyCallback(0.8, granularity="weight", schedule="agp")
        >>> SparsifyCallback(0.5, granularity="2:4").spec.goal()
        '50% of weights zero (2:4)'
    """

    def __init__(
        self,
        sparsity: float,
        granularity: str = "weight",
        context: Literal["local", "global"] = "local",
        criterion: str | Criterion = "magnitude",
        schedule: str | Schedule = "agp",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        lottery_ticket: bool = False,
        rewind_epoch: int = 0,
        example_inputs: Any = None,
        ignored_layers: Sequence[str] = (),
        prune_output_layers: bool = False,
        make_permanent: bool = True,
        seed: int | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        arguments = dict(locals())
        self.spec = SparsifySpec(**{name: arguments[name] for name in SparsifySpec.__dataclass_fields__})
        self.session: ScheduledSparsity | None = None  # one per fit, built in setup
        self.report: list[SparsityRow] = []

    # -- read-only views of the session ---------------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        """One record per sparsity step of this fit (epoch, target, ``sparsify/*`` metrics)."""
        return [] if self.session is None else self.session.events

    @property
    def masks(self) -> dict[str, Any]:
        """The current masks (True = kept) by parameter name, on the CPU."""
        return {} if self.session is None else self.session.masks

    @property
    def sparsity(self) -> float:
        """The share of zero weights reached so far (0 before any step)."""
        return float(self.events[-1]["sparsify/sparsity"]) if self.events else 0.0

    @property
    @override
    def state_key(self) -> str:
        spec = self.spec
        return self._generate_state_key(sparsity=spec.sparsity, granularity=spec.granularity, context=spec.context)

    # -- set-up ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy_supported(trainer.strategy, owner="SparsifyCallback")
        check_no_weight_averaging(trainer, pl_module, owner="SparsifyCallback", hint=AVERAGING_HINT)
        if not self.spec.prunes_anything:
            rank_zero_warn("SparsifyCallback: sparsity=0 zeroes nothing")
        spec = self.spec
        end_epoch = resolve_end_epoch(
            spec.start_epoch, spec.end_epoch, trainer.max_epochs, "SparsifyCallback", "sparsity"
        )
        session = self.session = ScheduledSparsity(
            pl_module, self._fit_inputs(trainer, pl_module), spec, end_epoch, seed=self._fit_seed()
        )
        session.load_state_dict(self._state)
        left = {n: why for n, why in session.skipped.items() if why.startswith("rows")}
        if left:
            rank_zero_warn(f"SparsifyCallback: not sparsifying layers that do not fit {spec.granularity}: {left}")
        rank_zero_info(
            f"SparsifyCallback: {len(session.layers)} layers, {session.rows()[-1].params:,} weights; "
            f"left dense: {sorted(session.skipped)}; {spec.goal()} over epochs {spec.start_epoch}..{end_epoch}"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the optimizers are built and any checkpoint's weights loaded: masks restored, steps hooked
        if self.session is None:
            return
        self.session.restore()
        self.session.attach(trainer.optimizers)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.session is not None:
            self.session.detach()

    # -- the schedule ---------------------------------------------------------------------------------
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is not None:
            self.session.on_epoch_start(trainer.current_epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        event = self.session.on_epoch_end(
            trainer.current_epoch, trainer.optimizers, sync=partial(decide_on_rank_zero, strategy=trainer.strategy)
        )
        if event is None:
            return
        for name, value in event.items():
            if name.startswith("sparsify/"):
                pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        rank_zero_info(
            f"SparsifyCallback: epoch {event['epoch']}: {event['sparsify/sparsity']:.2%} of weights zero "
            f"(scheduled {event['target']:.2%})"
        )

    # -- the end of fit -------------------------------------------------------------------------------
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        self.report = self.session.rows()
        if self.spec.verbose:
            rank_zero_info("SparsifyCallback: sparsity report\n" + render_sparsity_report(self.report))
        if self.spec.make_permanent:
            self.session.make_permanent()
