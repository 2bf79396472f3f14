"""Hugging Face transformers' conventions, found by duck typing: ``transformers`` is never imported.

What a model from ``transformers`` needs beyond torch-pruning's standard layers:

- *The KV cache off while tracing.* With ``config.use_cache`` on, a decoder's forward returns a cache object
  and concatenates new keys onto an empty one; torch-pruning's tracing and our checks cannot follow either.
  :func:`no_kv_cache` switches every ``config.use_cache`` off for the block.
- *transformers' ``Conv1D``* (GPT-2's projections: a Linear with its weight stored transposed, ``(in, out)``)
  is no layer torch-pruning knows. :class:`Conv1DPruner` prunes it (registered as a custom pruner for every
  such class found in the model, :func:`layer_pruners`), :func:`linear_view` lets every importance criterion
  score it as the Linear it is, and it is counted in MACs (:func:`register_macs`).
- *Tied weights* (an LM head sharing the input embedding's matrix): torch-pruning gives each of the two
  modules its own new parameter; :func:`retie` shares it again after a prune.
- *The config* (``hidden_size``, ``num_attention_heads``, ...) is shared by every layer; it is updated where
  every layer agrees (:mod:`.attention`).

>>> class Conv1D(torch.nn.Module):   # the shape of transformers.pytorch_utils.Conv1D
...     def __init__(self, nf, nx):
...         super().__init__()
...         self.nf, self.nx = nf, nx
...         self.weight, self.bias = torch.nn.Parameter(torch.randn(nx, nf)), torch.nn.Parameter(torch.zeros(nf))
>>> layer = Conv1D(6, 4)
>>> is_conv1d(layer), conv1d_width(layer)
(True, (4, 6))
>>> _ = Conv1DPruner().prune_out_channels(layer, [0, 5])
>>> layer.nf, tuple(layer.weight.shape), tuple(layer.bias.shape)
(4, (4, 4), (4,))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from . import compat


# -- the KV cache -------------------------------------------------------------------------------------
@contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Switch ``config.use_cache`` off on every submodule's config inside the block (and back on after)."""
    configs: dict[int, Any] = {}
    for module in model.modules() if isinstance(model, nn.Module) else ():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "use_cache", None) is True:
            configs[id(config)] = config
    try:
        for config in configs.values():
            config.use_cache = False
        yield
    finally:
        for config in configs.values():
            config.use_cache = True


# -- transformers' Conv1D -----------------------------------------------------------------------------
def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers-style ``Conv1D``: ``nf`` outputs, weight of shape ``(in, nf)``."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def conv1d_width(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` features of a Conv1D."""
    return int(module.weight.shape[0]), int(module.weight.shape[1])


class Conv1DPruner(tp.pruner.BasePruningFunc):
    """torch-pruning pruner for transformers' ``Conv1D`` (``y = x @ W + b`` with ``W`` of shape ``(in, out)``)."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        drop = set(int(i) for i in idxs)
        keep = [i for i in range(layer.weight.shape[1]) if i not in drop]
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if getattr(layer, "bias", None) is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        drop = set(int(i) for i in idxs)
        keep = [i for i in range(layer.weight.shape[0]) if i not in drop]
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if hasattr(layer, "nx"):
            layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[1])

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])


CONV1D_PRUNER = Conv1DPruner()


def conv1d_types(model: nn.Module) -> list[type]:
    """The Conv1D classes used in ``model``."""
    return list(dict.fromkeys(type(m) for m in model.modules() if is_conv1d(m)))


def layer_pruners(model: nn.Module) -> dict[type, tp.pruner.BasePruningFunc]:
    """torch-pruning ``customized_pruners`` for the layers of ``model`` it does not know (Conv1D)."""
    return {cls: CONV1D_PRUNER for cls in conv1d_types(model)}


def linear_view(module: nn.Module) -> nn.Linear:
    """A Linear sharing the Conv1D's weights, transposed (gradients too), for importance criteria."""
    view = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(view)
    view.in_features, view.out_features = conv1d_width(module)
    weight = nn.Parameter(module.weight.data.t(), requires_grad=module.weight.requires_grad)
    if module.weight.grad is not None:
        weight.grad = module.weight.grad.t()
    view.weight = weight
    bias = getattr(module, "bias", None)
    if bias is None:
        view.bias = None
    else:
        view.bias = nn.Parameter(bias.data, requires_grad=bias.requires_grad)
        if bias.grad is not None:
            view.bias.grad = bias.grad
    return view


def _conv1d_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    """MACs of a Conv1D, counted as torch-pruning counts a Linear."""
    n_in, n_out = conv1d_width(module)
    rows = inputs[0].numel() // max(n_in, 1)
    module.__flops__ += int(rows * n_in * n_out + (n_out if getattr(module, "bias", None) is not None else 0))


def register_macs(model: nn.Module) -> None:
    """Make torch-pruning's MACs counter count the model's Conv1D layers (it treats unknown layers as free)."""
    for cls in conv1d_types(model):
        compat.register_macs_counter(cls, _conv1d_macs)


# -- tied weights -------------------------------------------------------------------------------------
def tied_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Groups of ``(module, attribute)`` that hold the same parameter object (e.g. an LM head tied to the
    input embedding), the first of each group being where it was first registered."""
    where: dict[int, list[tuple[nn.Module, str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner, _, attr = name.rpartition(".")
        where.setdefault(id(param), []).append((model.get_submodule(owner), attr))
    return [holders for holders in where.values() if len(holders) > 1]


def retie(tied: Sequence[Sequence[tuple[nn.Module, str]]]) -> None:
    """Share each group's first parameter with the other holders again (after a prune gave each its own)."""
    for (module, attr), *others in tied:
        param = getattr(module, attr)
        for other, other_attr in others:
            if getattr(other, other_attr) is not param and getattr(other, other_attr).shape == param.shape:
                setattr(other, other_attr, param)
