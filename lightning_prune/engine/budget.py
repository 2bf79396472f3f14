"""Pruning to a budget: MACs, parameters or latency instead of a share of channels.

Users think in "half the compute" or "2x faster", not in "40% of channels". The engine
(:class:`~lightning_prune.engine.pruner.ChannelPruner`) only knows channel ratios, so this module finds the channel
ratio whose model meets a budget, and maps the schedule onto the budget's unit.

*Schedule in the budget's unit.* With a budget ``b`` (a fraction of the dense model's MACs, parameters or
latency) the schedule value ``f = schedule(p)`` gives the intermediate budget ``1 - (1 - b) * f``
(:func:`intermediate_budget`): ``agp`` toward 0.5 MACs follows the agp curve in MACs.

*The search.* For each (intermediate) budget the callback asks for the smallest channel ratio whose pruned
model meets it (:func:`search_channel_ratio`). The ratio runs over a grid ``k / N`` where ``N`` is the
number of prunable channels (one per coupled group), so one grid step moves at most one channel of each
ranking scope: that step is the *granule*. Each candidate is pruned on a copy of the pruner
(:func:`clone_pruner`: model, dependency graph and importance state, gradients included), measured and
thrown away; bisection over the grid (:func:`bisect_budget`) needs ``log2(N) + 2`` trials.

Why bisection on copies: it is *exact* and *cheap*. Exact, because a copy prunes exactly what the real
pruner will prune (same weights, same importance scores, same random state) and ``prune_to`` is monotone
(more ratio never keeps more channels in any layer; MACs and parameters depend only on the widths). So the
search returns the smallest grid ratio meeting the budget, i.e. the result is at most one granule below the
budget: ``budget - granule < value <= budget``, with the granule measured as the value one grid step
earlier minus the value found. Cheap, because it costs ``log2(N)`` trial prunes of one copy each (one
extra copy of the model in memory at a time), while stepping the real model until the budget is met costs
up to ``N`` prunes (and cannot be undone); on a 320-channel test ResNet a search takes 9-10 trials and about
0.3 s on one CPU core. The search is repeated at every pruning epoch, on the current weights. The
real prune is then re-measured; should it miss the budget (a criterion drawing from a global random
generator, latency noise), the search runs again from the reached state, at most ``max_rounds`` times.

*Latency* is the median of repeated timed forward passes (:func:`measure_latency`) on the model's current
device with the example inputs, in eval mode and without gradients (no autocast), measured once the model
is on its training device. It is noisy and not strictly monotone in the widths:

- the median of 20 passes still moves between calls (about 1% for a 5 ms forward on a quiet CPU, several
  percent on a shared one; more for tiny models, whose time is mostly Python overhead that pruning does not
  remove), so the search may stop a grid step or two off and the budget is met *as measured*;
- kernels are chosen by shape (oneDNN on CPU, cuDNN/cuBLAS on GPU), so latency falls in steps: on a small
  ResNet on CPU one grid step moved latency by up to 15%, and the result lands up to that far below budget.

The reachability check before training times the dense and the most pruned model in turns
(:func:`pairwise_latencies`, median of the pairwise ratios): it decides whether the fit starts, and timed apart
on a busy machine, a small test network's most pruned copy once measured 1.5x the dense network's time.

Under DDP every rank uses rank zero's readings (the callback broadcasts them), so all ranks prune alike.

*Per-layer ratios.* ``ratio_overrides={"model.layer4.*": 0.2}`` maps fnmatch patterns on module names to a
channel ratio (:func:`resolve_ratio_overrides`). The prunable layers a pattern matches become one
``pruning_ratio_dict`` entry of torch-pruning: with ``context="global"`` they are ranked together and lose
that share of their channels; with ``"local"`` each loses it. The ratio follows the schedule (it is scaled
by ``schedule(p)``) and ``max_layer_ratio`` still caps it; a budget search only moves the other layers.

>>> intermediate_budget(0.5, 0.875)
0.5625
>>> bisect_budget(lambda k: 1.0 - k / 10, budget=0.45, lo=0, hi=9)[0]
6
"""

from __future__ import annotations

import copy
import fnmatch
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch  # noqa: F401 - the doctests use it
from torch import nn

from . import compat
from .latency import measure_latency, pairwise_latencies, pairwise_ratio
from .pruner import PRUNABLE_TYPES, ChannelPruner, PruneStep, match_layer_patterns
from .report import count_macs_params
from .surgery import ParameterChange

Target = Literal["channels", "macs", "params", "latency"]
TARGETS: tuple[str, ...] = ("channels", "macs", "params", "latency")
BUDGET_TARGETS: tuple[str, ...] = ("macs", "params", "latency")

#: The largest channel ratio ``prune_to`` accepts: every group is cut to its ``max_layer_ratio`` cap.
MAX_RATIO = math.nextafter(1.0, 0.0)


def intermediate_budget(budget: float, fraction: float) -> float:
    """The budget after a schedule value ``fraction``: ``1 - (1 - budget) * fraction``.

    It is 1 (the dense model) at ``fraction = 0`` and ``budget`` at ``fraction = 1``.

    >>> intermediate_budget(0.5, 0.0), intermediate_budget(0.5, 0.5), intermediate_budget(0.5, 1.0)
    (1.0, 0.75, 0.5)
    """
    if not 0.0 <= fraction <= 1.0 + 1e-9:
        raise ValueError(f"schedule fraction must lie in [0, 1], got {fraction!r}")
    return 1.0 - (1.0 - budget) * min(fraction, 1.0)


def grid_ratio(step: int, n_steps: int) -> float:
    """The channel ratio of grid step ``step`` out of ``n_steps``; the last step is :data:`MAX_RATIO`.

    >>> grid_ratio(0, 4), grid_ratio(1, 4), grid_ratio(4, 4) == MAX_RATIO
    (0.0, 0.25, True)
    """
    if not 0 <= step <= n_steps:
        raise ValueError(f"grid step must lie in [0, {n_steps}], got {step!r}")
    return MAX_RATIO if step == n_steps else step / n_steps


def grid_step(ratio: float, n_steps: int) -> int:
    """The grid step of a channel ratio (the nearest one), the inverse of :func:`grid_ratio`.

    >>> grid_step(0.25, 4), grid_step(MAX_RATIO, 4)
    (1, 4)
    """
    return min(n_steps, max(0, round(ratio * n_steps)))


def bisect_budget(
    evaluate: Callable[[int], float], budget: float, lo: int, hi: int
) -> tuple[int, dict[int, float]]:
    """The smallest step ``k`` in ``[lo, hi]`` with ``evaluate(k) <= budget``, for a non-increasing ``evaluate``.

    ``lo`` is evaluated first (it may already meet the budget); ``hi`` is assumed to meet it and is
    evaluated only when the answer is ``hi``, so the caller sees ``values[hi] > budget`` when nothing does.
    Returns the step and every evaluated value; the granule is ``values[k - 1] - values[k]``.

    >>> k, values = bisect_budget(lambda k: 1.0 - k / 10, budget=0.45, lo=0, hi=9)
    >>> k, round(values[k - 1] - values[k], 6), len(values)
    (6, 0.1, 4)
    """
    if hi < lo:
        raise ValueError(f"empty search range [{lo}, {hi}]")
    values = {lo: float(evaluate(lo))}
    if values[lo] <= budget:
        return lo, values
    while hi - lo > 1:
        mid = (lo + hi) // 2
        values[mid] = float(evaluate(mid))
        if values[mid] <= budget:
            hi = mid
        else:
            lo = mid
    if hi not in values:
        values[hi] = float(evaluate(hi))
    return hi, values


def clone_pruner(pruner: ChannelPruner) -> ChannelPruner:
    """A deep copy of ``pruner``, its model and dependency graph, for trial pruning.

    Shared, not copied: torch-pruning's pruning functions (it compares them by identity), the autograd
    nodes recorded while tracing and the ``ops`` module. Gradients are copied too (``nn.Parameter``'s
    ``__deepcopy__`` drops them, and the ``taylor`` criterion reads them). A LightningModule is copied
    without its trainer.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    >>> pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[1]])
    >>> trial = clone_pruner(pruner); _ = trial.prune_to(0.5)
    >>> trial.model[0].out_channels, net[0].out_channels
    (4, 8)
    """
    shared, depth = compat.deepcopy_shared(pruner.graph)
    memo: dict[int, object] = {id(obj): obj for obj in shared}
    # a ResNet-50's graph goes past Python's default recursion limit of 1000
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth))
    try:
        clone = copy.deepcopy(pruner, memo)
    finally:
        sys.setrecursionlimit(limit)
    for old, new in zip(pruner.model.parameters(), clone.model.parameters()):
        if old.grad is not None:
            new.grad = old.grad.detach().clone()
    return clone


def make_metric(target: str, repeats: int = 20) -> Callable[[nn.Module, object], float]:
    """The absolute measure ``metric(model, example_inputs)`` of a budget target: MACs or parameters
    (torch-pruning's counter, as logged in ``prune/macs`` and ``prune/params``) or latency in seconds
    (:func:`measure_latency`).

    >>> make_metric("params")(nn.Linear(4, 2), torch.zeros(1, 4))
    10.0
    """
    if target == "macs":
        return lambda model, inputs: float(count_macs_params(model, inputs)[0])
    if target == "params":
        return lambda model, inputs: float(count_macs_params(model, inputs)[1])
    if target == "latency":
        return lambda model, inputs: measure_latency(model, inputs, repeats=repeats)
    raise ValueError(f"target={target!r} has no measure; choose one of {list(BUDGET_TARGETS)}")


def resolve_ratio_overrides(
    model: nn.Module, ratio_overrides: Mapping[str, float], never_pruned: Iterable[str] = ()
) -> dict[str, tuple[list[str], float]]:
    """The prunable layers (convolutions, linear layers) each pattern of ``ratio_overrides`` matches.

    Patterns are fnmatch patterns on module names, like ``ignored_layers``; a match on a container covers
    the layers inside it. Raises ``ValueError`` naming the pattern when it matches no module, when it matches
    only layers that are never pruned (``never_pruned``: ignored and output layers), or when two patterns
    match the same layer.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.Conv2d(4, 2, 1))
    >>> resolve_ratio_overrides(net, {"1*": 0.2}, never_pruned=["2"])
    {'1*': (['1.0'], 0.2)}
    >>> try:
    ...     resolve_ratio_overrides(nn.Sequential(net), {"1.*": 0.2})
    ... except ValueError as err:
    ...     print(str(err).split(": ")[-1])
    did you mean '0.1.*'?
    """
    names = [name for name, _ in model.named_modules() if name]
    for pattern in ratio_overrides:
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            continue
        for prefix in names:  # e.g. "layer4.*" on a LightningModule that holds the network as "model"
            if any(fnmatch.fnmatchcase(name, f"{prefix}.{pattern}") for name in names):
                raise ValueError(
                    f"ratio_overrides pattern {pattern!r} matches no module of the model; names are relative "
                    f"to the LightningModule, as for ignored_layers: did you mean {prefix + '.' + pattern!r}?"
                )
    matched = match_layer_patterns(model, list(ratio_overrides))
    skip = set(never_pruned)
    owner: dict[str, str] = {}
    resolved: dict[str, tuple[list[str], float]] = {}
    for pattern, names in matched.items():
        layers = []
        for name in names:
            for sub_name, sub in model.get_submodule(name).named_modules(prefix=name):
                if isinstance(sub, PRUNABLE_TYPES) and sub_name not in skip and sub_name not in layers:
                    layers.append(sub_name)
        if not layers:
            raise ValueError(
                f"ratio_overrides pattern {pattern!r} matches no prunable layer (convolution or linear layer "
                f"that is not ignored or an output layer); it matches: {', '.join(names[:12])}"
            )
        for layer in layers:
            if layer in owner:
                raise ValueError(
                    f"ratio_overrides patterns {owner[layer]!r} and {pattern!r} both match layer {layer!r}; "
                    "give each layer one ratio"
                )
            owner[layer] = pattern
        resolved[pattern] = (layers, float(ratio_overrides[pattern]))
    return resolved


@dataclass
class BudgetSearch:
    """What :func:`search_channel_ratio` (or :func:`prune_to_budget`) found.

    ``value`` and ``granule`` are ratios of the dense model's measure; ``granule`` is the value one grid
    step less pruning gives minus ``value`` (0 when the starting point already met the budget).
    """

    budget: float
    ratio: float
    value: float
    granule: float
    met: bool
    trials: int
    seconds: float
    values: dict[float, float] = field(default_factory=dict, repr=False)  # channel ratio -> value, every trial
    units: int = 0  # units of round_to channels the grid step removed and the budget took back (refill)

    def as_dict(self) -> dict[str, float | int | bool]:
        """Plain data for events and checkpoints."""
        return {
            "budget": self.budget,
            "ratio": self.ratio,
            "value": self.value,
            "granule": self.granule,
            "met": self.met,
            "trials": self.trials,
            "seconds": self.seconds,
            "units": self.units,
        }


def trial_value(
    pruner: ChannelPruner,
    measure: Callable[[nn.Module], float],
    ratio: float,
    ratio_overrides: Mapping[nn.Module, float] | None = None,
) -> float:
    """``measure`` of the model that ``pruner.prune_to(ratio, ratio_overrides)`` would give; ``pruner``
    itself is untouched (the prune runs on :func:`clone_pruner`).

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    >>> pruner = ChannelPruner(net, torch.zeros(1, 3, 1, 1), ignored_layers=[net[1]])
    >>> trial_value(pruner, lambda m: float(m[0].out_channels), 0.5), net[0].out_channels
    (4.0, 8)
    """
    return float(measure(trial_model(pruner, ratio, ratio_overrides)))


def trial_model(
    pruner: ChannelPruner, ratio: float, ratio_overrides: Mapping[nn.Module, float] | None = None
) -> nn.Module:
    """The model that ``pruner.prune_to(ratio, ratio_overrides)`` would give, pruned on a copy
    (:func:`clone_pruner`); ``pruner`` is untouched."""
    trial = clone_pruner(pruner)
    trial.prune_to(ratio, overrides_of_clone(pruner, trial, ratio_overrides))
    return trial.model


def overrides_of_clone(
    pruner: ChannelPruner, clone: ChannelPruner, ratio_overrides: Mapping[nn.Module, float] | None
) -> dict[nn.Module, float] | None:
    """``ratio_overrides`` keyed by the clone's modules instead of ``pruner``'s."""
    if not ratio_overrides:
        return None
    clone_of = dict(zip(pruner.model.modules(), clone.model.modules()))
    return {clone_of[module]: value for module, value in ratio_overrides.items()}


def search_channel_ratio(
    pruner: ChannelPruner,
    measure: Callable[[nn.Module], float],
    budget: float,
    start: float = 0.0,
    ratio_overrides: Mapping[nn.Module, float] | None = None,
) -> BudgetSearch:
    """The smallest grid channel ratio ``>= start`` whose pruned model has ``measure <= budget``.

    ``measure`` returns the value as a fraction of the dense model's. Trials run on copies; ``pruner`` is
    untouched. See the module docstring for why this is exact and how many trials it takes.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    >>> pruner = ChannelPruner(net, torch.zeros(1, 3, 1, 1), ignored_layers=[net[1]])
    >>> found = search_channel_ratio(pruner, lambda m: m[0].out_channels / 8, budget=0.7)
    >>> found.ratio, found.value, found.granule, found.met
    (0.375, 0.625, 0.125, True)
    """
    began = time.perf_counter()
    n_steps = max(1, pruner.prunable_channels)
    values: dict[float, float] = {}

    def evaluate(step: int) -> float:
        ratio = grid_ratio(step, n_steps)
        values[ratio] = trial_value(pruner, measure, ratio, ratio_overrides)
        return values[ratio]

    lo = grid_step(start, n_steps)
    step, by_step = bisect_budget(evaluate, budget, lo, n_steps)
    value = by_step[step]
    granule = by_step[step - 1] - value if step - 1 in by_step and step > lo else 0.0
    return BudgetSearch(
        budget=float(budget),
        ratio=grid_ratio(step, n_steps),
        value=value,
        granule=granule,
        met=value <= budget,
        trials=len(by_step),
        seconds=time.perf_counter() - began,
        values=values,
    )


def refill(
    pruner: ChannelPruner,
    measure: Callable[[nn.Module], float],
    budget: float,
    found: BudgetSearch,
    ratio_overrides: Mapping[nn.Module, float] | None = None,
) -> tuple[list[list], int]:
    """The pruning records of ``found``'s grid step, less the units of channels that fit back under
    ``budget``, and how many units that is (0: the records are the grid step's own).

    With ``round_to`` torch-pruning rounds each layer's kept channels down, so the grid step that meets a
    budget can drop a whole unit of an expensive layer (16 -> 8 channels of a ResNet's first stage) and land
    far under it: a MACs budget of 0.5 met at 0.44. The units it removed are put back, the most important
    first (:meth:`ChannelPruner.removed_units`), each kept only if the model still meets the budget (tried on
    copies). Rounding's cuts stay where nothing fits back, so the model lands within one unit of the budget
    without giving up the narrow layers rounding made. Only with ``round_to`` and global ranking (a local
    ranking prunes every layer alike).
    """
    if not (pruner.round_to and pruner.global_pruning and found.met and found.granule > 0):
        return [], 0
    trial = clone_pruner(pruner)
    grid_step_records = trial.prune_to(found.ratio, overrides_of_clone(pruner, trial, ratio_overrides)).history
    records = [list(r) for r in grid_step_records if r[2]]
    added = 0
    too_big: dict[int, int] = {}  # record -> size of a unit that did not fit: as large a unit of it never will
    for _, i, unit in sorted(pruner.removed_units(records), key=lambda u: -u[0]):
        if len(unit) >= too_big.get(i, len(unit) + 1):  # the measure only grows as units come back
            continue
        candidate, back = [list(r) for r in records], set(unit)
        candidate[i][2] = [j for j in candidate[i][2] if j not in back]
        kept = [r for r in candidate if r[2]]
        copy_ = clone_pruner(pruner)
        copy_.replay(kept)
        if float(measure(copy_.model)) <= budget:
            records, added = candidate, added + 1
        else:
            too_big[i] = len(unit)
    return [r for r in records if r[2]], added


def merge_prune_steps(steps: list[PruneStep]) -> PruneStep:
    """One :class:`PruneStep` for several consecutive prunes: each parameter's change maps the first old
    parameter to the last new one, so :func:`~lightning_prune.engine.surgery.remap_optimizer` can apply it at once.

    >>> a, b, c = (nn.Parameter(torch.zeros(n)) for n in (4, 3, 2))
    >>> first = PruneStep(0.1, 0.1, 1, [ParameterChange("w", a, b, torch.tensor([0, 2, 3]))])
    >>> second = PruneStep(0.2, 0.2, 1, [ParameterChange("w", b, c, torch.tensor([1, 2]))])
    >>> merged = merge_prune_steps([first, second])
    >>> merged.changes[0].old is a, merged.changes[0].new is c, merged.changes[0].index.tolist()
    (True, True, [2, 3])
    """
    if not steps:
        raise ValueError("no prune steps to merge")
    if len(steps) == 1:
        return steps[0]
    current: dict[int, ParameterChange] = {}  # id(newest parameter) -> change from the first parameter
    for step in steps:
        for change in step.changes:
            before = current.pop(id(change.old), None)
            if before is None:
                current[id(change.new)] = change
                continue
            index = before.index.reshape(-1)[change.index.reshape(-1).to(before.index.device)]
            index = index.reshape(change.new.shape)
            current[id(change.new)] = ParameterChange(change.name, before.old, change.new, index)
    return PruneStep(
        target=steps[-1].target,
        achieved=steps[-1].achieved,
        groups=sum(s.groups for s in steps),
        changes=list(current.values()),
        history=[record for s in steps for record in s.history],
    )


def prune_to_budget(
    pruner: ChannelPruner,
    measure: Callable[[nn.Module], float],
    budget: float,
    start: float = 0.0,
    ratio_overrides: Mapping[nn.Module, float] | None = None,
    max_rounds: int = 3,
) -> tuple[PruneStep, BudgetSearch]:
    """Prune ``pruner``'s model to the smallest grid channel ratio ``>= start`` that meets ``budget``.

    Searches with :func:`search_channel_ratio`, prunes the real model, and re-measures it; when the real
    model misses the budget (see the module docstring) the search repeats from there, up to ``max_rounds``
    times. Returns the (merged) prune step and the search, whose ``value`` is the re-measured one.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    >>> pruner = ChannelPruner(net, torch.zeros(1, 3, 1, 1), ignored_layers=[net[1]])
    >>> step, found = prune_to_budget(pruner, lambda m: m[0].out_channels / 8, budget=0.7)
    >>> net[0].out_channels, found.value, found.met
    (5, 0.625, True)
    """
    began = time.perf_counter()
    steps: list[PruneStep] = []
    trials = 0
    found = None
    for _ in range(max(1, max_rounds)):
        found = search_channel_ratio(pruner, measure, budget, start, ratio_overrides)
        trials += found.trials
        records, found.units = refill(pruner, measure, budget, found, ratio_overrides)
        if found.units:  # the grid step's prune, less the units that fit back under the budget
            steps.append(pruner.replay(records))
            steps[-1].target = found.ratio
        else:
            steps.append(pruner.prune_to(found.ratio, dict(ratio_overrides or {})))
        found.value = float(measure(pruner.model))
        found.met = found.value <= budget
        start = found.ratio
        if found.met or found.ratio == MAX_RATIO:
            break
    assert found is not None
    found.trials = trials
    found.seconds = time.perf_counter() - began
    return merge_prune_steps(steps), found


class BudgetTracker:
    """One fit's budget: the dense model's measure, the reachability check, and each pruning epoch's search.

    The callback owns one per fit and stays free of the bookkeeping. ``measure(model)`` is ``target``'s
    measure as a fraction of the dense model's. Latency differs between processes, so under DDP
    (``strategy`` given) every rank uses rank zero's readings and all ranks take the same search path;
    while rank zero alone searches (:meth:`prune`) no collective runs. MACs and parameters agree already.
    ``example_inputs`` is read at every measurement (a callable returning the inputs), so inputs that moved
    to the training device after set-up are the ones measured.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    >>> pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[1]])
    >>> tracker = BudgetTracker("params", 0.6, lambda: torch.zeros(1, 3, 4, 4))
    >>> tracker.resolve(pruner, net, n_kept=1)
    >>> step = tracker.prune(pruner, 0.6, start=0.0)
    >>> tracker.last_search.met, round(tracker.measure(net), 3)
    (True, 0.52)
    """

    def __init__(
        self, target: str, budget: float, example_inputs: Callable[[], object], strategy: object = None
    ) -> None:
        self.target = target
        self.budget = budget
        self.example_inputs = example_inputs
        self.metric = make_metric(target)
        self.strategy = strategy
        self.dense_value = 0.0
        self.smallest_reachable: float | None = None  # as a fraction of dense
        self.plan: BudgetSearch | None = None  # the search for the final budget, before training
        self.last_search: BudgetSearch | None = None  # the search of the latest pruning epoch
        self._sharing = True

    def _shared(self, value: float) -> float:
        if self.target != "latency" or self.strategy is None or not self._sharing:
            return value
        return float(self.strategy.broadcast(value, src=0))

    def measure(self, model: nn.Module) -> float:
        """``model``'s measure as a fraction of the dense model's."""
        return self._shared(float(self.metric(model, self.example_inputs()))) / self.dense_value

    def resolve(
        self,
        pruner: ChannelPruner,
        model: nn.Module,
        overrides: Mapping[nn.Module, float] | None = None,
        n_kept: int = 0,
        hint: str = "",
    ) -> None:
        """Measure the dense ``model``, reject an unreachable budget naming the smallest reachable value, and
        search the final budget's channel ratio on the current weights (an estimate, logged; the search is
        repeated at every pruning epoch). Criteria that need gradients are stood in by magnitudes here."""
        self.dense_value = self._shared(float(self.metric(model, self.example_inputs())))
        if self.dense_value <= 0:
            raise ValueError(f"the dense model has {self.target}={self.dense_value}; a budget needs a positive one")
        with pruner.magnitude_stand_in():  # before training, gradient criteria have nothing to read
            self.smallest_reachable = self._smallest_reachable(pruner, model, overrides)
            if self.budget < self.smallest_reachable:
                raise ValueError(
                    f"budget={self.budget} for target={self.target!r} cannot be reached: the smallest reachable "
                    f"{self.target} ratio is {self.smallest_reachable:.6f}, with every prunable layer cut to "
                    f"max_layer_ratio={pruner.max_layer_ratio}{hint} and {n_kept} ignored or output layer(s) "
                    f"kept whole. Use budget >= {self.smallest_reachable:.6f}, a larger max_layer_ratio or "
                    "fewer ignored_layers"
                )
            self.plan = search_channel_ratio(pruner, self.measure, self.budget, 0.0, overrides)

    def _smallest_reachable(
        self, pruner: ChannelPruner, model: nn.Module, overrides: Mapping[nn.Module, float] | None
    ) -> float:
        """The measure of the most pruned model, as a fraction of dense. Latency is timed side by side with
        the dense ``model`` (median of the pairwise ratios): two medians taken apart can differ by half on a
        shared machine, and this value decides whether the fit may start at all."""
        if self.target != "latency":
            return trial_value(pruner, self.measure, MAX_RATIO, overrides)
        smallest = trial_model(pruner, MAX_RATIO, overrides)
        dense_times, smallest_times = pairwise_latencies([model, smallest], self.example_inputs())
        return self._shared(pairwise_ratio(dense_times, smallest_times).median)

    def prune(
        self,
        pruner: ChannelPruner,
        budget: float,
        start: float,
        overrides: Mapping[nn.Module, float] | None = None,
    ) -> PruneStep:
        """Prune to ``budget`` from channel ratio ``start`` (:func:`prune_to_budget`); on rank zero only under
        DDP. The search is kept in ``last_search``."""
        if self.dense_value <= 0:
            raise RuntimeError("a budget prune needs the budget resolved first (BudgetTracker.resolve)")
        self._sharing = False  # only rank 0 measures now: no collective inside the search
        try:
            step, self.last_search = prune_to_budget(pruner, self.measure, budget, start, overrides)
        finally:
            self._sharing = True
        return step
