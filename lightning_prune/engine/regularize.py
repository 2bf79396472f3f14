"""Sparse training: group-norm regularisation over the same dependency groups that will be pruned.

DepGraph's "sparse learning" (Fang et al., CVPR 2023; torch-pruning's ``GroupNormPruner.regularize``): after
each backward pass, the weights of every channel of every group get an extra gradient ``strength * w *
gamma``, where ``gamma`` rises from 1 for the group's strongest channel (by group L2 norm) to ``alpha`` for its
weakest. Weak channels are driven towards zero while the model trains, so that the channels pruning removes
(ranked by group norm: criterion ``l2``) carry little of what it has learnt.

The math is torch-pruning's; this module computes it with one pass per weight tensor (index tensors built
once per prune, plain slices where a group covers a whole tensor) instead of torch-pruning's per-step fancy
indexing of every weight, which costs about 1 s per optimizer step for a ResNet-18 on a CPU (7x the step);
``tests/engine/test_regularize.py`` checks that both give the same gradient.

>>> import torch
>>> from torch import nn
>>> from lightning_prune.engine.pruner import ChannelPruner
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten())
>>> pruner = ChannelPruner(net, torch.zeros(1, 3, 8, 8), ignored_layers=[net[2]])
>>> sparsity = GroupSparsity(pruner, strength=1e-3, start_epoch=0, end_epoch=2)
>>> for p in net.parameters():
...     p.grad = torch.zeros_like(p)
>>> sparsity.apply(epoch=0)
True
>>> bool(net[0].weight.grad.abs().sum() > 0), sparsity.apply(epoch=3)
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .pruner import ChannelPruner

DEFAULT_ALPHA = 2.0**4  # torch-pruning's GroupNormPruner.regularize default: the weakest channel gets 16x


@dataclass
class _Item:
    """One weight tensor of a group: the channel dim, its indices (None: all, in order) and their roots."""

    layer: nn.Module
    dim: int
    idxs: torch.Tensor | None
    roots: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    def values(self) -> torch.Tensor:
        w = self.weight.detach()
        return w if self.idxs is None else w.index_select(self.dim, self.idxs.to(w.device))

    def channel_sq_norms(self) -> torch.Tensor:
        w = self.values()
        dims = [d for d in range(w.dim()) if d != self.dim]
        return torch.linalg.vector_norm(w, dim=dims).pow(2) if dims else w.pow(2)  # one pass


def _items(pruner: ChannelPruner) -> list[tuple[int, list[_Item]]]:
    groups = []
    for items in pruner.regularized_items():
        made = []
        for layer, kind, idxs, roots in items:
            transposed = bool(getattr(layer, "transposed", False))
            dim = {"out": 1 if transposed else 0, "in": 0 if transposed else 1, "bn": 0}[kind]
            full = idxs == list(range(layer.weight.shape[dim]))
            made.append(_Item(layer, dim, None if full else torch.tensor(idxs), torch.tensor(roots)))
        groups.append((1 + max(int(i.roots.max()) for i in made), made))
    return groups


class GroupSparsity:
    """Group-norm regularisation of ``pruner``'s groups during epochs ``start_epoch..end_epoch``.

    Args:
        pruner: the fit's pruner: its groups (ignored and output layers excluded) are the ones regularised.
        strength: the regularisation coefficient (torch-pruning's ``reg``), > 0.
        start_epoch: first epoch it applies in.
        end_epoch: last epoch it applies in (inclusive).
        alpha: how much harder the weakest channel of a group is pushed than the strongest (>= 1).
    """

    def __init__(
        self, pruner: ChannelPruner, strength: float, start_epoch: int, end_epoch: int, alpha: float = DEFAULT_ALPHA
    ) -> None:
        self.pruner, self.strength, self.alpha = pruner, float(strength), float(alpha)
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.steps = 0  # optimizer steps regularised so far (one per step, whatever the accumulation)
        self._groups = _items(pruner)

    def active(self, epoch: int) -> bool:
        return self.start_epoch <= epoch <= self.end_epoch

    @torch.no_grad()
    def apply(self, epoch: int) -> bool:
        """Add the regularisation gradient if ``epoch`` is in the window; call after backward, before the
        optimizer step (after AMP unscaling and DDP's all-reduce). Returns whether it applied."""
        if not self.active(epoch):
            return False
        for size, items in self._groups:
            items = [i for i in items if i.weight.grad is not None]
            if not items:
                continue
            device = items[0].weight.device
            norms = torch.zeros(size, device=device, dtype=torch.float32)
            for item in items:
                norms.index_add_(0, item.roots.to(device), item.channel_sq_norms().float())
            norms = norms.sqrt()
            spread = norms.max() - norms.min()
            if not torch.isfinite(spread) or spread <= 0:
                continue  # all channels alike (or NaN): torch-pruning skips NaN groups; equal ones get 0/0
            gamma = self.alpha ** ((norms.max() - norms) / spread)
            for item in items:
                grad = item.weight.grad
                shape = [1] * grad.dim()
                shape[item.dim] = -1
                scale = gamma[item.roots.to(device)].view(shape).to(grad.dtype)
                if item.idxs is None:
                    grad.addcmul_(item.weight.detach(), scale, value=self.strength)  # one pass, no temporary
                else:
                    grad.index_add_(item.dim, item.idxs.to(device), self.strength * item.values() * scale)
        self.steps += 1
        return True

    def refresh(self) -> None:
        """Re-collect the groups after the model was pruned (or a prune rolled back)."""
        self._groups = _items(self.pruner)
