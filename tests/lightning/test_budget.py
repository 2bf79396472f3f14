"""Pruning to a budget (issue 7): MACs, parameters and latency targets, intermediate budgets, unreachable
budgets, per-layer ratio overrides, and the pure functions behind them.

Expected values are computed here independently of lightning_prune: budgets from the agp/linear formulas,
MACs and parameters with torch-pruning's counter, and the granule bound and the smallest reachable model by
pruning the dense model with torch-pruning's DependencyGraph directly.
"""

from __future__ import annotations

import copy
import math
import re
import time
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch_pruning as tp
from conftest import PlainNet, quiet_trainer, random_loader
from torch import nn

import lightning_prune.engine.budget as budget_module
from lightning_prune import PruningCallback, count_macs_params
from lightning_prune.app.module import ClassifierModule
from lightning_prune.engine.budget import (
    MAX_RATIO,
    bisect_budget,
    clone_pruner,
    grid_ratio,
    grid_step,
    intermediate_budget,
    measure_latency,
    merge_prune_steps,
    search_channel_ratio,
    trial_value,
)
from lightning_prune.engine.pruner import ChannelPruner, PruneStep
from lightning_prune.engine.surgery import ParameterChange

SIZE = 16  # input height and width
X = torch.zeros(1, 3, SIZE, SIZE)


# -- a small ResNet (no torchvision) ------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class TinyResNet(nn.Module):
    """ResNet-18's layout with one block per stage and widths 16/32/48/64."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64), num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, width in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2)))
            cin = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def classifier(net: nn.Module | None = None) -> ClassifierModule:
    return ClassifierModule(net or TinyResNet(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=1e-2))


def loader():
    return random_loader(n=32, batch_size=16, size=SIZE)


def convs(module: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def ratios(module: nn.Module, dense: tuple[int, int]) -> tuple[float, float]:
    macs, params = count_macs_params(module, X)
    return macs / dense[0], params / dense[1]


class Recorder(pl.Callback):
    """MACs and parameter ratios, and conv widths, at the end of every epoch (after the pruning callback)."""

    def __init__(self, dense: tuple[int, int]) -> None:
        self.dense = dense
        self.ratios: list[tuple[float, float]] = []
        self.widths: list[dict[str, int]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.ratios.append(ratios(pl_module, self.dense))
        self.widths.append(convs(pl_module))


def fit(module, callback, epochs):
    recorder = Recorder(count_macs_params(module, X))
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback, recorder])
    trainer.fit(module, loader())
    return trainer, recorder


# -- independent references ---------------------------------------------------------------------------
def _groups(model: nn.Module, dg: tp.DependencyGraph, ignored: list[nn.Module]):
    return list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))


def one_channel_granule(module: ClassifierModule) -> tuple[float, float]:
    """The largest MACs and parameter share one channel of any prunable group has in the dense model.

    One grid step of the search removes at most one channel (global ranking, no round_to), and a channel of a
    pruned model costs at most what it cost in the dense model (its neighbours only get narrower).
    """
    dense = count_macs_params(module, X)
    worst = [0.0, 0.0]
    base = copy.deepcopy(module)  # building a graph calls eval(): never on the module under test
    n_groups = len(_groups(base, tp.DependencyGraph().build_dependency(base, example_inputs=X), [base.model.fc]))
    for i in range(n_groups):
        trial = copy.deepcopy(module)
        dg = tp.DependencyGraph().build_dependency(trial, example_inputs=X)
        group = _groups(trial, dg, [trial.model.fc])[i]
        dep = group[0].dep
        dg.get_pruning_group(dep.target.module, dep.handler, [0]).prune()
        macs, params = count_macs_params(trial, X)
        worst = [max(worst[0], 1 - macs / dense[0]), max(worst[1], 1 - params / dense[1])]
    return worst[0], worst[1]


def smallest_model_ratios(module: ClassifierModule, max_layer_ratio: float) -> tuple[float, float]:
    """MACs and parameter ratios with every prunable group cut to ceil(n * (1 - max_layer_ratio)) channels."""
    dense = count_macs_params(module, X)
    trial = copy.deepcopy(module)
    dg = tp.DependencyGraph().build_dependency(trial, example_inputs=X)
    for group in _groups(trial, dg, [trial.model.fc]):
        dep = group[0].dep
        n = dep.target.module.out_channels
        keep = max(1, math.ceil(n * (1 - max_layer_ratio) - 1e-9))
        dg.get_pruning_group(dep.target.module, dep.handler, list(range(keep, n))).prune()
    macs, params = count_macs_params(trial, X)
    return macs / dense[0], params / dense[1]


def agp_budget(budget: float, epoch: int, n_epochs: int) -> float:
    p = (epoch + 1) / n_epochs
    return 1 - (1 - budget) * (1 - (1 - p) ** 3)


# -- MACs budget, agp over 4 epochs: one fit shared by two tests ---------------------------------------
@pytest.fixture(scope="module")
def macs_run():
    pl.seed_everything(0, verbose=False)
    module = classifier()
    granule = one_channel_granule(module)
    callback = PruningCallback(target="macs", budget=0.5, schedule="agp", end_epoch=3, verbose=False)
    trainer, recorder = fit(module, callback, epochs=4)
    return module, callback, trainer, recorder, granule


def test_macs_budget_lands_within_one_granule_below_the_budget(macs_run):
    module, callback, trainer, recorder, (granule, _) = macs_run
    final = recorder.ratios[-1][0]
    assert 0.5 - granule <= final <= 0.5, (final, granule)
    # every search's own granule (one step of its grid; 0 when the budget was already met) is within the
    # bound, and its re-checked value is what the model has
    for event, (macs_ratio, _) in zip(callback.events, recorder.ratios):
        search = event["search"]
        assert 0 <= search["granule"] <= granule + 1e-12 and search["met"]
        assert search["value"] == pytest.approx(macs_ratio, abs=1e-12)
        if search["granule"] > 0:  # it pruned: no more than one of its own steps below the budget
            assert macs_ratio > search["budget"] - search["granule"]
    assert trainer.callback_metrics["prune/macs_ratio"].item() == pytest.approx(final, rel=1e-6)
    assert trainer.callback_metrics["prune/budget_target"].item() == pytest.approx(0.5, abs=1e-6)
    assert module(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 4)


def test_intermediate_epochs_follow_the_schedule_in_macs(macs_run):
    _, callback, _, recorder, (granule, _) = macs_run
    assert [e["epoch"] for e in callback.events] == [0, 1, 2, 3]
    for epoch, (macs_ratio, _) in enumerate(recorder.ratios):
        expected = agp_budget(0.5, epoch, 4)
        assert expected - granule <= macs_ratio <= expected, (epoch, macs_ratio, expected)
        assert callback.events[epoch]["prune/budget_target"] == pytest.approx(expected, abs=1e-12)
    # agp: most of the reduction early (the channel-ratio schedule would differ: MACs fall ~quadratically)
    assert recorder.ratios[0][0] < 0.75 and recorder.ratios[1][0] < 0.6


def test_params_budget_lands_within_one_granule_and_follows_the_schedule():
    module = classifier()
    _, granule = one_channel_granule(module)
    callback = PruningCallback(target="params", budget=0.5, schedule="linear", end_epoch=1, verbose=False)
    _, recorder = fit(module, callback, epochs=2)
    for epoch, expected in enumerate((0.75, 0.5)):
        params_ratio = recorder.ratios[epoch][1]
        assert expected - granule <= params_ratio <= expected, (epoch, params_ratio, expected, granule)


def _fails_before_training(callback, module=None, epochs=2) -> str:
    module = module or classifier()
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback])
    with pytest.raises(ValueError) as info:
        trainer.fit(module, loader())
    assert trainer.global_step == 0
    assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items())
    return str(info.value)


@pytest.mark.parametrize(("target", "index"), [("macs", 0), ("params", 1)])
def test_an_unreachable_budget_is_rejected_before_training_with_the_smallest_reachable_value(target, index):
    module = classifier()
    smallest = smallest_model_ratios(module, max_layer_ratio=0.8)[index]
    message = _fails_before_training(
        PruningCallback(target=target, budget=smallest * 0.9, max_layer_ratio=0.8, verbose=False), module
    )
    found = re.search(r"smallest reachable (\w+) ratio is ([0-9.]+)", message)
    assert found is not None, message
    assert found.group(1) == target
    assert float(found.group(2)) == pytest.approx(smallest, abs=1e-6)
    assert f"budget={smallest * 0.9}" in message and "max_layer_ratio=0.8" in message


def test_a_budget_just_above_the_smallest_reachable_value_is_accepted():
    module = classifier()
    smallest = smallest_model_ratios(module, max_layer_ratio=0.9)[0]
    callback = PruningCallback(target="macs", budget=smallest + 1e-3, schedule="one_shot", verbose=False)
    _, recorder = fit(module, callback, epochs=1)
    assert recorder.ratios[-1][0] <= smallest + 1e-3
    assert callback.smallest_reachable == pytest.approx(smallest, abs=1e-12)


# -- ratio overrides ----------------------------------------------------------------------------------
def test_a_ratio_override_gives_its_layers_their_own_ratio_local():
    module = classifier()
    original = convs(module)
    callback = PruningCallback(
        ratio=0.5, schedule="one_shot", context="local", ratio_overrides={"model.layer3.*": 0.2}, verbose=False
    )
    _, recorder = fit(module, callback, epochs=1)
    final = recorder.widths[-1]
    overridden = [n for n in original if n.startswith("model.layer3.")]
    assert len(overridden) == 3
    for name, width in final.items():
        ratio = 0.2 if name in overridden else 0.5
        expected = int(original[name] * (1 - ratio))
        assert abs(width - expected) <= 1, (name, width, expected)


def test_a_ratio_override_follows_the_schedule_and_the_budget_moves_the_other_layers():
    module = classifier()
    granule, _ = one_channel_granule(module)
    callback = PruningCallback(
        target="macs",
        budget=0.6,
        schedule="linear",
        ratio_overrides={"model.layer4.0.conv1": 0.25},
        end_epoch=1,
        verbose=False,
    )
    _, recorder = fit(module, callback, epochs=2)
    # a scope of one 64-channel layer: exactly 64 * (1 - 0.25 * fraction) channels kept
    assert [w["model.layer4.0.conv1"] for w in recorder.widths] == [56, 48]
    assert 0.6 - granule <= recorder.ratios[-1][0] <= 0.6
    assert recorder.widths[-1]["model.layer1.0.conv1"] < 16  # the rest was searched and pruned


def test_an_override_pattern_that_matches_nothing_is_rejected_before_training():
    message = _fails_before_training(PruningCallback(ratio_overrides={"layer4.*": 0.2}, verbose=False))
    assert "'layer4.*'" in message and "did you mean 'model.layer4.*'" in message
    message = _fails_before_training(PruningCallback(ratio_overrides={"model.layer9.*": 0.2}, verbose=False))
    assert "'model.layer9.*' matches no module" in message and "model.conv1" in message


def test_an_override_pattern_without_prunable_layers_is_rejected_before_training():
    message = _fails_before_training(PruningCallback(ratio_overrides={"model.*.bn1": 0.2}, verbose=False))
    assert "'model.*.bn1'" in message and "no prunable layer" in message


# -- latency (the measure is replaced by a deterministic stand-in, so the test is not timing-dependent) --
def test_latency_target_measures_the_model_on_its_device_at_fit_start(macs_as_latency):
    module = classifier()
    granule, _ = one_channel_granule(module)
    callback = PruningCallback(target="latency", budget=0.6, schedule="one_shot", verbose=False)
    trainer, recorder = fit(module, callback, epochs=1)
    assert macs_as_latency and all(device.type == "cpu" for device in macs_as_latency)
    assert 0.6 - granule <= recorder.ratios[-1][0] <= 0.6
    assert trainer.callback_metrics["prune/latency_ratio"].item() == pytest.approx(recorder.ratios[-1][0], rel=1e-6)


def test_measure_latency_is_the_median_of_timed_passes():
    class Sleepy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            time.sleep(0.3 if self.calls == 3 else 0.004)  # one slow outlier among the timed passes
            return self.lin(x)

    net = Sleepy().train()
    latency = measure_latency(net, torch.zeros(1, 2), repeats=5, warmup=1)
    assert net.calls == 6
    assert 0.004 <= latency < 0.03  # the mean would be >= 0.06, the outlier alone 0.3
    assert net.training


def test_a_machine_that_slows_down_after_the_dense_timing_does_not_reject_a_reachable_latency_budget():
    class Slowing(nn.Module):
        """Sleeps in proportion to its width; 10x slower once the dense model has been timed on its own (another
        job starts on the machine). Its pruned copies share the slowdown: it is the machine's."""

        passes = [0]

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            self.passes[0] += 1
            time.sleep(5e-5 * self.conv.out_channels * (1 if self.passes[0] <= 23 else 10))
            return self.head(self.conv(x))

    net = Slowing()
    pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net.head])
    Slowing.passes[0] = 0  # the dense model's own timing: 3 warm-up and 20 timed passes
    tracker = budget_module.BudgetTracker("latency", 0.5, lambda: torch.zeros(1, 3, 4, 4))
    tracker.resolve(pruner, net, n_kept=1)  # timed apart, the smallest model would measure about 1.2x dense
    assert Slowing.passes[0] > 23 + 2 * 23  # the smallest model was timed after the slowdown
    assert tracker.smallest_reachable is not None and tracker.smallest_reachable < 0.4
    assert net.conv.out_channels == 8  # timed on a copy


# -- bad arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "flops", "budget": 0.5}, r"target='flops'.*'channels', 'macs', 'params', 'latency'"),
        ({"target": "macs"}, r"target='macs' needs budget in \(0, 1\)"),
        ({"target": "macs", "budget": 0.0}, r"budget=0.0 .*\(0, 1\)"),
        ({"target": "params", "budget": 1.0}, r"budget=1.0 .*\(0, 1\)"),
        ({"target": "latency", "budget": -0.5}, r"budget=-0.5 .*\(0, 1\)"),
        ({"target": "macs", "budget": "0.5"}, r"budget='0.5' .*\(0, 1\)"),
        ({"budget": 0.5}, r"budget=0.5 needs a budget target.*'macs'"),
        ({"ratio_overrides": {"model.fc": 1.0}}, r"ratio_overrides\['model.fc'\]=1.0 .*\[0, 1\)"),
        ({"ratio_overrides": ["model.fc"]}, r"ratio_overrides=\['model.fc'\] .*map"),
    ],
)
def test_bad_budget_arguments_are_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningCallback(**kwargs)


# -- pure functions and the search --------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.875, 1.0])
def test_intermediate_budget_maps_the_schedule_linearly_onto_the_budget(fraction):
    value = intermediate_budget(0.4, fraction)
    assert value == pytest.approx(1 - 0.6 * fraction)
    assert 0.4 <= value <= 1.0


def test_grid_ratio_and_step_are_inverse_and_the_last_step_prunes_to_the_cap():
    for n in (1, 7, 320):
        assert [grid_step(grid_ratio(k, n), n) for k in range(n + 1)] == list(range(n + 1))
        assert grid_ratio(n, n) == MAX_RATIO < 1.0
    with pytest.raises(ValueError):
        grid_ratio(5, 4)


@pytest.mark.parametrize("seed", range(5))
def test_bisect_budget_finds_the_smallest_step_meeting_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    drops = torch.rand(40, generator=g) * (torch.rand(40, generator=g) > 0.3)  # flat stretches included
    values = (1.0 - torch.cumsum(drops, 0) / drops.sum()).tolist()
    budget = float(torch.rand(1, generator=g)) * 0.8 + 0.1
    seen = []
    step, evaluated = bisect_budget(lambda k: seen.append(k) or values[k], budget, lo=0, hi=39)
    brute = next(k for k, v in enumerate(values) if v <= budget)
    assert step == brute
    assert evaluated[step] <= budget < evaluated[step - 1]
    assert len(seen) <= math.ceil(math.log2(39)) + 2


def test_bisect_budget_stops_at_lo_when_it_already_meets_the_budget_and_reports_an_unmet_hi():
    assert bisect_budget(lambda k: 0.3, 0.5, lo=3, hi=10) == (3, {3: 0.3})
    step, values = bisect_budget(lambda k: 0.9 - k / 100, 0.5, lo=0, hi=10)
    assert step == 10 and values[10] > 0.5


def test_prune_to_is_monotone_and_reaches_the_cap_at_the_largest_ratio():
    net = PlainNet()
    pruner = ChannelPruner(net, torch.zeros(1, 3, 8, 8), ignored_layers=[net.fc], max_layer_ratio=0.9)
    dense = count_macs_params(net, torch.zeros(1, 3, 8, 8))[0]
    macs = [
        trial_value(pruner, lambda m: count_macs_params(m, torch.zeros(1, 3, 8, 8))[0] / dense, r)
        for r in (0.0, 0.3, 0.6, 0.85, 0.9, 0.95, 0.99, MAX_RATIO)
    ]
    assert macs == sorted(macs, reverse=True), macs
    pruner.prune_to(MAX_RATIO)  # torch-pruning alone would skip every fully selected layer here
    assert convs(net) == {"features.0.0": 2, "features.1.0": 3, "features.3.0": 4}


def test_clone_pruner_prunes_a_copy_with_the_gradients_and_leaves_the_original_alone():
    net = PlainNet()
    x = torch.randn(2, 3, 8, 8)
    net(x).sum().backward()
    pruner = ChannelPruner(net, x[:1], importance="taylor", ignored_layers=[net.fc])
    trial = clone_pruner(pruner)
    for old, new in zip(net.parameters(), trial.model.parameters()):
        assert new is not old and torch.equal(new.grad, old.grad)
    trial.prune_to(0.5)
    reference = copy.deepcopy(net)  # nn.Parameter's deepcopy drops .grad: copy it by hand
    for old, new in zip(net.parameters(), reference.parameters()):
        new.grad = old.grad.clone()
    ChannelPruner(reference, x[:1], importance="taylor", ignored_layers=[reference.fc]).prune_to(0.5)
    assert convs(trial.model) == convs(reference) != convs(net)  # same taylor ranking as the real thing
    assert convs(net) == {"features.0.0": 16, "features.1.0": 24, "features.3.0": 32}


def test_search_channel_ratio_matches_an_exhaustive_scan_and_leaves_the_pruner_alone():
    net = PlainNet()
    x = torch.zeros(1, 3, 8, 8)
    pruner = ChannelPruner(net, x, ignored_layers=[net.fc])
    dense = count_macs_params(net, x)[0]

    def measure(model):
        return count_macs_params(model, x)[0] / dense

    found = search_channel_ratio(pruner, measure, budget=0.4)
    n = pruner.prunable_channels
    scan = [trial_value(pruner, measure, grid_ratio(k, n)) for k in range(n + 1)]
    first = next(k for k, v in enumerate(scan) if v <= 0.4)
    assert found.ratio == grid_ratio(first, n) and found.value == scan[first]
    assert found.granule == pytest.approx(scan[first - 1] - scan[first])
    assert found.met and found.trials <= math.ceil(math.log2(n)) + 2
    assert convs(net) == {"features.0.0": 16, "features.1.0": 24, "features.3.0": 32}


def test_merge_prune_steps_composes_the_kept_indices():
    a, b, c = (nn.Parameter(torch.arange(n, dtype=torch.float32)) for n in (6, 4, 2))
    first = PruneStep(0.1, 0.1, 1, [ParameterChange("w", a, b, torch.tensor([0, 2, 3, 5]))], [["x", True, [1]]])
    second = PruneStep(0.2, 0.2, 2, [ParameterChange("w", b, c, torch.tensor([1, 3]))], [["x", True, [0]]])
    merged = merge_prune_steps([first, second])
    (change,) = merged.changes
    assert change.old is a and change.new is c
    assert change.select(a.detach()).tolist() == [2.0, 5.0]
    assert (merged.target, merged.groups, merged.history) == (0.2, 3, [["x", True, [1]], ["x", True, [0]]])


def test_a_budget_works_with_the_gradient_based_taylor_criterion():
    # the reachability check and the plan run at set-up, before any gradient exists; the pruning epochs
    # rank with the summed gradients of the epoch
    module = classifier()
    granule, _ = one_channel_granule(module)
    callback = PruningCallback(target="macs", budget=0.5, criterion="taylor", schedule="linear", verbose=False)
    _, recorder = fit(module, callback, epochs=2)
    assert 0.5 - granule <= recorder.ratios[-1][0] <= 0.5
    assert callback.budget_plan is not None and callback.budget_plan.met


def test_clone_pruner_copies_a_deep_network():
    # a chain of hundreds of layers: the dependency graph's linked nodes are deeper than Python's default
    # recursion limit allows copy.deepcopy to follow
    net = nn.Sequential(*[nn.Conv2d(4, 4, 1) for _ in range(400)], nn.Flatten(), nn.Linear(4, 2))
    pruner = ChannelPruner(net, torch.zeros(1, 4, 1, 1), ignored_layers=[net[-1]])
    trial = clone_pruner(pruner)
    trial.prune_to(0.5)
    width = lambda model: sum(m.out_channels for m in model if isinstance(m, nn.Conv2d))  # noqa: E731
    assert width(trial.model) == 800 and width(net) == 1600


def test_budget_searches_measure_the_inputs_moved_to_the_device_at_fit_start(monkeypatch):
    """Lightning calls setup before the strategy moves the model; on_fit_start moves the example inputs to
    the model's device. Every later budget measure must run on those inputs, not the set-up copy (on a GPU
    it would run a CUDA model on CPU inputs). CI has no GPU: the move is simulated by a fresh tensor."""
    from lightning_prune.engine import budget as budget_module
    from lightning_prune.engine.session import ScheduledPruning

    moved: list[torch.Tensor] = []
    seen: list[tuple[int, object]] = []
    real_move, real_metric = ScheduledPruning.move_inputs, budget_module.make_metric

    def move(self, device):
        real_move(self, device)
        self.inputs = self.inputs.clone()  # a new object, as a move to another device makes
        moved.append(self.inputs)

    def metric(target, repeats=20):
        measure = real_metric(target, repeats)
        return lambda model, inputs: seen.append((len(moved), inputs)) or measure(model, inputs)

    monkeypatch.setattr(ScheduledPruning, "move_inputs", move)
    monkeypatch.setattr(budget_module, "make_metric", metric)
    callback = PruningCallback(target="macs", budget=0.5, schedule="linear", verbose=False)
    quiet_trainer(max_epochs=2, callbacks=[callback]).fit(classifier(), loader())
    after_start = [inputs for n, inputs in seen if n == 1]
    assert len(moved) == 1 and after_start, "no budget measure ran after fit start"
    assert all(inputs is moved[0] for inputs in after_start)
    assert callback.example_inputs is moved[0]


# -- round_to: units fill the budget after the grid step ----------------------------------------------
def one_unit_granule(model: nn.Module, unit: int) -> float:
    """The largest MACs share ``unit`` channels of any prunable group have in the dense model (a unit of a
    pruned model costs at most that: its neighbours only get narrower)."""
    dense = count_macs_params(model, X)[0]
    base = copy.deepcopy(model)
    n_groups = len(_groups(base, tp.DependencyGraph().build_dependency(base, example_inputs=X), [base.fc]))
    worst = 0.0
    for i in range(n_groups):
        trial = copy.deepcopy(model)
        dg = tp.DependencyGraph().build_dependency(trial, example_inputs=X)
        dep = _groups(trial, dg, [trial.fc])[i][0].dep
        dg.get_pruning_group(dep.target.module, dep.handler, list(range(unit))).prune()
        worst = max(worst, 1 - count_macs_params(trial, X)[0] / dense)
    return worst


def test_a_round_to_budget_takes_back_units_to_within_one_unit_of_the_budget():
    """torch-pruning rounds kept channels DOWN, so the grid step that meets a budget can drop 8 channels of an
    expensive stage at once and land far under it. The search's own value is that landing; the prune puts
    units back while the budget holds: it lands between the two, within one unit of the budget, no layer
    narrower than the grid step left it, every width a multiple of 8."""
    torch.manual_seed(0)
    net = TinyResNet()
    unit_share = one_unit_granule(net, 8)
    dense = count_macs_params(net, X)[0]

    def measure(model):
        return count_macs_params(model, X)[0] / dense

    took_back = False
    for budget in (0.45, 0.55, 0.65, 0.75):
        model = copy.deepcopy(net)
        pruner = ChannelPruner(model, X, ignored_layers=[model.fc], round_to=8)
        plain = search_channel_ratio(pruner, measure, budget)  # the grid step alone
        grid = clone_pruner(pruner)
        grid.prune_to(plain.ratio)
        step, found = budget_module.prune_to_budget(pruner, measure, budget)
        value = measure(model)
        assert found.value == pytest.approx(value) and step.target == found.ratio == plain.ratio
        assert plain.value <= value <= budget, (budget, plain.value, value)
        assert budget - value < unit_share, (budget, value, unit_share)
        assert all(w % 8 == 0 for w in convs(model).values()), convs(model)
        assert all(convs(model)[n] >= w for n, w in convs(grid.model).items())
        took_back |= found.units > 0 and value > plain.value
        # the record replays: a fresh copy restructured from the history has the same widths and weights
        copy_of = copy.deepcopy(net)
        ChannelPruner(copy_of, X, ignored_layers=[copy_of.fc], round_to=8).replay(pruner.history())
        assert convs(copy_of) == convs(model)
        assert all(torch.equal(a, b) for a, b in zip(copy_of.state_dict().values(), model.state_dict().values()))
    assert took_back  # some budget was met closer than the grid step met it


def test_without_round_to_or_with_local_ranking_no_units_are_taken_back():
    torch.manual_seed(0)
    dense = count_macs_params(TinyResNet(), X)[0]
    for kwargs in ({}, {"round_to": 8, "global_pruning": False}):
        model = TinyResNet()
        pruner = ChannelPruner(model, X, ignored_layers=[model.fc], **kwargs)
        _, found = budget_module.prune_to_budget(pruner, lambda m: count_macs_params(m, X)[0] / dense, 0.55)
        assert found.units == 0 and found.met


def test_a_round_to_budget_in_a_fit_takes_back_units_and_training_goes_on():
    """The callback with ``round_to=8``: each pruning epoch lands within one unit under its budget (units put
    back, counted in the event's search), Adam's state follows the replayed prune, and training goes on."""
    pl.seed_everything(0, verbose=False)
    module = classifier()
    unit_share = one_unit_granule(module.model, 8)
    callback = PruningCallback(target="macs", budget=0.45, round_to=8, schedule="linear", end_epoch=1, verbose=False)
    snapshots = []

    class Snapshot(pl.Callback):  # after the pruning callback: the weights each epoch ends with
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append([p.detach().clone() for p in pl_module.parameters()])

    recorder = Recorder(count_macs_params(module, X))
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback, recorder, Snapshot()])
    trainer.fit(module, loader())
    budgets = [event["prune/budget_target"] for event in callback.events]
    assert budgets == pytest.approx([0.725, 0.45])
    for event, budget in zip(callback.events, budgets):
        assert budget - unit_share < event["prune/macs_ratio"] <= budget, (event, budget, unit_share)
    assert sum(event["search"]["units"] for event in callback.events) > 0  # the fill did something
    assert all(w % 8 == 0 for w in convs(module).values())
    optimizer = trainer.optimizers[0]
    live = list(module.parameters())
    assert [p for group in optimizer.param_groups for p in group["params"]] == live
    for param in live:
        state = optimizer.state[param]
        assert state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == param.shape
    assert recorder.widths[1] == recorder.widths[2]  # epoch 2 only trains the pruned model ...
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # ... and its weights move
