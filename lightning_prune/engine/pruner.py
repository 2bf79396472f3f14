"""The pruning engine: one torch-pruning dependency graph, pruned step by step to target ratios.

torch-pruning's ``BasePruner`` does the heavy lifting (DepGraph, importance ranking, local/global scopes,
``round_to``). What it lacks, and this module adds:

- *Absolute targets.* ``prune_to(0.3)`` removes 30% of the ORIGINAL channels, whatever was pruned before; the
  pruner is re-aimed per call instead of following its fixed ``iterative_steps`` list.
- *A hard per-layer cap.* ``max_pruning_ratio`` is only checked before a step, so one global step can strip
  a layer far below it; here each group is trimmed to its least important channels so that no layer ever
  keeps fewer than ``(1 - max_layer_ratio)`` of its original channels. torch-pruning silently skips a group
  whose every channel was selected (``check_pruning_group``), so at high ratios whole layers would escape
  pruning and the result would not grow with the ratio; here such a group is trimmed to its cap instead,
  which keeps ``prune_to`` monotone up to the smallest reachable model (what a budget search relies on).
- *Module state kept.* Tracing calls ``model.eval()``; modes are restored. New parameters get
  ``requires_grad`` from the old ones, and :class:`~lightning_prune.engine.surgery.ParameterTracker` reports which
  entries survived so optimizers can follow.
- *Fresh dicts.* ``BasePruner``'s shared mutable defaults are never used (:mod:`.compat`).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
>>> pruner = ChannelPruner(net, torch.zeros(1, 3, 8, 8), ignored_layers=[net[2]])
>>> step = pruner.prune_to(0.5)
>>> net[0].out_channels, net[2].in_channels, round(pruner.channel_ratio(), 2)
(4, 4, 0.5)
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
import torch_pruning as tp
from torch import nn

from . import compat
from .attention import sync_attention
from .compat import preserved_training_modes, traceable
from .criteria import Importance, get_criterion, needs_gradients
from .inputs import output_tensors
from .surgery import ParameterChange, ParameterTracker

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def call_model(model: nn.Module, example_inputs: object) -> object:
    """Call ``model`` the way torch-pruning does: a tuple/list is unpacked, a dict is passed as keywords."""
    if isinstance(example_inputs, tuple | list):
        return model(*example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(example_inputs)


def find_output_layers(model: nn.Module, example_inputs: object) -> list[str]:
    """Names of the prunable layers whose outputs reach the model's output with no other prunable layer
    between: the last Linear, a conv head followed by pooling, every head of a multi-head model.

    Pruning their output channels would change the model's output shape, so they are never pruned.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1), torch.nn.Flatten())
    >>> find_output_layers(net, torch.zeros(1, 3, 2, 2))
    ['1']
    """
    grad_fn_to_name: dict[object, str] = {}
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, _inputs: object, outputs: object) -> None:
        for tensor in output_tensors(outputs):
            if tensor.grad_fn is not None:
                grad_fn_to_name[tensor.grad_fn] = names[module]

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    try:
        with traceable(model):
            model.eval()
            output = call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    found: list[str] = []
    seen: set[object] = set()
    stack = [t.grad_fn for t in output_tensors(output) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in grad_fn_to_name:
            if grad_fn_to_name[fn] not in found:
                found.append(grad_fn_to_name[fn])
            continue  # stop at the first prunable layer on this path
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return sorted(found)


def match_layer_patterns(model: nn.Module, patterns: Iterable[str]) -> dict[str, list[str]]:
    """Module names matching each fnmatch pattern. A pattern that matches nothing raises ``ValueError``.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> match_layer_patterns(net, ["0"])
    {'0': ['0']}
    """
    names = [n for n, _ in model.named_modules() if n]
    matches = {}
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"layer pattern {pattern!r} matches no module of the model; module names: {shown}")
        matches[pattern] = hits
    return matches


@dataclass
class PruneStep:
    """What one :meth:`ChannelPruner.prune_to` call did."""

    target: float
    achieved: float
    groups: int
    changes: list[ParameterChange] = field(default_factory=list)
    history: list[list] = field(default_factory=list)  # plain (module name, is_out, indices) records


def plain_history(history: Iterable[Sequence]) -> list[list]:
    """torch-pruning's pruning history as plain lists of str/bool/int (indices may be namedtuples there).

    >>> plain_history([("conv", True, [3, 1])])
    [['conv', True, [3, 1]]]
    """
    plain = []
    for name, is_out, idxs in history:
        plain.append([str(name), bool(is_out), [int(getattr(i, "idx", i)) for i in idxs]])
    return plain


class ChannelPruner:
    """A dependency graph over ``model``, built once, and the means to prune it to absolute ratios.

    Args:
        model: the network to prune in place.
        example_inputs: inputs for tracing (one sample is enough).
        importance: a criterion name (see :mod:`lightning_prune.engine.criteria`) or an ``Importance``.
        global_pruning: rank channels across layers (True) or prune each layer by the ratio (False).
        ignored_layers: modules never pruned (their outputs; inputs follow their producers).
        round_to: keep channel counts multiples of this.
        max_layer_ratio: no layer loses more than this share of its original channels.
        seed: seeds the ``random`` criterion.
        pruner_kwargs: passed to ``torch_pruning.pruner.BasePruner`` (e.g. ``customized_pruners``,
            ``unwrapped_parameters``, ``num_heads``, ``pruning_ratio_dict``).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: object,
        importance: str | Importance = "l2",
        global_pruning: bool = True,
        ignored_layers: Sequence[nn.Module] = (),
        round_to: int | None = None,
        max_layer_ratio: float = 0.9,
        seed: int = 0,
        **pruner_kwargs: object,
    ) -> None:
        self.model = model
        self.importance = get_criterion(importance, seed=seed)
        self.max_layer_ratio = max_layer_ratio
        self.round_to = round_to
        started = time.perf_counter()
        self._pruner = compat.build_base_pruner(
            model,
            example_inputs,
            importance=self.importance,
            global_pruning=global_pruning,
            pruning_ratio=0.0,
            max_pruning_ratio=max_layer_ratio,
            iterative_steps=1,
            ignored_layers=list(ignored_layers),
            round_to=round_to,
            **pruner_kwargs,
        )
        self.graph = self._pruner.DG
        # torch-pruning re-applies head_pruning_ratio at every step; it is re-aimed per step (aim_heads)
        self._head_pruning = compat.head_pruning_settings(self._pruner)
        self.aim_heads(0.0)  # whole heads go only when a caller aims it (PruningCallback)
        compat.release_autograd(self.graph)  # the traced activations are not needed once the graph is built
        self.build_seconds = time.perf_counter() - started
        self._roots = self._group_roots()
        self._initial_root_channels = sum(self._channels(m, out) for m, out in self._roots)
        self._register_original_widths()

    def _register_original_widths(self) -> None:
        """Let torch-pruning record every ranking scope's channel count now, at the original widths.

        BasePruner records them lazily at its first step; after a resume (history replayed first) that
        would make later ratios relative to the already pruned widths. A zero-ratio step records them
        and prunes nothing; magnitude scores stand in for criteria that need gradients.
        """
        with self.magnitude_stand_in(always=True):
            # layers with their own ratio (pruning_ratio_dict) are held at zero too; prune_to re-aims them
            self.prune_to(0.0, {scope: 0.0 for scope in compat.ratio_scopes(self._pruner)})

    def aim_heads(self, fraction: float) -> None:
        """With whole-head pruning (``prune_num_heads=True`` in ``pruner_kwargs``), make the next prune leave
        ``head_pruning_ratio * fraction`` of the original attention heads removed; a no-op otherwise."""
        compat.aim_head_pruning(self._pruner, fraction, *self._head_pruning)

    @contextmanager
    def magnitude_stand_in(self, always: bool = False):
        """Score channels by L1 magnitude inside the block when the criterion needs gradients that no
        parameter has yet (``taylor`` before the first backward pass), or ``always``.

        For estimates made before training, such as a budget's reachability, where only widths matter.
        """
        importance = self.importance
        missing = needs_gradients(importance) and all(p.grad is None for p in self.model.parameters())
        if always or missing:
            self.importance = tp.importance.GroupMagnitudeImportance(p=1)
            compat.set_importance(self._pruner, self.importance)
        try:
            yield
        finally:
            self.importance = importance
            compat.set_importance(self._pruner, importance)

    # -- channel accounting -------------------------------------------------------------------------
    def _group_roots(self) -> list[tuple[nn.Module, bool]]:
        return compat.group_roots(self._pruner)

    def _channels(self, module: nn.Module, out: bool) -> int:
        get = self.graph.get_out_channels if out else self.graph.get_in_channels
        return int(get(module) or 0)

    def _initial_channels(self, module: nn.Module, out: bool) -> int:
        return compat.initial_channels(self._pruner, module, out)

    def channel_ratio(self) -> float:
        """Share of the original prunable channels removed so far (one count per coupled group)."""
        if self._initial_root_channels == 0:
            return 0.0
        now = sum(self._channels(m, out) for m, out in self._roots)
        return 1.0 - now / self._initial_root_channels

    @property
    def prunable_channels(self) -> int:
        """Original number of prunable channels, one count per coupled group."""
        return self._initial_root_channels

    def history(self) -> list[list]:
        """Every prune so far as plain data; replay it with :meth:`replay`."""
        return plain_history(self.graph.pruning_history())

    # -- pruning ------------------------------------------------------------------------------------
    def _capped(self, group):  # noqa: ANN001, ANN202 - torch-pruning Group
        """The group, trimmed so that its root layer keeps at least (1 - max_layer_ratio) of its original
        channels; None when nothing may be removed."""
        dep, idxs = group[0]
        module, out = dep.target.module, self.graph.is_out_channel_pruning_fn(dep.handler)
        initial, current = self._initial_channels(module, out), self._channels(module, out)
        min_keep = max(1, math.ceil(initial * (1.0 - self.max_layer_ratio) - 1e-9))
        if self.round_to:
            min_keep = math.ceil(min_keep / self.round_to) * self.round_to
        allowed = current - min_keep
        if len(idxs) <= allowed:
            return group
        if allowed <= 0:
            return None
        # score the layer's full group (as torch-pruning does) and drop the least important of ``idxs``
        full_group = self.graph.get_pruning_group(module, dep.handler, list(range(current)))
        scores = self.importance(full_group).cpu()
        plain = torch.tensor([int(getattr(i, "idx", i)) for i in idxs])
        drop = plain[torch.argsort(scores[plain])[:allowed]]
        return self.graph.get_pruning_group(module, dep.handler, drop.tolist())

    @staticmethod
    def _owners(group) -> list[object]:  # noqa: ANN001 - torch-pruning Group
        return [dep.target.module for dep, _ in group]

    def prune_to(self, target: float, ratio_overrides: dict[nn.Module, float] | None = None) -> PruneStep:
        """Prune until ``target`` of the ORIGINAL prunable channels are removed; never un-prunes.

        ``ratio_overrides`` maps layers to their own target ratio for this step. torch-pruning builds its
        ranking scopes at construction, so only layers that are keys of the ``pruning_ratio_dict`` passed
        then (as in ``PruningCallback(ratio_overrides=...)``) take an override; for others it has no effect.
        """
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target ratio must lie in [0, 1), got {target!r}")
        pruner = self._pruner
        compat.aim_step(pruner, target, ratio_overrides or {})
        tracker = ParameterTracker(self.model)
        history_before = len(self.graph.pruning_history())
        n_groups = 0
        with preserved_training_modes(self.model), torch.no_grad(), compat.full_groups_allowed(self.graph):
            for group in pruner.step(interactive=True):
                group = self._capped(group)
                if group is None or not compat.check_group(self.graph, group):
                    continue
                tracker.apply(group.prune, owners=self._owners(group))
                n_groups += 1
        sync_attention(self.model, compat.head_counts(pruner))
        return PruneStep(
            target=float(target),
            achieved=self.channel_ratio(),
            groups=n_groups,
            changes=tracker.changes(),
            history=plain_history(self.graph.pruning_history()[history_before:]),
        )

    def replay(self, history: Sequence[Sequence]) -> PruneStep:
        """Apply recorded prunes (from :meth:`history`) to this model, e.g. to restore a checkpoint's shapes."""
        tracker = ParameterTracker(self.model)
        with preserved_training_modes(self.model), torch.no_grad():
            replay_history(self.graph, history, tracker)
        sync_attention(self.model, compat.head_counts(self._pruner))
        self.graph.pruning_history().extend(plain_history(history))
        return PruneStep(
            target=self.channel_ratio(),
            achieved=self.channel_ratio(),
            groups=len(history),
            changes=tracker.changes(),
            history=plain_history(history),
        )

    def adopt_history(self, history: Sequence[Sequence]) -> None:
        """Record ``history`` as already applied (the model was re-structured by other means)."""
        compat.set_history(self.graph, plain_history(history))


def replay_history(
    graph: tp.DependencyGraph, history: Sequence[Sequence], tracker: ParameterTracker | None = None
) -> None:
    """Apply plain pruning records ``[module name, is_out, indices]`` through ``graph``, in order.

    Unlike torch-pruning's own history replay, this names the record that does not fit the model.
    """
    model = graph.model
    for step, (name, is_out, idxs) in enumerate(history):
        try:
            module = model.get_submodule(name)
            layer_pruner = graph.get_pruner_of_module(module)
            if layer_pruner is None or module not in compat.graph_modules(graph):
                raise ValueError(f"it is a {type(module).__name__}, not a prunable layer of this model")
            width = graph.get_out_channels(module) if is_out else graph.get_in_channels(module)
            if width is None:
                raise ValueError(f"it is a {type(module).__name__}, not a prunable layer of this model")
            bad = [i for i in idxs if not 0 <= i < width]
            if bad:
                raise ValueError(f"indices {bad[:8]} lie outside its {width} channels (0..{width - 1})")
            fn = layer_pruner.prune_out_channels if is_out else layer_pruner.prune_in_channels
            group = graph.get_pruning_group(module, fn, list(idxs))
        except (AttributeError, ValueError, KeyError) as err:
            raise ValueError(
                f"pruning record {step} does not match the model: layer {name!r}: {err}"
            ) from err
        prune = partial(group.prune, record_history=False)
        if tracker is None:
            prune()
        else:
            tracker.apply(prune, owners=[dep.target.module for dep, _ in group])
