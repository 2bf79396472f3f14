"""Sizes that a layer of the model's own keeps in attributes, kept right after every prune.

torch-pruning prunes a module's bare parameters (a layer scale, a class token) but not the sizes the
module stores beside them: timm's PoolFormer ``Scale`` reshapes its scale with ``self.shape = (dim, 1, 1)``,
set at init, so after a prune ``scale.view(self.shape)`` fails. :class:`HeldSizes` records, for every
module that is not one of torch-pruning's own layer types and holds parameters itself, its parameters'
shapes and its integer (and integer-tuple) attributes at set-up (a module holding all its parameters
itself; for a container such as a model holding a class token, only channel-size names like
``hidden_dim``; names of spatial sizes such as ``image_size`` or ``kernel_size`` never); after a prune, an
attribute that held a dimension's original size gets that dimension's size now.

>>> import torch
>>> from torch import nn
>>> class Scale(nn.Module):
...     def __init__(self, dim):
...         super().__init__()
...         self.shape, self.scale = (dim, 1, 1), nn.Parameter(torch.ones(dim))
>>> net = nn.Sequential(Scale(8))
>>> sizes = HeldSizes(net)
>>> net[0].scale = nn.Parameter(torch.ones(6))   # as torch-pruning leaves it
>>> sizes.sync(); net[0].shape
(6, 1, 1)
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .hf import is_conv1d

# layers whose sizes torch-pruning's own pruners update
STANDARD = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Embedding,
    nn.PReLU,
    nn.MultiheadAttention,
    nn.LSTM,
)


SPATIAL = re.compile("image|img|patch|window|resolution|kernel|stride|pad|dilation|pool|step|seq|len|position")


CHANNELS = re.compile("dim|channel|feature|hidden|width|embed")


def _is_size(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, tuple | list | torch.Size) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


class HeldSizes:
    """The size attributes of the model's non-standard parameter-holding modules, at set-up."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.entries: list[tuple[str, dict[str, tuple[int, ...]], dict[str, Any]]] = []
        for name, module in model.named_modules():
            if isinstance(module, STANDARD) or is_conv1d(module) or isinstance(module, nn.Sequential | nn.ModuleList):
                continue
            params = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False)}
            if not params:
                continue
            # a layer of its own holds all its parameters itself; a container (a model holding a class token)
            # has many sizes of its submodules', so only its channel-size names count (``hidden_dim``)
            container = any(True for child in module.children() for _ in child.parameters())
            sizes = {n for shape in params.values() for n in shape}
            attrs = {
                k: v for k, v in vars(module).items()
                if not k.startswith("_") and k != "training" and _is_size(v) and not SPATIAL.search(k)
                and (not container or CHANNELS.search(k))
                and (set([v] if isinstance(v, int) else v) & sizes)
            }  # fmt: skip
            if attrs:
                self.entries.append((name, params, attrs))

    def sync(self) -> None:
        """Update the recorded attributes to the parameters' sizes now."""
        for name, shapes, attrs in self.entries:
            module = self.model.get_submodule(name)
            mapping: dict[int, set[int]] = {}
            for pname, shape in shapes.items():
                now = tuple(getattr(module, pname).shape)
                if len(now) != len(shape):
                    continue
                for old, new in zip(shape, now):
                    mapping.setdefault(old, set()).add(new)
            changed = {old: next(iter(new)) for old, new in mapping.items() if len(new) == 1 and old not in new}
            if not changed:
                continue
            for attr, value in attrs.items():
                if isinstance(value, int):
                    setattr(module, attr, changed.get(value, value))
                else:
                    setattr(module, attr, type(value)(changed.get(v, v) for v in value))
