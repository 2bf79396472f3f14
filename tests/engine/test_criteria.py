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
    SeededRandomImportance,
    get_criterion,
    needs_gradients,
)
from lightning_prune.engine.pruner import ChannelPruner


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
    assert sorted(CRITERIA) == ["bn_scale", "fpgm", "l1", "l2", "lamp", "random", "taylor"]
    for name in CRITERIA:
        assert get_criterion(name) is not get_criterion(name)
    assert type(get_criterion("taylor")) is tp.importance.GroupTaylorImportance
    assert type(get_criterion("random", seed=5)) is SeededRandomImportance


def test_an_importance_instance_passes_through():
    imp = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    assert get_criterion(imp) is imp


@pytest.mark.parametrize("bad", ["L2", "magnitude", 3, None])
def test_an_unknown_criterion_is_named_with_the_choices(bad):
    with pytest.raises(ValueError, match=rf"unknown criterion {bad!r}; choose one of \['bn_scale', 'fpgm'"):
        get_criterion(bad)


def test_gradient_criteria_are_taylor_and_hessian():
    assert needs_gradients(get_criterion("taylor"))
    assert needs_gradients(tp.importance.GroupHessianImportance())
    assert not needs_gradients(get_criterion("random"))
