"""Importance criteria: names mapped to torch-pruning importance estimators.

torch-pruning already scores channel groups well, so this module mostly names its estimators. It adds what
torch-pruning lacks: a *seeded* random criterion (``tp.importance.RandomImportance`` draws from the global
RNG) and fasterai's raw per-filter magnitude (``large_final``, :class:`MeanMagnitudeImportance`); and it says
which criteria need gradients.

>>> imp = get_criterion("l1")
>>> type(imp).__name__
'GroupMagnitudeImportance'
>>> needs_gradients(get_criterion("taylor"))
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp

from . import compat
from .hf import is_conv1d, linear_view

Importance = tp.importance.Importance


class SeededRandomImportance(Importance):
    """Random scores from a private, seeded generator, so a run is reproducible.

    >>> a, b = SeededRandomImportance(seed=3), SeededRandomImportance(seed=3)
    >>> bool(torch.equal(a.scores(5), b.scores(5)))
    True
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def scores(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:  # noqa: ANN001 - torch-pruning Group
        _, idxs = group[0]
        return self.scores(len(idxs))


class MeanMagnitudeImportance(Importance):
    """fasterai's ``large_final`` (``p=1``) and ``squared_final`` (``p=2``): the mean of ``|w|^p`` over each
    output channel's weights in the group's root layer, raw.

    Unlike torch-pruning's magnitude criteria, which average over every layer of the group and divide each
    group's scores by their mean, nothing is normalised: in global ranking a layer whose filters are small
    (many inputs, small weights) loses more channels than one whose filters are large, as in fasterai. Only the
    root's output weights count (its consumers' input columns and BatchNorms do not). A root that is neither a
    convolution nor a ``Linear`` scores nothing (``None``).

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -3.0], [0.5, 0.5], [-4.0, 0.0]]))
    >>> graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 2))
    >>> group = graph.get_pruning_group(net[0], tp.prune_linear_out_channels, idxs=[0, 1, 2])
    >>> MeanMagnitudeImportance()(group).tolist()
    [2.0, 0.5, 2.0]
    """

    def __init__(self, p: int = 1) -> None:
        self.p = p

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor | None:  # noqa: ANN001 - torch-pruning Group
        dep, idxs = group[0]
        layer = getattr(dep, "layer", dep.target.module)  # a Conv1D arrives as its Linear view (GroupScorer)
        fn = tp.pruner.function
        if dep.handler not in (fn.prune_conv_out_channels, fn.prune_linear_out_channels) or not isinstance(
            layer, torch.nn.modules.conv._ConvNd | torch.nn.Linear
        ):
            return None
        weight = layer.weight.detach()
        if getattr(layer, "transposed", False):  # (in, out / groups, *kernel): one row per output channel
            g = layer.groups
            weight = weight.reshape(g, weight.shape[0] // g, weight.shape[1], -1).transpose(1, 2)
        rows = weight.reshape(layer.out_channels if isinstance(layer, torch.nn.modules.conv._ConvNd)
                              else layer.out_features, -1)
        return rows[list(idxs)].abs().pow(self.p).mean(dim=1)


CRITERIA: dict[str, Callable[[int], Importance]] = {
    "l1": lambda seed: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda seed: tp.importance.GroupMagnitudeImportance(p=2),
    # first-order Taylor |w * dL/dw|; the callback supplies the gradients (see PruningCallback)
    "taylor": lambda seed: tp.importance.GroupTaylorImportance(),
    # Optimal Brain Damage w^2 * H, H ~ the mean squared gradient (the session supplies it, see ScheduledPruning)
    "hessian": lambda seed: tp.importance.GroupHessianImportance(),
    "bn_scale": lambda seed: tp.importance.BNScaleImportance(),
    "lamp": lambda seed: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda seed: tp.importance.FPGMImportance(p=2),
    # fasterai's magnitude criteria: raw mean |w| (or w^2) per filter of the root layer, no group normalisation
    "large_final": lambda seed: MeanMagnitudeImportance(p=1),
    "squared_final": lambda seed: MeanMagnitudeImportance(p=2),
    "random": lambda seed: SeededRandomImportance(seed),
}


def get_criterion(criterion: str | Importance, seed: int = 0) -> Importance:
    """Build the importance estimator named ``criterion``; an ``Importance`` instance passes through.

    ``seed`` seeds the ``random`` criterion.

    >>> get_criterion("random", seed=1).scores(2).shape
    torch.Size([2])
    """
    if isinstance(criterion, Importance):
        return criterion
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(
            f"unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)} "
            "or pass a torch_pruning.importance.Importance instance"
        )
    return CRITERIA[criterion](seed)


def needs_gradients(importance: Importance) -> bool:
    """Whether ``importance`` reads ``.grad`` of the weights (Taylor and Hessian criteria).

    >>> needs_gradients(get_criterion("l2"))
    False
    """
    importance = getattr(importance, "base", importance)  # inside a wrapper (cost.CostAwareImportance)
    return isinstance(importance, tp.importance.GroupTaylorImportance | tp.importance.GroupHessianImportance)


def squares_gradients(importance: Importance) -> bool:
    """Whether ``importance`` reads ``.grad`` as a Hessian diagonal, the mean of the SQUARED gradients
    (``hessian``), rather than as a gradient sum (``taylor``).

    >>> squares_gradients(get_criterion("hessian")), squares_gradients(get_criterion("taylor"))
    (True, False)
    """
    return isinstance(importance, tp.importance.GroupHessianImportance)


class _LinearDep:
    """A group item's dependency with a Conv1D shown as the Linear it is (:func:`.hf.linear_view`)."""

    def __init__(self, dep, is_out: bool) -> None:  # noqa: ANN001 - torch-pruning Dependency
        self.layer = linear_view(dep.target.module)
        fn = tp.pruner.function
        self.pruning_fn = self.handler = self.trigger = (
            fn.prune_linear_out_channels if is_out else fn.prune_linear_in_channels
        )
        self.source, self.target = dep.source, dep.target


class GroupScorer(Importance):
    """The criterion as the pruner calls it: transformers' Conv1D layers are scored as the Linears they are
    (torch-pruning's criteria only know its own layer types, so a GPT-2 MLP would score as nothing), and
    the calls that scored nothing (``None``) are counted, so that a criterion scoring no group at all is an
    error rather than a silent no-op.

    >>> scorer = GroupScorer(get_criterion("l1"))
    >>> scorer.calls, scorer.nothing
    (0, 0)
    """

    def __init__(self, importance: Importance) -> None:
        self.importance = importance
        self.calls = 0
        self.nothing = 0

    def reset(self) -> None:
        self.calls = self.nothing = 0

    def __call__(self, group, **kwargs):  # noqa: ANN001, ANN204 - torch-pruning Group
        graph = compat.group_graph(group)
        if graph is not None and any(isinstance(dep.target.module, torch.nn.Module) and is_conv1d(dep.target.module)
                                     for dep, _ in group):
            group = compat.plain_group(
                group,
                lambda dep: _LinearDep(dep, graph.is_out_channel_pruning_fn(dep.handler))
                if isinstance(dep.target.module, torch.nn.Module) and is_conv1d(dep.target.module)
                else dep,
            )
        scores = self.importance(group, **kwargs)
        self.calls += 1
        if scores is None:
            self.nothing += 1
        return scores


def criterion_name(importance: Importance) -> str:
    """How an error names a criterion: its name in :data:`CRITERIA`, else its class."""
    return type(importance).__name__
