"""Attention blocks with their own ``qkv`` Linear: tell torch-pruning their head counts, and keep the
blocks' stored ``num_heads``/``head_dim`` right after every prune.

torch-pruning prunes ``nn.MultiheadAttention`` as a whole (and updates its ``embed_dim``/``head_dim``), but a
hand-written attention (timm's ``Attention``: ``self.qkv = nn.Linear(dim, 3 * dim)``, ``self.num_heads``,
``self.head_dim``) is only a Linear to it. Its ViT examples pass ``num_heads={attn.qkv: attn.num_heads}`` (so
every head loses the same dims, or whole heads go with ``prune_num_heads=True``) and then set the block's
attributes by hand; :func:`attention_heads` and :func:`sync_attention` do both for any module following that
convention.

>>> import torch
>>> from torch import nn
>>> class Attention(nn.Module):
...     def __init__(self, dim=8, num_heads=2):
...         super().__init__()
...         self.num_heads, self.head_dim = num_heads, dim // num_heads
...         self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
>>> attn = Attention()
>>> heads = attention_heads(attn)
>>> heads == {attn.qkv: 2}
True
>>> attn.qkv = nn.Linear(8, 12)  # as if pruned to 2 dims per head
>>> sync_attention(attn, heads)
>>> attn.num_heads, attn.head_dim
(2, 2)
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
    ]


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """``{block.qkv: block.num_heads}`` for every submodule with a ``qkv`` Linear and an int ``num_heads``."""
    return {block.qkv: block.num_heads for block in _blocks(model)}


def sync_attention(model: nn.Module, num_heads: Mapping[nn.Module, int]) -> None:
    """Set each attention block's ``num_heads`` (from torch-pruning's current head counts) and ``head_dim``
    (``qkv.out_features // (3 * num_heads)``) after a prune."""
    for block in _blocks(model):
        heads = int(num_heads.get(block.qkv, block.num_heads))
        block.num_heads = heads
        if hasattr(block, "head_dim"):
            block.head_dim = block.qkv.out_features // (3 * heads)


def attention_kwargs(model: nn.Module, pruner_kwargs: Mapping[str, object]) -> dict[str, object]:
    """``pruner_kwargs`` for ``BasePruner`` with the model's attention filled in; what the user set wins.

    - ``num_heads``: :func:`attention_heads` (own ``qkv`` Linears);
    - ``in_channel_groups``/``out_channel_groups``: ``num_heads`` for every ``nn.MultiheadAttention``.
      torch-pruning's pruner for it asserts that the pruned ``embed_dim`` still divides by ``num_heads`` but
      does not tell the ranking, so a 50% step on the residual stream fails; as channel groups, every head
      loses the same number of dims.

    >>> mha = nn.MultiheadAttention(8, 2)
    >>> attention_kwargs(mha, {})["out_channel_groups"] == {mha: 2}
    True
    """
    kwargs = dict(pruner_kwargs)
    kwargs["num_heads"] = {**attention_heads(model), **dict(kwargs.get("num_heads") or {})}  # type: ignore[arg-type]
    groups = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for key in ("in_channel_groups", "out_channel_groups"):
        kwargs[key] = {**groups, **dict(kwargs.get(key) or {})}  # type: ignore[arg-type]
    return kwargs
