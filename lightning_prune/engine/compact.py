"""Compaction: physically remove the channels that sparsity zeroed, through torch-pruning's dependency graph.

:func:`compact` works on any ``nn.Module``: after ``SparsifyCallback(granularity="filter")``, after
``torch.nn.utils.prune.ln_structured`` (masks still on: they are made permanent first) and after Lightning's
``ModelPruning``. A channel of a convolution or ``Linear`` layer (with every layer coupled to it through
residual additions or concatenations) is a *candidate* when every layer producing it has all-zero weights for
it: its value is then a constant (its bias, through its BatchNorm and activation), whatever the input. Then,
from the value that each layer reading the channel receives, measured on the example inputs and on two random
variants of them:

- **removed**: the value is exactly zero everywhere (zero bias, a BatchNorm with zero weight and bias, an
  activation keeping zero at zero): the channel goes, with its BatchNorm entries and the next layers' input
  weights;
- **folded**: the value is a non-zero constant (a BatchNorm shift, a bias through ReLU) and every reader adds
  it exactly to its bias: a ``Linear`` (after pooling or flattening), or a convolution with no padding and
  ``groups=1``; the reader's bias absorbs ``sum(weight * constant)`` and the channel goes;
- **kept** (and reported): anything else: the constant reaches a padded convolution (zero padding makes the
  border differ), the value depends on the input or position, the channel feeds the model's output, every
  channel of the layer would go (one stays), or it is coupled with a layer compaction does not reason about
  (LayerNorm, attention, custom layers).

Equality holds in eval mode (BatchNorm with running statistics: inference). The compacted copy is checked
against the original on every input above before the model itself is changed, so a model is never left
half-compacted and its outputs never change silently: a mismatch raises and leaves the model as it was.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten())
>>> with torch.no_grad():
...     net[0].weight[1:3] = 0; net[0].bias[1] = 0; net[0].bias[2] = 0.5
>>> [(f.action, f.channels) for f in zero_channels(net, torch.zeros(1, 3, 4, 4))]
[('removed', (1,)), ('folded', (2,))]
>>> x = torch.randn(2, 3, 4, 4); before = net(x)
>>> compact(net, torch.zeros(1, 3, 4, 4)) is net, net[0].out_channels, torch.allclose(net(x), before, atol=1e-6)
(True, 2, True)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from . import compat
from .inputs import map_tensors, output_tensors
from .pruner import call_model, find_output_layers, preserved_training_modes
from .sparsify import remove_masks

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class ChannelFinding:
    """What :func:`compact` does with some output channels of ``layer``: ``"removed"``, ``"folded"`` (its
    constant moved into the next layers' biases, then removed) or ``"kept"`` (with the ``reason``)."""

    layer: str
    channels: tuple[int, ...]
    action: str
    reason: str = ""


@dataclass
class _Channel:
    layer: str
    channel: int
    action: str = "removed"
    reason: str = ""
    readers: list[tuple[str, list[int]]] = field(default_factory=list)  # (layer, its input indices)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)  # reader -> value per input index


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.in_channels


def _zero_rows(weight: torch.Tensor) -> torch.Tensor:
    return (weight.detach().reshape(weight.shape[0], -1) == 0).all(dim=1)


def _classify(graph: tp.DependencyGraph, names: dict[nn.Module, str], group: Any, item: _Channel) -> None:
    """Check that every producer of the channel is zero and collect its readers; else mark it kept."""
    for dep, idxs in group:
        module, handler = dep.target.module, dep.handler
        idxs = [int(getattr(i, "idx", i)) for i in idxs]
        kind = compat.channel_op_kind(module)
        if kind == "output":
            item.action, item.reason = "kept", "it reaches the model's output"
            return
        if kind == "passthrough" or isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue  # the channel's value passes through, per channel
        if not isinstance(module, _LAYERS) or (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
                                               and not _is_depthwise(module)):
            item.action, item.reason = "kept", f"it is coupled with {names.get(module, type(module).__name__)!r}"
            return
        if graph.is_out_channel_pruning_fn(handler):
            if not _is_depthwise(module) and not bool(_zero_rows(module.weight)[idxs].all()):
                item.action = "kept"
                item.reason = f"the coupled layer {names[module]!r} has non-zero weights for it"
                return
        elif graph.is_in_channel_pruning_fn(handler):
            item.readers.append((names[module], idxs))
    if not item.readers:
        item.action, item.reason = "kept", "no layer reads it"


@torch.no_grad()
def _measure(model: nn.Module, inputs: Sequence[Any], readers: set[str]) -> dict[str, list[torch.Tensor]]:
    """Every input each of ``readers`` gets over the forward passes on ``inputs`` (eval mode)."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in readers}

    def hook(name: str):  # noqa: ANN202
        return lambda _module, args: seen[name].append(args[0].detach())

    hooks = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in readers]
    try:
        with preserved_training_modes(model):
            model.eval()
            for example in inputs:
                call_model(model, example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _constant(module: nn.Module, values: list[torch.Tensor], idxs: list[int]) -> torch.Tensor | None:
    """The value per input index of ``module`` if it is the same at every position of every pass, else None."""
    dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
    per_index = [v.index_select(dim, torch.tensor(idxs, device=v.device)).movedim(dim, 0).reshape(len(idxs), -1)
                 for v in values]
    joined = torch.cat(per_index, dim=1)
    first = joined[:, :1]
    return first[:, 0].clone() if bool((joined == first).all()) else None


def _foldable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    padding = module.padding
    return module.groups == 1 and (padding == "valid" or all(p == 0 for p in padding))


def _plan(model: nn.Module, graph: tp.DependencyGraph, inputs: Sequence[Any]) -> list[_Channel]:
    names = {m: n for n, m in model.named_modules()}
    outputs = [model.get_submodule(n) for n in find_output_layers(model, inputs[0])]
    items: list[_Channel] = []
    for group in graph.get_all_groups(ignored_layers=outputs, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root, handler = group[0].dep.target.module, group[0].dep.handler
        if not isinstance(root, _LAYERS) or not graph.is_out_channel_pruning_fn(handler):
            continue
        for channel in torch.nonzero(_zero_rows(root.weight)).flatten().tolist():
            item = _Channel(names[root], channel)
            _classify(graph, names, graph.get_pruning_group(root, handler, [channel]), item)
            items.append(item)
    seen = _measure(model, inputs, {r for item in items if item.action != "kept" for r, _ in item.readers})
    for item in items:
        if item.action == "kept":
            continue
        for reader, idxs in item.readers:
            module = model.get_submodule(reader)
            value = _constant(module, seen[reader], idxs)
            if value is None:
                item.action, item.reason = "kept", f"its value at {reader!r} changes with the input or position"
                break
            if bool((value != 0).any()):
                if not _foldable(module):
                    item.action = "kept"
                    item.reason = f"its non-zero constant reaches {reader!r}, which pads (or is grouped)"
                    break
                item.action = "folded"
                item.constants[reader] = value
        if item.action != "folded":
            item.constants = {}
    # every layer keeps one channel
    by_layer: dict[str, list[_Channel]] = {}
    for item in items:
        by_layer.setdefault(item.layer, []).append(item)
    for layer, members in by_layer.items():
        going = [m for m in members if m.action != "kept"]
        if going and len(going) == _out_channels(model.get_submodule(layer)):
            going[-1].action, going[-1].reason, going[-1].constants = "kept", "the layer keeps one channel", {}
    return items


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features


@torch.no_grad()
def _fold(model: nn.Module, item: _Channel) -> None:
    for reader, idxs in item.readers:
        if reader not in item.constants:
            continue
        module = model.get_submodule(reader)
        weight = module.weight.detach()
        columns = weight[:, idxs].reshape(weight.shape[0], len(idxs), -1).sum(dim=2)
        shift = columns @ item.constants[reader].to(weight.dtype)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
        module.bias.add_(shift)


def _apply(model: nn.Module, inputs: Sequence[Any]) -> list[_Channel]:
    """Plan and compact ``model`` in place (masks already permanent); returns the plan."""
    with compat.traceable(model):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs[0])
    items = _plan(model, graph, inputs)
    for item in items:
        if item.action == "folded":
            _fold(model, item)
    going: dict[str, list[int]] = {}
    for item in items:
        if item.action != "kept":
            going.setdefault(item.layer, []).append(item.channel)
    with torch.no_grad(), preserved_training_modes(model):
        for layer, channels in going.items():
            module = model.get_submodule(layer)
            fn = graph.get_pruner_of_module(module).prune_out_channels
            group = graph.get_pruning_group(module, fn, sorted(channels))
            if graph.check_pruning_group(group):
                group.prune()
    return items


def _variants(example_inputs: Any, seed: int = 0) -> list[Any]:
    """The example inputs and two random variants (floating tensors redrawn, others kept)."""
    generator = torch.Generator().manual_seed(seed)

    def redraw(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)

    return [example_inputs, map_tensors(redraw, example_inputs), map_tensors(redraw, example_inputs)]


def _findings(items: Sequence[_Channel]) -> list[ChannelFinding]:
    grouped: dict[tuple[str, str, str], list[int]] = {}
    for item in items:
        grouped.setdefault((item.layer, item.action, item.reason), []).append(item.channel)
    return [ChannelFinding(layer, tuple(chs), action, reason) for (layer, action, reason), chs in grouped.items()]


def zero_channels(model: nn.Module, example_inputs: Any) -> list[ChannelFinding]:
    """What :func:`compact` would do with every zero-weighted output channel of ``model``; the model is not
    changed (the plan is made on a copy)."""
    trial = copy.deepcopy(model)
    remove_masks(trial)
    return _findings(_apply(trial, _variants(example_inputs)))


@torch.no_grad()
def _outputs(model: nn.Module, inputs: Sequence[Any]) -> list[list[torch.Tensor]]:
    with preserved_training_modes(model):
        model.eval()
        return [[t.detach().clone() for t in output_tensors(call_model(model, x))] for x in inputs]


def compact(model: nn.Module, example_inputs: Any, rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
    """Physically remove every output channel of ``model`` whose value is identically zero, fold the constant
    ones into the next layer where that is exact, and return ``model`` (changed in place).

    ``torch.nn.utils.prune`` masks are made permanent first. Channels left in place are reported in one
    warning (see :func:`zero_channels`). The result is checked against the original on ``example_inputs``
    and two random variants (``torch.allclose`` with ``rtol`` and ``atol``, relative to the outputs' scale)
    before ``model`` changes; a mismatch raises ``RuntimeError`` and leaves ``model`` unchanged.
    """
    remove_masks(model)
    inputs = _variants(example_inputs)
    expected = _outputs(model, inputs)
    trial = copy.deepcopy(model)
    items = _apply(trial, inputs)
    for i, (want, got) in enumerate(zip(expected, _outputs(trial, inputs))):
        for a, b in zip(want, got):
            scale = float(a.abs().max()) if a.numel() and a.is_floating_point() else 1.0
            if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol * max(1.0, scale)):
                raise RuntimeError(
                    f"compact would change the model's outputs on input {i} (max difference "
                    f"{float((a - b).abs().max()) if a.shape == b.shape else 'shape ' + str(tuple(b.shape))}); "
                    "the model is left unchanged. Please report this model."
                )
    if not any(item.action != "kept" for item in items):
        _warn_kept(items)
        return model
    _apply(model, inputs)
    _warn_kept(items)
    return model


def _warn_kept(items: Sequence[_Channel]) -> None:
    kept = [f for f in _findings(items) if f.action == "kept"]
    if kept:
        lines = "; ".join(f"{f.layer} {list(f.channels)}: {f.reason}" for f in kept)
        warnings.warn(f"compact: zero-weighted channels left in place: {lines}", stacklevel=3)
