"""MAC/parameter counts and the per-layer report (lightning_prune.engine.report), checked against hand counts.

Counting convention (torch-pruning's counter): a conv output element costs ``k_h * k_w * in_channels / groups``
MACs plus one for the bias; a Linear output costs ``in_features`` plus one for the bias; Flatten is free.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.engine.pruner import ChannelPruner
from lightning_prune.engine.report import (
    TOTAL,
    LayerRow,
    count_macs_params,
    layer_report,
    output_channels,
    prune_metrics,
    render_layer_report,
)


def conv_linear() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 4x4 -> 4x4
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 5),
    )


X = torch.zeros(1, 3, 4, 4)
# conv 0: 4 * 4 * 4 = 64 outputs * (3 * 9 + 1) = 1792 MACs; 4 * 27 + 4 = 112 parameters
# conv 1: 8 * 2 * 2 = 32 outputs * (4 / 2 * 9) = 576 MACs; 8 * 2 * 9 = 144 parameters
# linear: 5 outputs * (32 + 1) = 165 MACs; 32 * 5 + 5 = 165 parameters
HAND = {"0": (4, 112, 1792), "1": (8, 144, 576), "3": (5, 165, 165)}


def test_count_macs_params_matches_a_hand_count():
    assert count_macs_params(conv_linear(), X) == (1792 + 576 + 165, 112 + 144 + 165)


def test_counting_leaves_the_model_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    count_macs_params(net, torch.randn(1, 3, 4, 4))
    assert net.training and net[1].training
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and int(net[1].num_batches_tracked) == 0
    assert all(not m._forward_hooks for m in net.modules())


def test_inputs_as_a_tuple_are_unpacked():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4, bias=False)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    # (3 + 1) * 4 + 5 * 4 MACs, and as many parameters
    assert count_macs_params(Two(), (torch.zeros(1, 3), torch.zeros(1, 5))) == (36, 36)


def test_layer_report_has_one_row_per_layer_and_a_total():
    rows = layer_report(conv_linear(), X)
    assert [(r.layer, r.type) for r in rows] == [("0", "Conv2d"), ("1", "Conv2d"), ("3", "Linear"), (TOTAL, "")]
    for row in rows[:-1]:
        assert (row.channels, row.params, row.macs) == HAND[row.layer]
        # without a baseline the originals are the current values
        assert (row.original_channels, row.original_params, row.original_macs) == HAND[row.layer]
        assert row.params_ratio == row.macs_ratio == 1.0
    total = rows[-1]
    assert (total.channels, total.params, total.macs) == (4 + 8 + 5, 421, 2533)


def pruned_pair() -> tuple[nn.Sequential, list[LayerRow], ChannelPruner, torch.Tensor]:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))
    x = torch.zeros(1, 3, 2, 2)
    dense = layer_report(net, x)
    pruner = ChannelPruner(net, x, global_pruning=False, ignored_layers=[net[1], net[3]])
    pruner.prune_to(0.5)  # only conv 0 is prunable: 8 -> 4 output channels
    return net, dense, pruner, x


def test_a_report_against_the_dense_baseline():
    net, dense, _, x = pruned_pair()
    rows = {r.layer: r for r in layer_report(net, x, baseline=dense)}
    # dense:  conv0 8 * 4 positions * (3 + 1) = 128 MACs, 8 * 3 + 8 = 32 params
    #         conv1 4 * 4 * (8 * 9 + 1) = 1168 MACs, 4 * 72 + 4 = 292 params; linear 2 * 17 = 34 and 34
    # pruned: conv0 4 * 4 * 4 = 64 MACs, 16 params; conv1 16 * (4 * 9 + 1) = 592 MACs, 4 * 36 + 4 = 148 params
    assert rows["0"] == LayerRow("0", "Conv2d", 8, 4, 32, 16, 128, 64)
    assert rows["1"] == LayerRow("1", "Conv2d", 4, 4, 292, 148, 1168, 592)
    assert rows["3"] == LayerRow("3", "Linear", 2, 2, 34, 34, 34, 34)
    assert rows[TOTAL] == LayerRow(TOTAL, "", 14, 10, 358, 198, 1330, 690)
    assert rows["0"].params_ratio == 0.5 and rows["1"].macs_ratio == 592 / 1168


def test_prune_metrics_against_the_dense_total():
    net, dense, pruner, x = pruned_pair()
    assert prune_metrics(net, x, dense[-1], pruner.channel_ratio()) == {
        "prune/ratio": 0.5,  # 4 of conv 0's 8 channels, the only prunable group
        "prune/params": 198.0,
        "prune/macs": 690.0,
        "prune/params_ratio": 198 / 358,
        "prune/macs_ratio": 690 / 1330,
    }


def test_ratios_of_an_empty_original_are_one():
    row = LayerRow("x", "Custom", 0, 0, 0, 0, 0, 0)
    assert row.params_ratio == 1.0 and row.macs_ratio == 1.0


def test_output_channels_of_each_kind_of_layer():
    class Hidden(nn.Module):
        hidden_size = 7

    class NotInt(nn.Module):
        out_features = "7"

    assert output_channels(nn.Conv1d(2, 6, 1)) == 6
    assert output_channels(nn.Linear(2, 3)) == 3
    assert output_channels(nn.MultiheadAttention(8, 2)) == 8
    assert output_channels(Hidden()) == 7
    assert output_channels(NotInt()) is None
    assert output_channels(nn.BatchNorm2d(4)) is None and output_channels(nn.ReLU()) is None


def test_render_layer_report_as_an_aligned_table():
    rows = [
        LayerRow("conv", "Conv2d", 16, 8, 2_000_000, 1_000_000, 3_000_000_000, 750_000_000),
        LayerRow("fc", "Linear", 4, 4, 1_500, 1_500, 3_000_000_000, 3_000_000_000),
        LayerRow(TOTAL, "", 16, 8, 2_500, 999, 0, 0),
    ]
    # column widths: 5 ("layer"/"TOTAL"), 6 ("Conv2d"), 8 ("channels"), 14 ("1.50K (100.0%)"),
    # 15 ("750.00M (25.0%)"); cells left-aligned, two spaces apart, trailing spaces stripped.
    # 999 of 2500 params is 40.0%; MACs of an original 0 count as 100%.
    assert render_layer_report(rows).splitlines() == [
        "layer  type    channels  params          MACs",
        "-----  ------  --------  --------------  ---------------",
        "conv   Conv2d  16 -> 8   1.00M (50.0%)   750.00M (25.0%)",
        "fc     Linear  4 -> 4    1.50K (100.0%)  3.00G (100.0%)",
        "TOTAL          16 -> 8   999 (40.0%)     0 (100.0%)",
    ]
