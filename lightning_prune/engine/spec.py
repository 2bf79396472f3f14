"""The one specification of each callback's parameters: :class:`PruningSpec` (``PruningCallback``),
:class:`SparsifySpec` (``SparsifyCallback``) and :class:`DistillSpec` (``DistillationCallback``).

Each field is declared once here, with its default and its check; the checks both callbacks share (schedule,
context, epochs, layer patterns) are written once, below. A callback validates its arguments by building its
spec; the Hydra app derives its config keys from the fields that carry an ``app`` type in their metadata
(:func:`app_fields`). A new parameter is added here (plus the docs).

>>> spec = PruningSpec(ratio=0.5, schedule="linear")
>>> spec.prunes_anything, spec.goal()
(True, '50% of channels')
>>> PruningSpec(ratio=1.5)
Traceback (most recent call last):
...
ValueError: ratio=1.5 is invalid; it must lie in [0, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from .budget import BUDGET_TARGETS, TARGETS
from .criteria import CRITERIA, Importance, needs_gradients
from .safety import ON_UNSAFE
from .schedules import NON_MONOTONE, SCHEDULES, Schedule, is_non_monotone
from .sparsity import SPARSITY_CRITERIA, Criterion, parse_granularity

CONTEXTS = ("global", "local")
CHANNEL_COSTS = ("auto", "none", "latency", "macs_memory", "latency_per_mac")
OPTIMIZER_STATES = ("slice", "reset")


def _app(kind: Any) -> dict[str, Any]:
    """Field metadata: the field is a top-level key of the Hydra app, of OmegaConf type ``kind``."""
    return {"app": kind}


SPARSE_CRITERIA = ("l2", "l1")  # criteria that rank by the group norms sparse training shapes


def criterion_label(criterion: object) -> str:
    return repr(criterion) if isinstance(criterion, str) else type(criterion).__name__


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _invalid(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid; it must {allowed}")


def _integer(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


# -- the checks both callbacks share ---------------------------------------------------------------------
def check_schedule(schedule: object) -> None:
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is unknown; choose one of {sorted(SCHEDULES)} or a callable")


def check_context(context: object) -> None:
    if context not in CONTEXTS:
        raise ValueError(f"context={context!r} is unknown; choose one of {list(CONTEXTS)}")


def check_epochs(start_epoch: object, end_epoch: object) -> None:
    """``start_epoch`` an integer >= 0; ``end_epoch`` None or an integer >= ``start_epoch``."""
    if not _integer(start_epoch) or start_epoch < 0:
        raise _invalid("start_epoch", start_epoch, "be an integer >= 0")
    if end_epoch is not None and (not _integer(end_epoch) or end_epoch < start_epoch):
        raise _invalid("end_epoch", end_epoch, f"be an integer >= start_epoch ({start_epoch})")


def check_patterns(name: str, patterns: object) -> list[str]:
    """A module-name pattern or a list of them, as a list of strings."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise _invalid(name, patterns, "be a list of module-name patterns (strings)")
    return [str(p) for p in patterns]


def resolve_end_epoch(start_epoch: int, end_epoch: int | None, max_epochs: int | None, owner: str, goal: str) -> int:
    """The epoch at whose end the schedule completes, checked against the trainer's ``max_epochs``
    (None or negative: unbounded); ``owner`` and ``goal`` name the callback and what is reached in errors.

    >>> resolve_end_epoch(1, None, 5, "PruningCallback", "ratio")
    3
    >>> resolve_end_epoch(0, 5, 5, "PruningCallback", "ratio")
    Traceback (most recent call last):
    ...
    ValueError: end_epoch=5 is at or past max_epochs=5; it must lie in [0, 4] so that the full ratio is reached
    """
    if max_epochs is None or max_epochs < 0:
        if end_epoch is None:
            raise ValueError(f"the trainer has no max_epochs; set {owner}(end_epoch=...)")
        return end_epoch
    if start_epoch >= max_epochs:
        raise ValueError(
            f"start_epoch={start_epoch} is at or past max_epochs={max_epochs}; it must lie in [0, {max_epochs - 1}]"
        )
    # by default the schedule completes one epoch before the last, which then fine-tunes the pruned model
    end = max(start_epoch, max_epochs - 2) if end_epoch is None else end_epoch
    if end >= max_epochs:
        raise ValueError(
            f"end_epoch={end} is at or past max_epochs={max_epochs}; it must lie in "
            f"[{start_epoch}, {max_epochs - 1}] so that the full {goal} is reached"
        )
    return end


def schedule_warnings(spec: PruningSpec, end_epoch: int, max_epochs: int | None) -> list[str]:
    """Settings that train but may not do what was meant: nothing to prune, or no epoch left after the last
    prune to fine-tune the pruned model.

    >>> schedule_warnings(PruningSpec(ratio=0.5), end_epoch=2, max_epochs=3)[0].split("; ")[-1]
    'set end_epoch <= 1 or train longer'
    >>> schedule_warnings(PruningSpec(ratio=0.5), end_epoch=1, max_epochs=3)
    []
    """
    if not spec.prunes_anything:
        return ["ratio=0 with no ratio_overrides or budget prunes nothing"]
    if spec.prune_on_fit_start:  # every epoch fine-tunes the pruned model
        return []
    found = []
    if spec.sparse_training > 0:
        sparse_end = end_epoch if spec.sparse_end_epoch is None else spec.sparse_end_epoch
        if max_epochs is not None and spec.sparse_start_epoch >= max_epochs:
            found.append(
                f"sparse_start_epoch={spec.sparse_start_epoch} is at or past max_epochs={max_epochs}, so sparse "
                "training never applies"
            )
        elif sparse_end < spec.sparse_start_epoch:
            found.append(
                f"sparse training would run in epochs {spec.sparse_start_epoch}..{sparse_end} (its default end is "
                f"the last pruning epoch, {end_epoch}), so it never applies; set sparse_end_epoch"
            )
        if spec.criterion not in SPARSE_CRITERIA:
            found.append(
                f"sparse_training drives weak channel groups' L2 norms to zero, but pruning ranks by criterion="
                f"{criterion_label(spec.criterion)}; criterion='l2' ranks by the norms it produced"
            )
    if max_epochs is not None and end_epoch == max_epochs - 1:
        return found + [
            f"the last prune happens at the end of the last epoch ({end_epoch}), so the pruned model is not "
            f"fine-tuned; set end_epoch <= {max_epochs - 2} or train longer"
        ]
    return found


@dataclass
class PruningSpec:
    """What to prune, when and how: the arguments of :class:`~lightning_prune.PruningCallback`, checked.

    See the callback's docstring for the meaning of each field.
    """

    ratio: float = field(default=0.4, metadata=_app(float))
    schedule: str | Schedule = "agp"  # the app builds it from its ``schedule`` config group
    criterion: str | Importance = "l2"  # the app builds it from its ``criterion`` config group
    context: str = field(default="global", metadata=_app(str))
    start_epoch: int = field(default=0, metadata=_app(int))
    end_epoch: int | None = field(default=None, metadata=_app(int | None))
    example_inputs: Any = None
    ignored_layers: Sequence[str] = field(default=(), metadata=_app(list[str]))
    round_to: int | None = field(default=None, metadata=_app(int | None))
    max_layer_ratio: float = field(default=0.9, metadata=_app(float))
    seed: int | None = None  # the app seeds everything with its own ``seed`` key
    pruner_kwargs: dict[str, Any] | None = None
    verbose: bool = field(default=True, metadata=_app(bool))
    target: str = field(default="channels", metadata=_app(str))
    budget: float | None = field(default=None, metadata=_app(float | None))
    ratio_overrides: Mapping[str, float] | None = field(default=None, metadata=_app(Any))
    on_unsafe: str = field(default="ignore", metadata=_app(str))
    graph_build_warn_s: float = field(default=60.0, metadata=_app(float))
    optimizer_state: str = field(default="slice", metadata=_app(str))
    sparse_training: float = field(default=0.0, metadata=_app(float))
    sparse_start_epoch: int = field(default=0, metadata=_app(int))
    sparse_end_epoch: int | None = field(default=None, metadata=_app(int | None))
    channel_cost: str = field(default="auto", metadata=_app(str))
    prune_on_fit_start: bool = field(default=False, metadata=_app(bool))

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_numbers()
        self._check_budget()
        self._check_sparse_training()
        self._check_channel_cost()
        self._check_prune_on_fit_start()
        if self.ratio_overrides is not None and not isinstance(self.ratio_overrides, Mapping):
            raise _invalid("ratio_overrides", self.ratio_overrides, "map module-name patterns to ratios")
        for pattern, value in (self.ratio_overrides or {}).items():
            if not isinstance(pattern, str) or not _number(value) or not 0.0 <= value < 1.0:
                raise ValueError(
                    f"ratio_overrides[{pattern!r}]={value!r} is invalid; patterns must be strings and ratios "
                    "must lie in [0, 1)"
                )
        self.ignored_layers = check_patterns("ignored_layers", self.ignored_layers)
        # normalised copies: plain types, never the caller's objects
        self.ratio = float(self.ratio)
        self.max_layer_ratio = float(self.max_layer_ratio)
        self.graph_build_warn_s = float(self.graph_build_warn_s)
        self.budget = None if self.budget is None else float(self.budget)
        self.ratio_overrides = {str(k): float(v) for k, v in (self.ratio_overrides or {}).items()}
        self.pruner_kwargs = dict(self.pruner_kwargs or {})

    def _check_choices(self) -> None:
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"optimizer_state={self.optimizer_state!r} is unknown; choose 'slice' or 'reset'")
        check_schedule(self.schedule)
        if is_non_monotone(self.schedule):
            name = self.schedule if isinstance(self.schedule, str) else "/".join(sorted(NON_MONOTONE))
            raise ValueError(
                f"schedule={name!r} falls back to dense (0) after its peak, but PruningCallback removes channels "
                "for good: they cannot come back; use SparsifyCallback (masks are lifted when the schedule falls) "
                "or a non-decreasing schedule"
            )
        if not isinstance(self.criterion, Importance) and self.criterion not in CRITERIA:
            raise ValueError(
                f"criterion={self.criterion!r} is unknown; choose one of {sorted(CRITERIA)} "
                "or a torch_pruning.importance.Importance instance"
            )
        check_context(self.context)
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r} is unknown; choose one of {list(TARGETS)}")
        if self.on_unsafe not in ON_UNSAFE:
            raise ValueError(f"on_unsafe={self.on_unsafe!r} is unknown; choose one of {list(ON_UNSAFE)}")

    def _check_numbers(self) -> None:
        if not _number(self.ratio) or not 0.0 <= self.ratio < 1.0:
            raise _invalid("ratio", self.ratio, "lie in [0, 1)")
        check_epochs(self.start_epoch, self.end_epoch)
        if not _number(self.max_layer_ratio) or not 0.0 < self.max_layer_ratio <= 1.0:
            raise _invalid("max_layer_ratio", self.max_layer_ratio, "lie in (0, 1]")
        if self.round_to is not None and (not _integer(self.round_to) or self.round_to < 1):
            raise _invalid("round_to", self.round_to, "be None or an integer >= 1")
        if not _number(self.graph_build_warn_s) or not self.graph_build_warn_s > 0:
            raise _invalid("graph_build_warn_s", self.graph_build_warn_s, "be seconds > 0")

    def _check_budget(self) -> None:
        if self.budget is not None and (not _number(self.budget) or not 0.0 < self.budget < 1.0):
            raise _invalid("budget", self.budget, f"lie in (0, 1), a fraction of the dense model's {self.target}")
        if self.target == "channels" and self.budget is not None:
            raise ValueError(
                f"budget={self.budget!r} needs a budget target; set target to one of {list(BUDGET_TARGETS)} "
                "(target='channels' prunes to ratio)"
            )
        if self.target != "channels" and self.budget is None:
            raise ValueError(
                f"target={self.target!r} needs budget in (0, 1), e.g. budget=0.5 for half the dense model's "
                f"{self.target}; got budget=None"
            )

    def _check_sparse_training(self) -> None:
        if not _number(self.sparse_training) or self.sparse_training < 0:
            raise _invalid("sparse_training", self.sparse_training, "be a regularisation strength >= 0 (0: off)")
        self.sparse_training = float(self.sparse_training)
        if not _integer(self.sparse_start_epoch) or self.sparse_start_epoch < 0:
            raise _invalid("sparse_start_epoch", self.sparse_start_epoch, "be an integer >= 0")
        if self.sparse_end_epoch is not None and (
            not _integer(self.sparse_end_epoch) or self.sparse_end_epoch < self.sparse_start_epoch
        ):
            raise _invalid(
                "sparse_end_epoch", self.sparse_end_epoch, f"be None or an integer >= sparse_start_epoch "
                f"({self.sparse_start_epoch})"
            )

    def _check_channel_cost(self) -> None:
        if self.channel_cost not in CHANNEL_COSTS:
            raise ValueError(f"channel_cost={self.channel_cost!r} is unknown; choose one of {list(CHANNEL_COSTS)}")
        if self.cost_kind is not None and self.context != "global":
            raise ValueError(
                f"channel_cost={self.channel_cost!r} needs context='global': it re-ranks channels ACROSS layers "
                f"by their cost, and context={self.context!r} prunes every layer by the same ratio"
            )

    def _check_prune_on_fit_start(self) -> None:
        if not isinstance(self.prune_on_fit_start, bool):
            raise _invalid("prune_on_fit_start", self.prune_on_fit_start, "be True or False")
        if not self.prune_on_fit_start:
            return
        conflict = "prune_on_fit_start=True prunes once, to the full goal, before the first training step"
        one_shot = self.schedule is SCHEDULES["one_shot"] or self.schedule == "one_shot"  # by name or the function
        if not one_shot or self.start_epoch != 0 or self.end_epoch is not None:
            raise ValueError(
                f"{conflict}: it needs schedule='one_shot' with start_epoch and end_epoch unset; got "
                f"schedule={criterion_label(self.schedule)}, start_epoch={self.start_epoch}, "
                f"end_epoch={self.end_epoch}"
            )
        if self.sparse_training > 0:
            raise ValueError(
                f"{conflict}, so sparse_training={self.sparse_training:g} has no epochs before the prune to shape "
                "the weights; set sparse_training=0, or prune at an epoch's end (prune_on_fit_start=False)"
            )
        importance = self.criterion if isinstance(self.criterion, Importance) else CRITERIA[self.criterion](0)
        if needs_gradients(importance):
            raise ValueError(
                f"{conflict}, but criterion={criterion_label(self.criterion)} scores with the gradients of a "
                "pruning epoch, and there are none yet; choose a weight criterion (e.g. 'l2', 'large_final') or "
                "prune at an epoch's end (prune_on_fit_start=False)"
            )

    # -- derived ----------------------------------------------------------------------------------
    @property
    def cost_kind(self) -> str | None:
        """The channel cost the ranking divides by (:mod:`.cost`), or None: ``"auto"`` is ``"latency"`` for a
        latency budget (``context="global"``) and off otherwise."""
        if self.channel_cost == "auto":
            return "latency" if self.target == "latency" and self.context == "global" else None
        return None if self.channel_cost == "none" else self.channel_cost

    @property
    def by_fraction(self) -> bool:
        """Whether progress is the schedule's value rather than a channel ratio (budgets, overrides)."""
        return self.budget is not None or bool(self.ratio_overrides)

    @property
    def prunes_anything(self) -> bool:
        """False for a setting that would prune nothing (``ratio=0`` with no override or budget)."""
        return self.by_fraction or self.ratio > 0

    def goal(self) -> str:
        """The final goal in words, for logs."""
        if self.budget is None:
            return f"{self.ratio:.0%} of channels"
        return f"{self.budget:.0%} of dense {self.target}"


@dataclass
class SparsifySpec:
    """What to zero, when and how: the arguments of :class:`~lightning_prune.SparsifyCallback`, checked.

    See the callback's docstring for the meaning of each field.

    >>> SparsifySpec(sparsity=0.5, granularity="2:4").goal()
    '50% of weights zero (2:4)'
    >>> SparsifySpec(sparsity=0.6, granularity="2:4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sparsity=0.6 is invalid for granularity='2:4'; it must lie in [0, 0.5] (at most 2 of every 4 ...
    """

    sparsity: float = field(default=0.5, metadata=_app(float))
    granularity: str = field(default="weight", metadata=_app(str))
    context: str = field(default="local", metadata=_app(str))
    criterion: str | Criterion = field(default="magnitude", metadata=_app(str))
    schedule: str | Schedule = "agp"  # the app builds it from its ``schedule`` config group
    start_epoch: int = field(default=0, metadata=_app(int))
    end_epoch: int | None = field(default=None, metadata=_app(int | None))
    lottery_ticket: bool = field(default=False, metadata=_app(bool))
    rewind_epoch: int = field(default=0, metadata=_app(int))
    example_inputs: Any = None
    ignored_layers: Sequence[str] = field(default=(), metadata=_app(list[str]))
    prune_output_layers: bool = field(default=False, metadata=_app(bool))
    make_permanent: bool = field(default=True, metadata=_app(bool))
    seed: int | None = None  # the app seeds everything with its own ``seed`` key
    verbose: bool = field(default=True, metadata=_app(bool))

    def __post_init__(self) -> None:
        self.granularity = str(parse_granularity(self.granularity))
        limit = parse_granularity(self.granularity).max_sparsity
        if not _number(self.sparsity) or not 0.0 <= self.sparsity < 1.0:
            raise _invalid("sparsity", self.sparsity, "lie in [0, 1)")
        if self.sparsity > limit + 1e-12:
            g = parse_granularity(self.granularity)
            raise ValueError(
                f"sparsity={self.sparsity!r} is invalid for granularity={self.granularity!r}; it must lie in "
                f"[0, {limit:g}] (at most {g.n} of every {g.m} weights are kept)"
            )
        check_context(self.context)
        if not callable(self.criterion) and self.criterion not in SPARSITY_CRITERIA:
            raise ValueError(
                f"criterion={self.criterion!r} is unknown; choose one of {list(SPARSITY_CRITERIA)} or a callable "
                "weight -> scores of the same shape"
            )
        check_schedule(self.schedule)
        check_epochs(self.start_epoch, self.end_epoch)
        for name in ("lottery_ticket", "prune_output_layers", "make_permanent", "verbose"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, getattr(self, name), "be True or False")
        if not _integer(self.rewind_epoch) or not 0 <= self.rewind_epoch <= self.start_epoch:
            raise _invalid(
                "rewind_epoch", self.rewind_epoch,
                f"be an integer in [0, start_epoch={self.start_epoch}]: the weights are saved before the first "
                "sparsity step",
            )
        if self.seed is not None and not _integer(self.seed):
            raise _invalid("seed", self.seed, "be None or an integer")
        self.ignored_layers = check_patterns("ignored_layers", self.ignored_layers)
        self.sparsity = float(self.sparsity)

    @property
    def prunes_anything(self) -> bool:
        return self.sparsity > 0

    def goal(self) -> str:
        """The final goal in words, for logs."""
        return f"{self.sparsity:.0%} of weights zero ({self.granularity})"


@dataclass
class DistillSpec:
    """How to distil: the arguments of :class:`~lightning_prune.DistillationCallback`, checked.

    See the callback's docstring for the meaning of each field.

    >>> DistillSpec(temperature=2, weight=1).describe()
    'weight 1 at temperature 2 from epoch 0, teacher: a frozen copy of the student at fit start'
    >>> DistillSpec(weight=0)
    Traceback (most recent call last):
    ...
    ValueError: weight=0 is invalid; it must lie in (0, 1], the share of the distillation term in the loss
    """

    teacher: nn.Module | None = None
    temperature: float = field(default=4.0, metadata=_app(float))
    weight: float = field(default=0.5, metadata=_app(float))
    student: str | None = None
    start_epoch: int = field(default=0, metadata=_app(int))

    def __post_init__(self) -> None:
        if self.teacher is not None and not isinstance(self.teacher, nn.Module):
            raise TypeError(
                f"teacher={_short(self.teacher)} (a {type(self.teacher).__name__}) is invalid; it must be None (a "
                "frozen copy of the student at fit start) or a torch.nn.Module"
            )
        if not _number(self.temperature) or not self.temperature > 0:
            raise _invalid("temperature", self.temperature, "be a number > 0")
        if not _number(self.weight) or not 0.0 < self.weight <= 1.0:
            raise _invalid("weight", self.weight, "lie in (0, 1], the share of the distillation term in the loss")
        if self.student is not None and (not isinstance(self.student, str) or not self.student):
            raise _invalid(
                "student", self.student,
                "be None (the LightningModule itself) or the name of its submodule that returns the logits",
            )
        if not _integer(self.start_epoch) or self.start_epoch < 0:
            raise _invalid("start_epoch", self.start_epoch, "be an integer >= 0")
        self.temperature = float(self.temperature)
        self.weight = float(self.weight)

    def describe(self) -> str:
        """The setting in words, for logs."""
        teacher = "a frozen copy of the student at fit start" if self.teacher is None else type(self.teacher).__name__
        when = f"weight {self.weight:g} at temperature {self.temperature:g} from epoch {self.start_epoch}"
        return f"{when}, teacher: {teacher}"


def _short(value: object) -> str:
    """A value for an error message, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def app_fields(spec: type = PruningSpec) -> dict[str, Any]:
    """The fields of ``spec`` (a spec class) the Hydra app exposes as keys: name -> (OmegaConf type, default).

    >>> app_fields()["ratio"]
    (<class 'float'>, 0.4)
    >>> app_fields(SparsifySpec)["granularity"]
    (<class 'str'>, 'weight')
    """
    return {
        f.name: (f.metadata["app"], list(f.default) if isinstance(f.default, tuple) else f.default)
        for f in fields(spec)
        if "app" in f.metadata
    }
