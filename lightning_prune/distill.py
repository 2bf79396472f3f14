"""``DistillationCallback``: knowledge distillation from a frozen teacher inside ``trainer.fit``.

The callback is a thin Lightning layer over :mod:`lightning_prune.engine.distill` (the loss and the logits) and
:class:`~lightning_prune.engine.spec.DistillSpec` (its arguments, checked). It adds what Lightning owns: the
student's training forward, captured by a forward hook; the loss ``training_step`` returns, changed by wrapping
the module's ``training_step`` for the fit; the teacher's device; its weights in checkpoints; the log.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from .engine.distill import distillation_loss, logits_of
from .engine.spec import DistillSpec
from .lightning_compat import copy_without_trainer
from .session_callback import SessionCallback

NO_FORWARD_ERROR = (
    "DistillationCallback: the student ({student}) was not called during the first training step, so there are "
    "no logits to distil. Set DistillationCallback(student=...) to the submodule that returns the logits (one "
    "that training_step calls); the LightningModule's submodules are {children}"
)
MANUAL_OPTIMIZATION_ERROR = (
    "DistillationCallback needs automatic optimization: it adds its term to the loss that training_step returns, "
    "and with automatic_optimization=False Lightning never backpropagates that loss (your training_step calls "
    "manual_backward itself), so the term would never reach the gradients. Add "
    "lightning_prune.engine.distill.distillation_loss to the loss in your training_step instead."
)


class _Capture:
    """The student's forward hook: records the inputs and output of its first call while ``open``.

    Copies of the student (a budget search's trial models) share the hook instead of deep-copying it (it
    belongs to the callback); it records nothing outside the fit's ``training_step``.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] | None = None  # None: closed

    def __deepcopy__(self, memo: dict) -> _Capture:
        return self

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.calls is not None and not self.calls:
            self.calls.append((args, kwargs, output))


class DistillationCallback(Callback):
    r"""Train the model to also match a frozen teacher's softened outputs (knowledge distillation).

    The loss returned by ``training_step`` becomes ``(1 - weight) * loss + weight * distillation_loss``, where
    the distillation term is ``KL(softmax(teacher / T) || softmax(student / T)) * T²`` over the batch
    (:func:`~lightning_prune.engine.distill.distillation_loss`). The student's first forward call in each
    ``training_step`` is captured by a forward hook; the teacher runs on the same arguments under
    ``torch.no_grad()``. It composes with :class:`~lightning_prune.PruningCallback`: the student is pruned, the
    teacher keeps its dense widths.

    The teacher is never a submodule of the LightningModule: it stays out of the optimizer, out of DDP and out
    of the module's ``state_dict``; it is frozen (``requires_grad=False``), kept in eval mode and moved to the
    module's device at fit start. With ``teacher=None`` it is a copy of the student taken at fit start (after
    DDP has broadcast rank 0's weights, and after a checkpoint restored them): useful when fine-tuning (or
    pruning) a trained model, not when training from scratch. That copy's weights are saved in checkpoints
    (the callback's state), so ``trainer.fit(fresh_module, ckpt_path=...)`` distils from the same teacher.

    Args:
        teacher: the teacher, used as is (frozen); default: a copy of the student at fit start.
        temperature: the softmax temperature ``T``, > 0.
        weight: the distillation term's share of the loss, in (0, 1].
        student: the name of the LightningModule's submodule that returns the logits (e.g. ``"model"``);
            default: the LightningModule itself (its ``forward``, called as ``self(x)`` in ``training_step``).
            The teacher is called with the same arguments as the student.
        start_epoch: the first epoch that distils.

    Logs ``distill/loss`` (the distillation term, per epoch). Manual optimization is refused at ``setup``.

    Example::

        >>> from lightning import Trainer
        >>> from lightning_prune import PruningCallback
        >>> callbacks = [PruningCallback(target="macs", budget=0.5), DistillationCallback(temperature=2.0)]
        >>> trainer = Trainer(max_epochs=4, callbacks=callbacks, logger=False, enable_progress_bar=False)
        >>> DistillationCallback(weight=2)
        Traceback (most recent call last):
        ...
        ValueError: weight=2 is invalid; it must lie in (0, 1], the share of the distillation term in the loss
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        temperature: float = 4.0,
        weight: float = 0.5,
        student: str | None = None,
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        arguments = dict(locals())
        self.spec = DistillSpec(**{name: arguments[name] for name in DistillSpec.__dataclass_fields__})
        self.teacher: nn.Module | None = self.spec.teacher  # with teacher=None: the copy, from setup on
        self._saved: dict[str, torch.Tensor] | None = None  # a copied teacher's weights from a checkpoint
        self._capture = _Capture()
        self._hook: Any = None
        self._module: pl.LightningModule | None = None
        self._original_step: tuple[bool, Any] = (False, None)  # (was an instance attribute, its value)
        self._started = False  # the teacher's weights are final (on_fit_start has run)
        self._checked = False  # the first training step found the student's call

    @property
    def copies_teacher(self) -> bool:
        """Whether the teacher is this callback's copy of the student (``teacher=None``)."""
        return self.spec.teacher is None

    # -- set-up ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(MANUAL_OPTIMIZATION_ERROR)
        student = self._student_of(pl_module)
        if self.copies_teacher:
            # the model is still dense here, even on resume (a checkpoint re-structures it later)
            self.teacher = copy_without_trainer(student, trainer)
        else:
            self._check_outside(pl_module)
        teacher = self.teacher
        assert teacher is not None
        teacher.requires_grad_(False)
        teacher.eval()
        self._started = self._checked = False
        self._hook = student.register_forward_hook(self._capture, with_kwargs=True)
        self._wrap_training_step(pl_module)
        self._go_before_pruning(trainer)
        rank_zero_info(f"DistillationCallback: {self.spec.describe()}")

    def _go_before_pruning(self, trainer: pl.Trainer) -> None:
        """Move this callback before the pruning callbacks in ``trainer.callbacks``: Lightning calls
        ``on_fit_start`` in list order, and a ``PruningCallback(prune_on_fit_start=True)`` restructures the
        student there; the teacher must be the student as the fit starts, dense. Moving an item to an earlier
        place leaves the hooks Lightning is still calling in order (``setup``) unaffected."""
        callbacks = trainer.callbacks
        mine = next((i for i, c in enumerate(callbacks) if c is self), None)
        first = next((i for i, c in enumerate(callbacks) if isinstance(c, SessionCallback)), None)
        if mine is not None and first is not None and first < mine:
            callbacks.insert(first, callbacks.pop(mine))

    def _student_of(self, pl_module: pl.LightningModule) -> nn.Module:
        name = self.spec.student
        if name is None:
            return pl_module
        try:
            return pl_module.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in pl_module.named_children()]
            raise ValueError(
                f"student={name!r} names no submodule of {type(pl_module).__name__}; its submodules are {children}"
            ) from None

    def _check_outside(self, pl_module: pl.LightningModule) -> None:
        """A given teacher must not be part of the LightningModule (it would be trained, synchronised by DDP
        and saved with the model)."""
        teacher = self.teacher
        for name, module in pl_module.named_modules():
            if module is teacher:
                raise ValueError(
                    f"the teacher is a submodule of the LightningModule ({name or 'the module itself'!r}): it would "
                    "be in the optimizer, in DDP and in the module's state_dict; keep it only in "
                    "DistillationCallback(teacher=...), not as an attribute of the LightningModule"
                )
        student_params = {id(p) for p in pl_module.parameters()}
        shared = [n for n, p in teacher.named_parameters() if id(p) in student_params]  # type: ignore[union-attr]
        if shared:
            raise ValueError(
                f"the teacher shares parameters with the LightningModule ({shared[:3]}); a teacher must have its "
                "own weights (copy.deepcopy the model to make one)"
            )

    def _wrap_training_step(self, pl_module: pl.LightningModule) -> None:
        own = "training_step" in vars(pl_module)
        self._original_step = (own, vars(pl_module).get("training_step"))
        self._module = pl_module
        original = pl_module.training_step

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            return self._distil(pl_module, original, args, kwargs)

        pl_module.training_step = training_step  # a plain instance attribute, removed at teardown

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # DDP has broadcast rank 0's weights and a checkpoint (if any) restored them by now
        if self.teacher is None:
            return
        if not self.copies_teacher:
            self.teacher.to(pl_module.device)
            self._started = True
            return
        student = self._student_of(pl_module)
        dtype = next((p.dtype for p in student.parameters() if p.is_floating_point()), None)
        self.teacher.to(device=pl_module.device, dtype=dtype)
        if self._saved is not None:
            load_weights(self.teacher, self._saved, "the checkpoint's teacher")
        else:
            if trainer.ckpt_path is not None:
                rank_zero_warn(
                    "DistillationCallback: the checkpoint holds no teacher, so the teacher is a copy of the restored "
                    "model, not of the model the first fit started from"
                )
            load_weights(self.teacher, weights_of(student), "the student at fit start")
        self._saved = None
        self._started = True

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()  # Lightning calls no teardown after an exception

    def _restore(self) -> None:
        """The module as it was before the fit: no hook, its own ``training_step``."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._capture.calls = None
        module = self._module
        if module is not None:
            own, value = self._original_step
            if own:
                module.training_step = value
            elif "training_step" in vars(module):
                del module.training_step
            self._module = None

    # -- the loss -------------------------------------------------------------------------------------
    def _distil(self, pl_module: pl.LightningModule, original: Any, args: tuple, kwargs: dict) -> Any:
        self._capture.calls = []
        try:
            output = original(*args, **kwargs)
        finally:
            calls, self._capture.calls = self._capture.calls, None
        if not calls:
            if not self._checked and output is not None:
                student = "the LightningModule" if self.spec.student is None else f"student={self.spec.student!r}"
                children = [n for n, _ in pl_module.named_children()]
                raise RuntimeError(NO_FORWARD_ERROR.format(student=student, children=children))
            return output
        self._checked = True
        if output is None or pl_module.current_epoch < self.spec.start_epoch:
            return output
        student_args, student_kwargs, student_output = calls[0]
        teacher = self.teacher
        assert teacher is not None
        teacher.eval()  # whatever called .train() on it
        with torch.no_grad():
            teacher_output = teacher(*student_args, **student_kwargs)
        try:
            student_logits, teacher_logits = logits_of(student_output), logits_of(teacher_output)
        except TypeError as error:
            raise TypeError(
                f"DistillationCallback: {error}; or set student= to the submodule that returns the logits"
            ) from None
        term = distillation_loss(student_logits, teacher_logits, self.spec.temperature)
        pl_module.log("distill/loss", term.detach(), on_step=False, on_epoch=True, sync_dist=True)
        return with_distillation(output, term, self.spec.weight)

    # -- checkpointing --------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        """The copied teacher's weights (none for a given teacher, or before the fit has started)."""
        if not self.copies_teacher:
            return {}
        if self._started and self.teacher is not None:
            return {"teacher": weights_of(self.teacher)}
        return {} if self._saved is None else {"teacher": self._saved}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("teacher")
        if saved is None:
            return
        if not self.copies_teacher:
            rank_zero_warn("DistillationCallback: the checkpoint holds a copied teacher; the given teacher is used")
            return
        self._saved = dict(saved)
        if self._started and self.teacher is not None:  # strategies that restore after on_fit_start
            load_weights(self.teacher, self._saved, "the checkpoint's teacher")
            self._saved = None


def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name (detached, not copied), without its state_dict hooks."""
    weights = {name: p.detach() for name, p in module.named_parameters()}
    weights.update((name, b.detach()) for name, b in module.named_buffers())
    return weights


def load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into ``module``'s parameters and buffers in place, by name, with no load hooks run (a
    copy of the student carries the student's hooks); a missing name or a different shape is an error."""
    own = weights_of(module)
    missing = sorted(own.keys() - weights.keys())
    if missing:
        raise ValueError(f"cannot load the teacher from {source}: it has no {missing[:3]}")
    for name, tensor in own.items():
        if tensor.shape != weights[name].shape:
            raise ValueError(
                f"cannot load the teacher from {source}: {name!r} has shape {tuple(weights[name].shape)} there but "
                f"{tuple(tensor.shape)} in the teacher. Was the model pruned before this fit started (resumed from a "
                "checkpoint that holds no teacher)? Pass the dense teacher as DistillationCallback(teacher=...)"
            )
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(weights[name])


def with_distillation(output: Any, term: torch.Tensor, weight: float) -> Any:
    """``training_step``'s output with its loss replaced by ``(1 - weight) * loss + weight * term``."""
    if isinstance(output, torch.Tensor):
        return (1.0 - weight) * output + weight * term
    if isinstance(output, Mapping) and "loss" in output:
        changed = dict(output)
        changed["loss"] = (1.0 - weight) * output["loss"] + weight * term
        return changed
    raise TypeError(
        f"DistillationCallback: training_step returned a {type(output).__name__}; it must return the loss (a tensor) "
        'or a dict with "loss" for the distillation term to be added'
    )
