"""PruningCallback inside trainer.fit: schedule, optimizer carry-over, module state, logging, bad input."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch_pruning as tp
from conftest import PlainNet, ResidualNet, quiet_trainer, random_loader
from torch import nn

from lightning_prune import PruningCallback, count_macs_params
from lightning_prune.app.module import ClassifierModule
from lightning_prune.engine.schedules import get_schedule, scheduled_ratio

PRUNABLE = (nn.Conv2d, nn.Linear)


def classifier(net: nn.Module | None = None, optimizer=None, lr_scheduler=None, lr_interval="epoch"):
    return ClassifierModule(
        net or PlainNet(),
        num_classes=4,
        optimizer=optimizer or partial(torch.optim.Adam, lr=1e-2),
        lr_scheduler=lr_scheduler,
        lr_interval=lr_interval,
    )


def out_channels(module: nn.Module) -> dict[str, int]:
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in module.named_modules()
        if isinstance(m, PRUNABLE)
    }


class Recorder(pl.Callback):
    """Records, at each epoch end, the widths, LR and a copy of the weights."""

    def __init__(self) -> None:
        self.widths: list[dict[str, int]] = []
        self.lrs: list[float] = []
        self.step_lrs: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.training: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.widths.append(out_channels(pl_module))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
        self.training.append(pl_module.training and all(m.training for m in pl_module.model.modules()))


def fit(module, callbacks, epochs=4, loader=None):
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks)
    loader = loader or random_loader()
    trainer.fit(module, loader)
    return trainer


@pytest.mark.parametrize("schedule", ["agp", "iterative", "one_shot"])
def test_local_pruning_follows_the_schedule_layer_by_layer(schedule):
    module = classifier()
    original = out_channels(module)
    after = Recorder()
    callback = PruningCallback(
        ratio=0.5, schedule=schedule, context="local", start_epoch=1, end_epoch=4, criterion="l1"
    )
    fit(module, [callback, after], epochs=5)
    sched = get_schedule(schedule)
    for epoch, widths in enumerate(after.widths):
        target = scheduled_ratio(epoch, 0.5, sched, 1, 4)
        for name, width in widths.items():
            if name == "model.fc":
                assert width == original[name]  # the output layer is never pruned
                continue
            expected = int(original[name] * (1 - target))
            assert abs(width - expected) <= 1, (epoch, name, width, expected)
    assert after.widths[0] == original  # nothing before start_epoch
    assert module.model.fc.out_features == 4


def test_global_pruning_removes_the_scheduled_share_of_all_prunable_channels():
    module = classifier()
    original = out_channels(module)
    prunable = [n for n in original if n != "model.fc"]
    total = sum(original[n] for n in prunable)
    after = Recorder()
    callback = PruningCallback(ratio=0.6, schedule="linear", context="global", end_epoch=2, criterion="l2")
    fit(module, [callback, after], epochs=3)
    for epoch, widths in enumerate(after.widths):
        target = 0.6 * (epoch + 1) / 3
        kept = sum(widths[n] for n in prunable)
        assert abs(kept - int(total * (1 - target))) <= 1, (epoch, kept)
        assert callback.events[epoch]["prune/ratio"] == pytest.approx(1 - kept / total)
    # global ranking prunes layers unevenly, but none beyond max_layer_ratio
    final = after.widths[-1]
    for name in prunable:
        assert final[name] >= math.ceil(original[name] * (1 - callback.spec.max_layer_ratio))


def test_max_layer_ratio_caps_every_layer():
    module = classifier(ResidualNet())
    original = out_channels(module)
    callback = PruningCallback(ratio=0.8, schedule="one_shot", max_layer_ratio=0.5, criterion="l1")
    fit(module, [callback], epochs=1)
    for name, width in out_channels(module).items():
        assert width >= math.ceil(original[name] * 0.5), name


def test_round_to_keeps_multiples():
    module = classifier()
    callback = PruningCallback(ratio=0.5, schedule="one_shot", round_to=4, context="local")
    fit(module, [callback], epochs=1)
    for name, width in out_channels(module).items():
        if name != "model.fc":
            assert width % 4 == 0 and width < 32, (name, width)


def test_pruned_layers_keep_training_after_each_prune():
    module = classifier(ResidualNet())
    before_prune, after_prune = Recorder(), Recorder()
    callback = PruningCallback(ratio=0.5, schedule=get_schedule("iterative", n_steps=2), end_epoch=3, criterion="l2")
    fit(module, [before_prune, callback, after_prune], epochs=4)
    # prunes at the end of epochs 1 and 3 (n_steps=2 over 4 epochs)
    assert [e["epoch"] for e in callback.events] == [1, 3]
    for epoch in (1,):
        pruned = after_prune.weights[epoch]
        next_epoch = before_prune.weights[epoch + 1]
        for name in ("model.stem.0.weight", "model.block.0.0.weight", "model.block.1.weight"):
            assert pruned[name].shape == next_epoch[name].shape
            assert pruned[name].shape != before_prune.weights[epoch][name].shape  # it was pruned
            assert not torch.equal(pruned[name], next_epoch[name]), f"{name} did not train after pruning"


def test_optimizer_points_at_the_live_parameters_with_matching_adam_state():
    module = classifier(ResidualNet())
    trainer = fit(module, [PruningCallback(ratio=0.5, schedule="linear", criterion="l1")], epochs=3)
    optimizer = trainer.optimizers[0]
    live = {id(p) for p in module.parameters()}
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == live
    for param, state in optimizer.state.items():
        assert state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == param.shape


@pytest.mark.parametrize(
    ("scheduler", "interval"),
    [
        (partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4), "epoch"),
        (partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05), "step"),
    ],
)
def test_learning_rate_follows_the_same_schedule_as_an_unpruned_run(scheduler, interval):
    runs = []
    for callbacks in ([], [PruningCallback(ratio=0.5, schedule="linear", criterion="l1")]):
        recorder = Recorder()
        module = classifier(optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9), lr_scheduler=scheduler,
                            lr_interval=interval)
        fit(module, [*callbacks, recorder], epochs=4)
        runs.append(recorder)
    dense, pruned = runs
    assert pruned.lrs == pytest.approx(dense.lrs, abs=0, rel=1e-12)
    assert pruned.step_lrs == pytest.approx(dense.step_lrs, abs=0, rel=1e-12)
    assert len(set(dense.lrs)) > 1  # the schedule really moved


def test_frozen_layers_stay_frozen_and_train_mode_is_restored():
    net = ResidualNet()
    net.stem[0].weight.requires_grad_(False)
    module = classifier(net)
    after = Recorder()
    fit(module, [PruningCallback(ratio=0.5, schedule="linear"), after], epochs=3)
    assert net.stem[0].out_channels < 16
    assert net.stem[0].weight.requires_grad is False
    assert all(p.requires_grad for n, p in net.named_parameters() if n != "stem.0.weight")
    assert all(after.training)


def test_dependency_graph_is_built_once_per_fit(monkeypatch):
    calls = []
    original = tp.DependencyGraph.build_dependency

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counting)
    callback = PruningCallback(ratio=0.5, schedule="linear", end_epoch=2)
    fit(classifier(), [callback], epochs=3)
    assert len(callback.events) == 3
    assert len(calls) == 1


def test_metrics_are_logged_and_the_layer_report_matches_the_model():
    module = classifier(ResidualNet())
    callback = PruningCallback(ratio=0.5, schedule="agp", verbose=False)
    trainer = fit(module, [callback], epochs=2)
    metrics = trainer.callback_metrics
    macs, params = count_macs_params(module, torch.zeros(1, 3, 8, 8))
    assert metrics["prune/macs"].item() == macs
    assert metrics["prune/params"].item() == params
    assert metrics["prune/macs_ratio"].item() == pytest.approx(macs / callback.baseline[-1].macs, rel=1e-6)
    assert metrics["prune/params_ratio"].item() < 1.0
    assert metrics["prune/ratio"].item() == pytest.approx(0.5, abs=0.05)
    total = callback.report[-1]
    assert (total.layer, total.macs, total.params) == ("TOTAL", macs, params)
    rows = {r.layer: r for r in callback.report}
    assert rows["model.stem.0"].original_channels == 16 and rows["model.stem.0"].channels < 16


@pytest.mark.parametrize("criterion", ["taylor", "bn_scale", "lamp", "fpgm", "random"])
def test_every_criterion_prunes_and_keeps_the_output_shape(criterion):
    module = classifier(ResidualNet())
    callback = PruningCallback(ratio=0.5, schedule="linear", criterion=criterion)
    fit(module, [callback], epochs=2)
    assert callback.events[-1]["prune/ratio"] == pytest.approx(0.5, abs=0.07)
    assert module(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_taylor_uses_the_gradients_of_the_pruning_epoch():
    seen = []

    class Spy(tp.importance.GroupTaylorImportance):
        def __call__(self, group):
            seen.append(all(dep.target.module.weight.grad is not None for dep, _ in group
                            if isinstance(dep.target.module, nn.Conv2d)))
            return super().__call__(group)

    fit(classifier(), [PruningCallback(ratio=0.3, schedule="one_shot", criterion=Spy())], epochs=1)
    assert seen and all(seen)


def test_random_criterion_is_reproducible_from_the_seed():
    widths = []
    for seed in (1, 1, 2):
        module = classifier()
        fit(module, [PruningCallback(ratio=0.5, schedule="one_shot", criterion="random", seed=seed)], epochs=1)
        widths.append(out_channels(module))
    assert widths[0] == widths[1]
    assert widths[0] != widths[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, r"ratio=1.0 .*\[0, 1\)"),
        ({"ratio": -0.1}, r"ratio=-0.1 .*\[0, 1\)"),
        ({"schedule": "nope"}, r"schedule='nope'.*agp"),
        ({"criterion": "nope"}, r"criterion='nope'.*l2"),
        ({"context": "both"}, r"context='both'.*global"),
        ({"start_epoch": 3, "end_epoch": 2}, r"end_epoch=2 .*start_epoch \(3\)"),
        ({"max_layer_ratio": 0.0}, r"max_layer_ratio=0.0 .*\(0, 1\]"),
        ({"max_layer_ratio": 1.5}, r"max_layer_ratio=1.5 .*\(0, 1\]"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningCallback(**kwargs)


def _fails_before_training(callback, module=None, epochs=3):
    module = module or classifier()
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback])
    with pytest.raises(ValueError) as info:
        trainer.fit(module, random_loader())
    assert trainer.global_step == 0
    assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items())
    return str(info.value)


def test_start_epoch_past_max_epochs_is_rejected_before_training():
    message = _fails_before_training(PruningCallback(start_epoch=3), epochs=3)
    assert "start_epoch=3" in message and "max_epochs=3" in message


def test_end_epoch_past_max_epochs_is_rejected_before_training():
    message = _fails_before_training(PruningCallback(end_epoch=5), epochs=3)
    assert "end_epoch=5" in message and "[0, 2]" in message


def test_an_ignored_pattern_matching_nothing_is_rejected_before_training():
    message = _fails_before_training(PruningCallback(ignored_layers=["model.nope*"]))
    assert "'model.nope*'" in message and "model.features" in message


def test_ignored_layers_are_not_pruned():
    module = classifier()
    fit(module, [PruningCallback(ratio=0.5, schedule="one_shot", ignored_layers=["model.features.1.*"])],
        epochs=1)
    assert module.model.features[1][0].out_channels == 24
    assert module.model.features[0][0].out_channels < 16


def test_an_untraceable_model_is_rejected_before_training_with_the_cause():
    callback = PruningCallback(example_inputs=torch.zeros(1, 5, 8, 8))
    message = _fails_before_training(callback)
    assert "ClassifierModule" in message and "(1, 5, 8, 8)" in message and "channels" in message


def test_a_small_cnn_on_digits_keeps_its_accuracy_with_half_the_channels_pruned():
    from lightning_prune.app.data import DigitsDataModule
    from lightning_prune.app.models import small_cnn

    datamodule = DigitsDataModule(size=16, channels=1, batch_size=64, seed=0)
    module = ClassifierModule(small_cnn(num_classes=10, in_channels=1, width=16), num_classes=10,
                              optimizer=partial(torch.optim.AdamW, lr=3e-3))
    callback = PruningCallback(ratio=0.5, schedule="agp", context="global", criterion="l2", end_epoch=3,
                               verbose=False)
    trainer = quiet_trainer(max_epochs=6, callbacks=[callback])
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert callback.pruner.channel_ratio() == pytest.approx(0.5, abs=0.02)
    assert metrics["prune/macs_ratio"].item() < 0.4
    assert metrics["val/acc"].item() >= 0.95


def test_the_graph_is_traced_with_one_sample_even_when_a_whole_batch_is_given():
    seen = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = PlainNet()

        def forward(self, x):
            seen.append(x.shape[0])
            return self.net(x)

    module = ClassifierModule(Recorder(), num_classes=4)
    callback = PruningCallback(ratio=0.3, example_inputs=torch.randn(16, 3, 8, 8), verbose=False)
    quiet_trainer(max_epochs=1, callbacks=[callback]).fit(module, random_loader(n=16, batch_size=8))
    assert callback.example_inputs.shape == (1, 3, 8, 8)
    assert 16 not in seen and 1 in seen  # traced with one sample, trained with batches of 8
    assert 8 in seen


def test_by_default_the_last_epoch_fine_tunes_the_pruned_model():
    module = classifier()
    callback = PruningCallback(ratio=0.5, schedule="linear", verbose=False)
    fit(module, [callback], epochs=3)
    assert [event["epoch"] for event in callback.events] == [0, 1]  # full ratio at epoch 1, epoch 2 fine-tunes


def test_a_prune_at_the_end_of_the_last_epoch_warns_that_it_is_not_fine_tuned():
    callback = PruningCallback(ratio=0.5, schedule="linear", end_epoch=2, verbose=False)
    with pytest.warns(UserWarning, match=r"not fine-tuned; set end_epoch <= 1"):
        fit(classifier(), [callback], epochs=3)
    assert callback.events[-1]["epoch"] == 2
