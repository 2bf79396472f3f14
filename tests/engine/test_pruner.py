"""ChannelPruner and the helpers of lightning_prune.engine.pruner, on tiny conv/linear nets.

Expected channel counts follow torch-pruning's rule for a scope: it keeps ``int(initial * (1 - ratio))`` of
the scope's ORIGINAL channels, rounded down to a multiple of ``round_to``, and ChannelPruner keeps at least
``ceil(initial * (1 - max_layer_ratio))`` per layer.
"""

from __future__ import annotations

import copy
from collections import namedtuple

import pytest
import torch
import torch_pruning as tp
from conftest import ResidualNet
from torch import nn

from lightning_prune.engine.pruner import (
    ChannelPruner,
    call_model,
    find_output_layers,
    match_layer_patterns,
    plain_history,
    replay_history,
)


def chain() -> nn.Sequential:
    """conv 3->16, conv 16->8, linear head 8->4: two independent pruning groups of 16 and 8 channels."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


X = torch.zeros(1, 3, 6, 6)


def local_pruner(net: nn.Sequential, **kwargs) -> ChannelPruner:
    return ChannelPruner(net, X, global_pruning=False, ignored_layers=[net[6]], **kwargs)


def widths(net: nn.Sequential) -> tuple[int, int, int]:
    return net[0].out_channels, net[2].out_channels, net[6].in_features


# -- call_model -----------------------------------------------------------------------------------------
class Recorder(nn.Module):
    def forward(self, *args, **kwargs):
        return args, kwargs


def test_call_model_unpacks_tuples_and_lists_and_passes_dicts_as_keywords():
    a, b = torch.zeros(1), torch.ones(1)
    model = Recorder()
    args, kwargs = call_model(model, (a, b))
    assert args[0] is a and args[1] is b and kwargs == {}
    args, kwargs = call_model(model, [a, b])
    assert len(args) == 2 and args[1] is b and kwargs == {}
    args, kwargs = call_model(model, {"image": a, "meta": b})
    assert args == () and kwargs["image"] is a and kwargs["meta"] is b
    args, kwargs = call_model(model, a)  # a bare tensor is ONE positional argument
    assert len(args) == 1 and args[0] is a


# -- find_output_layers ---------------------------------------------------------------------------------
def test_output_layers_stop_at_the_first_prunable_layer_on_each_path():
    # the path from the output goes back through Flatten/pool/ReLU to the Linear and stops there
    assert find_output_layers(chain(), X) == ["6"]
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert find_output_layers(mlp, torch.zeros(1, 4)) == ["4"]


def test_every_branch_that_reaches_the_output_is_an_output_layer():
    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.left, self.right = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            return (self.left(h) + self.right(h)).mean((2, 3))

    # both convs feed the sum directly; the stem only reaches the output through them
    assert find_output_layers(TwoBranches(), X) == ["left", "right"]


def test_output_layers_of_keyword_inputs_and_dict_outputs():
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.cls, self.box = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 2)

        def forward(self, features, scale):
            h = torch.relu(self.body(features)) * scale
            return {"cls": self.cls(h), "box": self.box(h)}

    inputs = {"features": torch.zeros(1, 4), "scale": torch.ones(1, 1)}
    assert find_output_layers(Heads(), inputs) == ["box", "cls"]  # sorted names


def test_a_frozen_model_still_has_its_output_layer_and_stays_frozen_and_in_train_mode():
    net = chain().train()
    net.requires_grad_(False)  # no parameter requires grad: untraced, no output would have a grad_fn
    assert find_output_layers(net, X) == ["6"]
    assert not any(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())  # the recording hooks are gone


# -- match_layer_patterns -------------------------------------------------------------------------------
def test_patterns_match_module_names_with_fnmatch():
    net = nn.Sequential(chain(), chain())
    matches = match_layer_patterns(net, ["*.0", "1.6"])
    assert matches == {"*.0": ["0.0", "1.0"], "1.6": ["1.6"]}


def test_a_pattern_that_matches_nothing_names_itself_and_the_first_module_names():
    net = nn.Sequential(chain(), chain())  # 2 + 2 * 7 = 16 named modules: only the first 12 are shown
    with pytest.raises(ValueError, match=r"layer pattern 'head\.\*' matches no module") as err:
        match_layer_patterns(net, ["0.0", "head.*"])
    message = str(err.value)
    assert "module names: 0, 0.0, 0.1," in message and message.endswith(", ...")
    assert "1.6" not in message  # the 16th name is cut off


# -- plain_history --------------------------------------------------------------------------------------
def test_plain_history_turns_hybrid_indices_and_tensors_into_plain_values():
    HybridIndex = namedtuple("HybridIndex", ["idx", "root_idx"])  # what torch-pruning records
    plain = plain_history([("conv", 1, [HybridIndex(3, 0), torch.tensor(5), 7])])
    assert plain == [["conv", True, [3, 5, 7]]]
    name, is_out, idxs = plain[0]
    assert type(name) is str and type(is_out) is bool and all(type(i) is int for i in idxs)


# -- ChannelPruner.prune_to -----------------------------------------------------------------------------
def test_local_prune_to_a_ratio_gives_exact_channel_counts():
    net = chain()
    pruner = local_pruner(net)
    assert pruner.prunable_channels == 16 + 8
    step = pruner.prune_to(0.5)
    # each layer keeps int(n * 0.5): 16 -> 8, 8 -> 4; the head's inputs follow its producer
    assert widths(net) == (8, 4, 4)
    assert net[2].in_channels == 8
    assert step.target == 0.5 and step.achieved == pruner.channel_ratio() == 1 - (8 + 4) / 24
    assert step.groups == 2
    assert sorted((name, len(idxs)) for name, _, idxs in step.history) == [("0", 8), ("2", 4)]
    assert net(torch.zeros(2, 3, 6, 6)).shape == (2, 4)


def test_targets_are_shares_of_the_original_channels_and_never_un_prune():
    net = chain()
    pruner = local_pruner(net)
    pruner.prune_to(0.25)
    assert widths(net)[:2] == (12, 6)  # int(16 * .75), int(8 * .75)
    pruner.prune_to(0.5)
    # 50% of the ORIGINAL widths (8, 4); relative to the pruned ones it would have been (6, 3)
    assert widths(net)[:2] == (8, 4)
    step = pruner.prune_to(0.25)  # a lower target than reached removes nothing and adds nothing back
    assert widths(net)[:2] == (8, 4)
    assert step.groups == 0 and step.history == [] and step.changes == []
    assert len(pruner.history()) == 4  # two records per effective step


def test_no_layer_goes_below_its_max_layer_ratio_in_local_pruning():
    net = chain()
    pruner = local_pruner(net, max_layer_ratio=0.75)
    pruner.prune_to(0.95)  # torch-pruning selects int(16 * .05) = 0 kept, i.e. every channel
    # at most 75% removed: 16 -> ceil(16 * .25) = 4, 8 -> 2
    assert widths(net) == (4, 2, 2)
    pruner.prune_to(0.99)  # already at the cap: nothing more goes
    assert widths(net) == (4, 2, 2)


def test_a_global_step_that_selects_a_whole_layer_trims_it_to_its_cap():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False), nn.Flatten(), nn.Linear(4, 2, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1) * 1e-3)
        net[1].weight.fill_(1.0)
        net[3].weight.fill_(10.0)
    # unnormalised group L1 (mean over the group's layers): conv0 channel c scores (1e-3 * (c + 1) + 4) / 2,
    # about 2; conv1 channels (4 + 2 * 10) / 2 = 12. A global 50% step (4 of 8) selects all of conv0, which
    # torch-pruning would skip entirely; with max_layer_ratio=0.5 it keeps its 2 best channels, 2 and 3.
    imp = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    pruner = ChannelPruner(net, torch.zeros(1, 1, 1, 1), importance=imp, ignored_layers=[net[3]], max_layer_ratio=0.5)
    step = pruner.prune_to(0.5)
    assert net[0].out_channels == 2 and net[1].out_channels == 4 and net[1].in_channels == 2
    assert net[0].weight.flatten().tolist() == pytest.approx([3e-3, 4e-3])
    assert [r for r in step.history if r[2]] == [["0", True, [0, 1]]]


def test_round_to_keeps_multiples():
    net = chain()
    local_pruner(net, round_to=4).prune_to(0.3)
    # 16 * .7 = 11.2 -> 11 kept, rounded down to 8; 8 * .7 = 5.6 -> 5, rounded down to 4
    assert widths(net) == (8, 4, 4)


def test_the_cap_is_rounded_up_to_round_to():
    net = chain()
    local_pruner(net, round_to=4, max_layer_ratio=0.9).prune_to(0.95)
    # the cap keeps ceil(16 * .1) = 2 and ceil(8 * .1) = 1, both rounded UP to 4
    assert widths(net) == (4, 4, 4)


@pytest.mark.parametrize("target", [1.0, -0.1, 1.5])
def test_targets_outside_zero_to_one_are_rejected(target):
    pruner = local_pruner(chain())
    with pytest.raises(ValueError, match=rf"target ratio must lie in \[0, 1\), got {target!r}"):
        pruner.prune_to(target)


def test_coupled_channels_count_once():
    net = ResidualNet()
    pruner = ChannelPruner(net, torch.zeros(1, 3, 8, 8), global_pruning=False, ignored_layers=[net.fc])
    # the stem and the block's last conv share 16 channels through the residual add; the block's first
    # conv has 24 of its own: 40 prunable channels, not 16 + 24 + 16
    assert pruner.prunable_channels == 40
    pruner.prune_to(0.5)
    assert net.stem[0].out_channels == net.block[1].out_channels == net.fc.in_features == 8
    assert net.block[0][0].out_channels == 12
    assert pruner.channel_ratio() == 0.5  # (8 + 12) / 40 kept
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_ratio_overrides_apply_to_layers_given_a_scope_at_construction_only():
    net = chain()
    pruner = local_pruner(net, pruning_ratio_dict={net[0]: 0.0})
    pruner.prune_to(0.5, {net[0]: 0.25})
    assert widths(net)[:2] == (12, 4)  # conv0 at its own 25%, conv1 at the step's 50%

    net = chain()
    pruner = local_pruner(net)
    pruner.prune_to(0.5, {net[0]: 0.25})  # no scope of its own: the override has no effect
    assert widths(net)[:2] == (8, 4)


# -- criteria that need gradients -------------------------------------------------------------------------
def test_magnitude_stands_in_for_taylor_until_there_are_gradients():
    net = chain()
    pruner = local_pruner(net, importance="taylor")
    taylor = pruner.importance
    with pruner.magnitude_stand_in():
        stand_in = pruner.importance
        assert isinstance(stand_in, tp.importance.GroupMagnitudeImportance) and stand_in.p == 1
        assert not isinstance(stand_in, tp.importance.GroupTaylorImportance)
        pruner.prune_to(0.5)  # taylor would need .grad of every weight
    assert pruner.importance is taylor
    assert widths(net)[:2] == (8, 4)

    net(torch.randn(2, 3, 6, 6)).sum().backward()
    with pruner.magnitude_stand_in():
        assert pruner.importance is taylor  # gradients exist now
    with pruner.magnitude_stand_in(always=True):
        assert pruner.importance is not taylor
    assert pruner.importance is taylor


# -- history: record, replay, adopt ---------------------------------------------------------------------
def test_replaying_the_history_on_a_twin_gives_the_same_model_bit_for_bit():
    torch.manual_seed(0)
    net = chain()
    twin = copy.deepcopy(net)
    pruner = local_pruner(net, importance="l1")
    pruner.prune_to(0.25)
    pruner.prune_to(0.5)
    history = pruner.history()

    twin_pruner = local_pruner(twin, importance="l1")
    step = twin_pruner.replay(history)
    assert step.groups == len(history) == 4 and step.history == history
    assert widths(twin) == widths(net) == (8, 4, 4)
    for (name, p), (_, q) in zip(net.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), name
    assert twin_pruner.history() == history
    assert twin_pruner.channel_ratio() == pruner.channel_ratio() == 0.5
    # later steps continue from the replayed widths, relative to the original ones
    twin_pruner.prune_to(0.75)
    assert widths(twin)[:2] == (4, 2)


def test_replay_names_the_record_that_does_not_fit():
    net = chain()
    pruner = local_pruner(net)
    with pytest.raises(ValueError, match=r"pruning record 1 does not match the model: layer 'head'"):
        pruner.replay([["0", True, [0]], ["head", True, [0]]])
    net = chain()
    pruner = local_pruner(net)
    with pytest.raises(ValueError, match=r"record 0 .* layer '0': indices \[16\] lie outside its 16 channels"):
        pruner.replay([["0", True, [2, 16]]])
    with pytest.raises(ValueError, match=r"layer '1': it is a ReLU, not a prunable layer"):
        replay_history(pruner.graph, [["1", True, [0]]])  # the ReLU, not prunable
    with pytest.raises(ValueError, match=r"layer '0': indices \[-1\] lie outside its 16 channels \(0..15\)"):
        replay_history(pruner.graph, [["0", True, [-1, 3]]])  # a negative index
    assert widths(net) == (16, 8, 8)  # nothing was applied


def test_adopted_history_is_recorded_without_pruning():
    net = chain()
    pruner = local_pruner(net)
    pruner.adopt_history([("0", 1, [torch.tensor(2), 5])])
    assert pruner.history() == [["0", True, [2, 5]]]
    assert widths(net) == (16, 8, 8)


def test_removed_units_cut_a_record_into_round_to_units_most_important_first():
    net = chain()
    with torch.no_grad():  # conv0's channel c scores 27 * (c + 1) with the root-only L1 below
        net[0].weight.copy_(torch.arange(1.0, 17.0).view(16, 1, 1, 1).expand(16, 3, 3, 3))
    imp = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    pruner = ChannelPruner(net, X, importance=imp, ignored_layers=[net[6]], round_to=4)
    units = pruner.removed_units([["0", True, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], ["2", True, []]])
    # units of 4 in falling importance; the remainder, the weakest, last
    assert [(i, sorted(idxs)) for _, i, idxs in units] == [(0, [6, 7, 8, 9]), (0, [2, 3, 4, 5]), (0, [0, 1])]
    assert [score for score, _, _ in units] == pytest.approx([27 * 8.5, 27 * 4.5, 27 * 1.5])
    assert widths(net) == (16, 8, 8)  # scoring prunes nothing


def test_removed_units_skip_attention_records_and_channel_groups():
    plain = chain()
    pruner = ChannelPruner(plain, X, ignored_layers=[plain[6]], round_to=2)
    assert pruner.removed_units([["0", True, [0, 4]]])  # a plain group gives units ...
    assert pruner.removed_units([["0", True, [0, 4], "dims"]]) == []  # ... an attention cut of it none
    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 2, 1))
    pruner = ChannelPruner(net, torch.zeros(1, 4, 4, 4), ignored_layers=[net[2]], round_to=2)
    assert pruner.removed_units([["0", True, [0, 4]]]) == []  # conv0 feeds a grouped conv: channel groups
