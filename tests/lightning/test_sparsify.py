"""SparsifyCallback inside trainer.fit: scheduled sparsity per granularity, masks through every optimizer step,
lottery-ticket rewinding, metrics and report, checkpoints and resume, bad arguments, compaction afterwards."""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from conftest import PlainNet, ResidualNet, quiet_trainer, random_loader
from lightning.pytorch.callbacks import ModelCheckpoint, ModelPruning
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_prune import SparsifyCallback, SparsifySpec, compact
from lightning_prune.app.module import ClassifierModule
from lightning_prune.checkpoint import load_checkpoint
from lightning_prune.engine.schedules import dsd, get_schedule, scheduled_ratio
from lightning_prune.engine.sparsify import is_masked
from lightning_prune.engine.sparsity import nm_pattern_holds

LAYERS = ("model.features.0.0", "model.features.1.0", "model.features.3.0")  # PlainNet's convs; model.fc is the head


def classifier(net: nn.Module | None = None, optimizer=None) -> ClassifierModule:
    pl.seed_everything(0, verbose=False)
    return ClassifierModule(
        net or PlainNet(), num_classes=4,
        optimizer=optimizer or partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
    )


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses, masked or not."""
    if is_masked(module, "weight"):
        return (module.weight_orig * module.weight_mask).detach().clone()
    return module.weight.detach().clone()


def units(weight: torch.Tensor, granularity: str) -> tuple[int, int]:
    """(units, weights zeroed per pruned unit), written out independently of the engine."""
    if granularity == "weight":
        return weight.numel(), 1
    if granularity == "kernel":
        return weight.shape[0] * weight.shape[1], weight[0, 0].numel()
    if granularity == "filter":
        return weight.shape[0], weight[0].numel()
    n, m = map(int, granularity.split(":"))
    return weight.numel() // m, m - n


def expected_zeros(weight: torch.Tensor, granularity: str, sparsity: float) -> int:
    n_units, size = units(weight, granularity)
    if ":" in granularity:
        n, m = map(int, granularity.split(":"))
        share = sparsity / ((m - n) / m)
        return math.floor(share * n_units + 0.5) * size
    return min(math.floor(sparsity * n_units + 0.5), n_units - 1) * size


class Probe(pl.Callback):
    """After SparsifyCallback (it comes later in the list): per-epoch weights, masks and optimizer state."""

    def __init__(self) -> None:
        self.zeros: list[dict[str, int]] = []
        self.masks: list[dict[str, torch.Tensor]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.state_sizes: list[dict[str, int]] = []
        self.epoch_start: dict[int, dict[str, torch.Tensor]] = {}
        self.before_epoch_end: dict[int, dict[str, torch.Tensor]] = {}  # after the last step, before any rewind

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.before_epoch_end[trainer.current_epoch] = {
            name: weight_of(m) for name, m in pl_module.named_modules() if name in LAYERS
        }

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start[trainer.current_epoch] = {
            name: weight_of(m) for name, m in pl_module.named_modules() if name in LAYERS
        }

    def on_train_epoch_end(self, trainer, pl_module):
        layers = {name: m for name, m in pl_module.named_modules() if name in LAYERS}
        self.zeros.append({name: int((weight_of(m) == 0).sum()) for name, m in layers.items()})
        self.masks.append({name: m.weight_mask.bool().clone() for name, m in layers.items() if is_masked(m, "weight")})
        self.weights.append({name: weight_of(m) for name, m in layers.items()})
        optimizer = trainer.optimizers[0]
        self.state_sizes.append({
            name: len(optimizer.state.get(m.weight_orig if is_masked(m, "weight") else m.weight, {}))
            for name, m in layers.items()
        })


def fit(module, callbacks, epochs=4, loader=None, ckpt_path=None, **trainer_kwargs):
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, loader or random_loader(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("granularity", ["weight", "kernel", "filter", "2:4", "1:4"])
def test_local_sparsity_is_exact_per_layer_and_overall_after_each_scheduled_epoch(granularity):
    module, probe = classifier(), Probe()
    sparsity = 0.75 if granularity == "1:4" else 0.5
    callback = SparsifyCallback(sparsity, granularity=granularity, schedule="linear", start_epoch=1, end_epoch=3,
                               verbose=False)
    fit(module, [callback, probe], epochs=4)
    shapes = {name: weight_of(module.get_submodule(name)).shape for name in LAYERS}
    sparsified = [n for n in LAYERS if ":" not in granularity or shapes[n][1:].numel() % 4 == 0]
    assert sparsified == list(callback.session.layers)  # 2:4 skips the first conv (rows of 27 weights)
    schedule = get_schedule("linear")
    for epoch, zeros in enumerate(probe.zeros):
        target = scheduled_ratio(epoch, sparsity, schedule, start_epoch=1, end_epoch=3)
        want = {n: expected_zeros(torch.empty(shapes[n]), granularity, target) for n in sparsified}
        assert {n: zeros[n] for n in sparsified} == want, f"epoch {epoch}"
        for name in set(LAYERS) - set(sparsified):
            assert zeros[name] == 0
        total = sum(shapes[n].numel() for n in sparsified)
        if target > 0:
            event = next(e for e in callback.events if e["epoch"] == epoch)
            assert event["sparsify/sparsity"] == pytest.approx(sum(want.values()) / total)
            assert event["sparsify/zeros"] == sum(want.values()) and event["sparsify/params"] == total
    assert [e["epoch"] for e in callback.events] == [1, 2, 3]
    assert module.model.fc.weight.count_nonzero() == module.model.fc.weight.numel()  # the head stays dense
    # made permanent at fit end: plain parameters, the zeros in place
    assert not any(name.endswith(("_orig", "_mask")) for name in module.state_dict())
    assert not any(is_masked(m, "weight") for m in module.modules())
    assert {n: int((module.get_submodule(n).weight == 0).sum()) for n in sparsified} == {
        n: probe.zeros[-1][n] for n in sparsified
    }


def test_global_context_ranks_all_layers_together_and_is_exact_overall():
    module, probe = classifier(), Probe()
    callback = SparsifyCallback(0.6, granularity="weight", context="global", schedule="agp", end_epoch=2,
                               verbose=False)
    fit(module, [callback, probe], epochs=3)
    total = sum(module.get_submodule(n).weight.numel() for n in LAYERS)
    for epoch, zeros in enumerate(probe.zeros):
        target = scheduled_ratio(epoch, 0.6, get_schedule("agp"), 0, 2)
        assert sum(zeros.values()) == math.floor(target * total + 0.5)
    # not per layer: the layers end at different sparsities (the smallest magnitudes overall went)
    final = probe.zeros[-1]
    assert len({final[n] / module.get_submodule(n).weight.numel() for n in LAYERS}) == 3


def test_pruned_weights_stay_exactly_zero_across_every_optimizer_step():
    class StepProbe(pl.Callback):
        def __init__(self) -> None:
            self.checked = 0
            self.momentum_at_pruned = 0.0

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            for name in LAYERS:
                m = pl_module.get_submodule(name)
                if is_masked(m, "weight"):
                    pruned = ~m.weight_mask.bool()
                    # the optimizer WOULD move pruned entries (Adam's moments and weight decay): the masks must
                    # be re-applied after the step
                    self.momentum_at_pruned += float(optimizer.state[m.weight_orig]["exp_avg"][pruned].abs().sum())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            for name in LAYERS:
                m = pl_module.get_submodule(name)
                if is_masked(m, "weight"):
                    pruned = ~m.weight_mask.bool()
                    assert torch.all(m.weight_orig[pruned] == 0), f"{name}: a pruned weight moved"
                    assert torch.all(weight_of(m)[pruned] == 0)
                    self.checked += 1

    module, steps = classifier(), StepProbe()
    callback = SparsifyCallback(0.7, granularity="weight", schedule="one_shot", verbose=False, make_permanent=False)
    fit(module, [callback, steps], epochs=3)
    assert steps.checked == 2 * 4 * len(LAYERS)  # epochs 1 and 2, 4 steps each, every layer
    assert steps.momentum_at_pruned > 0
    # make_permanent=False: the masks stay on, the state_dict still holds plain weights
    layer = module.get_submodule(LAYERS[0])
    assert is_masked(layer, "weight")
    state = module.state_dict()
    assert f"{LAYERS[0]}.weight" in state and f"{LAYERS[0]}.weight_orig" not in state
    fresh = classifier()
    fresh.load_state_dict(state)  # a plain module takes it
    module.load_state_dict(fresh.state_dict())  # and so does the masked one
    assert torch.equal(weight_of(layer), weight_of(fresh.get_submodule(LAYERS[0])))


def test_filter_sparsity_zeroes_the_filter_its_bias_and_its_batchnorm():
    net = PlainNet()
    net.features[0][0] = nn.Conv2d(3, 16, 3, padding=1, bias=True)  # a bias too
    module, probe = classifier(net), Probe()
    callback = SparsifyCallback(0.5, granularity="filter", schedule="one_shot", verbose=False)
    fit(module, [callback, probe], epochs=2)
    for block in (0, 1, 3):
        conv, bn = net.features[block][0], net.features[block][1]
        dead = (conv.weight.reshape(conv.out_channels, -1) == 0).all(dim=1)
        assert int(dead.sum()) == expected_zeros(conv.weight, "filter", 0.5) // conv.weight[0].numel()
        assert torch.all(bn.weight[dead] == 0) and torch.all(bn.bias[dead] == 0)
        assert torch.all(bn.weight[~dead] != 0)
        if conv.bias is not None:
            assert torch.all(conv.bias[dead] == 0) and torch.all(conv.bias[~dead] != 0)
    # those channels output exactly zero, in training and in eval
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            feature = net.features[0](torch.randn(4, 3, 8, 8))
        dead = (net.features[0][0].weight.reshape(16, -1) == 0).all(dim=1)
        assert torch.all(feature[:, dead] == 0)


def test_nm_sparsity_holds_in_every_group_of_m():
    module = classifier()
    callback = SparsifyCallback(0.5, granularity="2:4", schedule="agp", verbose=False, prune_output_layers=True)
    fit(module, [callback], epochs=3)
    assert "model.fc" in callback.session.layers  # the head too, when asked
    for name in callback.session.layers:
        weight = module.get_submodule(name).weight
        assert nm_pattern_holds(weight, 2, 4), name
        groups = (weight.detach().reshape(-1, 4) != 0).sum(dim=1)
        assert torch.all(groups == 2), name  # exactly 2 kept: the full pattern, nothing more


def test_lottery_ticket_rewinds_the_surviving_weights_to_their_saved_values():
    module, probe = classifier(), Probe()
    callback = SparsifyCallback(
        0.6, granularity="weight", schedule="iterative", start_epoch=1, end_epoch=2,
        lottery_ticket=True, rewind_epoch=1, verbose=False, make_permanent=False,
    )
    fit(module, [callback, probe], epochs=4)
    saved = probe.epoch_start[1]
    steps = [e["epoch"] for e in callback.events]
    assert steps == [1, 2]
    for epoch in steps:
        for name in LAYERS:
            mask = probe.masks[epoch][name]
            assert torch.equal(probe.weights[epoch][name], saved[name] * mask), f"epoch {epoch} {name}"
            assert probe.state_sizes[epoch][name] == 0  # the optimizer state restarted
    for epoch in steps:  # the premise: training had moved them before each rewind
        for name in LAYERS:
            mask = probe.masks[epoch][name]
            assert not torch.equal(probe.before_epoch_end[epoch][name] * mask, saved[name] * mask)
    for name in LAYERS:  # and trains them on afterwards
        assert not torch.equal(probe.weights[3][name], probe.weights[2][name])
    assert probe.state_sizes[3][LAYERS[0]] > 0
    # the saved weights are the callback's, in its checkpointed state
    state = callback.state_dict()
    assert torch.equal(state["rewind"][f"{LAYERS[0]}.weight"], saved[LAYERS[0]])


@pytest.mark.parametrize("granularity", ["weight", "filter"])
def test_dsd_sparsity_rises_then_falls_and_the_fit_ends_at_its_final_value(granularity):
    module, probe = classifier(), Probe()
    callback = SparsifyCallback(0.6, granularity=granularity, schedule="dsd", start_epoch=0, end_epoch=3,
                               verbose=False, make_permanent=False)
    fit(module, [callback, probe], epochs=5)
    total = sum(module.get_submodule(n).weight_mask.numel() for n in LAYERS)
    want = [0.6 * dsd(p) for p in (0.25, 0.5, 0.75, 1.0)]  # .3, .6, .3, 0
    assert [e["epoch"] for e in callback.events] == [0, 1, 2, 3]  # the falling steps too; epoch 4 is dense
    assert [e["sparsify/target"] for e in callback.events] == pytest.approx(want)
    masked = [sum(int((~masks[n]).sum()) for n in LAYERS) / total for masks in probe.masks]
    assert masked == pytest.approx([*want, 0.0], abs=0.03)  # per epoch: up, then down, then dense
    assert [e["sparsify/sparsity"] for e in callback.events] == pytest.approx(masked[:4])
    for name in LAYERS:
        assert torch.all(probe.masks[2][name] >= probe.masks[1][name])  # lifting keeps what was kept
        assert bool(module.get_submodule(name).weight_mask.all())  # the final value, 0: dense
    # the weights brought back at epoch 2 trained from zero during epoch 3
    back = {n: probe.masks[2][n] & ~probe.masks[1][n] for n in LAYERS}
    assert all(bool((probe.weights[2][n][back[n]] == 0).all()) for n in LAYERS)
    assert any(bool((probe.weights[3][n][back[n]] != 0).any()) for n in LAYERS)


def test_metrics_reach_the_loggers_and_the_report_has_every_layer_and_an_overall_row(tmp_path):
    module = classifier()
    callback = SparsifyCallback(0.5, granularity="kernel", schedule="linear", verbose=True)
    trainer = fit(module, [callback], epochs=2, logger=CSVLogger(tmp_path, name="logs"))
    trainer.logger.save()
    text = next(tmp_path.rglob("metrics.csv")).read_text()
    for key in ("sparsify/sparsity", "sparsify/target", "sparsify/zeros", "sparsify/params"):
        assert key in text.splitlines()[0]
    assert trainer.logged_metrics["sparsify/sparsity"] == pytest.approx(callback.sparsity)
    rows = callback.report
    assert [r.layer for r in rows] == [*LAYERS, "Overall"]
    assert rows[-1].zeros == sum(r.zeros for r in rows[:-1]) and rows[-1].sparsity == pytest.approx(0.5)
    for row in rows[:-1]:
        assert row.zeros == int((module.get_submodule(row.layer).weight == 0).sum())
        assert row.params == module.get_submodule(row.layer).weight.numel()


def loaders():
    return random_loader(shuffle=False)  # Lightning does not checkpoint a DataLoader's own generator


def make_callback() -> SparsifyCallback:
    return SparsifyCallback(
        0.8, granularity="weight", context="global", criterion="random", schedule="linear", start_epoch=0,
        end_epoch=3, lottery_ticket=True, verbose=False,
    )


def test_resume_from_a_mid_schedule_checkpoint_equals_the_uninterrupted_run(tmp_path):
    reference = classifier(ResidualNet())
    per_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    fit(reference, [make_callback(), per_epoch], epochs=4, loader=loaders(), enable_checkpointing=True)
    ckpt = load_checkpoint(tmp_path / "epoch=1.ckpt")  # weights_only=True loads it
    assert not any(k.endswith(("_orig", "_mask")) for k in ckpt["state_dict"])  # plain weights
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SparsifyCallback"))
    assert [e["epoch"] for e in state["events"]] == [0, 1]  # mid-schedule: two of four steps done

    resumed, callback = classifier(ResidualNet()), make_callback()
    fit(resumed, [callback], epochs=4, loader=loaders(), ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert [e["epoch"] for e in callback.events] == [0, 1, 2, 3]
    assert callback.masks and callback.sparsity == pytest.approx(0.8, abs=1e-3)
    for name, mask in callback.masks.items():
        assert torch.equal(mask, probe_masks(reference, name)), name
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def probe_masks(module: nn.Module, param_name: str) -> torch.Tensor:
    """After a fit made permanent, the mask of ``param_name`` is where its weights are non-zero."""
    return module.get_parameter(param_name).detach() != 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, r"sparsity=1.0 is invalid; it must lie in \[0, 1\)"),
        ({"sparsity": "half"}, r"sparsity='half' is invalid"),
        ({"sparsity": 0.6, "granularity": "2:4"}, r"sparsity=0.6 is invalid for granularity='2:4'; it must lie in "),
        ({"granularity": "row"}, r"granularity='row' is unknown; choose one of \['weight', 'kernel', 'filter'\]"),
        ({"granularity": "4:2"}, r"granularity='4:2' is unknown"),
        ({"context": "both"}, r"context='both' is unknown; choose one of \['global', 'local'\]"),
        ({"criterion": "l2"}, r"criterion='l2' is unknown; choose one of \['magnitude', 'random'\]"),
        ({"schedule": "nope"}, r"schedule='nope' is unknown; choose one of \['agp'"),
        ({"start_epoch": -1}, r"start_epoch=-1 is invalid; it must be an integer >= 0"),
        ({"start_epoch": 2, "end_epoch": 1}, r"end_epoch=1 is invalid; it must be an integer >= start_epoch \(2\)"),
        ({"rewind_epoch": 2, "start_epoch": 1}, r"rewind_epoch=2 is invalid; it must be an integer in \[0, start"),
        ({"lottery_ticket": "yes"}, r"lottery_ticket='yes' is invalid; it must be True or False"),
        ({"ignored_layers": [3]}, r"ignored_layers=\[3\] is invalid; it must be a list of module-name patterns"),
    ],
)
def test_bad_arguments_name_the_value_and_the_allowed_ones(kwargs, message):
    kwargs = {"sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        SparsifyCallback(**kwargs)


class CountingModule(ClassifierModule):
    steps = 0

    def training_step(self, batch, batch_idx):
        type(self).steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_epoch": 3}, r"start_epoch=3 is at or past max_epochs=3; it must lie in \[0, 2\]"),
        ({"end_epoch": 3}, r"end_epoch=3 is at or past max_epochs=3; .* so that the full sparsity is reached"),
        ({"ignored_layers": ["nope.*"]}, r"layer pattern 'nope.\*' matches no module of the model"),
        ({"granularity": "2:5", "sparsity": 0.2}, r"no layer to sparsify with granularity 2:5: .*no multiple of 5"),
    ],
)
def test_arguments_that_depend_on_the_trainer_or_model_are_rejected_before_training(kwargs, message):
    CountingModule.steps = 0
    module = CountingModule(PlainNet(), num_classes=4)
    with pytest.raises(ValueError, match=message):
        fit(module, [SparsifyCallback(**{"sparsity": 0.5, "verbose": False, **kwargs})], epochs=3)
    assert CountingModule.steps == 0


def test_the_callback_signature_is_the_spec():
    params = inspect.signature(SparsifyCallback.__init__).parameters
    names = [n for n in params if n != "self"]
    assert names == [f.name for f in dataclasses.fields(SparsifySpec)]
    assert params["sparsity"].default is inspect.Parameter.empty  # SparsifyCallback(sparsity, ...)
    for f in dataclasses.fields(SparsifySpec)[1:]:
        assert params[f.name].default == f.default, f.name


def test_compact_after_filter_sparsity_removes_the_zeroed_channels_and_keeps_the_outputs():
    module = classifier()
    fit(module, [SparsifyCallback(0.5, granularity="filter", schedule="one_shot", verbose=False)], epochs=2)
    net = module.model.eval()
    kept = {name: int(net.get_submodule(name[len("model."):]).weight.reshape(
        net.get_submodule(name[len("model."):]).out_channels, -1).any(dim=1).sum()) for name in LAYERS}
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left in place
        compact(net, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)
    assert {name: net.get_submodule(name[len("model."):]).out_channels for name in LAYERS} == kept
    assert all(v < 32 for v in kept.values())


def test_compact_works_on_lightning_model_pruning_output_and_reports_what_it_keeps():
    net = PlainNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pruning = ModelPruning(
        "ln_structured", parameters_to_prune=[(c, "weight") for c in convs], amount=0.5, pruning_dim=0,
        pruning_norm=1, use_global_unstructured=False, apply_pruning=lambda epoch: epoch == 0, verbose=0,
    )
    fit(classifier(net), [pruning], epochs=2)
    net.eval()
    zero = [int((c.weight.reshape(c.out_channels, -1) == 0).all(dim=1).sum()) for c in convs]
    assert all(z > 0 for z in zero)  # the premise: ModelPruning zeroed filters, leaving BatchNorm shifts behind
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    with pytest.warns(UserWarning, match="zero-weighted channels left in place: .*which pads"):
        compact(net, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)
    # the last conv feeds pooling and the head: its zeroed channels are all removed or folded into fc's bias
    assert convs[-1].out_channels == 32 - zero[-1]
    assert sum(c.out_channels for c in convs) < 16 + 24 + 32
