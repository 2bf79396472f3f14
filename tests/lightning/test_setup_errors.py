"""What set-up and a failed step must get right: mis-grouped layers are left out (not "cannot trace"), a
rollback restores torch-pruning's bookkeeping of bare parameters, and nothing to prune is an error."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from conftest import quiet_trainer
from test_architectures import Lit, learnable_loader
from torch import nn

from lightning_prune import PruningCallback, count_macs_params
from lightning_prune.engine.pruner import NothingToPruneError
from lightning_prune.engine.rollback import PruningStepError


class BareParamNet(nn.Module):
    """A ViT in miniature: class token and position embedding as bare parameters on the residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, 16) * 0.02)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)
        self.fixed_width = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = x + self.fc2(torch.relu(self.fc1(x)))
        if self.fixed_width:  # a fixed residual width the static check does not see
            x = x.reshape(x.shape[0], 17, 16)
        return self.head(x[:, 0])


def test_rollback_restores_the_bookkeeping_of_bare_parameters() -> None:
    net = BareParamNet()
    callback = PruningCallback(ratio=0.5, schedule="iterative", context="local", end_epoch=1, verbose=False)
    with pytest.raises(PruningStepError, match="'net.fc2'"):  # the residual stream's group
        quiet_trainer(max_epochs=2, callbacks=[callback]).fit(Lit(net), learnable_loader())
    graph = callback.pruner.graph
    # torch-pruning re-keys its graph by the new parameter objects when it prunes them: rolled back too
    params = [node.module for node in graph.module2node.values() if isinstance(node.module, nn.Parameter)]
    assert any(p is net.cls_token for p in params) and any(p is net.pos_embed for p in params)
    assert net.cls_token.shape == (1, 1, 16)
    # so the same pruner prunes them again once the model allows it
    net.fixed_width = False
    callback.session.prune(0.5)
    assert net.cls_token.shape[-1] == net.pos_embed.shape[-1] == net.patch.out_channels < 16
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 4)


class TokenMixer(nn.Module):
    """MLP-Mixer in miniature: a Linear over the 16 tokens (the transposed sequence) beside the channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 24, 4, stride=4)
        self.token_fc1, self.token_fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.channel_fc1, self.channel_fc2 = nn.Linear(24, 48), nn.Linear(48, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (n, 16 tokens, 24 channels)
        x = x + self.token_fc2(torch.relu(self.token_fc1(x.transpose(1, 2)))).transpose(1, 2)
        x = x + self.channel_fc2(torch.relu(self.channel_fc1(x)))
        return self.head(x.mean(1))


@pytest.mark.parametrize("context", ["local", "global"])
def test_mis_grouped_layers_are_left_out_with_a_warning(context: str) -> None:
    net = TokenMixer()
    dense = count_macs_params(net, torch.zeros(1, 3, 16, 16))[0]
    callback = PruningCallback(ratio=0.5, schedule="iterative", context=context, end_epoch=1, verbose=False)
    with pytest.warns(UserWarning, match="not pruning .*net.token_fc2.*couples its channels") as record:
        quiet_trainer(max_epochs=2, callbacks=[callback]).fit(Lit(net), learnable_loader())
    assert not any("cannot trace" in str(w.message) for w in record)
    assert "net.token_fc2" in callback.left_out
    # the mis-coupled residual stream keeps its width; the MLPs' hidden widths are pruned
    assert net.patch.out_channels == 24 and net.token_fc2.out_features == 16
    assert net.channel_fc1.out_features < 48 and net.token_fc1.out_features < 32
    assert count_macs_params(net, torch.zeros(1, 3, 16, 16))[0] < dense


def test_a_model_with_no_prunable_channels_is_an_error() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))  # its only layer is the output layer
    callback = PruningCallback(ratio=0.5, verbose=False)
    with pytest.raises(NothingToPruneError, match=r"0 prunable channels: .*output layer \(\['net.1'\]\)"):
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(Lit(net), learnable_loader())


class ScoresNothing(tp.importance.Importance):
    def __call__(self, group: object, **kwargs: object) -> None:
        return None


def test_a_criterion_that_scores_nothing_is_an_error() -> None:
    import archs

    net = archs.PlainNet()
    callback = PruningCallback(ratio=0.5, criterion=ScoresNothing(), schedule="iterative", end_epoch=1, verbose=False)
    with pytest.raises(NothingToPruneError, match=r"ScoresNothing scored none of the \d+ channel groups"):
        quiet_trainer(max_epochs=2, callbacks=[callback]).fit(Lit(net), learnable_loader())
    assert net.features[0][0].out_channels == 16  # nothing was pruned, and the model is as before
