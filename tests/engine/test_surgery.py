import pytest
import torch
from torch import nn

from lightning_prune.engine.pruner import ChannelPruner
from lightning_prune.engine.surgery import ParameterChange, ParameterTracker, remap_optimizer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def _train_a_step(net, optimizer):
    x = torch.randn(8, 3, 6, 6)
    optimizer.zero_grad()
    net(x).pow(2).mean().backward()
    optimizer.step()


def _matching_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which row of ``before`` each row of ``after`` is, found by value (independent of the tracker)."""
    rows = []
    for row in after:
        hits = [i for i, old in enumerate(before) if torch.equal(old, row)]
        assert len(hits) == 1
        rows.append(hits[0])
    return rows


def test_adam_state_is_sliced_to_the_kept_channels():
    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):
        _train_a_step(net, optimizer)
    conv = net[0]
    weight_before = conv.weight.detach().clone()
    state_before = {k: v.clone() for k, v in optimizer.state[conv.weight].items()}
    bn_state_before = optimizer.state[net[1].weight]["exp_avg"].clone()

    pruner = ChannelPruner(net, torch.zeros(1, 3, 6, 6), importance="l1", ignored_layers=[net[8]])
    step = pruner.prune_to(0.5)
    for change in step.changes:
        change.new.grad = None
    remap_optimizer(optimizer, step.changes)

    assert conv.out_channels < 16
    kept = _matching_rows(weight_before.flatten(1), conv.weight.detach().flatten(1))
    state = optimizer.state[conv.weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert state[key].shape == conv.weight.shape
        assert torch.equal(state[key], state_before[key][kept])
    assert torch.equal(state["step"], state_before["step"])
    assert torch.equal(optimizer.state[net[1].weight]["exp_avg"], bn_state_before[kept])
    # every parameter of the model is optimised, no dead tensor is left in the optimizer
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in net.parameters()}
    for param, st in optimizer.state.items():
        assert st["exp_avg"].shape == param.shape
    _train_a_step(net, optimizer)  # and the optimizer still steps


def test_sgd_momentum_is_carried_over():
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    _train_a_step(net, optimizer)
    first, conv = net[0], net[3]
    first_before, conv_before = first.weight.detach().clone(), conv.weight.detach().clone()
    momentum_before = optimizer.state[conv.weight]["momentum_buffer"].clone()
    step = ChannelPruner(net, torch.zeros(1, 3, 6, 6), ignored_layers=[net[8]]).prune_to(0.5)
    remap_optimizer(optimizer, step.changes)
    momentum = optimizer.state[conv.weight]["momentum_buffer"]
    # conv loses output channels and, with the first conv's filters, input channels: find both by value
    kept_in = _matching_rows(first_before.flatten(1), first.weight.detach().flatten(1))
    kept_out = _matching_rows(conv_before[:, kept_in].flatten(1), conv.weight.detach().flatten(1))
    assert len(kept_in) < 16 and len(kept_out) < 8
    assert torch.equal(momentum, momentum_before[kept_out][:, kept_in])


def test_frozen_parameters_stay_frozen_and_modes_are_kept():
    net = _net()
    net[0].weight.requires_grad_(False)
    net.train()
    net[4].eval()  # a BatchNorm deliberately in eval mode
    ChannelPruner(net, torch.zeros(1, 3, 6, 6), ignored_layers=[net[8]]).prune_to(0.5)
    assert net[0].out_channels < 16
    assert net[0].weight.requires_grad is False
    assert net[0].bias.requires_grad is True
    assert net.training and net[1].training and not net[4].training


def test_tracker_reports_entries_for_any_prune_function():
    lin = nn.Linear(3, 4)
    tracker = ParameterTracker(lin)
    before = lin.weight.detach().clone()

    def drop_rows_0_and_2():
        lin.weight = nn.Parameter(lin.weight[[1, 3]].clone())

    tracker.apply(drop_rows_0_and_2, owners=[lin])
    (change,) = tracker.changes()
    assert change.name == "weight"
    assert torch.equal(lin.weight, before[[1, 3]])
    assert lin.weight.dtype == torch.float32
    assert change.index.flatten().tolist() == [3, 4, 5, 9, 10, 11]


def test_state_of_another_shape_is_reset_with_a_warning():
    p = nn.Parameter(torch.zeros(4))
    q = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([p], lr=0.1)
    optimizer.state[p] = {"odd": torch.zeros(7)}
    with pytest.warns(UserWarning, match="reset"):
        remap_optimizer(optimizer, [ParameterChange("p", p, q, torch.tensor([0, 1]))])
    assert q not in optimizer.state and optimizer.param_groups[0]["params"][0] is q


@pytest.mark.parametrize("in_features", [16, 4097])  # 4096 x 4097 entries: more than float32 counts exactly
def test_the_kept_entries_are_tracked_exactly_in_small_and_large_parameters(in_features):
    lin = nn.Linear(in_features, 4096, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(lin.weight.numel(), dtype=torch.float64).reshape(lin.weight.shape))
    expected = lin.weight.detach().clone()
    tracker = ParameterTracker(lin)
    keep = torch.tensor([0, 4095])

    def drop_rows(m):
        m.weight = nn.Parameter(m.weight.data[keep].clone())

    tracker.apply(lambda: drop_rows(lin), owners=[lin])
    (change,) = tracker.changes()
    assert torch.equal(change.index, torch.arange(expected.numel()).reshape(expected.shape)[keep])
    assert torch.equal(lin.weight.data, expected[keep])
