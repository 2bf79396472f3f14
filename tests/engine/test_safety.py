"""find_unsafe_ops and the on_unsafe policy (lightning_prune.engine.safety): which layers feed an operation
torch-pruning cannot follow, and which do not."""

from __future__ import annotations

import pytest
import torch
from archs import ChannelScale, FixedViewNet, PlainNet, ResidualNet, ShuffleNet, SliceNet
from torch import nn

from lightning_prune.engine.pruner import PRUNABLE_TYPES
from lightning_prune.engine.safety import UnsafeOp, describe, find_unsafe_ops, unsafe_layers_to_ignore

X = torch.zeros(1, 3, 16, 16)


class Head(nn.Module):
    """conv 3->4 (8x8 maps from 16x16 inputs with stride 2), then ``tail(y)``, then a linear head."""

    def __init__(self, tail, features: int = 4 * 8 * 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.tail = tail
        self.fc = nn.Linear(features, 2)

    def forward(self, x):
        return self.fc(self.tail(self.conv(x)))


def test_plain_and_residual_conv_nets_are_safe():
    assert find_unsafe_ops(PlainNet(), X) == []
    assert find_unsafe_ops(ResidualNet(), X) == []


@pytest.mark.parametrize(
    "flatten",
    [
        lambda y: y.flatten(1),
        lambda y: y.view(y.shape[0], -1),
        lambda y: y.reshape(y.shape[0], -1),
        lambda y: torch.flatten(nn.functional.adaptive_avg_pool2d(y, 8), 1),
    ],
    ids=["flatten", "view-1", "reshape-1", "pool-flatten"],
)
def test_flattens_that_follow_the_channel_count_are_safe(flatten):
    assert find_unsafe_ops(Head(flatten), X) == []


@pytest.mark.parametrize(
    "fixed",
    [
        lambda y: y.view(-1, 256),
        lambda y: y.reshape(1, 256),
        lambda y: y.reshape((1, 256)),
        lambda y: y.view(size=(1, 256)),
        # conservative: a size computed from the shape is an int by the time view() sees it
        lambda y: y.view(y.shape[0], y.shape[1] * y.shape[2] * y.shape[3]),
    ],
    ids=["view", "reshape", "reshape-tuple", "view-size-kw", "view-computed"],
)
def test_a_view_to_a_written_out_feature_size_flags_the_conv_feeding_it(fixed):
    # 4 channels * 8 * 8 = 256 features given as a number: it cannot follow a pruned conv
    assert find_unsafe_ops(Head(fixed), X) == [
        UnsafeOp("conv", "view/reshape to a fixed size of 256 over its channels")
    ]


def test_the_fixed_view_is_blamed_on_the_last_conv_before_it_not_on_earlier_ones():
    # FixedViewNet: conv 3->8, pool, conv 8->16, pool, view(-1, 16 * 4 * 4); BatchNorm/ReLU/pool pass the
    # channels of the second conv on, the first conv's channels stop at the second conv
    assert find_unsafe_ops(FixedViewNet(), X) == [
        UnsafeOp("features.2.0", "view/reshape to a fixed size of 256 over its channels")
    ]


def test_channel_shuffle_and_chunk_into_cat_are_flagged():
    # ShuffleNet: the stem's output is chunked and one half concatenated back (stem.0), then the concatenation,
    # which also carries branch.2's channels, is viewed in 2 groups and transposed
    unsafe = {op.module: op.reason for op in find_unsafe_ops(ShuffleNet(), X)}
    assert set(unsafe) == {"stem.0", "branch.2"}
    assert unsafe["stem.0"].startswith("chunk/split feeding torch.cat")
    assert unsafe["branch.2"].startswith("channel shuffle")
    # the first reason a layer gets is kept (stem.0's channels also reach the shuffle)
    assert "channel shuffle" not in unsafe["stem.0"]


def test_torch_channel_shuffle_and_pixel_shuffle_are_flagged():
    shuffle = nn.Sequential(nn.ChannelShuffle(2), nn.Flatten())
    assert find_unsafe_ops(Head(shuffle), X) == [UnsafeOp("conv", "channel_shuffle mixes its channels")]
    pixels = nn.Sequential(nn.PixelShuffle(2), nn.Flatten())  # 4 x 8 x 8 -> 1 x 16 x 16
    assert find_unsafe_ops(Head(pixels), X) == [UnsafeOp("conv", "pixel_shuffle mixes its channels")]


def test_a_grouped_view_without_transpose_is_safe():
    # view(n, 2, c // 2, h, w) alone does not interleave channels; only the transpose of the groups does
    def grouped(y):
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).sum(1).flatten(1)

    assert find_unsafe_ops(Head(grouped, features=2 * 8 * 8), X) == []

    def shuffled(y):
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, -1)

    assert find_unsafe_ops(Head(shuffled), X) == [
        UnsafeOp("conv", "channel shuffle (a grouped view transposed) interleaves its channels")
    ]


@pytest.mark.parametrize(
    ("select", "features", "unsafe"),
    [
        (lambda y: y[:, 1:3].flatten(1), 2 * 64, True),
        (lambda y: y[:, 0].flatten(1), 64, True),
        (lambda y: y.narrow(1, 0, 2).flatten(1), 2 * 64, True),
        (lambda y: y[:, :, 2:6].flatten(1), 4 * 4 * 8, False),  # rows, not channels
        (lambda y: y[..., 1:].flatten(1), 4 * 8 * 7, False),
        (lambda y: y.narrow(2, 0, 4).flatten(1), 4 * 4 * 8, False),
        (lambda y: y[:, :].flatten(1), 4 * 64, False),
    ],
    ids=["slice", "index", "narrow", "rows", "ellipsis-cols", "narrow-rows", "full-slice"],
)
def test_fixed_channel_positions_are_flagged_spatial_slices_are_not(select, features, unsafe):
    expected = [UnsafeOp("conv", "indexing/slicing fixed channel positions")] if unsafe else []
    assert find_unsafe_ops(Head(select, features), X) == expected


def test_slice_net_flags_its_stem():
    assert find_unsafe_ops(SliceNet(), X) == [UnsafeOp("stem.0", "indexing/slicing fixed channel positions")]


def test_custom_prunable_types_take_the_blame_for_their_outputs():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.scale, self.fc = nn.Conv2d(3, 4, 1), ChannelScale(4), nn.Linear(4 * 16 * 16, 2)

        def forward(self, x):
            return self.fc(self.scale(self.conv(x)).view(1, 1024))

    # unknown to the check, the scale only passes conv's channels through
    assert [op.module for op in find_unsafe_ops(Scaled(), X)] == ["conv"]
    # registered as prunable, it produces channels of its own: it is the one to ignore
    assert [op.module for op in find_unsafe_ops(Scaled(), X, PRUNABLE_TYPES + (ChannelScale,))] == ["scale"]


def test_multihead_attention_counts_as_one_layer():
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.kv = nn.Linear(8, 8), nn.Linear(8, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(24, 2)

        def forward(self, x):
            out, _ = self.attn(self.q(x), self.kv(x), self.kv(x))
            return self.fc(out.reshape(1, 24))  # 3 tokens * 8 dims written out

    # the fixed reshape follows the attention's output, which carries the attention's channels, not q/kv's
    assert find_unsafe_ops(Attn(), torch.zeros(1, 3, 8)) == [
        UnsafeOp("attn", "view/reshape to a fixed size of 24 over its channels")
    ]


def test_the_check_leaves_modes_hooks_and_gradients_alone():
    model = FixedViewNet().train()
    model.features[1].eval()
    find_unsafe_ops(model, X)
    assert model.training and not model.features[1].training and model.features[0].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # the BatchNorm statistics were not updated: the pass ran in eval mode
    assert torch.equal(model.features[0][1].running_mean, torch.zeros(8))
    assert int(model.features[0][1].num_batches_tracked) == 0


def test_keyword_inputs_are_passed_to_forward():
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(4 * 16 * 16, 2)

        def forward(self, image, scale):
            return self.fc(self.conv(image * scale).view(-1, 1024))

    assert [op.module for op in find_unsafe_ops(Kw(), {"image": X, "scale": torch.ones(1)})] == ["conv"]


# -- describe / on_unsafe -------------------------------------------------------------------------------
def test_describe_joins_one_entry_per_layer():
    ops = [UnsafeOp("a", "channel shuffle"), UnsafeOp("b.0", "fixed view")]
    assert describe(ops) == "a: channel shuffle; b.0: fixed view"
    assert describe([]) == ""


def test_on_unsafe_ignore_returns_the_layers_not_already_kept():
    model = ShuffleNet()
    assert [op.module for op in unsafe_layers_to_ignore(model, X, "ignore")] == ["branch.2", "stem.0"]
    assert [op.module for op in unsafe_layers_to_ignore(model, X, "ignore", already_kept=["stem.0"])] == ["branch.2"]


def test_on_unsafe_raise_names_the_model_and_its_layers():
    with pytest.raises(ValueError) as err:
        unsafe_layers_to_ignore(FixedViewNet(), X, "raise")
    message = str(err.value)
    assert message.startswith(
        "FixedViewNet has operations torch-pruning cannot follow: features.2.0: view/reshape to a fixed size of 256"
    )
    assert "on_unsafe='ignore'" in message
    # nothing left to report once the layer is kept anyway: no error
    assert unsafe_layers_to_ignore(FixedViewNet(), X, "raise", already_kept=["features.2.0"]) == []
    assert unsafe_layers_to_ignore(PlainNet(), X, "raise") == []


def test_an_unknown_policy_is_rejected_before_running_the_model():
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("must not run")

    with pytest.raises(ValueError, match=r"on_unsafe='warn' is unknown; choose one of \['ignore', 'raise'\]"):
        unsafe_layers_to_ignore(Exploding(), X, "warn")
