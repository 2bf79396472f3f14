"""Channel costs (lightning_prune.engine.cost): the modelled and timed per-channel costs, and that dividing
scores by them moves a global prune towards the costly layers."""

from __future__ import annotations

import itertools
import platform
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from lightning_prune.engine.cost import (
    COST_BATCH,
    FLOOR_SHARE,
    MEMORY_MACS_PER_ELEMENT,
    CostAwareImportance,
    measure_costs,
)
from lightning_prune.engine.criteria import get_criterion
from lightning_prune.engine.pruner import ChannelPruner
from lightning_prune.engine.session import ScheduledPruning
from lightning_prune.engine.spec import PruningSpec


def test_macs_memory_costs_are_macs_plus_memory_per_channel():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 16, 5))
    costs = measure_costs(net, torch.zeros(1, 3, 4, 4), "macs_memory")
    conv_macs, conv_weights = 8 * 16 * 3 * 9, (8 * 3 * 9 + 8) / COST_BATCH  # weights read once per batch
    assert costs[net[0]].out == pytest.approx((conv_macs + MEMORY_MACS_PER_ELEMENT * (8 * 16 + conv_weights)) / 8)
    assert costs[net[0]].in_ == pytest.approx((conv_macs + MEMORY_MACS_PER_ELEMENT * (3 * 16 + conv_weights)) / 3)
    bn_weights = 16 / COST_BATCH
    assert costs[net[1]].out == pytest.approx(MEMORY_MACS_PER_ELEMENT * (8 * 16 + bn_weights) / 8)  # memory only
    linear_weights = (5 * 128 + 5) / COST_BATCH
    assert costs[net[3]].in_ == pytest.approx((5 * 128 + MEMORY_MACS_PER_ELEMENT * (128 + linear_weights)) / 128)


def test_latency_costs_time_each_layer_at_the_cost_batch():
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    ticks = itertools.count()
    seen = []
    net[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    costs = measure_costs(net, torch.zeros(1, 4), "latency", clock=lambda: float(next(ticks)))
    assert set(seen) == {COST_BATCH}
    # the fake clock ticks once per reading: layer 0 reads start, then layer 0's end ... a constant span
    assert costs[net[0]].out * 6 == pytest.approx(costs[net[0]].in_ * 4)
    assert costs[net[1]].out * 2 == pytest.approx(costs[net[1]].in_ * 6)
    assert costs[net[0]].out > 0


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="cost kind 'flops' is unknown; choose one of"):
        measure_costs(nn.Linear(2, 2), torch.zeros(1, 2), "flops")


def two_branches() -> nn.Module:
    """Two parallel convs of equal weights: one on a large map (costly per channel), one on a small map."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.big = nn.Conv2d(3, 8, 3, padding=1)
            self.small = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.big(x).mean(dim=(2, 3))
            b = self.small(nn.functional.avg_pool2d(x, 4)).mean(dim=(2, 3))
            return self.head(torch.cat([a, b], 1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.small.weight.copy_(net.big.weight)
        net.small.bias.copy_(net.big.bias)
    return net


@pytest.mark.parametrize("kind", ["macs_memory"])
def test_cost_weighting_prunes_the_costly_layer_first(kind):
    plain, weighted = two_branches(), two_branches()
    inputs = torch.zeros(1, 3, 16, 16)
    ChannelPruner(plain, inputs, importance="l2", ignored_layers=[plain.head]).prune_to(0.25)
    assert plain.big.out_channels == plain.small.out_channels  # equal weights: equal cuts
    importance = CostAwareImportance(get_criterion("l2"))
    importance.costs = measure_costs(weighted, inputs, kind)
    ChannelPruner(weighted, inputs, importance=importance, ignored_layers=[weighted.head]).prune_to(0.25)
    assert weighted.big.out_channels < weighted.small.out_channels
    assert weighted.big.out_channels + weighted.small.out_channels == 12  # the same share of channels


def test_latency_per_mac_prunes_the_layer_that_is_slow_for_its_macs():
    """Equal timed latency on both branches (a fake clock), but the small-map branch does 16x fewer MACs:
    per MAC it is the slow one, so "latency_per_mac" removes its channels first ("latency" the other way)."""
    net, inputs = two_branches(), torch.zeros(1, 3, 16, 16)
    ticks = itertools.count()
    costs = measure_costs(net, inputs, "latency_per_mac", clock=lambda: float(next(ticks)))
    assert costs[net.big].out == pytest.approx(costs[net.small].out)  # the same time per channel ...
    assert costs[net.big].macs_out == pytest.approx(16 * costs[net.small].macs_out)  # ... for 16x the MACs
    per_mac = CostAwareImportance(get_criterion("l2"), costs, per_mac=True)
    ChannelPruner(net, inputs, importance=per_mac, ignored_layers=[net.head]).prune_to(0.25)
    assert net.small.out_channels < net.big.out_channels
    assert net.big.out_channels + net.small.out_channels == 12


def test_equal_layers_get_equal_timed_costs_whatever_the_noise():
    """Two identical convs on same-sized inputs do the same work; a noisy clock times them differently, but
    their costs are pooled (the median over both), so neither ranks as cheaper. A conv on a smaller map keeps
    its own timing."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            small = nn.functional.avg_pool2d(x, 2)
            return self.a(x).mean() + self.b(x).mean() + self.c(small).mean()

    net = Net()
    spans = {net.a: 1.0, net.b: 3.0, net.c: 10.0}  # the clock's noise: b always reads 3x slower than a
    now, calls, current = [0.0], [0], []
    for layer in spans:
        layer.register_forward_pre_hook(lambda m, args: current.append(m))  # runs before the timing hook

    def clock() -> float:  # readings alternate start, end: an end reading advances the layer's span
        calls[0] += 1
        if calls[0] % 2 == 0:
            now[0] += spans[current[-1]]
        return now[0]

    costs = measure_costs(net, torch.zeros(1, 3, 8, 8), "latency", clock=clock)
    assert costs[net.a].out == costs[net.b].out == pytest.approx(2.0 / 8)  # the median of 1s and 3s: 2
    assert costs[net.c].out == pytest.approx(10.0 / 8)


class InputBoundConv(nn.Conv2d):
    """A conv whose time is 1 ms per INPUT channel, whatever its output width (like a conv on a large map
    with few filters, bound by reading its input)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        time.sleep(1e-3 * input.shape[1])
        return super()._conv_forward(input, weight, bias)


def test_with_a_unit_a_layer_is_charged_what_removing_units_saves():
    """An even split charges the output side of an input-bound conv half its time; timing it narrower shows
    that output units save nothing (the floor) while each input channel saves its millisecond."""
    net = nn.Sequential(InputBoundConv(8, 16, 1))
    even = measure_costs(net, torch.zeros(1, 8, 2, 2), "latency")[net[0]]
    units = measure_costs(net, torch.zeros(1, 8, 2, 2), "latency", unit=4)[net[0]]
    assert even.out == pytest.approx(8e-3 / 16, rel=0.3) and even.in_ == pytest.approx(1e-3, rel=0.3)
    assert units.out < FLOOR_SHARE * 8e-3 / 16 * 1.5  # about the floor: removing filters saves no time
    assert units.in_ == pytest.approx(1e-3, rel=0.3)
    assert units.macs_out == even.macs_out  # the MACs side is unchanged


class BlockedConv(nn.Conv2d):
    """A conv whose time is 2 ms per started block of 32 output channels (a kernel that works in wide blocks):
    removing one or two units of 8 from 128 channels saves nothing, a quarter of them saves a block."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        time.sleep(2e-3 * -(-weight.shape[0] // 32))
        return super()._conv_forward(input, weight, bias)


def test_a_wide_layer_is_timed_a_quarter_and_a_half_narrower():
    """Units of 8 are 6% of a 128-wide layer: what removing them saves is timed over spans of a quarter and
    a half of its width (here 4 and 8 units), where a blocked kernel's saving shows (and timing noise is a
    smaller share of it)."""
    net = nn.Sequential(BlockedConv(4, 128, 1))
    costs = measure_costs(net, torch.zeros(1, 4, 2, 2), "latency", unit=8)[net[0]]
    assert costs.out == pytest.approx(2e-3 / 32, rel=0.3)  # one block of 32 channels saves 2 ms
    assert costs.out > 10 * FLOOR_SHARE * 8e-3 / 128


def test_a_cost_aware_session_times_units_of_round_to():
    net = nn.Sequential(InputBoundConv(8, 16, 1), nn.Conv2d(16, 2, 1))
    spec = PruningSpec(ratio=0.5, channel_cost="latency", round_to=4, verbose=False)
    session = ScheduledPruning(net, torch.zeros(1, 8, 2, 2), spec, end_epoch=0)
    assert session.cost_aware.costs[net[0]].out < FLOOR_SHARE * 8e-3 / 16 * 1.5


@pytest.mark.parametrize("kind, steady", [("latency", True), ("latency_per_mac", True), ("macs_memory", False)])
def test_timed_costs_on_cpu_keep_freed_buffers_in_the_process(kind, steady):
    # in a fresh process (the setting is process-wide) glibc's defaults would charge page faults to the
    # layers with large activations; timing sets the steady allocator first, a MACs model does not
    code = (
        "import torch, sys\n"
        "from lightning_prune.engine.cost import measure_costs\n"
        "from lightning_prune.engine.latency import allocator_regime\n"
        f"measure_costs(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), {kind!r})\n"
        "print(allocator_regime())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    if platform.libc_ver()[0] != "glibc":
        assert out.strip() == "default"
    else:
        assert out.startswith("steady") is steady, out
