"""Sparse training and cost-aware ranking inside a fit: the regulariser runs once per optimizer step in its
window (gradient accumulation, mixed precision), weakens channels before they are pruned, and the options
are checked before training."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import PlainNet, quiet_trainer, random_loader
from lightning.pytorch.callbacks import Callback

from lightning_prune import PruningCallback
from lightning_prune.app.module import ClassifierModule
from lightning_prune.engine.spec import PruningSpec


class BeforePrune(Callback):
    """Placed before PruningCallback: the first conv's weights at the end of each epoch, before any prune."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.weights.append(pl_module.model.features[0][0].weight.detach().clone())


def fit(callback: PruningCallback, epochs: int = 3, seed: int = 0, probe: Callback | None = None,
        **trainer_kwargs) -> ClassifierModule:
    torch.manual_seed(seed)
    module = ClassifierModule(PlainNet(), num_classes=4, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    callbacks = [probe, callback] if probe is not None else [callback]
    quiet_trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kwargs).fit(module, random_loader(n=64))
    return module


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_regulariser_runs_once_per_optimizer_step_in_its_window(accumulate):
    callback = PruningCallback(ratio=0.5, schedule="one_shot", start_epoch=2, end_epoch=2, sparse_training=1e-3,
                               sparse_start_epoch=1, verbose=False)
    fit(callback, accumulate_grad_batches=accumulate)
    # 4 batches per epoch; the window is epochs 1..2 (the default end is the pruning's end_epoch)
    assert callback.session.sparsity.steps == 2 * 4 // accumulate
    assert callback.pruned_ratio == pytest.approx(0.5, abs=0.05)


def test_under_bf16_mixed_precision_it_regularises_and_trains():
    callback = PruningCallback(ratio=0.5, schedule="one_shot", start_epoch=1, end_epoch=1, sparse_training=1e-3,
                               verbose=False)
    module = fit(callback, precision="bf16-mixed")
    assert callback.session.sparsity.steps == 8
    assert all(torch.isfinite(p).all() for p in module.parameters())


def weakest_half_share(weight: torch.Tensor) -> float:
    """The share of a conv's squared norm held by its weaker half of channels."""
    norms = weight.flatten(1).pow(2).sum(1).sort().values
    return float(norms[: len(norms) // 2].sum() / norms.sum())


def test_sparse_training_drives_the_weak_channels_down_before_the_prune():
    shares = []
    for strength in (0.0, 0.2):
        probe = BeforePrune()
        fit(PruningCallback(ratio=0.5, schedule="one_shot", start_epoch=2, end_epoch=2, sparse_training=strength,
                            verbose=False), probe=probe)
        shares.append(weakest_half_share(probe.weights[2]))  # what the prune at the end of epoch 2 ranks
    plain, sparse = shares
    assert sparse < 0.75 * plain


def test_a_latency_budget_ranks_by_measured_cost(macs_as_latency):
    # the budget's own timings are a deterministic stand-in; the channel costs are timed for real
    callback = PruningCallback(target="latency", budget=0.9, schedule="one_shot", start_epoch=0, end_epoch=0,
                               verbose=False)
    assert callback.spec.cost_kind == "latency"
    fit(callback, epochs=2)
    costs = callback.session.cost_aware.costs
    convs = [m for m in callback.session.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(costs[c].out > 0 for c in convs)  # measured at the last prune's widths
    assert callback.events and callback.events[-1]["prune/latency_ratio"] <= 0.9


def test_bad_options_are_named_before_training():
    with pytest.raises(ValueError, match=r"sparse_training=-1 is invalid; it must be a regularisation strength"):
        PruningCallback(sparse_training=-1)
    with pytest.raises(ValueError, match=r"sparse_end_epoch=1 is invalid; .* >= sparse_start_epoch \(2\)"):
        PruningCallback(sparse_training=1e-3, sparse_start_epoch=2, sparse_end_epoch=1)
    with pytest.raises(ValueError, match=r"channel_cost='flops' is unknown; choose one of \['auto', 'none'"):
        PruningCallback(channel_cost="flops")
    with pytest.raises(ValueError, match=r"channel_cost='macs_memory' needs context='global'"):
        PruningCallback(channel_cost="macs_memory", context="local")
    assert PruningSpec(target="latency", budget=0.5, channel_cost="none").cost_kind is None
    assert PruningSpec(target="macs", budget=0.5).cost_kind is None


def test_sparse_training_that_can_not_apply_or_ranks_by_another_criterion_warns():
    callback = PruningCallback(ratio=0.5, criterion="taylor", sparse_training=1e-3, start_epoch=0, end_epoch=0,
                               sparse_start_epoch=1, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(callback, epochs=2)
    messages = [str(w.message) for w in caught]
    assert any("so it never applies; set sparse_end_epoch" in m for m in messages), messages
    assert any("ranks by criterion='taylor'" in m for m in messages), messages
    assert callback.session.sparsity.steps == 0
