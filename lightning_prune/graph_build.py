"""Bound what building torch-pruning's dependency graph costs: free the traced autograd graph afterwards,
and time the build.

``DependencyGraph`` keeps the ``grad_fn`` of every traced operation on its nodes (``Node.grad_fn``, and
``_SliceOp.grad_fn``) after the build. Each ``grad_fn`` holds the tensors autograd saved for backward and,
through ``next_functions``, the whole traced graph: the activations of the example forward pass stay alive
as long as the pruner does. torch-pruning only reads them while building (shape inference and index
mapping); pruning needs just "was traced" for slices. :func:`release_autograd` drops them.

>>> import torch
>>> from torch import nn
>>> from lightning_prune.pruner import ChannelPruner
>>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
>>> pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[1]])
>>> any(getattr(node, "grad_fn", None) is not None for node in pruner.graph.module2node.values())
False
>>> pruner.build_seconds >= 0
True
"""

from __future__ import annotations

from typing import Any


class _Traced:
    """Stands in for a released ``grad_fn`` where torch-pruning only tests ``grad_fn is None``."""

    def __repr__(self) -> str:
        return "<released grad_fn>"


RELEASED = _Traced()


def release_autograd(graph: Any) -> int:
    """Drop every ``grad_fn`` reference ``graph`` (a ``torch_pruning.DependencyGraph``) kept from tracing;
    returns how many were dropped."""
    dropped = 0
    for module, node in graph.module2node.items():
        if getattr(node, "grad_fn", None) is not None:
            node.grad_fn = None
            dropped += 1
        if getattr(module, "grad_fn", None) is not None and module.grad_fn is not RELEASED:
            module.grad_fn = RELEASED  # ops._SliceOp: SlicePruner skips slices whose grad_fn is None
            dropped += 1
    return dropped
