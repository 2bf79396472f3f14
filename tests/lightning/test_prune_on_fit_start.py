"""``PruningCallback(prune_on_fit_start=True)``: prune a trained model once, before the first step, then fine-tune."""

from __future__ import annotations

import copy
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from conftest import ResidualNet, quiet_trainer, random_loader
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger
from torch import nn

from lightning_prune import PruningCallback, count_macs_params
from lightning_prune.app.module import ClassifierModule
from lightning_prune.engine.session import FIT_START, ScheduledPruning
from lightning_prune.engine.spec import PruningSpec

EXAMPLE = torch.zeros(1, 3, 8, 8)


def classifier(net: nn.Module | None = None) -> ClassifierModule:
    return ClassifierModule(
        net or ResidualNet(),
        num_classes=4,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        lr_scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-2),
        lr_interval="step",
    )


def trained_net() -> ResidualNet:
    module = classifier()
    quiet_trainer(max_epochs=2).fit(module, random_loader())
    return module.model


def widths(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def on_fit_start(**kwargs) -> PruningCallback:
    options = dict(target="macs", budget=0.5, schedule="one_shot", prune_on_fit_start=True, verbose=False)
    return PruningCallback(**{**options, **kwargs})


class StepRecorder(Logger):
    """A logger that keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    name, version = "recorder", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


class FirstStep(pl.Callback):
    """The model's widths and the parameters the optimizer steps when the first training batch starts, every
    step's learning rate, and the weights after every epoch."""

    def __init__(self) -> None:
        self.widths: dict[str, tuple[int, ...]] | None = None
        self.optimised_ids: set[int] = set()
        self.live_ids: set[int] = set()
        self.lrs: list[float] = []
        self.epoch_weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.widths is None:
            self.widths = widths(pl_module)
            self.optimised_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            self.live_ids = {id(p) for p in pl_module.parameters() if p.requires_grad}
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_the_trained_model_is_pruned_before_the_first_step_and_every_epoch_fine_tunes_it():
    net = trained_net()
    dense_macs = count_macs_params(net, EXAMPLE)[0]
    module, callback, record, logger = classifier(net), on_fit_start(), FirstStep(), StepRecorder()
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback, record], logger=logger)
    trainer.fit(module, random_loader())

    assert [e["epoch"] for e in callback.events] == [FIT_START]  # once, before epoch 0, never at an epoch's end
    assert record.widths == widths(module)  # the first step already trained the pruned shapes
    assert count_macs_params(module.model, EXAMPLE)[0] <= 0.5 * dense_macs
    assert record.optimised_ids == record.live_ids  # the optimizer steps the pruned parameters
    for before, after in zip(record.epoch_weights, record.epoch_weights[1:], strict=False):
        assert not torch.equal(before["model.stem.0.weight"], after["model.stem.0.weight"]), "no fine-tuning"
    # the one-cycle schedule is the one a fresh fit of the pruned model follows, from its first step
    fresh = classifier(copy.deepcopy(module.model))
    fresh_record = FirstStep()
    quiet_trainer(max_epochs=3, callbacks=[fresh_record]).fit(fresh, random_loader())
    assert record.lrs == pytest.approx(fresh_record.lrs)
    # the prune/* metrics reached the logger at step 0
    sent = [metrics for step, metrics in logger.metrics if step == 0 and "prune/macs_ratio" in metrics]
    assert sent and sent[0]["prune/macs_ratio"] == pytest.approx(callback.events[0]["prune/macs_ratio"])


def test_the_callback_removes_the_same_channels_as_the_engine_outside_lightning():
    net = trained_net()
    engine_net = copy.deepcopy(net)
    spec = PruningSpec(target="macs", budget=0.5, schedule="one_shot", prune_on_fit_start=True, verbose=False)
    session = ScheduledPruning(engine_net, EXAMPLE, spec, end_epoch=0)  # the engine, outside Lightning
    session.resolve_budget()
    assert session.on_fit_start() is not None and session.on_fit_start() is None  # once
    assert session.on_epoch_end(0) is None
    module = classifier(net)
    quiet_trainer(max_epochs=1, callbacks=[on_fit_start()], limit_train_batches=1).fit(module, random_loader())
    assert widths(module.model) == widths(engine_net)


def test_a_resumed_fit_does_not_prune_again_and_ends_like_the_uninterrupted_one(tmp_path):
    net = trained_net()
    loader = partial(random_loader, shuffle=False)
    module = classifier(copy.deepcopy(net))
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    quiet_trainer(max_epochs=3, callbacks=[on_fit_start(), saver], enable_checkpointing=True).fit(module, loader())

    resumed = classifier(copy.deepcopy(net))  # dense: the checkpoint's record restructures it
    callback = on_fit_start()
    quiet_trainer(max_epochs=3, callbacks=[callback]).fit(resumed, loader(), ckpt_path=tmp_path / "epoch=0.ckpt")
    assert [e["epoch"] for e in callback.events] == [FIT_START]  # the restored event; no second prune
    for name, value in module.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)


def test_a_checkpoint_without_a_pruning_record_is_refused_before_training(tmp_path):
    module = classifier()
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="dense")])
    trainer.fit(module, random_loader())
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(max_epochs=2, callbacks=[on_fit_start()])
    with pytest.raises(ValueError, match=r"dense.ckpt.*no pruning record.*without ckpt_path"):
        trainer.fit(module, random_loader(), ckpt_path=tmp_path / "dense.ckpt")
    assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items())  # dense and untouched


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "agp"}, r"schedule='one_shot'.*got schedule='agp'"),
        ({"start_epoch": 1}, r"start_epoch and end_epoch unset.*start_epoch=1"),
        ({"criterion": "taylor"}, r"criterion='taylor' scores with the gradients.*'l2'"),
        ({"sparse_training": 1e-3}, r"sparse_training=0.001 has no epochs before the prune"),
        ({"prune_on_fit_start": "yes"}, r"prune_on_fit_start='yes' is invalid; it must be True or False"),
    ],
)
def test_settings_that_cannot_prune_at_fit_start_are_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        on_fit_start(**kwargs)
