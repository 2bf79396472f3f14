"""``PruningCallback(optimizer_state=...)``: slice the pruned parameters' optimizer state, or reset it."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import PlainNet, quiet_trainer, random_loader

from lightning_prune import PruningCallback
from lightning_prune.app.module import ClassifierModule


class StateBeforePrune(pl.Callback):
    """Records each parameter's AdamW state by name at the last epoch end, before PruningCallback prunes."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = trainer.optimizers[0].state
        self.state = {n: {k: v.clone() for k, v in state[p].items()} for n, p in pl_module.named_parameters()}
        self.values = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def assert_state_follows_values(old_value, new_value, old_state, new_state) -> None:
    """Each kept entry carries exactly the state it had, found by the entry's value (not by the tracker); an
    entry whose value occurs more than once in ``old_value`` must match the state at one of those places."""
    old_value, new_value = old_value.flatten(), new_value.flatten()
    old_state, new_state = old_state.flatten(), new_state.flatten()
    order = old_value.argsort()
    sorted_values = old_value[order]
    first = torch.searchsorted(sorted_values, new_value)
    last = torch.searchsorted(sorted_values, new_value, right=True)
    assert (last > first).all(), "a kept entry has a value the parameter did not have"
    unique = last - first == 1
    assert unique.float().mean() > 0.99  # the check is exact for (nearly) every entry
    assert torch.equal(new_state[unique], old_state[order[first[unique]]])
    for i in (~unique).nonzero().flatten().tolist():
        assert (old_state[order[first[i]:last[i]]] == new_state[i]).any()


def fit_pruning_at_the_end(optimizer_state: str) -> tuple[ClassifierModule, torch.optim.Optimizer]:
    module = ClassifierModule(PlainNet(), num_classes=4)
    before = {name: p.shape for name, p in module.named_parameters()}
    callback = PruningCallback(ratio=0.5, schedule="one_shot", start_epoch=1, verbose=False,
                               optimizer_state=optimizer_state)
    recorder = StateBeforePrune()
    trainer = quiet_trainer(max_epochs=2, callbacks=[recorder, callback])
    trainer.fit(module, random_loader())  # the prune happens after the last optimizer step
    module.shapes_before = before
    module.state_before = recorder.state
    module.values_before = recorder.values
    return module, trainer.optimizers[0]


@pytest.mark.parametrize("optimizer_state", ["slice", "reset"])
def test_pruned_parameters_keep_sliced_state_or_start_afresh(optimizer_state):
    module, optimizer = fit_pruning_at_the_end(optimizer_state)
    pruned = [p for name, p in module.named_parameters() if p.shape != module.shapes_before[name]]
    pruned_names = [name for name, p in module.named_parameters() if p.shape != module.shapes_before[name]]
    untouched = [p for name, p in module.named_parameters() if p.shape == module.shapes_before[name]]
    assert pruned and untouched
    for param in untouched:
        assert param in optimizer.state
    for name, param in zip(pruned_names, pruned):
        if optimizer_state == "slice":
            state, old = optimizer.state[param], module.state_before[name]
            assert state["exp_avg"].shape == param.shape
            assert torch.equal(state["step"], old["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert_state_follows_values(module.values_before[name], param.detach(), old[key], state[key])
        else:
            assert param not in optimizer.state
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.parameters()}


def test_unknown_optimizer_state_is_rejected():
    with pytest.raises(ValueError, match="optimizer_state"):
        PruningCallback(optimizer_state="keep")
