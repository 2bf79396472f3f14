"""Roll a failed prune back: snapshot the model, the dependency graph and the optimizers before a pruning
step, verify the pruned model with one forward pass, and restore everything if it fails.

torch-pruning has no undo. Its pruning functions assign NEW ``nn.Parameter``/buffer objects and new channel
counts to the modules (and update index bookkeeping on the graph's operator nodes, e.g. split sizes);
:class:`~lightning_prune.engine.surgery.ParameterTracker` rebinds the OLD parameters' ``.data`` and ``.grad``. None
of them writes into an existing tensor, so a snapshot keeps references to the old parameters, their data
and gradient tensors and buffers, plus copies of the plain attributes; no weight is copied.

>>> import torch
>>> from torch import nn
>>> from lightning_prune.engine.pruner import ChannelPruner
>>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
>>> pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[1]])
>>> snapshot = Snapshot.take(pruner)
>>> _ = pruner.prune_to(0.5)
>>> net[0].out_channels, len(pruner.history())
(4, 1)
>>> snapshot.restore()
>>> net[0].out_channels, net[0].weight.shape[0], len(pruner.history())
(8, 8, 0)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import compat
from .budget import clone_pruner
from .compat import preserved_training_modes
from .inputs import shapes
from .pruner import ChannelPruner, call_model


class PruningStepError(RuntimeError):
    """A pruning step produced a model that does not run or changed the output shape; the model and the
    optimizers were rolled back to their state before the step."""


_PLAIN = (int, float, bool, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return False


def _plain_copy(value: Any) -> Any:
    """Copy bookkeeping values (channel counts, split sizes, shapes) that pruning may change in place; keep
    anything else (tensors, modules, user objects) by reference."""
    if isinstance(value, list | set | dict) and _is_plain(value):
        return copy.deepcopy(value)
    return value


@dataclass
class _ModuleState:
    parameters: dict[str, Any]
    buffers: dict[str, Any]
    attributes: dict[str, Any]
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # name -> the parameter's data, grad

    @classmethod
    def take(cls, module: nn.Module) -> _ModuleState:
        attributes = {
            k: _plain_copy(v)
            for k, v in vars(module).items()
            if not k.startswith("_") or k in ("_qkv_same_embed_dim",)
        }
        tensors = {k: (p.data, p.grad) for k, p in module._parameters.items() if p is not None}
        return cls(dict(module._parameters), dict(module._buffers), attributes, tensors)

    def restore(self, module: nn.Module) -> None:
        module._parameters.clear()
        module._parameters.update(self.parameters)
        for key, (data, grad) in self.tensors.items():
            param = self.parameters[key]
            param.data, param.grad = data, grad
        module._buffers.clear()
        module._buffers.update(self.buffers)
        for key in [k for k in vars(module) if not k.startswith("_") and k not in self.attributes]:
            delattr(module, key)
        for key, value in self.attributes.items():
            object.__setattr__(module, key, _plain_copy(value))


@dataclass
class _OptimizerState:
    groups: list[list[Any]]
    state: dict[Any, dict[str, Any]]

    @classmethod
    def take(cls, optimizer: torch.optim.Optimizer) -> _OptimizerState:
        # remap_optimizer builds new state dicts for new parameters and never mutates old tensors in place
        groups = [list(g["params"]) for g in optimizer.param_groups]
        return cls(groups, {p: dict(s) for p, s in optimizer.state.items()})

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        for group, params in zip(optimizer.param_groups, self.groups, strict=True):
            group["params"] = list(params)
        optimizer.state.clear()
        optimizer.state.update({p: dict(s) for p, s in self.state.items()})


@dataclass
class Snapshot:
    """Everything a pruning step changes: the modules (model and graph operator nodes), the graph's pruning
    history, torch-pruning's attention head counts, and the optimizers' parameter lists and state."""

    pruner: ChannelPruner
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    _modules: dict[nn.Module, _ModuleState] = field(default_factory=dict)
    _optimizer_states: list[_OptimizerState] = field(default_factory=list)
    _history: list[Any] = field(default_factory=list)
    _num_heads: dict[nn.Module, int] = field(default_factory=dict)
    _bare: Any = None  # the graph's bookkeeping of bare parameters (cls_token, pos_embed)
    _attention: list[tuple[int, int]] = field(default_factory=list)  # heads and dims left per attention block

    @classmethod
    def take(cls, pruner: ChannelPruner, optimizers: list[torch.optim.Optimizer] | None = None) -> Snapshot:
        """Record the state before a pruning step."""
        snap = cls(pruner, list(optimizers or []))
        modules = list(pruner.model.modules()) + compat.graph_modules(pruner.graph)
        snap._modules = {m: _ModuleState.take(m) for m in modules}
        snap._optimizer_states = [_OptimizerState.take(o) for o in snap.optimizers]
        snap._history = list(pruner.graph.pruning_history())
        snap._num_heads = dict(compat.head_counts(pruner._pruner))
        snap._bare = compat.parameter_bookkeeping(pruner.graph)
        snap._attention = [(b.kv_left, b.dim_left) for b in pruner.blocks]
        return snap

    def restore(self) -> None:
        """Put the model, graph and optimizers back as they were at :meth:`take`."""
        for module, state in self._modules.items():
            state.restore(module)
        for optimizer, state in zip(self.optimizers, self._optimizer_states, strict=True):
            state.restore(optimizer)
        compat.set_history(self.pruner.graph, self._history)
        compat.set_head_counts(self.pruner._pruner, self._num_heads)
        compat.restore_parameter_bookkeeping(self.pruner.graph, self._bare)
        for block, (kv_left, dim_left) in zip(self.pruner.blocks, self._attention, strict=True):
            block.kv_left, block.dim_left = kv_left, dim_left


def failing_record(pruner: ChannelPruner, history: list[list], check: Any) -> list | None:
    """The first of ``history``'s records ``[layer, is_out, indices]`` after which ``check(model)`` raises,
    replayed one by one on a copy of the (restored) pruner; None when none fails alone."""

    trial = clone_pruner(pruner)
    for record in history:
        try:
            with torch.no_grad():
                trial.apply_records([record])
            check(trial.model)
        except Exception:  # noqa: BLE001 - any failure names the record
            return record
    return None


def forward_check(inputs: object, expected_shapes: list[tuple[int, ...]]) -> Any:
    """A check for :func:`failing_record`: one eval-mode forward pass with ``inputs`` that must give outputs of
    ``expected_shapes``."""
    def check(model: nn.Module) -> None:
        with torch.no_grad(), preserved_training_modes(model):
            model.eval()
            now = shapes(call_model(model, inputs))
        if now != expected_shapes:
            raise RuntimeError(f"output shapes changed from {expected_shapes} to {now}")

    return check


def step_error(
    pruner: ChannelPruner, history: list[list], err: Exception, where: str, check: Any
) -> PruningStepError:
    """The error for a failed pruning step ``where`` (e.g. ``"epoch 3 (to 40.0% of channels)"``), naming the
    first group that fails on its own; call it after :meth:`Snapshot.restore`."""
    try:
        record = failing_record(pruner, history, check) if history else None
    except Exception:  # noqa: BLE001 - the culprit search must not hide the original error
        record = None
    if record is not None:
        name, is_out, idxs = record
        shown = ", ".join(str(i) for i in idxs[:8]) + (", ..." if len(idxs) > 8 else "")
        group = f"the group rooted at layer {name!r} ({'output' if is_out else 'input'} channels [{shown}])"
    elif history:
        group = f"the {len(history)} group(s) pruned together (none fails alone), the first rooted at {history[0][0]!r}"
    else:
        group = "the step before any group was applied"
    return PruningStepError(
        f"pruning step at {where} broke the model at {group}: {type(err).__name__}: {err}. The model and its "
        "optimizers were rolled back to their state before this step. Add the layer to ignored_layers (or fix "
        "the operation that hard-codes its channel count) and run again"
    )
