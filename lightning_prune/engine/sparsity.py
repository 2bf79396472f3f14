"""Sparsity masks: which weights of each layer are zero, per granularity, pure functions of the weights.

A layer's weight is cut into *units*, the pieces that are zeroed together:

- ``"weight"``: single weights (unstructured sparsity);
- ``"kernel"``: the ``k x k`` kernel of one (output, input) channel pair of a convolution (one weight of
  a ``Linear``);
- ``"filter"``: all weights of one output channel (a row of a ``Linear``);
- ``"N:M"`` (e.g. ``"2:4"``): groups of ``M`` consecutive weights along each row of ``weight.flatten(1)``
  (the input dimension); pruning a group zeroes its ``M - N`` least important weights, so that at most
  ``N`` of every ``M`` are non-zero. ``sparsity`` is then at most ``(M - N) / M``; below that, that share
  of the groups is pruned.

Each unit gets a score, the mean of its weights' scores (``"magnitude"``: ``|w|``; ``"random"``: seeded
uniform noise; or a callable ``weight -> scores`` of the same shape). With ``context="local"`` every layer
loses ``round(sparsity * units)`` of its lowest-scoring units; with ``"global"`` the units of all layers
are ranked together until ``sparsity`` of all their weights is reached. As sparsity rises, masks only grow:
a unit pruned before stays pruned, and every layer keeps at least one unit. When it falls (``dsd``),
:func:`lift_masks` brings pruned units back, and a kept unit stays kept.

>>> w = torch.tensor([[0.1, -2.0, 0.3, 4.0], [1.0, 0.2, -0.5, 0.05]])
>>> compute_masks({"fc": w}, 0.5, "2:4", "local")["fc"].int().tolist()
[[0, 1, 0, 1], [1, 0, 1, 0]]
>>> compute_masks({"fc": w}, 0.5, "filter", "local")["fc"].all(dim=1).tolist()
[True, False]
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .report import render_table

SPARSIFIABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
GRANULARITIES = ("weight", "kernel", "filter")
SPARSITY_CRITERIA = ("magnitude", "random")
Criterion = Callable[[torch.Tensor], torch.Tensor]
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Granularity:
    """A parsed granularity: ``kind`` is one of :data:`GRANULARITIES` or ``"N:M"`` (with ``n`` and ``m``)."""

    kind: str
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.kind == "N:M"

    @property
    def max_sparsity(self) -> float:
        """The highest reachable sparsity: ``(M - N) / M`` for N:M, else just below 1."""
        return (self.m - self.n) / self.m if self.is_nm else 1.0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else self.kind


def parse_granularity(value: object) -> Granularity:
    """``"weight"``, ``"kernel"``, ``"filter"`` or ``"N:M"`` with ``0 < N < M``, checked.

    >>> parse_granularity("2:4")
    Granularity(kind='N:M', n=2, m=4)
    >>> parse_granularity("4:2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: granularity='4:2' is unknown; choose one of ['weight', 'kernel', 'filter'] or 'N:M' ...
    """
    if isinstance(value, Granularity):
        return value
    if isinstance(value, str) and value in GRANULARITIES:
        return Granularity(value)
    match = _NM.match(value) if isinstance(value, str) else None
    if match and 0 < int(match[1]) < int(match[2]):
        return Granularity("N:M", int(match[1]), int(match[2]))
    raise ValueError(
        f"granularity={value!r} is unknown; choose one of {list(GRANULARITIES)} or 'N:M' with 0 < N < M, e.g. '2:4'"
    )


def fits(weight: torch.Tensor, granularity: Granularity) -> bool:
    """Whether ``weight`` can be cut into ``granularity``'s units (N:M needs rows that are multiples of M).

    >>> fits(torch.zeros(8, 3, 3, 3), parse_granularity("2:4")), fits(torch.zeros(8, 16), parse_granularity("2:4"))
    (False, True)
    """
    return not granularity.is_nm or weight[0].numel() % granularity.m == 0


def unit_view(tensor: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``tensor`` (a weight, its scores or its mask) as ``(units, weights per unit)``; groups for N:M.

    >>> unit_view(torch.zeros(8, 4, 3, 3), parse_granularity("kernel")).shape
    torch.Size([32, 9])
    """
    if granularity.kind == "weight" or (granularity.kind == "kernel" and tensor.dim() <= 2):
        return tensor.reshape(-1, 1)
    if granularity.kind == "kernel":
        return tensor.reshape(tensor.shape[0] * tensor.shape[1], -1)
    if granularity.kind == "filter":
        return tensor.reshape(tensor.shape[0], -1)
    return tensor.reshape(-1, granularity.m)


def element_scores(
    weight: torch.Tensor, criterion: str | Criterion = "magnitude", generator: torch.Generator | None = None
) -> torch.Tensor:
    """The importance of every weight: ``|w|``, seeded uniform noise (``"random"``), or ``criterion(weight)``."""
    weight = weight.detach()
    if callable(criterion):
        scores = criterion(weight)
        if not torch.is_tensor(scores) or scores.shape != weight.shape:
            raise ValueError(
                f"a criterion callable must return scores of the weight's shape {tuple(weight.shape)}, got "
                f"{getattr(scores, 'shape', type(scores).__name__)}"
            )
        return scores.detach().float()
    if criterion == "magnitude":
        return weight.abs().float()
    if criterion == "random":
        return torch.rand(weight.shape, generator=generator).to(weight.device)
    raise ValueError(f"criterion={criterion!r} is unknown; choose one of {list(SPARSITY_CRITERIA)} or a callable")


def _round(x: float) -> int:
    """Half up, not Python's half to even: ``round(2.5) == 2`` would surprise in a schedule."""
    return math.floor(x + 0.5 + 1e-9)


@dataclass
class _Layer:
    """The units of one layer at one step."""

    scores: torch.Tensor  # (units,), -inf for units pruned before
    size: int  # weights zeroed per pruned unit
    pruned_before: int
    floor: int  # units that must stay (one for weight, kernel, filter; none for N:M)


def _layer_units(
    weight: torch.Tensor, scores: torch.Tensor, previous: torch.Tensor | None, granularity: Granularity
) -> _Layer:
    units = unit_view(scores, granularity)
    if granularity.is_nm:
        drop = granularity.m - granularity.n
        unit_scores = units.topk(drop, dim=1, largest=False).values.mean(dim=1)
        pruned = None if previous is None else unit_view(previous, granularity).sum(dim=1) <= granularity.n
        size, floor = drop, 0
    else:
        unit_scores = units.mean(dim=1)
        pruned = None if previous is None else ~unit_view(previous, granularity).any(dim=1)
        size, floor = units.shape[1], 1
    n_pruned = 0
    if pruned is not None:
        unit_scores = unit_scores.masked_fill(pruned.to(unit_scores.device), -math.inf)
        n_pruned = int(pruned.sum())
    return _Layer(unit_scores.float(), size, n_pruned, floor)


def _unit_share(sparsity: float, granularity: Granularity) -> float:
    """The share of units to prune for ``sparsity`` of the weights."""
    return sparsity / granularity.max_sparsity if granularity.is_nm else sparsity


def _local_counts(layers: Mapping[str, _Layer], share: float) -> dict[str, int]:
    counts = {}
    for name, layer in layers.items():
        n_units = layer.scores.numel()
        wanted = min(_round(share * n_units), n_units - layer.floor)
        counts[name] = max(wanted, layer.pruned_before)
    return counts


def _global_counts(layers: Mapping[str, _Layer], sparsity: float, total: int) -> dict[str, int]:
    """Units per layer when all layers' units are ranked together: the prefix of the ranking whose zeroed
    weights come closest to ``sparsity * total`` (never fewer than were pruned before)."""
    names = list(layers)
    pool_scores, pool_sizes, pool_layer = [], [], []
    for i, name in enumerate(names):
        layer = layers[name]
        order = torch.argsort(layer.scores.cpu(), stable=True)
        candidates = order[: layer.scores.numel() - layer.floor]  # the best ``floor`` units always stay
        pool_scores.append(layer.scores.cpu()[candidates])
        pool_sizes.append(torch.full((candidates.numel(),), layer.size, dtype=torch.float64))
        pool_layer.append(torch.full((candidates.numel(),), i, dtype=torch.long))
    scores, sizes, owner = torch.cat(pool_scores), torch.cat(pool_sizes), torch.cat(pool_layer)
    order = torch.argsort(scores, stable=True)
    zeroed = torch.cat([torch.zeros(1, dtype=torch.float64), sizes[order].cumsum(0)])
    k = int(torch.argmin((zeroed - _round(sparsity * total)).abs()))  # the first of equally close prefixes
    k = max(k, sum(layer.pruned_before for layer in layers.values()))  # pruned units rank first (-inf)
    per_layer = torch.bincount(owner[order[:k]], minlength=len(names))
    return {name: int(per_layer[i]) for i, name in enumerate(names)}


def _mask_of(
    weight: torch.Tensor,
    scores: torch.Tensor,
    layer: _Layer,
    count: int,
    previous: torch.Tensor | None,
    granularity: Granularity,
) -> torch.Tensor:
    pruned_units = torch.zeros(layer.scores.numel(), dtype=torch.bool, device=weight.device)
    order = torch.argsort(layer.scores.cpu(), stable=True)[:count].to(weight.device)
    pruned_units[order] = True
    if not granularity.is_nm:
        keep = (~pruned_units)[:, None].expand(unit_view(weight, granularity).shape)
        return keep.reshape(weight.shape).clone()
    groups = unit_view(scores, granularity)
    top = groups.topk(granularity.n, dim=1).indices
    pattern = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    if previous is not None:  # a group pruned before keeps its pattern
        before = unit_view(previous.to(weight.device), granularity)
        pattern = torch.where((before.sum(dim=1) <= granularity.n)[:, None], before, pattern)
    keep = torch.where(pruned_units[:, None], pattern, torch.ones_like(pattern))
    return keep.reshape(weight.shape)


def compute_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    granularity: str | Granularity,
    context: str = "local",
    criterion: str | Criterion = "magnitude",
    previous: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = kept) of the same shapes as ``weights``, for ``sparsity`` of their weights.

    ``previous`` masks (from the last step) are respected: what they zeroed stays zeroed. See the module
    docstring for granularities, criteria and contexts.
    """
    g = parse_granularity(granularity)
    if not 0.0 <= sparsity <= g.max_sparsity + 1e-9:
        raise ValueError(
            f"sparsity={sparsity!r} is invalid for granularity {g}; it must lie in [0, {g.max_sparsity:g}]"
        )
    if context not in ("local", "global"):
        raise ValueError(f"context={context!r} is unknown; choose one of ['global', 'local']")
    previous = previous or {}
    scores, layers = {}, {}
    for name, weight in weights.items():
        if not fits(weight, g):
            raise ValueError(f"layer {name!r}: rows of {weight[0].numel()} weights cannot be cut into groups of {g.m}")
        scores[name] = element_scores(weight, criterion, generator).to(weight.device)
        layers[name] = _layer_units(weight, scores[name], previous.get(name), g)
    if context == "local":
        counts = _local_counts(layers, _unit_share(sparsity, g))
    else:
        counts = _global_counts(layers, sparsity, sum(w.numel() for w in weights.values()))
    return {
        name: _mask_of(weight, scores[name], layers[name], counts[name], previous.get(name), g)
        for name, weight in weights.items()
    }


def lift_masks(
    masks: Mapping[str, torch.Tensor],
    share: float,
    granularity: str | Granularity,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Masks for a FALLING sparsity: of each layer's pruned units, ``round(share * pruned)`` stay pruned and
    the others come back; kept units stay kept. ``share`` is the new sparsity over the current one, so every
    layer's sparsity falls by the same factor, ranked locally or globally alike.

    The units that come back are drawn at random (from ``generator``): the weights of a pruned unit are all
    zero, so no magnitude tells them apart. They come back as zeros and train again.

    >>> mask = torch.tensor([[True, False, False, False, False]])
    >>> lift_masks({"fc": mask}, 0.5, "weight", torch.Generator().manual_seed(0))["fc"].sum().item()
    3
    """
    g = parse_granularity(granularity)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share={share!r} is invalid; lifting masks keeps a share in [0, 1] of the pruned units")
    lifted = {}
    for name, mask in masks.items():
        units = unit_view(mask.bool(), g).clone()
        pruned = (units.sum(dim=1) <= g.n if g.is_nm else ~units.any(dim=1)).nonzero().flatten()
        stay = _round(share * pruned.numel())
        back = pruned[torch.randperm(pruned.numel(), generator=generator)[stay:].to(pruned.device)]
        units[back] = True
        lifted[name] = units.reshape(mask.shape)
    return lifted


def output_channel_mask(mask: torch.Tensor) -> torch.Tensor:
    """Which output channels (filters) of a weight mask keep any weight: the mask of the layer's bias and
    of the BatchNorm after it, under ``"filter"`` granularity.

    >>> output_channel_mask(torch.tensor([[True, False], [False, False]])).tolist()
    [True, False]
    """
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def nm_pattern_holds(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether at most ``n`` of every group of ``m`` consecutive weights along each row of
    ``weight.flatten(1)`` are non-zero.

    >>> nm_pattern_holds(torch.tensor([[0.0, 1.0, 0.0, 2.0]]), 2, 4), nm_pattern_holds(torch.ones(1, 4), 2, 4)
    (True, False)
    """
    if weight.dim() < 2 or weight[0].numel() % m:
        return False
    return bool(((weight.detach().reshape(-1, m) != 0).sum(dim=1) <= n).all())


# -- reports -------------------------------------------------------------------------------------------
OVERALL = "Overall"


@dataclass(frozen=True)
class SparsityRow:
    """One row of :func:`sparsity_report`: a layer's weight (or ``Overall``, every reported weight)."""

    layer: str
    type: str
    params: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0


def sparsity_rows(weights: Mapping[str, tuple[str, torch.Tensor]]) -> list[SparsityRow]:
    """Rows for ``{layer: (type name, weight)}`` plus the ``Overall`` row.

    >>> rows = sparsity_rows({"fc": ("Linear", torch.tensor([[0.0, 1.0], [0.0, 0.0]]))})
    >>> [(r.layer, r.zeros, r.sparsity) for r in rows]
    [('fc', 3, 0.75), ('Overall', 3, 0.75)]
    """
    rows = [
        SparsityRow(name, kind, weight.numel(), int((weight.detach() == 0).sum()))
        for name, (kind, weight) in weights.items()
    ]
    rows.append(SparsityRow(OVERALL, "all", sum(r.params for r in rows), sum(r.zeros for r in rows)))
    return rows


def render_sparsity_report(rows: Sequence[SparsityRow]) -> str:
    """The per-layer sparsity report: layer, type, params, zeros, sparsity, then the overall row.

    >>> print(render_sparsity_report(sparsity_rows({"fc": ("Linear", torch.zeros(2, 2))})))
    layer    type    params  zeros  sparsity
    -------  ------  ------  -----  --------
    fc       Linear  4       4      100.00%
    -------  ------  ------  -----  --------
    Overall  all     4       4      100.00%
    """
    cells = [(r.layer, r.type, f"{r.params:,}", f"{r.zeros:,}", f"{100 * r.sparsity:.2f}%") for r in rows]
    return render_table(("layer", "type", "params", "zeros", "sparsity"), cells, rule_before_last=True)
