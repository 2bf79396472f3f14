"""Snapshot/restore around a prune, and naming the group that breaks a model (lightning_prune.engine.rollback)."""

from __future__ import annotations

import pytest
import torch
from archs import HiddenFixedViewNet, InceptionNet
from torch import nn

from lightning_prune.engine.inputs import shapes
from lightning_prune.engine.pruner import ChannelPruner
from lightning_prune.engine.rollback import (
    PruningStepError,
    Snapshot,
    failing_record,
    forward_check,
    step_error,
)
from lightning_prune.engine.surgery import remap_optimizer


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def train_a_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(X).pow(2).mean().backward()
    optimizer.step()


def test_restore_brings_back_the_same_parameter_objects_values_and_gradients():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_a_step(model, optimizer)
    model(X).sum().backward()  # fresh gradients on top
    params = dict(model.named_parameters())
    values = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: p.grad for n, p in params.items()}
    buffers = dict(model.named_buffers())
    buffer_values = {n: b.clone() for n, b in buffers.items()}
    momentum = {n: optimizer.state[p]["momentum_buffer"] for n, p in params.items()}
    pruner = ChannelPruner(model, X[:1], global_pruning=False, ignored_layers=[model[8]])

    snapshot = Snapshot.take(pruner, [optimizer])
    step = pruner.prune_to(0.5)
    remap_optimizer(optimizer, step.changes)  # what a pruning step does before its forward check
    assert model[0].out_channels == 8 and model[1].running_mean.shape == (8,)
    assert optimizer.state[model[0].weight]["momentum_buffer"].shape[0] == 8

    snapshot.restore()
    assert (model[0].out_channels, model[1].num_features, model[3].in_channels) == (16, 16, 16)
    assert model[8].in_features == 8
    for name, param in model.named_parameters():
        assert param is params[name], name  # the very objects the optimizer had before
        assert torch.equal(param.data, values[name]), name  # bit for bit
        assert param.grad is grads[name], name
    for name, buffer in model.named_buffers():
        assert buffer is buffers[name] and torch.equal(buffer, buffer_values[name]), name
    assert [list(g["params"]) for g in optimizer.param_groups] == [list(params.values())]
    for name, param in params.items():
        assert optimizer.state[param]["momentum_buffer"] is momentum[name], name
    assert len(optimizer.state) == len(params)  # no state of the pruned parameters left behind
    assert pruner.history() == [] and pruner.channel_ratio() == 0.0
    train_a_step(model, optimizer)  # and it still trains at the old widths


def test_after_a_restore_the_same_prune_happens_again():
    model = InceptionNet()  # concatenated branches: the graph's concat nodes hold channel offsets
    x = torch.randn(1, 3, 16, 16)
    pruner = ChannelPruner(model, x, global_pruning=False, ignored_layers=[model.fc], importance="l1")
    snapshot = Snapshot.take(pruner)
    first = pruner.prune_to(0.5).history
    pruned_widths = [m.weight.shape for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    snapshot.restore()
    assert model.fc.in_features == 8 + 12 + 8 + 8
    again = pruner.prune_to(0.5).history
    assert again == first
    assert [m.weight.shape for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)] == pruned_widths
    assert model(x).shape == (1, 4)


def test_plain_attributes_are_copied_and_attributes_added_later_are_removed():
    model = net()
    pruner = ChannelPruner(model, X[:1], ignored_layers=[model[8]])
    model[0].sizes = [4, 4]  # bookkeeping a prune could change in place
    tensor = torch.zeros(3)
    model[0].lookup = tensor  # not plain: kept by reference
    snapshot = Snapshot.take(pruner)
    model[0].sizes.append(8)
    model[0].added = 1
    snapshot.restore()
    assert model[0].sizes == [4, 4]
    assert model[0].lookup is tensor
    assert not hasattr(model[0], "added")


def test_restore_is_repeatable():
    model = net()
    pruner = ChannelPruner(model, X[:1], ignored_layers=[model[8]])
    weight = model[0].weight
    value = weight.detach().clone()
    snapshot = Snapshot.take(pruner)
    for _ in range(2):
        pruner.prune_to(0.5)
        assert model[0].weight is not weight
        snapshot.restore()
        assert model[0].weight is weight and torch.equal(weight.data, value)


# -- naming the culprit ---------------------------------------------------------------------------------
def hidden_view_pruner() -> tuple[nn.Module, ChannelPruner, torch.Tensor]:
    model = HiddenFixedViewNet()  # reshapes conv's output to a fixed 8 channels
    x = torch.randn(1, 3, 8, 8)
    return model, ChannelPruner(model, x, global_pruning=False, ignored_layers=[model.fc]), x


def test_failing_record_finds_the_group_that_breaks_the_model_on_a_copy():
    model, pruner, x = hidden_view_pruner()
    check = forward_check(x, shapes(model(x)))
    snapshot = Snapshot.take(pruner)
    history = pruner.prune_to(0.5).history
    assert {name for name, _, _ in history} == {"stem.0", "conv"}
    with pytest.raises(RuntimeError):
        model(x)  # 4 channels left where the reshape wants 8
    snapshot.restore()

    record = failing_record(pruner, history, check)
    assert record is not None and record[0] == "conv" and record[1] is True and len(record[2]) == 4
    # the search ran on a copy: the restored model is untouched
    assert model.conv.out_channels == 8 and pruner.history() == []
    assert model(x).shape == (1, 4)
    assert failing_record(pruner, [r for r in history if r[0] == "stem.0"], check) is None


def test_forward_check_compares_output_shapes_in_eval_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).train()
    x = torch.ones(2, 3)
    forward_check(x, [(2, 4)])(model)  # passes
    assert model.training and model[1].training  # the modes are put back
    with pytest.raises(RuntimeError, match=r"output shapes changed from \[\(2, 5\)\] to \[\(2, 4\)\]"):
        forward_check(x, [(2, 5)])(model)

    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    forward_check(x, [(2, 4)])(model)
    assert seen == [(False, False)]


def test_step_error_names_the_layer_its_indices_and_the_cause():
    model, pruner, x = hidden_view_pruner()
    check = forward_check(x, shapes(model(x)))
    snapshot = Snapshot.take(pruner)
    history = pruner.prune_to(0.5).history
    snapshot.restore()
    conv_idxs = next(idxs for name, _, idxs in history if name == "conv")

    err = step_error(pruner, history, ValueError("shape mismatch"), "epoch 3 (to 50.0% of channels)", check)
    assert isinstance(err, PruningStepError)
    message = str(err)
    shown = ", ".join(str(i) for i in conv_idxs)  # 4 indices: all shown
    assert message.startswith(
        f"pruning step at epoch 3 (to 50.0% of channels) broke the model at the group rooted at layer 'conv' "
        f"(output channels [{shown}]): ValueError: shape mismatch."
    )
    assert "rolled back" in message and "ignored_layers" in message


def test_step_error_cuts_long_index_lists_and_handles_no_single_culprit():
    model = net()
    pruner = ChannelPruner(model, X[:1], ignored_layers=[model[8]])
    history = [["0", True, list(range(10))], ["3", True, [1]]]

    def never_fails(m):
        return None

    err = step_error(pruner, history, RuntimeError("late"), "epoch 1", never_fails)
    assert "the 2 group(s) pruned together (none fails alone), the first rooted at '0'" in str(err)
    assert str(err).count("RuntimeError: late") == 1

    def fails_once_conv0_is_pruned(m):
        if m[0].out_channels < 16:
            raise RuntimeError("broken")

    err = step_error(pruner, history, RuntimeError("late"), "epoch 1", fails_once_conv0_is_pruned)
    # only the first 8 of the 10 indices, then an ellipsis
    assert "layer '0' (output channels [0, 1, 2, 3, 4, 5, 6, 7, ...])" in str(err)

    err = step_error(pruner, [], RuntimeError("early"), "epoch 0", never_fails)
    assert "broke the model at the step before any group was applied: RuntimeError: early" in str(err)

    # a record that no longer fits the model fails in the search too: it is the one named
    err = step_error(pruner, [["missing", True, [0]]], RuntimeError("original"), "epoch 2", never_fails)
    assert "layer 'missing' (output channels [0]): RuntimeError: original" in str(err)
    assert model[0].out_channels == 16  # the culprit search never touched the real model
