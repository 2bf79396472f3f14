"""Find the operations torch-pruning 1.6 mis-prunes, before any pruning, and name the layers that feed them.

torch-pruning maps channel indices through concatenations, splits, flattens and element-wise ops, but some
patterns break it, silently or hours into a run:

- *channel shuffle* (ShuffleNet: ``view(n, g, c // g, h, w)`` then ``transpose(1, 2)``, or
  ``torch.channel_shuffle``) interleaves channels; torch-pruning removes the wrong ones or divides by zero;
- *a view/reshape with a fixed channel size* (``x.view(-1, 512)`` after a conv) cannot follow a pruned
  layer; the forward pass fails after the first prune;
- *fixed channel indices* (``x[:, 4:12]`` or ``x.narrow(1, 4, 8)`` on a conv output) keep selecting the
  same positions after pruning; torch-pruning does not adapt them and the next layer gets the wrong count;
- *chunk/split feeding a concatenation* (``torch.cat(x.chunk(2, 1)[::-1], 1)``) confuses its index
  mapping; pruning raises or removes the wrong channels.

torch-pruning has no such check, so :func:`find_unsafe_ops` runs the model once under a
``TorchFunctionMode`` that follows which prunable layers' output channels flow into each tensor, and
reports the layers whose channels reach an unsafe operation. Ignoring those layers (their output channels)
keeps the rest of the model prunable. The check is conservative: a ``view(n, c * h * w)`` that computes its
size from the input is reported too (write ``flatten(1)`` or ``view(n, -1)`` instead).

>>> import torch
>>> from torch import nn
>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 2)
...     def forward(self, x):
...         return self.fc(self.conv(x).view(-1, 64))
>>> find_unsafe_ops(Net(), torch.zeros(1, 3, 4, 4))
[UnsafeOp(module='conv', reason='view/reshape to a fixed size of 64 over its channels')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .compat import preserved_training_modes
from .pruner import PRUNABLE_TYPES, call_model

ON_UNSAFE = ("ignore", "raise")


@dataclass(frozen=True)
class UnsafeOp:
    """A prunable layer whose output channels reach an operation torch-pruning cannot follow."""

    module: str
    reason: str


_SHUFFLES = {"channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle"}
_SPLITS = {"chunk", "split", "tensor_split", "split_with_sizes", "unsafe_chunk", "unsafe_split"}
_FUNCTIONAL = {"linear", "conv1d", "conv2d", "conv3d"}
_SWAPS = {"transpose", "swapaxes", "swapdims", "permute"}


def _sizes(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    """The target shape of a ``view``/``reshape`` call, as given (``-1`` kept)."""
    sizes = list(args[1:]) or list(kwargs.get("shape", kwargs.get("size", ())))
    if len(sizes) == 1 and isinstance(sizes[0], Sequence):
        sizes = list(sizes[0])
    return sizes


class _ChannelFlow(TorchFunctionMode):
    """Follows, for every tensor, the prunable layers whose output channels it carries."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[int, frozenset[str]] = {}
        self.split_views: set[int] = set()  # 5-D views that split a 4-D tensor's channels into groups
        self.pieces: set[int] = set()  # outputs of chunk/split
        self.found: dict[str, str] = {}
        self.opaque = 0  # > 0 inside a module torch-pruning prunes as a whole (nn.MultiheadAttention)
        self.channel_dim: dict[int, int | None] = {}  # where a tensor's channels are (None: unknown)
        self.weights: dict[int, nn.Module] = {}  # a prunable layer's weight -> the layer
        self.calling: list[nn.Module] = []  # prunable layers whose forward is running
        self._alive: list[torch.Tensor] = []  # keeps ids unique during the pass

    def mark(self, tensor: object, names: frozenset[str]) -> None:
        if torch.is_tensor(tensor):
            self._alive.append(tensor)
            self.sources[id(tensor)] = names

    def _flag(self, names: frozenset[str], reason: str) -> None:
        for name in names:
            self.found.setdefault(name, reason)

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.opaque:
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if torch.is_tensor(t)]
        names = frozenset().union(*(self.sources.get(id(t), frozenset()) for t in inputs))
        if not names:
            return out
        name = getattr(func, "__name__", "")
        first = args[0] if args and torch.is_tensor(args[0]) else None
        outputs = [t for t in tree_leaves(out) if torch.is_tensor(t)]
        if name in _FUNCTIONAL and len(args) > 1 and id(args[1]) in self.weights:
            if self.weights[id(args[1])] not in self.calling:  # the layer's weight, used outside its forward
                self._flag(names, "it feeds a layer whose weight is used functionally (torchvision Swin's "
                                  "attention calls F.linear on qkv.weight), unseen by torch-pruning")  # fmt: skip
        if name in _SHUFFLES:
            self._flag(names, f"{name} mixes its channels")
        elif name in ("view", "reshape", "flatten", "view_as", "reshape_as") and first is not None and outputs:
            self._check_view(first, outputs[0], _sizes(args, kwargs) if name in ("view", "reshape") else [], names)
        elif name in _SWAPS and first is not None and id(first) in self.split_views:
            dims = [d % 5 for d in (args[1:] if name != "permute" else _sizes(args, kwargs)) if isinstance(d, int)]
            if (name == "permute" and dims[1:3] == [2, 1]) or (name != "permute" and sorted(dims) == [1, 2]):
                self._flag(names, "channel shuffle (a grouped view transposed) interleaves its channels")
        elif name in ("__getitem__", "narrow") and first is not None and first.dim() == 4:
            if _selects_channels(name, args, self.channel_dim.get(id(first), 1)):
                self._flag(names, "indexing/slicing fixed channel positions")
        elif name in _SPLITS:
            self.pieces.update(id(t) for t in outputs)
            c = self.channel_dim.get(id(first)) if first is not None else None
            if c is not None and len(outputs) > 1 and _split_dim(args, kwargs) % first.dim() == c % first.dim():
                if any(t.shape[c] == 1 for t in outputs) and any(t.shape[c] > 1 for t in outputs):
                    self._flag(names, "a split keeps one channel apart to broadcast over the others (torch-pruning "
                                      "couples that channel with theirs)")  # fmt: skip
        elif name in ("cat", "concat", "concatenate") and any(id(t) in self.pieces for t in inputs):
            chunked = frozenset().union(*(self.sources.get(id(t), frozenset()) for t in inputs if id(t) in self.pieces))
            self._flag(chunked, "chunk/split feeding torch.cat (torch-pruning mis-maps its channel indices)")
        elif name in ("cat", "concat", "concatenate") and first is None and args and len(args[0]) > 1:
            self._check_cat(list(args[0]), kwargs.get("dim", args[1] if len(args) > 1 else 0))
        for tensor in outputs:
            self.mark(tensor, names)
        if first is not None and id(first) in self.channel_dim:
            moved = _moved_channel_dim(name, first, outputs[0] if outputs else None, args, kwargs,
                                       self.channel_dim[id(first)])  # fmt: skip
            for tensor in outputs:
                self.channel_dim[id(tensor)] = moved
        return out

    def _check_cat(self, parts: list[Any], dim: Any) -> None:
        """Copies of the same layers' channels concatenated along the channels (Swin's patch merging:
        ``cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], ...], -1)``): torch-pruning cannot map them."""
        tensors = [t for t in parts if torch.is_tensor(t)]
        if len(tensors) < 2 or not isinstance(dim, int):
            return
        c = self.channel_dim.get(id(tensors[0]))
        if c is None or dim % tensors[0].dim() != c % tensors[0].dim():
            return
        seen: set[str] = set()
        shared: set[str] = set()
        for t in tensors:
            names = self.sources.get(id(t), frozenset())
            shared |= seen & names
            seen |= names
        if shared:
            self._flag(frozenset(shared), "copies of its channels are concatenated along the channels "
                                          "(torch-pruning cannot map them)")  # fmt: skip

    def _check_view(self, x: torch.Tensor, y: torch.Tensor, sizes: list[Any], names: frozenset[str]) -> None:
        c = self.channel_dim.get(id(x))
        if c is not None and c % x.dim() == x.dim() - 1 and y.dim() < x.dim() and y.shape[-1] > x.shape[-1]:
            if y.shape[-1] % x.shape[-1] == 0:  # (..., 2, 2, C) -> (..., 4C): channels innermost (Swin)
                self._flag(names, "a reshape merges other dims into its channels with the channels innermost "
                                  "(torch-pruning maps them as if outermost)")  # fmt: skip
                return
        if x.dim() == 4 and y.dim() == 5 and y.shape[0] == x.shape[0] and y.shape[3:] == x.shape[2:]:
            if y.shape[1] * y.shape[2] == x.shape[1] and min(y.shape[1], y.shape[2]) > 1:
                self.split_views.add(id(y))
                self._alive.append(y)
            return
        # a channel-first tensor flattened into (n, c * h * w) with the feature size written out
        if x.dim() >= 3 and y.dim() == 2 and y.shape[0] == x.shape[0] and y.shape[1] == math.prod(x.shape[1:]):
            if len(sizes) == 2 and isinstance(sizes[1], int) and sizes[1] != -1:
                self._flag(names, f"view/reshape to a fixed size of {sizes[1]} over its channels")


def _selects_channels(name: str, args: Sequence[Any], channel_dim: int | None = 1) -> bool:
    """Whether ``x[...]``/``x.narrow(...)`` on a 4-D tensor picks some of its channels, which lie along
    ``channel_dim`` (1 for a conv's output, the last dim for a Linear's, e.g. a channels-last ``(n, h, w, c)``
    view; None when unknown: taken as channel-first)."""
    first = args[0]
    c = 1 if channel_dim is None else channel_dim % first.dim()
    if name == "narrow":
        return len(args) > 1 and isinstance(args[1], int) and args[1] % first.dim() == c
    index = args[1] if len(args) > 1 else None
    if not isinstance(index, tuple):
        index = (index,)
    if Ellipsis in index:  # expand ``...`` to full slices
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (first.dim() - len(index) + 1) + index[at + 1 :]
    if len(index) <= c or any(i is None for i in index):
        return False
    entry = index[c]
    return not (isinstance(entry, slice) and entry == slice(None))


def _split_dim(args: Sequence[Any], kwargs: dict) -> int:
    dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
    return int(dim) if isinstance(dim, int) else 0


def _moved_channel_dim(
    name: str, x: torch.Tensor, y: torch.Tensor | None, args: Sequence[Any], kwargs: dict, c: int | None
) -> int | None:
    """Where ``x``'s channels (along ``c``) lie in the output ``y`` of operation ``name``; None when unknown."""
    if name == "linear" and y is not None:  # a functional Linear (torchvision's Swin): features last
        return y.dim() - 1
    if name.startswith("conv") and y is not None:
        return 1
    if c is None or y is None:
        return None
    c %= x.dim()
    if name == "permute":
        dims = [d % x.dim() for d in _sizes(args, kwargs)]
        return dims.index(c) if c in dims else None
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = (int(d) % x.dim() for d in args[1:3])
        return b if c == a else a if c == b else c
    if name in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"):
        if c == x.dim() - 1 and y.shape[-1] == x.shape[-1]:
            return y.dim() - 1
        if c < y.dim() and tuple(y.shape[: c + 1]) == tuple(x.shape[: c + 1]):
            return c
        return None
    return c if y.dim() == x.dim() and y.shape[c] == x.shape[c] else None


def find_unsafe_ops(
    model: nn.Module, example_inputs: object, prunable_types: Sequence[type] = PRUNABLE_TYPES
) -> list[UnsafeOp]:
    """Prunable layers of ``model`` whose output channels reach channel shuffle, a fixed-size view/reshape or
    chunk/split feeding a concatenation, with the reason; one forward pass in eval mode, no gradients.

    ``prunable_types`` adds the types of custom layers registered with torch-pruning.
    """
    flow = _ChannelFlow()
    names = {m: n for n, m in model.named_modules()}
    types = tuple(prunable_types)

    def enter(module: nn.Module, _inputs: object) -> None:
        flow.opaque += 1

    def leave(module: nn.Module, _inputs: object, outputs: object) -> None:
        flow.opaque -= 1
        for tensor in tree_leaves(outputs):
            flow.mark(tensor, frozenset([names[module]]))

    def call(module: nn.Module, _inputs: object) -> None:
        flow.calling.append(module)

    def produce(module: nn.Module, _inputs: object, outputs: object) -> None:
        if flow.calling and flow.calling[-1] is module:
            flow.calling.pop()
        for tensor in tree_leaves(outputs):
            flow.mark(tensor, frozenset([names[module]]))
            if torch.is_tensor(tensor):  # a conv's channels are dim 1, a Linear's (and Conv1D's) the last
                flow.channel_dim[id(tensor)] = 1 if isinstance(module, nn.modules.conv._ConvNd) else tensor.dim() - 1

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        elif isinstance(module, types):
            hooks += [module.register_forward_pre_hook(call), module.register_forward_hook(produce)]
            if isinstance(getattr(module, "weight", None), nn.Parameter):
                flow.weights[id(module.weight)] = module
    try:
        with torch.no_grad(), preserved_training_modes(model), flow:
            model.eval()
            call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return [UnsafeOp(module, reason) for module, reason in sorted(flow.found.items())]


def describe(unsafe: Sequence[UnsafeOp]) -> str:
    """One line per unsafe layer: ``name: reason``.

    >>> describe([UnsafeOp("conv", "channel shuffle")])
    'conv: channel shuffle'
    """
    return "; ".join(f"{op.module}: {op.reason}" for op in unsafe)


def unsafe_layers_to_ignore(
    model: nn.Module,
    example_inputs: object,
    on_unsafe: str,
    prunable_types: Sequence[type] = PRUNABLE_TYPES,
    already_kept: Sequence[str] = (),
) -> list[UnsafeOp]:
    """The unsafe layers of ``model`` not in ``already_kept``; with ``on_unsafe="raise"`` a ``ValueError``
    naming them instead. The caller ignores the returned layers and warns."""
    if on_unsafe not in ON_UNSAFE:
        raise ValueError(f"on_unsafe={on_unsafe!r} is unknown; choose one of {list(ON_UNSAFE)}")
    unsafe = [op for op in find_unsafe_ops(model, example_inputs, prunable_types) if op.module not in already_kept]
    if unsafe and on_unsafe == "raise":
        raise ValueError(
            f"{type(model).__name__} has operations torch-pruning cannot follow: {describe(unsafe)}. Add these "
            "layers to ignored_layers, rewrite the operations (e.g. flatten(1) instead of a fixed view), or "
            "pass on_unsafe='ignore' to leave them unpruned"
        )
    return unsafe
