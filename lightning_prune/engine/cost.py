"""Channel costs: what removing one channel of a layer saves, so that ranking can weigh importance by cost.

torch-pruning ranks channels by importance alone: with a global ranking, a channel of a late, small-map layer
and one of an early, large-map layer are equal if their scores are, although the second costs far more time.
:class:`CostAwareImportance` divides every group's scores by what removing one of its channels saves (the sum
over the group's layers, input side or output side), so that at a given budget the channels that cost most
per unit of importance go first. Three costs:

- ``"latency"``: each layer's forward time, timed with hooks on the model's own device (median of
  :data:`REPEATS` passes at batch :data:`COST_BATCH`, pooled over the layers that do the same work:
  :func:`layer_signature`), split evenly over its channels. With a ``unit`` (the pruner's ``round_to``),
  conv and linear layers are instead charged what removing whole units saves: each is also timed on its own
  input at full width and about a quarter and a half narrower on each side, in whole units
  (:func:`units_removed`, :func:`unit_savings`), because kernels work in blocks of channels and some layers'
  time hardly depends on one side's width (a conv on a large map with few output channels is bound by
  reading its input), so an even split misplaces the time;
- ``"macs_memory"``: a model of one sample's share of a batch of :data:`COST_BATCH`: ``MACs +
  MEMORY_MACS_PER_ELEMENT * (activation elements + weight elements / COST_BATCH)``, split over channels
  (weights are read once per batch; on small feature maps they are most of the memory traffic);
- ``"latency_per_mac"``: the ``"latency"`` timing divided by the MACs the same channels save (the group's
  seconds over its MACs): how slow a group's work is, so that at a MACs budget the layers that are slow for
  their MACs (memory-bound, small maps) lose channels first and latency falls faster than MACs.

Timed costs on CPU are measured with :func:`~.latency.steady_allocator` set: in a fresh process glibc's
defaults charged a ResNet-20's 32x32 layers 4.6x their steady per-channel time (page faults on their
activations), which stripped the first stage. Costs are re-measured before every prune (widths change);
only a global ranking is affected (a local one prunes every layer by the same ratio, whatever the cost).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
>>> costs = measure_costs(net, torch.zeros(1, 3, 8, 8), "macs_memory")
>>> one_filter = 3 * 9 * 64 + MEMORY_MACS_PER_ELEMENT * (64 + (3 * 9 + 1) / COST_BATCH)  # MACs, activation, weights
>>> bool(abs(costs[net[0]].out - one_filter) < 1e-9)
True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import compat
from .criteria import Importance
from .hf import is_conv1d
from .inputs import map_tensors, output_tensors
from .latency import steady_allocator_for
from .pruner import call_unpacked

COST_KINDS = ("latency", "macs_memory", "latency_per_mac")
# One activation element moved costs about this many multiply-accumulates: a CPU core retires ~16 fp32 MACs
# per cycle (two 8-wide FMA units) and streams about one fp32 value per cycle from memory.
MEMORY_MACS_PER_ELEMENT = 16.0
COST_BATCH = 32  # timing batch for "latency" (one sample is dominated by per-call overhead)
REPEATS = 9
# a layer whose units save no measurable time still costs this share of its evenly split time per channel
# (a zero cost would make its channels unprunable and its scores divide by zero)
FLOOR_SHARE = 0.05
# a side is timed about a quarter and a half narrower: removing one unit of a wide layer (8 of 512 channels)
# saves ~1.5% of its time, below the noise of a median of REPEATS timings, which then decided the ranking
SPAN_SHARES = (0.25, 0.5)
FULL_WIDTH = ("full", 0)  # the key of a layer's kernel timed at full width, beside (side, units removed)


@dataclass(frozen=True)
class LayerCost:
    """What removing ONE channel of a layer saves: an output channel (``out``) or an input channel (``in_``)."""

    out: float
    in_: float
    macs_out: float = 0.0  # MACs that removing one output (input) channel saves; filled by the timed kinds
    macs_in: float = 0.0


def _widths(module: nn.Module) -> tuple[int, int] | None:
    """(output channels, input channels) of a costed layer, None for others."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
        width = module.num_channels if isinstance(module, nn.GroupNorm) else (
            module.num_features if isinstance(module, nn.modules.batchnorm._BatchNorm)
            else module.normalized_shape[-1])  # fmt: skip
        return width, width
    if is_conv1d(module):  # transformers' Conv1D: weight (in, out)
        return module.weight.shape[1], module.weight.shape[0]
    return None


def _macs(module: nn.Module, out_elements: int) -> float:
    """Multiply-accumulates of one pass from the layer's output size (weights: out x fan-in)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return float(out_elements * module.weight[0].numel()) if not module.transposed else float(
            out_elements * module.weight.shape[0] // module.groups * module.weight[0, 0].numel())
    if isinstance(module, nn.Linear):
        return float(out_elements * module.in_features)
    if is_conv1d(module):
        return float(out_elements * module.weight.shape[0])
    return 0.0


def _batched(inputs: Any, n: int) -> Any:
    return map_tensors(lambda t: t.expand(n, *t.shape[1:]).contiguous() if t.dim() > 0 else t, inputs)


def _sync(tensors: list[torch.Tensor]) -> None:
    if tensors and tensors[0].is_cuda:
        torch.cuda.synchronize(tensors[0].device)


def _narrowed(module: nn.Module, x: torch.Tensor, side: str, keep: int) -> Callable[[], Any] | None:
    """A call of ``module``'s own kernel on ``x`` with only the first ``keep`` output (``side="out"``) or
    input (``"in"``) channels, its operands sliced beforehand; None for layers it cannot narrow (grouped or
    transposed convs, others)."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1:
        kernel, channel_dim = module._conv_forward, 1
    elif isinstance(module, nn.Linear):
        kernel, channel_dim = nn.functional.linear, -1
    else:
        return None
    weight, bias = module.weight, module.bias
    if side == "out":
        w, b, inp = weight[:keep], None if bias is None else bias[:keep], x
    else:
        w, b, inp = weight[:, :keep].contiguous(), bias, x.narrow(channel_dim, 0, keep).contiguous()
    return lambda: kernel(inp, w, b)


def units_removed(width: int, unit: int) -> list[int]:
    """How many units of ``unit`` channels a side ``width`` wide is timed without: about each share of
    :data:`SPAN_SHARES` of its width, at least one unit, leaving at least one channel.

    >>> units_removed(512, 8), units_removed(16, 4), units_removed(8, 8)
    ([16, 32], [1, 2], [])
    """
    steps = {max(1, round(width * share / unit)) for share in SPAN_SHARES}
    return sorted(k for k in steps if width - k * unit >= 1)


def unit_savings(full: float, narrower: Mapping[int, float], unit: int, width: int) -> float:
    """Per-channel time saved by removing units of ``unit`` channels from a side ``width`` wide: the best
    over ``narrower`` (units removed -> seconds) of (``full`` - seconds) / channels removed, at least
    :data:`FLOOR_SHARE` of ``full / width``.

    >>> unit_savings(1.0, {1: 1.0, 2: 0.5}, unit=8, width=32)  # one unit saves nothing, two save half
    0.03125
    >>> unit_savings(1.0, {1: 1.0}, unit=8, width=32)  # nothing: the floor
    0.0015625
    """
    saved = max(((full - seconds) / (k * unit) for k, seconds in narrower.items()), default=0.0)
    return max(saved, FLOOR_SHARE * full / width)


def layer_signature(module: nn.Module, sizes: tuple[int, int]) -> tuple:
    """What a layer's forward time depends on: its type, parameter shapes, conv settings and the sizes of
    its input and output. Layers with the same signature do the same work.

    >>> a, b = nn.Conv2d(4, 8, 3), nn.Conv2d(4, 8, 3)
    >>> layer_signature(a, (64, 128)) == layer_signature(b, (64, 128)) != layer_signature(a, (64, 256))
    True
    """
    settings = tuple(getattr(module, k, None) for k in ("stride", "padding", "dilation", "groups", "transposed"))
    shapes = tuple(tuple(p.shape) for p in module.parameters(recurse=False))
    return type(module), shapes, settings, sizes


def _pooled_seconds(times: Mapping[nn.Module, list[float]], sizes: Mapping[nn.Module, tuple[int, int]]
                    ) -> dict[nn.Module, float]:
    """Each timed layer's seconds: the median over every timing of the layers that share its signature
    (:func:`layer_signature`), so that equal layers get equal costs and timing noise cannot rank one of two
    identical layers as cheaper (it made the kept channels change from run to run)."""
    signature = {m: layer_signature(m, sizes[m]) for m, timings in times.items() if m in sizes and timings}
    pooled: dict[tuple, list[float]] = {}
    for module, key in signature.items():
        pooled.setdefault(key, []).extend(times[module][1:] or times[module])  # the first pass warms up
    return {module: statistics.median(pooled[key]) for module, key in signature.items()}


@torch.inference_mode()
def measure_costs(
    model: nn.Module, inputs: Any, kind: str, clock: Callable[[], float] = time.perf_counter,
    unit: int | None = None,
) -> dict[nn.Module, LayerCost]:
    """Per-channel cost of every conv, linear and norm layer of ``model`` on ``inputs`` (one sample), as
    ``kind`` (:data:`COST_KINDS`) measures it; modes are restored. ``unit``: with a timed kind, charge conv
    and linear layers what removing units of that many channels saves (see the module docstring)."""
    if kind not in COST_KINDS:
        raise ValueError(f"cost kind {kind!r} is unknown; choose one of {list(COST_KINDS)}")
    layers = {m: w for m in model.modules() if (w := _widths(m)) is not None}
    sizes: dict[nn.Module, tuple[int, int]] = {}  # per sample: (input elements, output elements)
    times: dict[nn.Module, list[float]] = {m: [] for m in layers}
    started: dict[nn.Module, float] = {}
    timed = kind in ("latency", "latency_per_mac")
    batch = COST_BATCH if timed else 1
    if timed:
        steady_allocator_for(inputs)  # no page faults charged to the layers with large activations
    # with a unit: (side, units removed) -> layer -> seconds of its kernel called directly; the full width,
    # the same for both sides, is timed once under the key FULL_WIDTH
    narrowed: dict[tuple[str, int], dict[nn.Module, list[float]]] = {}

    def time_call(key: tuple[str, int], module: nn.Module, call: Callable[[], Any], x: torch.Tensor) -> None:
        _sync([x])
        began = clock()
        _sync(output_tensors(call()))
        narrowed.setdefault(key, {}).setdefault(module, []).append(clock() - began)

    def time_narrowed(module: nn.Module, x: torch.Tensor, unit: int) -> None:
        full = _narrowed(module, x, "out", layers[module][0])
        if full is None:
            return
        time_call(FULL_WIDTH, module, full, x)
        for side, width in zip(("out", "in"), layers[module]):
            for k in units_removed(width, unit):
                time_call((side, k), module, _narrowed(module, x, side, width - k * unit), x)

    def before(module: nn.Module, args: tuple) -> None:
        if timed:
            _sync(output_tensors(args))
            started[module] = clock()

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if timed:
            _sync(output_tensors(output))
            times[module].append(clock() - started[module])
        first_in, first_out = output_tensors(args)[:1], output_tensors(output)[:1]
        if timed and unit is not None and first_in:
            time_narrowed(module, first_in[0], unit)
        if first_in and first_out:
            sizes[module] = (first_in[0].numel() // batch, first_out[0].numel() // batch)

    handles = [h for m in layers for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with compat.preserved_training_modes(model):
            model.eval()
            batched = _batched(inputs, batch)
            for _ in range(1 + (REPEATS if timed else 0)):  # the first pass warms up
                call_unpacked(model, batched)
    finally:
        for handle in handles:
            handle.remove()
    costs = {}
    seconds_of = _pooled_seconds(times, sizes) if timed else {}
    narrowed_of = {key: _pooled_seconds(timings, sizes) for key, timings in narrowed.items()}
    for module, (width_out, width_in) in layers.items():
        if module not in sizes or not width_out or not width_in:
            continue
        in_elements, out_elements = sizes[module]
        if timed:
            seconds = seconds_of[module]
            macs = _macs(module, out_elements)
            out, in_ = seconds / width_out, seconds / width_in
            full = narrowed_of.get(FULL_WIDTH, {}).get(module)
            if full is not None:  # timed narrower: charged what units save
                out, in_ = (unit_savings(full, {
                    k: narrowed_of[(side, k)][module] for k in units_removed(width, unit)
                    if module in narrowed_of.get((side, k), {})
                }, unit, width) for side, width in (("out", width_out), ("in", width_in)))
            costs[module] = LayerCost(out, in_, macs / width_out, macs / width_in)
        else:
            macs = _macs(module, out_elements)
            weights = sum(p.numel() for p in module.parameters(recurse=False)) / COST_BATCH
            costs[module] = LayerCost((macs + MEMORY_MACS_PER_ELEMENT * (out_elements + weights)) / width_out,
                                      (macs + MEMORY_MACS_PER_ELEMENT * (in_elements + weights)) / width_in)
    return costs


class CostAwareImportance(Importance):
    """``base``'s scores of a group divided by what removing one of the group's channels saves (the costs of
    :func:`measure_costs`, kept in :attr:`costs`; refresh them before each prune). With no cost known for
    any of a group's layers its scores pass unchanged.

    >>> from lightning_prune.engine.criteria import get_criterion
    >>> imp = CostAwareImportance(get_criterion("l2"))
    >>> type(imp.base).__name__, imp.costs
    ('GroupMagnitudeImportance', {})
    """

    def __init__(self, base: Importance, costs: Mapping[nn.Module, LayerCost] | None = None,
                 per_mac: bool = False) -> None:
        self.base = base
        self.costs: dict[nn.Module, LayerCost] = dict(costs or {})
        self.per_mac = per_mac  # divide by the group's cost per MAC it saves (how slow its work is)

    def group_cost(self, group: Any) -> float:
        graph = compat.group_graph(group)
        total = macs = 0.0
        for dep, _ in group:
            cost = self.costs.get(dep.target.module)
            if cost is not None:
                out = graph.is_out_channel_pruning_fn(dep.handler) if graph is not None else True
                total += cost.out if out else cost.in_
                macs += cost.macs_out if out else cost.macs_in
        if self.per_mac:
            return total / macs if macs > 0 else 0.0
        return total

    def __call__(self, group: Any, **kwargs: Any) -> torch.Tensor | None:
        scores = self.base(group, **kwargs)
        cost = self.group_cost(group)
        if scores is None or cost <= 0:
            return scores
        typical = [c.out / c.macs_out if self.per_mac else c.out
                   for c in self.costs.values() if c.macs_out > 0 or not self.per_mac]
        scale = statistics.median(typical)  # numerics only: ranks are unchanged
        return scores / (cost / scale)
