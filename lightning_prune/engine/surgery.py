"""Parameter surgery: which entries of each parameter survive a prune, and carrying optimizer state over.

torch-pruning replaces every pruned parameter with a new ``nn.Parameter`` (with ``requires_grad=True``)
and never tells which entries it kept. An optimizer built before the prune then keeps updating the dead
tensors, and its per-parameter state (momentum, Adam moments) no longer matches in shape. torch-pruning
and Lightning offer nothing for this, so we write it here.

How entries are tracked, for any layer type (custom pruners and unwrapped parameters included): just before
a group is pruned, each touched parameter temporarily holds its own flat entry indices as floats (float32,
exact up to 2**24 entries, or float64 for larger parameters, exact up to 2**53). Pruning functions only
select and concatenate entries, so afterwards each new parameter holds the indices of the entries it kept;
the real values, gradients and optimizer state are then gathered with those indices.

>>> import torch
>>> lin = torch.nn.Linear(3, 4)
>>> opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
>>> lin(torch.ones(1, 3)).sum().backward(); opt.step()
>>> tracker = ParameterTracker(lin)
>>> def drop_first_output(m):
...     m.weight = torch.nn.Parameter(m.weight[1:].clone()); m.bias = torch.nn.Parameter(m.bias[1:].clone())
>>> tracker.apply(lambda: drop_first_output(lin), owners=[lin])
>>> changes = tracker.changes()
>>> remap_optimizer(opt, changes)
>>> opt.state[lin.weight]["momentum_buffer"].shape
torch.Size([3, 3])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterChange:
    """One parameter replaced by a prune: ``new`` holds the entries ``index`` (flat, into ``old``)."""

    name: str
    old: nn.Parameter
    new: nn.Parameter
    index: torch.Tensor  # int64, shaped like ``new``

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """Gather the kept entries of a tensor shaped like ``old`` (a gradient, an optimizer moment)."""
        return tensor.reshape(-1)[self.index.reshape(-1).to(tensor.device)].reshape(self.new.shape)


def _owner_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    owner = model
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


class ParameterTracker:
    """Tracks, across one or more prunes of ``model``, which entries of each parameter survive.

    Create it before a pruning step, run each prune through :meth:`apply`, then read :meth:`changes`.
    Real values and gradients are restored after every prune; ``requires_grad`` is restored from the old
    parameter (torch-pruning's new parameters default to ``True``, which would unfreeze frozen layers).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._start: dict[str, nn.Parameter] = {}  # name -> parameter at the start of tracking
        self._values: dict[str, torch.Tensor] = {}  # name -> its values then
        self._grads: dict[str, torch.Tensor | None] = {}
        self._index: dict[str, torch.Tensor] = {}  # name -> flat indices into _values, shaped like now
        # Pruning replaces parameters, never modules: where each parameter lives is looked up once, not per
        # group (a ResNet-50 prunes dozens of groups per step).
        self._where: dict[str, tuple[nn.Module, str]] = {}
        self._names_of_module: dict[int, list[str]] = {}
        for name, _ in model.named_parameters(remove_duplicate=False):
            owner, attr = _owner_and_attr(model, name)
            self._where[name] = (owner, attr)
            self._names_of_module.setdefault(id(owner), []).append(name)

    def _param(self, name: str) -> nn.Parameter:
        owner, attr = self._where[name]
        return owner._parameters[attr]

    def _names_owned_by(self, owners: Iterable[object]) -> list[str]:
        names: list[str] = []
        for owner in owners:
            if isinstance(owner, nn.Module):
                names.extend(self._names_of_module.get(id(owner), []))
            else:  # a bare parameter (torch-pruning's unwrapped_parameters)
                names.extend(n for n in self._where if self._param(n) is owner)
        return list(dict.fromkeys(names))

    def apply(self, prune: Callable[[], object], owners: Iterable[object]) -> None:
        """Run ``prune()``, tracking the parameters of ``owners``.

        ``owners`` are the modules (or bare parameters) whose parameters the prune may replace.
        """
        names = self._names_owned_by(owners)
        for name in names:
            param = self._param(name)
            if name not in self._start:
                self._start[name] = param
                self._values[name] = param.detach().clone()
                self._grads[name] = None if param.grad is None else param.grad.detach().clone()
                self._index[name] = torch.arange(param.numel(), device=param.device).reshape(param.shape)
            param.grad = None
            # float32 holds every integer up to 2**24 exactly, float64 up to 2**53; float32 is cheaper to move
            exact = torch.float32 if self._values[name].numel() <= 2**24 else torch.float64
            param.data = self._index[name].to(exact)
        try:
            prune()
        finally:
            for name in names:
                param = self._param(name)
                self._index[name] = param.detach().to(torch.int64)  # a new tensor: the dtype changes
                values = self._values[name]
                param.data = values.reshape(-1)[self._index[name].reshape(-1)].reshape(param.shape)
                grad = self._grads[name]
                if grad is not None:
                    param.grad = grad.reshape(-1)[self._index[name].reshape(-1)].reshape(param.shape)
                param.requires_grad_(self._start[name].requires_grad)

    def changes(self) -> list[ParameterChange]:
        """Every parameter whose object or shape changed since tracking began."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        result = []
        for name, old in self._start.items():
            new = params[name]
            if new is not old or new.shape != old.shape:
                result.append(ParameterChange(name, old, new, self._index[name]))
        return result


def remap_optimizer(
    optimizer: torch.optim.Optimizer, changes: Sequence[ParameterChange], carry_state: bool = True
) -> None:
    """Point ``optimizer`` at the new parameters and slice its per-parameter state to the kept entries.

    With ``carry_state=False`` the state of every replaced parameter is dropped instead, so the optimizer
    starts it afresh (momentum zero, Adam's moments and ``step`` reset); parameters the prune did not touch
    keep their state. This exists for comparison (``scripts/bench_accuracy.py`` measures what slicing buys).

    State tensors shaped like the parameter (SGD momentum, Adam's ``exp_avg``/``exp_avg_sq``) are sliced;
    scalars such as Adam's ``step`` are kept. State of any other shape cannot be sliced safely, so it is
    dropped for that parameter (the optimizer re-initialises it) with a warning.

    >>> p = torch.nn.Parameter(torch.zeros(4)); opt = torch.optim.Adam([p])
    >>> p.grad = torch.ones(4); opt.step()
    >>> q = torch.nn.Parameter(torch.zeros(2))
    >>> remap_optimizer(opt, [ParameterChange("p", p, q, torch.tensor([1, 3]))])
    >>> opt.param_groups[0]["params"][0] is q, opt.state[q]["exp_avg"].shape
    (True, torch.Size([2]))
    >>> r = torch.nn.Parameter(torch.zeros(1))
    >>> remap_optimizer(opt, [ParameterChange("p", q, r, torch.tensor([0]))], carry_state=False)
    >>> opt.param_groups[0]["params"][0] is r, r in opt.state
    (True, False)
    """
    by_old = {id(c.old): c for c in changes}
    for group in optimizer.param_groups:
        group["params"] = [by_old[id(p)].new if id(p) in by_old else p for p in group["params"]]
    for change in changes:
        if change.old not in optimizer.state:
            continue
        state = optimizer.state.pop(change.old)
        if not carry_state:
            continue
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == change.old.shape and value.dim() > 0:
                new_state[key] = change.select(value).clone()
            elif torch.is_tensor(value) and value.dim() > 0:
                warnings.warn(
                    f"optimizer state {key!r} of {change.name} has shape {tuple(value.shape)}, not the "
                    f"parameter's {tuple(change.old.shape)}; its state is reset after pruning",
                    stacklevel=2,
                )
                new_state = None
                break
            else:
                new_state[key] = value
        if new_state is not None:
            optimizer.state[change.new] = new_state
