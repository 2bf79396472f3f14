"""Sparse training (lightning_prune.engine.regularize): the same gradient as torch-pruning's own
``GroupNormPruner.regularize``, on the same groups; weak channels pushed harder; the window; groups re-read
after a prune."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import ResidualNet
from torch import nn

from lightning_prune.engine import compat
from lightning_prune.engine.pruner import ChannelPruner
from lightning_prune.engine.regularize import GroupSparsity


def zero_grads(model: nn.Module) -> None:
    for param in model.parameters():
        param.grad = torch.zeros_like(param)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("build", [lambda: torchvision.models.resnet18(num_classes=10), ResidualNet],
                         ids=["resnet18", "residual"])
def test_the_gradient_is_torch_prunings_own(build):
    torch.manual_seed(0)
    model = build()
    size = 32 if isinstance(model, torchvision.models.ResNet) else 8
    output = model.fc if hasattr(model, "fc") else list(model.modules())[-1]
    pruner = ChannelPruner(model, torch.zeros(1, 3, size, size), ignored_layers=[output])
    zero_grads(model)
    GroupSparsity(pruner, strength=1e-3, start_epoch=0, end_epoch=0).apply(0)
    ours = grads(model)
    zero_grads(model)
    compat.regularize_groups(pruner.regularizer(), model, 1e-3, 16.0)
    reference = grads(model)
    touched = [name for name, g in reference.items() if g.abs().sum() > 0]
    assert len(touched) >= 4  # convolutions and BatchNorms of several groups
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-10, msg=name)


def two_convs() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([4.0, 1.0, 2.0, 0.5]).view(4, 1, 1, 1).expand(4, 2, 1, 1))
        net[1].weight.fill_(1.0)
    return net


def test_the_weakest_channel_is_pushed_alpha_times_harder_than_the_strongest():
    net = two_convs()
    pruner = ChannelPruner(net, torch.zeros(1, 2, 1, 1), ignored_layers=[net[1]])
    zero_grads(net)
    GroupSparsity(pruner, strength=0.1, start_epoch=0, end_epoch=0, alpha=16.0).apply(0)
    per_unit = (net[0].weight.grad / net[0].weight).flatten(1)[:, 0]  # strength * gamma per channel
    assert per_unit[0].item() == pytest.approx(0.1)  # the strongest channel: gamma 1
    assert per_unit[3].item() == pytest.approx(1.6)  # the weakest: gamma alpha
    assert per_unit[0] < per_unit[2] < per_unit[1] < per_unit[3]
    # the consumer's input columns are pushed with the same gammas, the ignored layer's outputs are not
    columns = (net[1].weight.grad / net[1].weight)[0, :, 0, 0]
    torch.testing.assert_close(columns, per_unit)


def test_it_applies_only_in_its_window_and_counts_steps():
    net = two_convs()
    pruner = ChannelPruner(net, torch.zeros(1, 2, 1, 1), ignored_layers=[net[1]])
    sparsity = GroupSparsity(pruner, strength=0.1, start_epoch=1, end_epoch=2)
    zero_grads(net)
    assert sparsity.apply(0) is False and net[0].weight.grad.abs().sum() == 0
    assert sparsity.apply(1) and sparsity.apply(2) and not sparsity.apply(3)
    assert sparsity.steps == 2


def test_after_a_prune_the_groups_follow_the_new_widths():
    torch.manual_seed(0)
    model = ResidualNet()
    pruner = ChannelPruner(model, torch.zeros(1, 3, 8, 8), ignored_layers=[list(model.modules())[-1]])
    sparsity = GroupSparsity(pruner, strength=1e-3, start_epoch=0, end_epoch=5)
    pruner.prune_to(0.5)
    sparsity.refresh()
    zero_grads(model)
    sparsity.apply(0)
    ours = grads(model)
    zero_grads(model)
    compat.regularize_groups(pruner.regularizer(), model, 1e-3, 16.0)
    for name, reference in grads(model).items():
        torch.testing.assert_close(ours[name], reference, rtol=1e-4, atol=1e-10, msg=name)


def test_sgd_with_sparse_training_alone_drives_weak_channels_towards_zero():
    net = two_convs()
    pruner = ChannelPruner(net, torch.zeros(1, 2, 1, 1), ignored_layers=[net[1]])
    sparsity = GroupSparsity(pruner, strength=0.05, start_epoch=0, end_epoch=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    before = net[0].weight.detach().flatten(1).norm(dim=1)
    for _ in range(20):
        zero_grads(net)
        sparsity.apply(0)
        optimizer.step()
    shrink = net[0].weight.detach().flatten(1).norm(dim=1) / before
    assert shrink[3] < 0.01 and shrink[0] > 0.2  # the weakest all but gone, the strongest kept
