"""Resume and reload: a pruned checkpoint works everywhere a Lightning checkpoint works."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import PlainNet, ResidualNet, quiet_trainer, random_loader
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from torch import nn

from lightning_prune import PruningCallback
from lightning_prune.app.module import ClassifierModule
from lightning_prune.checkpoint import RECORD_KEY, PrunedCheckpointMixin, restore_pruned

EPOCHS = 5


def make_module(net_cls=ResidualNet) -> ClassifierModule:
    pl.seed_everything(0, verbose=False)
    return ClassifierModule(
        net_cls(),
        num_classes=4,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.7),
    )


def make_callback() -> PruningCallback:
    return PruningCallback(ratio=0.5, schedule="linear", start_epoch=1, end_epoch=3, criterion="l1", verbose=False)


class LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.lrs[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]


def loaders():
    # no shuffling: Lightning does not checkpoint a DataLoader's own generator
    return random_loader(shuffle=False), random_loader(seed=1, shuffle=False)


def widths(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run that leaves per-epoch, mid-epoch and last checkpoints."""
    directory = tmp_path_factory.mktemp("ckpts")
    module, callback, lrs = make_module(), make_callback(), LrRecorder()
    per_epoch = ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1, save_last=True)
    mid_epoch = ModelCheckpoint(dirpath=directory / "steps", filename="{step}", save_top_k=-1,
                                every_n_train_steps=2)
    # saved at validation end, before on_train_epoch_end prunes (the default saves after it)
    on_validation = ModelCheckpoint(dirpath=directory / "val", filename="{epoch}", save_top_k=-1, monitor="val/loss",
                                    save_on_train_epoch_end=False)
    trainer = quiet_trainer(max_epochs=EPOCHS, callbacks=[callback, lrs, per_epoch, mid_epoch, on_validation],
                            enable_checkpointing=True)
    trainer.fit(module, *loaders())
    return {
        "dir": directory,
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "lrs": lrs.lrs,
        "events": [e["epoch"] for e in callback.events],
        "module": module,
    }


def resume(path: Path, module=None):
    module = module or make_module()
    callback, lrs = make_callback(), LrRecorder()
    trainer = quiet_trainer(max_epochs=EPOCHS, callbacks=[callback, lrs])
    trainer.fit(module, *loaders(), ckpt_path=path)
    return module, callback, lrs


END_OF_EPOCH = ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt", "epoch=3.ckpt", "last.ckpt",
                "val/epoch=1.ckpt", "val/epoch=3.ckpt"]
MID_EPOCH = ["steps/step=6.ckpt", "steps/step=14.ckpt"]


@pytest.mark.parametrize("name", END_OF_EPOCH + MID_EPOCH)
def test_resume_from_any_checkpoint_ends_like_the_uninterrupted_run(reference_run, name):
    path = reference_run["dir"] / name
    assert path.exists()
    module, callback, lrs = resume(path)
    for epoch, lr in lrs.lrs.items():
        assert lr == pytest.approx(reference_run["lrs"][epoch], rel=1e-12)
    # every prune happened exactly once over the two runs, to the same share of channels
    assert [e["epoch"] for e in callback.events] == reference_run["events"] == [1, 2, 3]
    assert callback.pruner.channel_ratio() == pytest.approx(0.5, abs=0.02)
    if name in MID_EPOCH:
        # Lightning cannot replay a plain DataLoader mid-epoch (it warns), so the data, and with it the
        # global ranking of channels, differ from here on; the schedule does not.
        return
    assert widths(module) == {k: tuple(v.shape) for k, v in reference_run["state"].items()}
    for key, value in module.state_dict().items():
        assert torch.equal(value, reference_run["state"][key]), f"{key} differs after resuming from {name}"


def test_a_checkpoint_taken_before_the_epochs_prune_gets_that_prune_on_resume(reference_run):
    # ModelCheckpoint saves at validation end, before on_train_epoch_end prunes
    checkpoint = torch.load(reference_run["dir"] / "val/epoch=1.ckpt", weights_only=True)
    assert len(checkpoint["callbacks"]) and checkpoint["epoch"] == 1
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("PruningCallback"))
    assert [e["epoch"] for e in state["events"]] == []  # epoch 1's prune is not in it
    module, callback, _ = resume(reference_run["dir"] / "val/epoch=1.ckpt")
    assert [e["epoch"] for e in callback.events] == [1, 2, 3]


def test_checkpoints_load_with_weights_only(reference_run):
    checkpoint = torch.load(reference_run["dir"] / "last.ckpt", weights_only=True)
    record = checkpoint[RECORD_KEY]
    assert record["history"] and all(isinstance(i, int) for _, _, idxs in record["history"] for i in idxs)
    assert torch.is_tensor(record["example_inputs"])


def test_load_from_checkpoint_returns_the_pruned_model(reference_run):
    path = reference_run["dir"] / "last.ckpt"
    loaded = ClassifierModule.load_from_checkpoint(path, model=ResidualNet())
    trained = reference_run["module"]
    assert loaded.model.stem[0].out_channels == trained.model.stem[0].out_channels < 16
    x = torch.randn(5, 3, 8, 8)
    loaded.eval(), trained.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


class UserModule(PrunedCheckpointMixin, pl.LightningModule):
    """A user's own module: only the mixin is added."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = PlainNet()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_a_users_module_resumes_and_reloads(tmp_path):
    pl.seed_everything(0, verbose=False)
    module = UserModule()
    trainer = quiet_trainer(max_epochs=2, callbacks=[PruningCallback(ratio=0.5, schedule="linear", verbose=False)])
    trainer.fit(module, random_loader())
    path = tmp_path / "user.ckpt"
    trainer.save_checkpoint(path)

    loaded = UserModule.load_from_checkpoint(path)
    x = torch.randn(3, 3, 8, 8)
    module.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))

    # and trainer.fit(ckpt_path=...) on a fresh module of a class WITHOUT the mixin
    class PlainUserModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = PlainNet()

        forward = UserModule.forward
        training_step = UserModule.training_step
        configure_optimizers = UserModule.configure_optimizers

    fresh = PlainUserModule()
    resumed = quiet_trainer(max_epochs=3, callbacks=[PruningCallback(ratio=0.5, schedule="linear", verbose=False)])
    resumed.fit(fresh, random_loader(), ckpt_path=path)
    assert fresh.net.features[0][0].out_channels == module.net.features[0][0].out_channels < 16


def test_restore_pruned_on_the_plain_network(reference_run):
    net = ResidualNet()
    restore_pruned(net, reference_run["dir"] / "last.ckpt")
    trained = reference_run["module"].model
    x = torch.randn(4, 3, 8, 8)
    net.eval(), trained.eval()
    with torch.no_grad():
        assert torch.equal(net(x), trained(x))


def test_a_checkpoint_of_another_architecture_is_refused_without_touching_the_module(reference_run):
    net = PlainNet()
    before = widths(net)
    with pytest.raises(ValueError, match="architecture: first key only in the module: 'features.0.0.weight'"):
        restore_pruned(net, reference_run["dir"] / "last.ckpt")
    assert widths(net) == before


def test_a_record_that_does_not_fit_the_module_names_the_layer(reference_run, tmp_path):
    checkpoint = torch.load(reference_run["dir"] / "last.ckpt", weights_only=True)
    name, is_out, idxs = checkpoint[RECORD_KEY]["history"][-1]
    checkpoint[RECORD_KEY]["history"][-1] = [name, is_out, [999]]
    net = ResidualNet()
    before = widths(net)
    with pytest.raises(ValueError, match=f"layer '{name.removeprefix('model.')}'.*999"):
        restore_pruned(net, checkpoint)
    assert widths(net) == before  # never half-loaded


def test_a_run_interrupted_by_an_exception_leaves_a_resumable_checkpoint(tmp_path):
    class Boom(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 2 and batch_idx == 1:
                raise RuntimeError("interrupted")

    module = make_module()
    trainer = quiet_trainer(max_epochs=EPOCHS, callbacks=[make_callback(), Boom(), OnExceptionCheckpoint(tmp_path)],
                            enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(module, *loaders())
    path = tmp_path / "on_exception.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[RECORD_KEY]["history"]
    resumed, callback, _ = resume(path)
    uninterrupted = make_module()
    quiet_trainer(max_epochs=EPOCHS, callbacks=[make_callback()]).fit(uninterrupted, *loaders())
    assert widths(resumed) == widths(uninterrupted)
    assert [e["epoch"] for e in callback.events][-1] == 3
