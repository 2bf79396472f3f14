"""Attention blocks (lightning_prune.engine.attention): head counts for torch-pruning, the blocks' stored
``num_heads``/``head_dim`` after a prune, and whole-head pruning aimed per step through ChannelPruner."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.engine.attention import attention_heads, attention_kwargs, sync_attention
from lightning_prune.engine.pruner import ChannelPruner


class Attention(nn.Module):
    """timm-style: one qkv Linear, stored num_heads and head_dim used by forward."""

    def __init__(self, dim: int = 8, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class Net(nn.Module):
    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.embed, self.attn, self.fc = nn.Linear(4, 8), Attention(8, heads), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(self.embed(x)).mean(1))


X = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(0))


def qkv_pruner(model: Net, global_pruning: bool = False, **kwargs) -> ChannelPruner:
    """Only the attention's inner dims are prunable: embed/proj/fc (the residual stream, the head) are kept."""
    ignored = [model.embed, model.attn.proj, model.fc]
    return ChannelPruner(
        model, X, global_pruning=global_pruning, ignored_layers=ignored, **attention_kwargs(model, kwargs)
    )


# -- attention_heads / sync_attention -------------------------------------------------------------------
def test_attention_heads_finds_every_block_with_a_qkv_linear_and_int_heads():
    class NotABlock(nn.Module):
        def __init__(self, qkv: nn.Module, num_heads: object) -> None:
            super().__init__()
            self.qkv, self.num_heads = qkv, num_heads

    model = nn.ModuleDict({
        "a": Attention(8, 2),
        "deep": nn.Sequential(nn.Identity(), Attention(12, 3)),
        "conv_qkv": NotABlock(nn.Conv1d(8, 24, 1), 2),
        "float_heads": NotABlock(nn.Linear(8, 24), 2.0),
        "no_heads": nn.Module(),
    })  # fmt: skip
    assert attention_heads(model) == {model["a"].qkv: 2, model["deep"][1].qkv: 3}


def test_sync_attention_sets_heads_and_recomputes_head_dim():
    model = nn.Sequential(Attention(8, 2), Attention(8, 4))
    a, b = model[0], model[1]
    a.qkv, b.qkv = nn.Linear(8, 12), nn.Linear(8, 6)  # as if pruned
    sync_attention(model, {a.qkv: 2, b.qkv: 1})
    assert (a.num_heads, a.head_dim) == (2, 12 // (3 * 2))
    assert (b.num_heads, b.head_dim) == (1, 6 // (3 * 1))

    b.qkv = nn.Linear(8, 3)
    sync_attention(model, {})  # no count from torch-pruning: the block's own head count stays
    assert (b.num_heads, b.head_dim) == (1, 1)


def test_sync_attention_does_not_invent_a_head_dim():
    class NoHeadDim(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.num_heads = nn.Linear(8, 24), 4

    block = NoHeadDim()
    sync_attention(block, {block.qkv: 2})
    assert block.num_heads == 2 and not hasattr(block, "head_dim")


# -- attention_kwargs -----------------------------------------------------------------------------------
def test_attention_kwargs_fill_in_heads_and_mha_channel_groups_and_the_user_wins():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.own, self.other = Attention(8, 2), Attention(8, 4)
            self.mha = nn.MultiheadAttention(8, 2)

    model = Mixed()
    given = {"num_heads": {model.other.qkv: 1}, "out_channel_groups": {model.mha: 4}, "round_to": 2}
    kwargs = attention_kwargs(model, given)
    assert kwargs["num_heads"] == {model.own.qkv: 2, model.other.qkv: 1}
    assert kwargs["in_channel_groups"] == {model.mha: 2}
    assert kwargs["out_channel_groups"] == {model.mha: 4}
    assert kwargs["round_to"] == 2
    assert given == {"num_heads": {model.other.qkv: 1}, "out_channel_groups": {model.mha: 4}, "round_to": 2}
    assert attention_kwargs(nn.Linear(2, 2), {}) == {"num_heads": {}, "in_channel_groups": {}, "out_channel_groups": {}}


# -- through ChannelPruner ------------------------------------------------------------------------------
def test_head_dims_are_pruned_alike_and_the_block_attributes_follow():
    for global_pruning in (False, True):
        model = Net(heads=2)
        qkv_pruner(model, global_pruning).prune_to(0.5)
        # 2 heads of 4 dims for each of q, k, v: each head keeps 2 dims, so qkv has 3 * 2 * 2 outputs
        assert model.attn.qkv.out_features == 12 and model.attn.proj.in_features == 4
        assert (model.attn.num_heads, model.attn.head_dim) == (2, 2)
        assert model(X).shape == (1, 3)


def test_whole_heads_go_only_when_aimed_and_relative_to_the_original_count():
    model = Net(heads=4)  # 4 heads of 2 dims
    pruner = qkv_pruner(model, prune_num_heads=True, head_pruning_ratio=0.5, prune_head_dims=False)
    pruner.prune_to(0.5)  # not aimed: no head goes, and head dims are not pruned
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.qkv.out_features) == (4, 2, 24)

    pruner.aim_heads(0.5)  # half of the final head ratio: 25% of 4 heads -> 1 goes
    pruner.prune_to(0.5)
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.qkv.out_features) == (3, 2, 18)
    assert model(X).shape == (1, 3)

    pruner.aim_heads(1.0)  # the full 50% of the ORIGINAL 4 heads: 2 left, not half of the 3 left
    pruner.prune_to(0.5)
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.qkv.out_features) == (2, 2, 12)
    pruner.aim_heads(1.0)  # aimed again at the same share: nothing compounds
    pruner.prune_to(0.5)
    assert model.attn.num_heads == 2 and model.attn.qkv.out_features == 12
    assert model(X).shape == (1, 3)


def test_whole_head_pruning_keeps_the_strongest_head():
    model = Net(heads=2)
    with torch.no_grad():
        # rows of head 1 (dims 4..7 of each of q, k, v) are large, head 0 small
        weight = model.attn.qkv.weight.view(3, 2, 4, 8)
        weight[:, 0].fill_(0.01)
        weight[:, 1].fill_(1.0)
        model.attn.proj.weight.fill_(0.5)
    strong = model.attn.qkv.weight.detach().view(3, 2, 4, 8)[:, 1].reshape(12, 8).clone()
    pruner = qkv_pruner(model, prune_num_heads=True, head_pruning_ratio=0.5, prune_head_dims=False)
    pruner.aim_heads(1.0)
    pruner.prune_to(0.5)
    assert model.attn.num_heads == 1
    assert torch.equal(model.attn.qkv.weight.detach(), strong)
