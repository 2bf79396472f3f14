"""One fit's scheduled sparsity, framework-free: what ``SparsifyCallback`` dispatches into.

:class:`ScheduledSparsity` picks the layers to sparsify (convolutions and ``Linear`` layers, less ignored
and output layers), grows their masks on the schedule (:func:`~lightning_prune.engine.sparsity.compute_masks`;
lifted where it falls), and keeps the masks on the model through ``torch.nn.utils.prune``:

- the first mask of a tensor is applied with ``prune.custom_from_mask`` (``weight`` becomes ``weight_orig``
  times the buffer ``weight_mask``; the ``nn.Parameter`` object, which the optimizer holds, is kept); later
  masks are written into that buffer;
- after every optimizer step (a step post-hook, :meth:`attach`) ``weight_orig`` is multiplied by the mask
  again, so that pruned entries stay exactly zero whatever the optimizer does (momentum, weight decay);
- while masks are on, the model's ``state_dict`` holds plain ``weight`` tensors (``weight_orig * mask``) and
  ``load_state_dict`` takes them: a checkpoint loads into a fresh, unmasked module; the masks themselves
  travel in :meth:`state_dict` and are put back by :meth:`restore`;
- :meth:`make_permanent` calls ``prune.remove``: plain parameters again, zeros in place.

When the schedule falls (``dsd``, dense-sparse-dense), the masks are lifted to the lower sparsity
(:func:`~lightning_prune.engine.sparsity.lift_masks`): pruned weights come back from zero and train again,
kept ones stay kept.

With ``"filter"`` granularity a zeroed filter takes its bias and the weight and bias of the BatchNorm that
reads its output with it, so that the channel's output is exactly zero. With ``lottery_ticket=True`` the
tensors of the sparsified layers are saved at the start of epoch ``rewind_epoch`` and, after each sparsity
step, reset to those values (times the masks), their optimizer state dropped.

Distributed training plugs in through ``sync(decide)``: it runs ``decide`` on one rank and hands its masks to
every rank.

>>> import torch
>>> from torch import nn
>>> from lightning_prune.engine.spec import SparsifySpec
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten())
>>> session = ScheduledSparsity(net, torch.zeros(1, 3, 8, 8), SparsifySpec(sparsity=0.5, schedule="one_shot"), 0)
>>> event = session.on_epoch_end(0)
>>> list(session.layers), event["sparsify/sparsity"], sorted(net.state_dict())[:2]
(['0'], 0.5, ['0.bias', '0.weight'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from .compat import register_state_dict_post_hook
from .inputs import untraceable_error
from .pruner import call_model, find_output_layers, match_layer_patterns, preserved_training_modes
from .schedules import get_schedule, scheduled_ratio
from .sparsity import (
    SPARSIFIABLE_TYPES,
    SparsityRow,
    compute_masks,
    fits,
    lift_masks,
    output_channel_mask,
    parse_granularity,
    sparsity_rows,
)
from .spec import SparsifySpec

Masks = dict[str, torch.Tensor]
Sync = Callable[[Callable[[], Masks]], Masks]


def _single_process(decide: Callable[[], Masks]) -> Masks:
    return decide()


# -- one tensor under torch.nn.utils.prune ---------------------------------------------------------------
def is_masked(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` is re-parametrised by ``torch.nn.utils.prune`` (``<name>_orig`` and
    ``<name>_mask``)."""
    return f"{name}_orig" in dict(module.named_parameters(recurse=False)) and hasattr(module, f"{name}_mask")


def trained_tensor(module: nn.Module, name: str) -> nn.Parameter:
    """The ``nn.Parameter`` the optimizer updates: ``<name>_orig`` while masked, else ``<name>``."""
    return getattr(module, f"{name}_orig" if is_masked(module, name) else name)


def effective_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor the forward pass uses: ``<name>_orig * <name>_mask`` while masked, else ``<name>``."""
    if is_masked(module, name):
        return (getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")).detach()
    return getattr(module, name).detach()


@torch.no_grad()
def apply_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Put ``mask`` (True = kept) on ``module.<name>`` through ``torch.nn.utils.prune`` and zero the pruned
    entries of the trained tensor. The first call re-parametrises; later calls overwrite the mask buffer
    (``prune.custom_from_mask`` cannot be applied twice: its container re-slices the mask)."""
    param = getattr(module, f"{name}_orig" if is_masked(module, name) else name)
    mask = mask.to(device=param.device, dtype=param.dtype)
    if is_masked(module, name):
        getattr(module, f"{name}_mask").copy_(mask)
    else:
        prune.custom_from_mask(module, name, mask)
    param.mul_(getattr(module, f"{name}_mask"))
    setattr(module, name, param * getattr(module, f"{name}_mask"))  # what the next forward pre-hook sets


def remove_masks(model: nn.Module) -> list[str]:
    """``prune.remove`` every ``torch.nn.utils.prune`` re-parametrisation in ``model`` (ours, ``ln_structured``,
    Lightning's ``ModelPruning`` with ``make_pruning_permanent=False``): plain parameters with the zeros in
    place. Returns the names of the tensors made permanent.

    >>> net = prune.l1_unstructured(nn.Linear(4, 2), "weight", amount=0.5)
    >>> remove_masks(net), sorted(n for n, _ in net.named_parameters())
    (['weight'], ['bias', 'weight'])
    """
    done = []
    for module_name, module in model.named_modules():
        for name, _ in list(module.named_parameters(recurse=False)):
            tensor = name[: -len("_orig")]
            if name.endswith("_orig") and is_masked(module, tensor):
                prune.remove(module, tensor)
                done.append(f"{module_name}.{tensor}" if module_name else tensor)
    return done


def _split(param_name: str) -> tuple[str, str]:
    module, _, tensor = param_name.rpartition(".")
    return module, tensor


def following_batchnorms(model: nn.Module, example_inputs: Any, layers: Sequence[str]) -> dict[str, str]:
    """For each of ``layers``, the BatchNorm that reads its output directly (the same tensor), if any.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    >>> following_batchnorms(net, torch.zeros(1, 3, 2, 2), ["0", "2"])
    {'0': '1'}
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    found: dict[str, str] = {}
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if torch.is_tensor(output):
            produced[id(output)] = (names[module], output)  # the tensor is kept alive: ids stay unique

    def read(module: nn.Module, inputs: tuple) -> None:
        if inputs and torch.is_tensor(inputs[0]):
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0] and source[0] not in found:
                found[source[0]] = names[module]

    hooks = [model.get_submodule(n).register_forward_hook(record) for n in layers]
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks += [m.register_forward_pre_hook(read) for m in batchnorms]
    try:
        with torch.no_grad(), preserved_training_modes(model):
            model.eval()
            call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: found[layer] for layer in layers if layer in found}


class ScheduledSparsity:
    """The masks of one fit and the schedule that grows them.

    Args:
        model: the module to sparsify in place (a LightningModule in a fit; names are relative to it).
        example_inputs: one-sample inputs, to find the output layers and each layer's BatchNorm.
        spec: the validated parameters.
        end_epoch: the epoch at whose end the full sparsity is reached.
        seed: seeds the ``random`` criterion.
    """

    def __init__(
        self, model: nn.Module, example_inputs: Any, spec: SparsifySpec, end_epoch: int, seed: int = 0
    ) -> None:
        self.model, self.spec, self.end_epoch = model, spec, end_epoch
        self.granularity = parse_granularity(spec.granularity)
        self.schedule = get_schedule(spec.schedule)
        self.events: list[dict[str, Any]] = []
        self.masks: Masks = {}  # parameter name -> bool mask (True = kept), on the CPU
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped: dict[str, str] = {}  # sparsifiable layers left dense, and why
        self._pending: Masks | None = None  # masks loaded from a checkpoint, put on in restore()
        self._state_hooks: list[Any] = []
        self._step_hooks: list[Any] = []
        ignored = {n for names in match_layer_patterns(model, spec.ignored_layers).values() for n in names}
        try:
            outputs = set() if spec.prune_output_layers else set(find_output_layers(model, example_inputs))
            candidates = [n for n, m in model.named_modules() if isinstance(m, SPARSIFIABLE_TYPES)]
            batchnorms = following_batchnorms(model, example_inputs, candidates)
        except Exception as err:  # tracing failures surface here, before any training
            raise untraceable_error(model, example_inputs, err) from err
        self.layers: dict[str, nn.Module] = {}
        for name in candidates:
            module = model.get_submodule(name)
            if name in ignored:
                self.skipped[name] = "ignored_layers"
            elif name in outputs:
                self.skipped[name] = "output layer (prune_output_layers=False)"
            elif not fits(module.weight, self.granularity):
                self.skipped[name] = (
                    f"rows of {module.weight[0].numel()} weights are no multiple of {self.granularity.m}"
                )
            else:
                self.layers[name] = module
        if not self.layers:
            why = ", ".join(f"{n}: {reason}" for n, reason in self.skipped.items())
            raise ValueError(
                f"no layer to sparsify with granularity {self.granularity}: {why or 'the model has no Conv or Linear'}"
            )
        # the tensors that follow each layer's filters ("filter" granularity)
        self.linked: dict[str, list[str]] = {name: [] for name in self.layers}
        if self.granularity.kind == "filter":
            for name, module in self.layers.items():
                if module.bias is not None:
                    self.linked[name].append(f"{name}.bias")
                bn = batchnorms.get(name)
                if bn is not None and model.get_submodule(bn).affine:
                    self.linked[name] += [f"{bn}.weight", f"{bn}.bias"]

    # -- schedule -------------------------------------------------------------------------------------
    def scheduled_sparsity(self, epoch: int) -> float:
        """The sparsity the schedule asks for after ``epoch``."""
        return scheduled_ratio(epoch, self.spec.sparsity, self.schedule, self.spec.start_epoch, self.end_epoch)

    @property
    def target(self) -> float:
        """The sparsity the last step aimed at (0 before any)."""
        return float(self.events[-1]["target"]) if self.events else 0.0

    def prunes_at(self, epoch: int) -> bool:
        """Whether the scheduled sparsity changes at the end of ``epoch`` (grows, or falls: ``dsd``)."""
        return abs(self.scheduled_sparsity(epoch) - self.target) > 1e-12

    # -- tensors --------------------------------------------------------------------------------------
    def _tensor(self, param_name: str) -> tuple[nn.Module, str]:
        module, tensor = _split(param_name)
        return self.model.get_submodule(module), tensor

    def param(self, param_name: str) -> nn.Parameter:
        """The parameter the optimizer updates for ``param_name`` (``weight_orig`` while masked)."""
        return trained_tensor(*self._tensor(param_name))

    def effective(self, param_name: str) -> torch.Tensor:
        """The masked value of ``param_name``, as the forward pass uses it."""
        return effective_tensor(*self._tensor(param_name))

    def rewound_parameters(self) -> list[str]:
        """The parameters lottery-ticket rewinding resets: weights and biases of the sparsified layers, and
        the BatchNorm parameters that follow their filters."""
        names = []
        for name, module in self.layers.items():
            names.append(f"{name}.weight")
            if module.bias is not None:
                names.append(f"{name}.bias")
            names += [p for p in self.linked[name] if p not in names]
        return names

    # -- masks ----------------------------------------------------------------------------------------
    def decide(self, sparsity: float) -> Masks:
        """The masks of every sparsified tensor for ``sparsity`` (on the CPU); the model is not touched.

        Above the last step's target the masks grow (:func:`~lightning_prune.engine.sparsity.compute_masks`,
        what was zeroed stays zeroed); below it they are lifted
        (:func:`~lightning_prune.engine.sparsity.lift_masks`, what was kept stays kept).
        """
        previous = {name: self.masks[f"{name}.weight"] for name in self.layers if f"{name}.weight" in self.masks}
        if sparsity < self.target and previous:
            masks = lift_masks(previous, sparsity / self.target, self.granularity, self.generator)
        else:
            weights = {name: self.effective(f"{name}.weight") for name in self.layers}
            masks = compute_masks(
                weights, sparsity, self.granularity, self.spec.context, self.spec.criterion, previous, self.generator
            )
        result: Masks = {}
        for name, mask in masks.items():
            result[f"{name}.weight"] = mask.cpu()
            for linked in self.linked[name]:
                result[linked] = output_channel_mask(mask).cpu()
        return result

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Put ``masks`` on the model (see the module docstring); they replace the current ones."""
        for param_name, mask in masks.items():
            module, tensor = self._tensor(param_name)
            expected = tuple(effective_tensor(module, tensor).shape)
            if tuple(mask.shape) != expected:
                raise ValueError(f"the mask of {param_name!r} has shape {tuple(mask.shape)}; the model's is {expected}")
        for param_name, mask in masks.items():
            apply_mask(*self._tensor(param_name), mask.bool())
        self.masks = {k: v.detach().bool().cpu() for k, v in masks.items()}
        if self.masks and not self._state_hooks:
            # plain functions: torch marks hooks with an attribute, which bound methods cannot take
            self._state_hooks = [
                register_state_dict_post_hook(self.model, lambda *args: self._plain_state_dict(*args)),
                self.model.register_load_state_dict_pre_hook(lambda *args: self._masked_state_dict(*args)),
            ]

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero the pruned entries of every trained tensor again (after an optimizer step)."""
        for param_name in self.masks:
            module, tensor = self._tensor(param_name)
            if is_masked(module, tensor):
                getattr(module, f"{tensor}_orig").mul_(getattr(module, f"{tensor}_mask"))

    def attach(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Re-apply the masks after every step of ``optimizers``."""
        self.detach()
        self._step_hooks = [opt.register_step_post_hook(lambda *_: self.reapply()) for opt in optimizers]

    def detach(self) -> None:
        for hook in self._step_hooks:
            hook.remove()
        self._step_hooks = []

    def make_permanent(self) -> None:
        """``prune.remove`` on every masked tensor: plain parameters, the zeros in place."""
        for param_name in self.masks:
            module, tensor = self._tensor(param_name)
            if is_masked(module, tensor):
                prune.remove(module, tensor)
        for hook in self._state_hooks:
            hook.remove()
        self._state_hooks = []

    def _plain_state_dict(self, module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
        for param_name in self.masks:
            key = prefix + param_name
            if key + "_orig" in state_dict and key + "_mask" in state_dict:
                orig, mask = state_dict.pop(key + "_orig"), state_dict.pop(key + "_mask")
                state_dict[key] = (orig * mask).detach()

    def _masked_state_dict(self, module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
        for param_name in self.masks:
            key = prefix + param_name
            owner, tensor = self._tensor(param_name)
            if key in state_dict and key + "_orig" not in state_dict and is_masked(owner, tensor):
                mask = getattr(owner, f"{tensor}_mask")
                value = state_dict.pop(key)
                state_dict[key + "_orig"] = value * mask.to(value.device, value.dtype)
                state_dict[key + "_mask"] = mask

    # -- lottery ticket -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Save the weights to rewind to, at the start of epoch ``rewind_epoch``."""
        if self.spec.lottery_ticket and epoch == self.spec.rewind_epoch and self.rewind_state is None:
            self.rewind_state = {name: self.effective(name).clone() for name in self.rewound_parameters()}

    @torch.no_grad()
    def rewind(self, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Reset the rewound parameters to their saved values times their masks; their optimizer state
        restarts."""
        if self.rewind_state is None:
            raise RuntimeError(
                f"lottery_ticket=True: no weights were saved at the start of epoch {self.spec.rewind_epoch}"
            )
        for name, saved in self.rewind_state.items():
            param = self.param(name)
            mask = self.masks.get(name)
            value = saved.to(param.device, param.dtype)
            param.copy_(value if mask is None else value * mask.to(param.device, param.dtype))
            for optimizer in optimizers:
                optimizer.state.pop(param, None)
        for name in self.rewind_state:
            module, tensor = self._tensor(name)
            if is_masked(module, tensor):
                setattr(module, tensor, effective_tensor(module, tensor))

    # -- the schedule's step --------------------------------------------------------------------------
    def on_epoch_end(
        self, epoch: int, optimizers: Sequence[torch.optim.Optimizer] = (), sync: Sync = _single_process
    ) -> dict[str, Any] | None:
        """Grow (or, for a falling schedule, lift) the masks as the schedule asks after ``epoch``; returns the
        event recorded (None when nothing is due): the epoch, the target and the ``sparsify/*`` metrics.

        With ``lottery_ticket`` only a growing step rewinds: a falling one brings weights back from zero and
        leaves the others as trained (rewinding there would throw the sparse phase's training away)."""
        if not self.prunes_at(epoch):
            return None
        target = self.scheduled_sparsity(epoch)
        grows = target > self.target
        self.set_masks(sync(lambda: self.decide(target)))
        if self.spec.lottery_ticket and grows:
            self.rewind(optimizers)
        overall = self.rows(by_mask=True)[-1]
        event = {
            "epoch": epoch,
            "target": target,
            "sparsify/sparsity": overall.sparsity,
            "sparsify/target": target,
            "sparsify/zeros": float(overall.zeros),
            "sparsify/params": float(overall.params),
        }
        self.events.append(event)
        return event

    def rows(self, by_mask: bool = False) -> list[SparsityRow]:
        """The per-layer sparsity report of the sparsified layers' weights, and the overall row: the zeros of
        the weights, or with ``by_mask`` the entries the masks zero (what a step's event reports: weights a
        falling schedule brought back are still zero until they train)."""
        def tensor(name: str) -> torch.Tensor:
            mask = self.masks.get(f"{name}.weight")
            return mask.float() if by_mask and mask is not None else self.effective(f"{name}.weight")

        return sparsity_rows({name: (type(m).__name__, tensor(name)) for name, m in self.layers.items()})

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What continuing needs: the events, the masks, the saved weights and the ``random`` generator."""
        return {
            "events": [dict(e) for e in self.events],
            "masks": {k: v.clone() for k, v in self.masks.items()},
            "rewind": None if self.rewind_state is None else {k: v.cpu() for k, v in self.rewind_state.items()},
            "random_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take a checkpoint's state; its masks go on the model in :meth:`restore`."""
        self.events = [dict(e) for e in state.get("events", [])]
        self._pending = dict(state.get("masks") or {}) or None
        rewind = state.get("rewind")
        self.rewind_state = None if rewind is None else dict(rewind)
        if state.get("random_state") is not None:
            self.generator.set_state(state["random_state"])

    def restore(self) -> None:
        """Put the loaded masks on the model (whose weights the checkpoint has restored by now)."""
        if self._pending is not None:
            unknown = sorted(set(self._pending) - set(self.mask_names()))
            if unknown:
                raise ValueError(f"the checkpoint's masks name tensors this fit does not sparsify: {unknown[:5]}")
            self.set_masks(self._pending)
            self._pending = None
        if self.spec.lottery_ticket and self.rewind_state is None and self.events:
            raise ValueError(
                f"lottery_ticket=True rewinds to the weights of epoch {self.spec.rewind_epoch}, which the checkpoint "
                "does not hold: it was saved by a run without lottery_ticket"
            )

    def mask_names(self) -> list[str]:
        """Every parameter name a mask may cover."""
        return [p for name in self.layers for p in (f"{name}.weight", *self.linked[name])]
