"""DistillationCallback inside trainer.fit: the loss, the teacher kept apart, pruning, resume, bad input."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import PlainNet, quiet_trainer, random_loader
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import DistillationCallback, DistillSpec, PruningCallback
from lightning_prune.app.module import ClassifierModule
from lightning_prune.engine.spec import app_fields


def features_loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class TinyModule(pl.LightningModule):
    """An MLP classifier; ``output`` picks what forward returns and ``step`` what training_step returns."""

    def __init__(self, output: str = "tensor", step: str = "tensor", direct: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        self.model = mlp()
        self.output, self.step, self.direct, self.lr = output, step, direct, lr

    def forward(self, x):
        logits = self.model(x)
        if self.output == "dict":
            return {"logits": logits}
        if self.output == "hf":
            return SimpleNamespace(logits=logits)
        return logits

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.direct:  # calls the submodule, never self(x): the LightningModule's forward hook never fires
            logits = self.model(x)
        else:
            out = self(x)
            logits = out if isinstance(out, torch.Tensor) else (out["logits"] if isinstance(out, dict) else out.logits)
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "n": len(x)} if self.step == "dict" else loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self.model(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class FirstGradients(pl.Callback):
    """The gradients of the first optimizer step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


class TeacherWatch(pl.Callback):
    """At every training batch and validation end: the teacher's mode, whether the optimizer or the module's
    state_dict hold it, and its weights."""

    def __init__(self, distill: DistillationCallback) -> None:
        self.distill = distill
        self.modes: list[bool] = []
        self.in_optimizer: list[bool] = []
        self.in_state_dict: list[bool] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def _look(self, trainer, pl_module):
        teacher = self.distill.teacher
        ids = {id(p) for p in teacher.parameters()}
        self.modes.append(any(m.training for m in teacher.modules()))
        optimized = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        self.in_optimizer.append(bool(ids & optimized))
        state = pl_module.state_dict(keep_vars=True)
        self.in_state_dict.append(any(id(v) in ids for v in state.values()) or any("teacher" in k for k in state))
        self.weights.append({k: v.detach().clone() for k, v in teacher.state_dict().items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._look(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        self._look(trainer, pl_module)


def kd_by_hand(student_logits, teacher_logits, temperature):
    p = torch.softmax(teacher_logits / temperature, -1)
    log_q = torch.log_softmax(student_logits / temperature, -1)
    return (p * (p.log() - log_q)).sum(-1).mean() * temperature**2


def fit(module, callbacks, epochs=1, loader=None, val_loader=None, ckpt_path=None, **kwargs):
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks, **kwargs)
    trainer.fit(module, loader or features_loader(), val_loader, ckpt_path=ckpt_path)
    return trainer


# -- the loss --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("output", "step"), [("tensor", "tensor"), ("dict", "dict"), ("hf", "tensor")])
def test_the_backpropagated_loss_is_the_weighted_sum_with_the_distillation_term(output, step):
    module, teacher = TinyModule(output=output, step=step), mlp()
    start = copy.deepcopy(module)
    grads = FirstGradients()
    fit(module, [DistillationCallback(teacher=teacher, temperature=2.0, weight=0.3), grads])
    x, y = next(iter(features_loader()))
    logits = start.model(x)
    with torch.no_grad():
        teacher_logits = teacher(x)
    ce = F.cross_entropy(logits, y)
    total = 0.7 * ce + 0.3 * kd_by_hand(logits, teacher_logits, 2.0)
    params = list(start.parameters())
    names = [n for n, _ in start.named_parameters()]
    expected = dict(zip(names, torch.autograd.grad(total, params, retain_graph=True)))
    plain = dict(zip(names, torch.autograd.grad(ce, params)))
    for name, grad in grads.grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(grads.grads[n], plain[n], atol=1e-4) for n in plain)  # the term is in there


def test_weight_one_with_the_fit_start_copy_as_teacher_gives_zero_gradients():
    module = TinyModule()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    grads = FirstGradients()
    trainer = fit(module, [DistillationCallback(weight=1.0), grads], epochs=2)
    # zero up to rounding (softmax(s / T) - softmax(t / T) with s == t); a cross-entropy step is ~1e-2
    assert grads.grads is not None and all(g.abs().max() < 1e-7 for g in grads.grads.values())
    # the student never moves away from its teacher, so plain SGD leaves it where it started
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, start[key], rtol=0, atol=1e-6, msg=key)
    assert float(trainer.callback_metrics["distill/loss"]) == pytest.approx(0.0, abs=1e-6)


def test_the_distillation_term_is_logged_per_epoch():
    module, teacher = TinyModule(), mlp()
    trainer = fit(module, [DistillationCallback(teacher=teacher, temperature=3.0)])
    logged = float(trainer.callback_metrics["distill/loss"])
    assert logged > 0
    assert "distill/loss_step" not in trainer.callback_metrics


def test_no_distillation_before_start_epoch():
    module, teacher = TinyModule(), mlp()
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(trainer_epoch[0]))
    trainer_epoch = [0]

    class Epoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            trainer_epoch[0] = trainer.current_epoch

    fit(module, [Epoch(), DistillationCallback(teacher=teacher, start_epoch=1)], epochs=3)
    assert calls == [1] * 4 + [2] * 4  # four batches an epoch, from epoch 1 on


def test_the_student_can_be_a_submodule():
    module, teacher = TinyModule(direct=True), mlp()
    start = copy.deepcopy(module)
    grads = FirstGradients()
    fit(module, [DistillationCallback(teacher=teacher, student="model", weight=1.0, temperature=1.0), grads])
    x, _ = next(iter(features_loader()))
    logits = start.model(x)
    expected = torch.autograd.grad(kd_by_hand(logits, teacher(x).detach(), 1.0), list(start.model.parameters()))
    for (name, _), grad in zip(start.model.named_parameters(), expected):
        torch.testing.assert_close(grads.grads[f"model.{name}"], grad, rtol=1e-5, atol=1e-6)


# -- the teacher -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("given", [True, False])
def test_the_teacher_stays_out_of_the_optimizer_and_state_dict_frozen_and_in_eval_mode(given):
    module = TinyModule()
    teacher = mlp().train() if given else None
    keys = set(module.state_dict())
    distill = DistillationCallback(teacher=teacher)
    watch = TeacherWatch(distill)
    # validation makes Lightning switch the module to eval and back to train
    fit(module, [distill, watch], epochs=2, val_loader=features_loader(seed=1))
    assert len(watch.modes) == 2 * 4 + 2
    assert watch.modes == [False] * len(watch.modes)
    assert watch.in_optimizer == [False] * len(watch.modes)
    assert watch.in_state_dict == [False] * len(watch.modes)
    assert set(module.state_dict()) == keys
    assert all(not p.requires_grad for p in distill.teacher.parameters())
    for weights in watch.weights[1:]:
        for key, value in weights.items():
            assert torch.equal(value, watch.weights[0][key]), key
    if given:
        assert distill.teacher is teacher
    assert not any(m is distill.teacher for m in module.modules())
    assert distill.teacher is not module


def test_the_copied_teacher_holds_the_weights_the_fit_started_with():
    module = TinyModule()
    start = {k: v.clone() for k, v in module.model.state_dict().items()}
    distill = DistillationCallback(student="model")
    fit(module, [distill], epochs=2)
    assert isinstance(distill.teacher, nn.Sequential)
    trained = module.model.state_dict()
    for key, value in distill.teacher.state_dict().items():
        assert torch.equal(value, start[key]), key
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the student did train


def test_the_module_is_left_as_it_was_after_fit():
    module = TinyModule()
    assert "training_step" not in vars(module)
    distill = DistillationCallback(teacher=mlp())
    calls: list[int] = []
    distill.teacher.register_forward_hook(lambda *_: calls.append(1))
    fit(module, [distill])
    assert calls and "training_step" not in vars(module)
    n = len(calls)
    module.training_step(next(iter(features_loader())), 0)  # the module's own step again: no teacher call
    assert len(calls) == n


# -- with pruning ----------------------------------------------------------------------------------------
def widths(module: nn.Module) -> dict[str, int]:
    return {
        n.removeprefix("model."): (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


def classifier(seed: int = 0) -> ClassifierModule:
    pl.seed_everything(seed, verbose=False)
    return ClassifierModule(PlainNet(), num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))


@pytest.mark.parametrize("distill_first", [False, True])
def test_composed_with_pruning_the_student_is_pruned_and_the_teacher_stays_dense(distill_first):
    module = classifier()
    dense = widths(module)
    dense_weights = {k: v.clone() for k, v in module.model.state_dict().items()}
    pruning = PruningCallback(ratio=0.5, schedule="one_shot", criterion="l1", verbose=False)
    distill = DistillationCallback(temperature=2.0)
    callbacks = [distill, pruning] if distill_first else [pruning, distill]
    trainer = fit(module, callbacks, epochs=2, loader=random_loader())
    pruned = widths(module)
    assert sum(pruned.values()) < sum(dense.values()) and pruned["fc"] == dense["fc"]
    assert pruning.pruned_ratio == pytest.approx(0.5, abs=0.05)
    assert widths(distill.teacher) == dense
    for key, value in distill.teacher.model.state_dict().items():
        assert torch.equal(value, dense_weights[key]), key
    assert float(trainer.callback_metrics["distill/loss"]) > 0


@pytest.mark.parametrize("distill_first", [False, True])
def test_with_a_prune_on_fit_start_the_teacher_is_the_dense_model_the_fit_started_with(distill_first):
    """PruningCallback(prune_on_fit_start=True) restructures the student in on_fit_start; whatever the order
    the callbacks are given in, the teacher is the dense student as the fit starts, and the pruned student
    learns from it."""
    module = classifier()
    dense = widths(module)
    dense_weights = {k: v.clone() for k, v in module.model.state_dict().items()}
    pruning = PruningCallback(target="macs", budget=0.5, schedule="one_shot", prune_on_fit_start=True,
                              verbose=False)
    distill = DistillationCallback(temperature=2.0)
    watch = TeacherWatch(distill)
    callbacks = [distill, pruning, watch] if distill_first else [pruning, distill, watch]
    trainer = fit(module, callbacks, epochs=2, loader=random_loader())
    assert [type(c) for c in trainer.callbacks[:2]] == [DistillationCallback, PruningCallback]
    assert pruning.events[0]["epoch"] == -1 and sum(widths(module).values()) < sum(dense.values())
    assert widths(distill.teacher) == dense
    for key, value in distill.teacher.model.state_dict().items():
        assert torch.equal(value, dense_weights[key]), key
    assert all(torch.equal(seen[k], dense_weights[k.removeprefix("model.")]) for seen in watch.weights for k in seen)
    assert float(trainer.callback_metrics["distill/loss"]) > 0


# -- resume ----------------------------------------------------------------------------------------------
def resumable_fit(module, directory=None, ckpt_path=None, epochs=3):
    pruning = PruningCallback(ratio=0.5, schedule="one_shot", criterion="l1", end_epoch=0, verbose=False)
    distill = DistillationCallback(temperature=2.0)
    callbacks = [pruning, distill]
    if directory is not None:
        callbacks.append(ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1))
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks, enable_checkpointing=directory is not None)
    trainer.fit(module, random_loader(shuffle=False), ckpt_path=ckpt_path)
    return distill


def test_resume_distils_from_the_first_fits_dense_teacher(tmp_path):
    first = classifier(seed=0)
    start = {k: v.clone() for k, v in first.state_dict().items()}
    reference = resumable_fit(first, directory=tmp_path)
    checkpoint = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)
    saved = checkpoint["callbacks"]["DistillationCallback"]["teacher"]
    assert not any(k.startswith("teacher") for k in checkpoint["state_dict"])
    for key, value in start.items():
        if key in saved:
            assert torch.equal(saved[key], value), key

    fresh = classifier(seed=1)  # other initial weights: a teacher copied from it would differ
    fresh_start = {k: v.clone() for k, v in fresh.state_dict().items()}
    resumed = resumable_fit(fresh, ckpt_path=tmp_path / "epoch=0.ckpt")
    assert widths(resumed.teacher) == widths(reference.teacher) == widths(PlainNet())
    assert widths(fresh) == widths(first) != widths(resumed.teacher)  # the student is pruned, the teacher not
    for key, value in resumed.teacher.state_dict().items():
        assert torch.equal(value, reference.teacher.state_dict()[key]), key
    assert any(not torch.equal(fresh_start[k], v) for k, v in resumed.teacher.state_dict().items())
    # distilling from the same teacher, the resumed fit ends where the uninterrupted one did
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, first.state_dict()[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_without_a_teacher_gives_a_copy_of_the_restored_model(tmp_path):
    trained = TinyModule()
    save = ModelCheckpoint(dirpath=tmp_path, filename="plain")
    fit(trained, [save], enable_checkpointing=True)  # an ordinary checkpoint, from a fit without distillation
    restored = {k: v.clone() for k, v in trained.model.state_dict().items()}
    fresh = TinyModule()
    assert any(not torch.equal(v, restored[k]) for k, v in fresh.model.state_dict().items())
    distill = DistillationCallback(student="model")
    with pytest.warns(UserWarning, match="the checkpoint holds no teacher, so the teacher is a copy of the restored"):
        fit(fresh, [distill], epochs=2, ckpt_path=tmp_path / "plain.ckpt")
    for key, value in distill.teacher.state_dict().items():
        assert torch.equal(value, restored[key]), key  # the weights at fit start, not those at setup


def test_resuming_a_pruned_checkpoint_that_holds_no_teacher_is_an_error(tmp_path):
    pruning = PruningCallback(ratio=0.5, schedule="one_shot", criterion="l1", end_epoch=0, verbose=False)
    save = ModelCheckpoint(dirpath=tmp_path, filename="pruned")
    fit(classifier(), [pruning, save], epochs=2, loader=random_loader(), enable_checkpointing=True)
    pruning = PruningCallback(ratio=0.5, schedule="one_shot", criterion="l1", end_epoch=0, verbose=False)
    with pytest.raises(ValueError, match=r"cannot load the teacher from the student at fit start: .* has shape .*"
                                         r"Pass the dense teacher as DistillationCallback\(teacher=\.\.\.\)"):
        fit(classifier(), [pruning, DistillationCallback()], epochs=3, loader=random_loader(),
            ckpt_path=tmp_path / "pruned.ckpt")


# -- bad input -------------------------------------------------------------------------------------------
def test_the_callback_signature_is_the_spec():
    params = inspect.signature(DistillationCallback.__init__).parameters
    assert [n for n in params if n != "self"] == [f.name for f in dataclasses.fields(DistillSpec)]
    for f in dataclasses.fields(DistillSpec):
        assert params[f.name].default == f.default, f.name
    assert app_fields(DistillSpec) == {"temperature": (float, 4.0), "weight": (float, 0.5), "start_epoch": (int, 0)}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 0.0}, ValueError, r"temperature=0.0 is invalid; it must be a number > 0"),
        ({"weight": 0.0}, ValueError, r"weight=0.0 is invalid; it must lie in \(0, 1\]"),
        ({"weight": 1.01}, ValueError, r"weight=1.01 is invalid; it must lie in \(0, 1\]"),
        ({"start_epoch": -2}, ValueError, r"start_epoch=-2 is invalid; it must be an integer >= 0"),
        ({"student": ["model"]}, ValueError, r"student=\['model'\] is invalid"),
        ({"teacher": {"w": 1}}, TypeError, r"teacher=\{'w': 1\} \(a dict\) is invalid"),
    ],
)
def test_bad_arguments_are_rejected_at_init(kwargs, error, message):
    with pytest.raises(error, match=message):
        DistillationCallback(**kwargs)


def test_a_student_name_that_matches_nothing_is_an_error_at_setup():
    with pytest.raises(ValueError, match=r"student='net' names no submodule of TinyModule; its submodules are \['mod"):
        fit(TinyModule(), [DistillationCallback(student="net")])


def test_manual_optimization_is_refused_at_setup():
    module = TinyModule()
    module.automatic_optimization = False
    with pytest.raises(ValueError, match="needs automatic optimization.*manual_backward"):
        fit(module, [DistillationCallback(teacher=mlp())])


def test_a_teacher_inside_the_module_is_refused():
    module = TinyModule()
    module.teacher = mlp()
    with pytest.raises(ValueError, match=r"the teacher is a submodule of the LightningModule \('teacher'\)"):
        fit(module, [DistillationCallback(teacher=module.teacher)])
    shared = TinyModule()
    teacher = nn.Sequential(shared.model[0], nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"the teacher shares parameters with the LightningModule \(\['0.weight'"):
        fit(shared, [DistillationCallback(teacher=teacher)])


def test_a_student_that_is_never_called_is_an_error_after_the_first_batch():
    module = TinyModule(direct=True)  # training_step calls self.model(x), never self(x)
    seen: list[int] = []

    class Batches(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch_idx)

    with pytest.raises(RuntimeError, match=r"the student \(the LightningModule\) was not called during the first "
                                           r"training step.*Set DistillationCallback\(student=\.\.\.\).*\['model'\]"):
        fit(module, [Batches(), DistillationCallback(teacher=mlp())])
    assert seen == [0]
    assert "training_step" not in vars(module)  # teardown ran


def test_a_student_output_without_logits_is_an_error_naming_its_type():
    class Pair(TinyModule):
        def forward(self, x):
            return {"scores": self.model(x)}

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x)["scores"], y)

    with pytest.raises(TypeError, match=r"model output of type dict.*set student= to the submodule"):
        fit(Pair(), [DistillationCallback(teacher=mlp())])
