"""The criteria of lightning_prune.engine.criteria: what each name builds, and which channels each one keeps
on hand-set weights.

The pruned net is conv0 (the scored layer) -> conv1 (ignored, its weights all 1). Each criterion scores a
channel of conv0 from conv0's row and conv1's matching column, averaged; conv1's columns are identical, so
they add the same to every channel and the ranking is that of conv0's rows alone.
"""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.engine.criteria import (
    CRITERIA,
    GroupScorer,
    MeanMagnitudeImportance,
    SeededRandomImportance,
    get_criterion,
    needs_gradients,
    squares_gradients,
)
from lightning_prune.engine.hf import layer_pruners
from lightning_prune.engine.pruner import ChannelPruner
from lightning_prune.engine.session import ScheduledPruning
from lightning_prune.engine.spec import PruningSpec


def two_convs(rows: list[list[float]], bn_scales: list[float] | None = None) -> nn.Sequential:
    """conv0 with the given filter rows (one input value per input channel), optionally a BatchNorm, conv1."""
    cout, cin = len(rows), len(rows[0])
    layers = [nn.Conv2d(cin, cout, 1, bias=False)]
    if bn_scales is not None:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.Conv2d(cout, 2, 1, bias=False))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(rows).view(cout, cin, 1, 1))
        net[-1].weight.fill_(1.0)
        if bn_scales is not None:
            net[1].weight.copy_(torch.tensor(bn_scales))
    return net


def kept_rows(net: nn.Sequential, ratio: float, criterion: str, seed: int = 0) -> list[int]:
    """Which original channels of conv0 survive a prune to ``ratio`` (found by value, not from the pruner)."""
    before = net[0].weight.detach().flatten(1).clone()
    cin = before.shape[1]
    ChannelPruner(net, torch.zeros(1, cin, 1, 1), importance=criterion, ignored_layers=[net[-1]], seed=seed).prune_to(
        ratio
    )
    after = net[0].weight.detach().flatten(1)
    return [next(i for i, old in enumerate(before) if torch.equal(old, row)) for row in after]


# rows chosen so that L1 and L2 disagree: row 0 = [3, 0] has L1 3 and squared L2 9, row 1 = [2, 2] has L1 4
# and squared L2 8; row 2 = [5, 0] is the largest and row 3 = [.5, .5] the smallest by both.
L1_VS_L2 = [[3.0, 0.0], [2.0, 2.0], [5.0, 0.0], [0.5, 0.5]]


def test_l1_and_l2_keep_the_largest_rows_by_their_own_norm():
    # both drop row 3 first; at 50% L1 also drops row 0 (3 < 4) and L2 drops row 1 (8 < 9)
    assert kept_rows(two_convs(L1_VS_L2), 0.25, "l1") == [0, 1, 2]
    assert kept_rows(two_convs(L1_VS_L2), 0.5, "l1") == [1, 2]
    assert kept_rows(two_convs(L1_VS_L2), 0.5, "l2") == [0, 2]


def test_lamp_ranks_like_l2_within_one_layer():
    # LAMP divides a squared norm by the sum of the squared norms not smaller than it: within one layer that
    # is increasing in the norm, so it keeps what L2 keeps, not what L1 keeps
    assert kept_rows(two_convs(L1_VS_L2), 0.5, "lamp") == [0, 2]


def test_taylor_ranks_by_weight_times_gradient():
    net = two_convs([[1.0], [2.0], [3.0], [4.0]])
    net[0].weight.grad = torch.tensor([4.0, 1.0, 0.5, 0.1]).view(4, 1, 1, 1)
    net[1].weight.grad = torch.ones_like(net[1].weight)  # same contribution for every channel
    # |w * g| = 4, 2, 1.5, 0.4: the two largest weights (rows 2, 3) go; by magnitude they would stay
    assert kept_rows(net, 0.5, "taylor") == [0, 1]


def test_large_final_keeps_the_rows_with_the_largest_mean_magnitude():
    # mean |w|: row 0 = [3, 0] -> 1.5, row 1 = [2, 2] -> 2, row 2 = [5, 0] -> 2.5, row 3 -> .5 (as L1 within a
    # layer); squared_final ranks by mean w^2: 4.5, 4, 12.5, .25, as L2
    assert kept_rows(two_convs(L1_VS_L2), 0.5, "large_final") == [1, 2]
    assert kept_rows(two_convs(L1_VS_L2), 0.5, "squared_final") == [0, 2]


def three_convs() -> nn.Sequential:
    """conv0 (1 -> 4) and conv1 (4 -> 4) pruned, conv2 (4 -> 2) ignored. conv0's filters are small (.1 .. .4),
    conv1's large (row o = [r_o] * 4, r = 10, 38, 39, 40), so that conv1's columns add the same to each of
    conv0's channels and conv2's (all 1) the same to each of conv1's."""
    net = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1, 1))
        net[1].weight.copy_(torch.tensor([10.0, 38.0, 39.0, 40.0]).view(4, 1, 1, 1).expand(4, 4, 1, 1))
        net[2].weight.fill_(1.0)
    return net


def kept_per_layer(criterion: str, ratio: float = 0.25) -> tuple[list[int], list[int]]:
    """Which channels of conv0 and conv1 survive a global prune of ``three_convs`` (found by value)."""
    net = three_convs()
    before = [net[i].weight.detach().flatten(1).clone() for i in (0, 1)]
    ChannelPruner(net, torch.zeros(1, 1, 1, 1), importance=criterion, ignored_layers=[net[2]]).prune_to(ratio)
    after = [net[0].weight.detach().flatten(1), net[1].weight.detach().flatten(1)[:, :1]]
    return tuple(
        [next(i for i, old in enumerate(rows[:, : kept.shape[1]]) if torch.equal(old, row)) for row in kept]
        for rows, kept in zip(before, after)
    )


def test_large_final_ranks_raw_means_across_layers_where_l1_normalises_each_group():
    # 2 of 8 channels go. large_final compares raw means: conv0's .1 and .2 are the smallest of all.
    # torch-pruning's l1 divides each group's scores by their mean: conv1's row 0 (10 of a mean ~32) is the
    # smallest relative score, and conv0's channels, whose scores differ by .1 on top of conv1's columns,
    # sit near 1 each; it removes one channel of each layer.
    assert kept_per_layer("large_final") == ([2, 3], [0, 1, 2, 3])
    assert kept_per_layer("l1") == ([1, 2, 3], [1, 2, 3])


def test_large_final_reads_a_transposed_convolution_by_its_output_channels():
    # ConvTranspose2d's weight is (in, out / groups, k, k): output channel o of group g is [g*in_g:(g+1)*in_g, o]
    deconv = nn.ConvTranspose2d(4, 4, 1, groups=2, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]).view(4, 2, 1, 1))
    net = nn.Sequential(deconv, nn.Conv2d(4, 1, 1))
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 4, 1, 1))
    group = graph.get_pruning_group(deconv, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
    assert MeanMagnitudeImportance()(group).tolist() == [2.0, 3.0, 6.0, 7.0]  # (1+3)/2, (2+4)/2, ...


class Conv1D(nn.Module):
    """transformers' Conv1D, by shape: weight ``(in, out)``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.weight, self.bias = nf, nn.Parameter(torch.zeros(nx, nf)), nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


def test_large_final_scores_a_conv1d_as_its_linear_view():
    net = nn.Sequential(Conv1D(3, 2), nn.GELU(), Conv1D(2, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 6.0], [3.0, 2.0, 0.0]]))  # out channel j: column j
    graph = tp.DependencyGraph().build_dependency(
        net, example_inputs=torch.zeros(1, 1, 2), customized_pruners=layer_pruners(net)
    )
    group = graph.get_pruning_group(net[0], layer_pruners(net)[Conv1D].prune_out_channels, [0, 1, 2])
    assert MeanMagnitudeImportance()(group) is None  # torch-pruning's group: not a layer it knows
    assert GroupScorer(MeanMagnitudeImportance())(group).tolist() == [2.0, 1.0, 3.0]


def test_hessian_ranks_by_squared_weight_times_squared_gradient():
    net = two_convs([[1.0], [2.0], [3.0], [4.0]])
    # .grad holds the Hessian diagonal (mean g^2; ScheduledPruning puts it there): w^2 * h = 16, 4, 2.25, .16
    net[0].weight.grad = torch.tensor([16.0, 1.0, 0.25, 0.01]).view(4, 1, 1, 1)
    net[1].weight.grad = torch.ones_like(net[1].weight)
    assert kept_rows(net, 0.5, "hessian") == [0, 1]  # by magnitude (l2) rows 2 and 3 would stay
    assert kept_rows(two_convs([[1.0], [2.0], [3.0], [4.0]]), 0.5, "l2") == [2, 3]


def test_the_session_sums_squared_gradients_over_every_step_for_hessian():
    net = two_convs([[1.0], [2.0], [3.0], [4.0]])
    spec = PruningSpec(ratio=0.5, schedule="one_shot", criterion="hessian", ignored_layers=["1"])
    session = ScheduledPruning(net, torch.zeros(1, 1, 1, 1), spec, end_epoch=0)
    assert session.needs_gradients
    # w^2 = 1, 4, 9, 16. Two steps: g = 6, 1, 1, 1 then 1, 1, 1, 1. The mean of g^2 is 18.5, 1, 1, 1, so
    # w^2 * h = 18.5, 4, 9, 16 and channels 1 and 2 go. The last step alone (accumulate_grad's trap) would give
    # 1, 4, 9, 16 and drop channels 0 and 1; so would unsquared gradients (mean 3.5, 1, 1, 1 -> 3.5, 4, 9, 16).
    for grads in ([6.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]):
        net[0].weight.grad = torch.tensor(grads).view(4, 1, 1, 1)
        net[1].weight.grad = torch.ones_like(net[1].weight)
        session.add_gradients(list(net.parameters()))
    assert session.grad_counts[net[0].weight] == 2
    assert session.grad_sums[net[0].weight].flatten().tolist() == [37.0, 2.0, 2.0, 2.0]
    assert session.scoring_gradients()[net[0].weight].flatten().tolist() == [18.5, 1.0, 1.0, 1.0]
    session.on_epoch_end(0)
    assert net[0].weight.flatten().tolist() == [1.0, 4.0]
    assert session.grad_sums == {} and session.grad_counts == {}
    assert all(p.grad is None for p in net.parameters())


def test_bn_scale_ranks_by_the_batchnorm_scale_alone():
    # conv rows grow 1..4 but only |gamma| counts: gamma = .1, 2, .5, 3 keeps channels 1 and 3
    net = two_convs([[1.0], [2.0], [3.0], [4.0]], bn_scales=[0.1, 2.0, 0.5, 3.0])
    assert kept_rows(net, 0.5, "bn_scale") == [1, 3]


def test_fpgm_drops_the_filters_nearest_to_the_others():
    # FPGM scores a filter by its summed distance to the other filters (on squared weights). Squared rows:
    # [16, 0], [16.81, 0], [0, 9], [12.25, 0]. Distances: d01 = .81, d02 = 18.36, d03 = 3.75, d12 = 19.07,
    # d13 = 4.56, d23 = 15.20; sums: 22.92, 24.44, 52.63, 23.51. The two lowest (rows 0 and 3) go although
    # row 2 has the smallest norm.
    net = two_convs([[4.0, 0.0], [4.1, 0.0], [0.0, 3.0], [3.5, 0.0]])
    assert kept_rows(net, 0.5, "fpgm") == [1, 2]
    assert kept_rows(two_convs([[4.0, 0.0], [4.1, 0.0], [0.0, 3.0], [3.5, 0.0]]), 0.5, "l2") == [0, 1]


def test_random_is_reproducible_by_seed_and_leaves_the_global_rng_alone():
    rows = [[float(i + 1)] for i in range(16)]
    net = two_convs(rows)  # layer initialisation draws from the global RNG; the pruning must not
    state = torch.random.get_rng_state()
    first = kept_rows(net, 0.5, "random", seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert kept_rows(two_convs(rows), 0.5, "random", seed=7) == first
    assert len(first) == 8 and first == sorted(first)  # a prune keeps the survivors in their order


def test_seeded_random_scores_come_from_a_private_generator():
    a, b = SeededRandomImportance(seed=3), SeededRandomImportance(seed=3)
    torch.manual_seed(123)
    sa = a.scores(6)
    torch.manual_seed(456)  # the global seed does not matter
    sb = b.scores(6)
    assert torch.equal(sa, sb)
    assert torch.equal(sa, torch.rand(6, generator=torch.Generator().manual_seed(3)))
    assert sa.shape == (6,) and bool(((sa >= 0) & (sa < 1)).all())
    assert not torch.equal(a.scores(6), sa)  # the stream moves on


def test_seeded_random_scores_one_value_per_index_of_the_root():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 2, 2))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[0, 2, 5])
    scores = SeededRandomImportance(seed=1)(group)
    assert torch.equal(scores, torch.rand(3, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    ("name", "cls", "p"),
    [
        ("l1", tp.importance.GroupMagnitudeImportance, 1),
        ("l2", tp.importance.GroupMagnitudeImportance, 2),
        ("lamp", tp.importance.LAMPImportance, 2),
        ("fpgm", tp.importance.FPGMImportance, 2),
        ("bn_scale", tp.importance.BNScaleImportance, 1),
    ],
)
def test_magnitude_criteria_are_built_with_their_norm(name, cls, p):
    imp = get_criterion(name)
    assert type(imp) is cls and imp.p == p
    assert not needs_gradients(imp)


def test_every_name_builds_a_fresh_estimator():
    assert sorted(CRITERIA) == [
        "bn_scale", "fpgm", "hessian", "l1", "l2", "lamp", "large_final", "random", "squared_final", "taylor"
    ]
    for name in CRITERIA:
        assert get_criterion(name) is not get_criterion(name)
    assert type(get_criterion("taylor")) is tp.importance.GroupTaylorImportance
    assert type(get_criterion("random", seed=5)) is SeededRandomImportance
    assert type(get_criterion("hessian")) is tp.importance.GroupHessianImportance
    assert get_criterion("large_final").p == 1 and get_criterion("squared_final").p == 2


def test_an_importance_instance_passes_through():
    imp = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    assert get_criterion(imp) is imp


@pytest.mark.parametrize("bad", ["L2", "magnitude", 3, None])
def test_an_unknown_criterion_is_named_with_the_choices(bad):
    with pytest.raises(ValueError, match=rf"unknown criterion {bad!r}; choose one of \['bn_scale', 'fpgm'"):
        get_criterion(bad)


def test_gradient_criteria_are_taylor_and_hessian():
    assert needs_gradients(get_criterion("taylor"))
    assert needs_gradients(tp.importance.GroupHessianImportance()) and needs_gradients(get_criterion("hessian"))
    assert squares_gradients(get_criterion("hessian")) and not squares_gradients(get_criterion("taylor"))
    assert not needs_gradients(get_criterion("random")) and not needs_gradients(get_criterion("large_final"))
