"""ScheduledPruning, the engine behind the callback, without Lightning."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.engine.session import ScheduledPruning
from lightning_prune.engine.spec import PruningSpec


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def test_progress_is_kept_once_in_the_events_and_resumes_from_them():
    spec = PruningSpec(ratio=0.5, schedule="linear", end_epoch=3)
    model = net()
    session = ScheduledPruning(model, torch.zeros(1, 3, 8, 8), spec, end_epoch=3)
    for epoch in range(2):
        session.on_epoch_end(epoch)
    assert [e["epoch"] for e in session.events] == [0, 1]
    assert session.aimed_ratio == 0.25 and session.pruned_fraction == 0.5
    assert session.pruner.channel_ratio() == session.events[-1]["prune/ratio"]
    state = session.state_dict()
    assert set(state) == {"events"}  # nothing derivable is stored
    fresh = ScheduledPruning(net(), torch.zeros(1, 3, 8, 8), spec, end_epoch=3)
    fresh.load_state_dict(state)
    assert fresh.aimed_ratio == 0.25 and not fresh.prunes_at(1) and fresh.prunes_at(2)


def test_the_optimizer_follows_each_prune():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    session = ScheduledPruning(model, torch.zeros(1, 3, 8, 8), PruningSpec(ratio=0.5, schedule="one_shot"), 0)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    session.on_epoch_end(0, [optimizer])
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert params == {id(p) for p in model.parameters()}
    assert model[0].out_channels == 8
    assert optimizer.state[model[0].weight]["momentum_buffer"].shape == model[0].weight.shape


def test_a_budget_is_measured_on_the_inputs_the_session_holds_now():
    """Inputs that moved (to the training device) after set-up are the ones every budget measure uses."""
    seen: list[object] = []
    model = net()
    spec = PruningSpec(target="macs", budget=0.6, schedule="one_shot")
    session = ScheduledPruning(model, torch.zeros(1, 3, 8, 8), spec, end_epoch=0)
    session.resolve_budget()
    moved = torch.zeros(1, 3, 8, 8)
    session.inputs = moved  # what move_inputs does on a GPU
    metric = session.budget.metric
    session.budget.metric = lambda m, inputs: seen.append(inputs) or metric(m, inputs)
    session.on_epoch_end(0)
    assert seen and all(inputs is moved for inputs in seen)
    assert session.events[-1]["prune/macs_ratio"] <= 0.6
