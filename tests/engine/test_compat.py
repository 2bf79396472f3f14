"""The torch-pruning traps that lightning_prune.engine.compat works around, checked against the installed
torch-pruning: when one of these tests fails after an upgrade, the trap is gone and its workaround in
compat.py can go too. Then the workarounds themselves."""

from __future__ import annotations

import inspect

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.engine import compat
from lightning_prune.engine.pruner import ChannelPruner


def grouped_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 1))


def test_trap_base_pruner_mutates_its_shared_default_dicts():
    default = inspect.signature(tp.pruner.BasePruner.__init__).parameters["out_channel_groups"].default
    before = dict(default)
    try:
        tp.pruner.BasePruner(grouped_net(), torch.zeros(1, 3, 4, 4), importance=tp.importance.MagnitudeImportance())
        assert len(default) > len(before), "BasePruner no longer fills its shared default dict"
    finally:
        default.clear()
        default.update(before)


def test_workaround_fresh_dicts_leave_the_defaults_alone():
    default = inspect.signature(tp.pruner.BasePruner.__init__).parameters["out_channel_groups"].default
    before = dict(default)
    compat.build_base_pruner(grouped_net(), torch.zeros(1, 3, 4, 4), importance=tp.importance.MagnitudeImportance())
    assert default == before


def test_trap_tracing_leaves_the_model_in_eval_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout()).train()
    tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 4, 4))
    assert not net.training


def test_workaround_training_modes_survive_the_pruner():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Dropout(), nn.Conv2d(8, 2, 1)).train()
    net[1].eval()
    ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[2]]).prune_to(0.5)
    assert net.training and net[0].training and not net[1].training


def test_trap_pruning_replaces_parameter_objects():
    conv = nn.Conv2d(3, 8, 1)
    weight = conv.weight
    tp.prune_conv_out_channels(conv, idxs=[0, 1])
    assert conv.weight is not weight and conv.weight.shape[0] == 6


def test_trap_random_importance_takes_no_seed():
    assert "seed" not in inspect.signature(tp.importance.RandomImportance.__init__).parameters


def test_trap_hessian_accumulate_grad_keeps_only_the_last_squared_gradient():
    # accumulate_grad keys its sums by parameter but looks them up by name, so every call starts afresh:
    # ScheduledPruning sums the squared gradients itself (ScheduledPruning.add_gradients)
    net = nn.Linear(2, 1, bias=False)
    imp = tp.importance.GroupHessianImportance()
    for grad in (3.0, 1.0):
        net.weight.grad = torch.full_like(net.weight, grad)
        imp.accumulate_grad(net)
    assert imp._accu_grad[net.weight].tolist() == [[1.0, 1.0]]  # not 3^2 + 1^2 = 10
    assert imp._counter[net.weight] == 1  # not 2


def test_trap_attention_attributes_are_not_updated():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj, self.num_heads, self.head_dim = nn.Linear(8, 24), nn.Linear(8, 8), 2, 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.proj(v + 0 * (q * k))

    block = Attention()
    tp.pruner.BasePruner(
        block, torch.zeros(1, 3, 8), importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
        num_heads={block.qkv: 2}, prune_num_heads=True, head_pruning_ratio=0.5, ignored_layers=[block.proj],
        in_channel_groups={}, out_channel_groups={}, channel_groups={},
    ).step()
    assert block.qkv.out_features < 24 and (block.num_heads, block.head_dim) == (2, 4)


def test_trap_full_groups_are_rejected_by_the_graph():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 2, 2))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
    assert not graph.check_pruning_group(group)
    with compat.full_groups_allowed(graph):
        assert graph.check_pruning_group(group)
        assert not compat.check_group(graph, group)  # the real check, for the trimmed group
    assert not graph.check_pruning_group(group)


def test_release_autograd_drops_the_traced_activations():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 4, 4))
    assert compat.graph_has_autograd(graph)
    assert compat.release_autograd(graph) > 0
    assert not compat.graph_has_autograd(graph)


def test_set_history_replaces_the_graph_history():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[1]])
    pruner.prune_to(0.5)
    assert len(pruner.history()) == 1
    compat.set_history(pruner.graph, [])
    assert pruner.history() == []


# -- traps behind the attention, Conv1D and bare-parameter workarounds ---------------------------------
class Conv1D(nn.Module):
    """transformers' Conv1D, by shape: weight ``(in, out)``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight, self.bias = nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


def conv1d_mlp() -> nn.Module:
    return nn.Sequential(Conv1D(8, 4), nn.GELU(), Conv1D(4, 8))


def test_trap_criteria_score_no_layer_they_do_not_know():
    from lightning_prune.engine.hf import layer_pruners

    net = conv1d_mlp()
    graph = tp.DependencyGraph().build_dependency(
        net, example_inputs=torch.zeros(1, 3, 4), customized_pruners=layer_pruners(net)
    )
    pruner = layer_pruners(net)[Conv1D]
    group = graph.get_pruning_group(net[0], pruner.prune_out_channels, list(range(8)))
    assert tp.importance.GroupMagnitudeImportance(p=2)(group) is None  # the MLP would never be pruned
    from lightning_prune.engine.criteria import GroupScorer

    scores = GroupScorer(tp.importance.GroupMagnitudeImportance(p=2))(group)
    assert scores is not None and scores.shape == (8,)


def test_trap_the_macs_counter_treats_unknown_layers_as_free():
    tp.utils.op_counter.MODULES_MAPPING.pop(Conv1D, None)
    net = conv1d_mlp()
    assert tp.utils.count_ops_and_params(net, torch.zeros(1, 3, 4))[0] < 3 * 8 * 4  # the GELU only
    from lightning_prune import count_macs_params

    assert count_macs_params(net, torch.zeros(1, 3, 4))[0] >= 2 * 3 * 8 * 4


def test_trap_pruning_a_bare_parameter_rekeys_the_graph():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.scale = nn.Conv2d(3, 4, 1), nn.Parameter(torch.ones(1, 4, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.scale

    net = Net()
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 2, 2))
    old = net.scale
    saved = compat.parameter_bookkeeping(graph)
    graph.get_pruning_group(net.conv, tp.prune_conv_out_channels, [0]).prune()
    assert net.scale is not old and net.scale in graph.module2node and old not in graph.module2node
    compat.restore_parameter_bookkeeping(graph, saved)
    assert old in graph.module2node and graph.module2node[old].module is old


def test_trap_split_mappings_only_follow_dim_1():
    # GPT-2's fused c_attn is split along the last dim of a 3-D tensor: torch-pruning leaves such a split
    # unmapped, so its q/k/v parts would be coupled with the output projection index for index
    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = nn.Linear(4, 12), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).split(4, dim=2)
            return self.proj(v * (q * k).sum(-1, keepdim=True))

    net = Fused()
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 4))
    group = graph.get_pruning_group(net.qkv, tp.prune_linear_out_channels, list(range(12)))
    proj_in = [idxs for dep, idxs in group if dep.target.module is net.proj]
    assert proj_in and max(proj_in[0]) >= net.proj.in_features  # mapped past the layer's width
