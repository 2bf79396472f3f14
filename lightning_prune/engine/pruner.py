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
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from . import compat, hf
from .attention import (
    DIMS,
    HEADS,
    AttentionCut,
    attention_kwargs,
    find_attention,
    left_alone,
    plan_cuts,
    score_items,
    sync_attention,
    unit_scores,
)
from .compat import preserved_training_modes, traceable
from .criteria import GroupScorer, Importance, criterion_name, get_criterion, needs_gradients
from .inputs import output_tensors
from .sizes import HeldSizes
from .surgery import ParameterChange, ParameterTracker

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM)


def call_model(model: nn.Module, example_inputs: object) -> object:
    """Call ``model`` the way torch-pruning does: a tuple/list is unpacked, a dict is passed as keywords."""
    if not isinstance(model, nn.Module):  # any callable (a compiled model, an ONNX session's run)
        return call_unpacked(model, example_inputs)
    with hf.no_kv_cache(model):
        return call_unpacked(model, example_inputs)


def call_unpacked(fn: object, inputs: object) -> object:
    """``fn(*inputs)`` for a tuple/list, ``fn(**inputs)`` for a dict, else ``fn(inputs)``."""
    if isinstance(inputs, tuple | list):
        return fn(*inputs)
    if isinstance(inputs, dict):
        return fn(**inputs)
    return fn(inputs)


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

    hooks = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, PRUNABLE_TYPES) or hf.is_conv1d(m)
    ]
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

    A record is ``[layer, is_out, indices]`` (a group, coupled through the graph), or ``[attention module,
    True, positions, "heads" | "dims"]`` for whole heads or head dims of an attention block
    (:class:`~lightning_prune.engine.attention.AttentionCut`).

    >>> plain_history([("conv", True, [3, 1]), ("attn", True, [0], "heads")])
    [['conv', True, [3, 1]], ['attn', True, [0], 'heads']]
    """
    plain = []
    for record in history:
        name, is_out, idxs = record[:3]
        plain.append([str(name), bool(is_out), [int(getattr(i, "idx", i)) for i in idxs], *map(str, record[3:])])
    return plain


class TracingError(ValueError):
    """torch-pruning could not trace the model with the example inputs."""


class NothingToPruneError(ValueError):
    """Nothing can be pruned: no prunable channels, or a criterion that scores no group."""


@dataclass(frozen=True)
class LeftOut:
    """A layer (or bare parameter) left unpruned because torch-pruning cannot group it correctly."""

    name: str
    reason: str


MISGROUPED = (
    "torch-pruning couples its channels with a dimension of another size (token mixing across the "
    "sequence, or biases per head or position)"
)


class Restructurer:
    """Replays pruning records on a model: torch-pruning's dependency graph (traced, nothing ranked) and the
    model's attention blocks, with the sizes each prune leaves stale kept right. What ``restore_pruned``
    needs; :class:`ChannelPruner` adds the ranking.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    >>> Restructurer(net, torch.zeros(1, 3, 4, 4)).apply_records([["0", True, [0, 1]]])
    >>> net[0].out_channels, net[1].in_channels
    (6, 6)
    """

    def __init__(self, model: nn.Module, example_inputs: object) -> None:
        self.model = model
        custom = hf.layer_pruners(model)
        self._setup_sizes(model, example_inputs, tuple(custom))
        try:
            with hf.no_kv_cache(model):
                self.graph = compat.trace_graph(model, example_inputs, custom, None)
        except Exception as err:
            raise TracingError(f"{type(err).__name__}: {err}") from err
        compat.release_autograd(self.graph)

    def _setup_sizes(self, model: nn.Module, example_inputs: object, custom: tuple) -> None:
        """Attention blocks, tied weights and sizes held in attributes, found before any prune."""
        hf.register_macs(model)
        self._tied = hf.tied_parameters(model)
        self._sizes = HeldSizes(model)
        self._tracker: ParameterTracker | None = None
        try:
            self.blocks = find_attention(model, example_inputs, PRUNABLE_TYPES + custom)
        except Exception as err:
            raise TracingError(f"{type(err).__name__}: {err}") from err
        self._own = [b for b in self.blocks if not b.unsupported]  # attention pruned here, not by torch-pruning

    def _prune_layer(self, tracker: ParameterTracker | None, name: str, is_out: bool, idxs: list[int]) -> None:
        prune_alone(self.graph, self.model, name, is_out, idxs, tracker)

    def _replay_attention(self, record: Sequence, tracker: ParameterTracker | None) -> None:
        owner, _, positions, kind = record[:4]
        block = next((b for b in self._own if b.owner == owner), None)
        if block is None:
            raise ValueError(f"pruning record {list(record)!r} names no attention block of this model")
        AttentionCut(block, kind, list(positions)).apply(partial(self._prune_layer, tracker))

    def apply_records(self, history: Sequence[Sequence], tracker: ParameterTracker | None = None) -> None:
        """Apply plain records (graph groups and attention cuts) in order, without recording them."""
        with preserved_training_modes(self.model), torch.no_grad():
            for step, record in enumerate(history):
                if len(record) > 3 and record[3] in (HEADS, DIMS):
                    self._replay_attention(record, tracker)
                else:
                    replay_history(self.graph, [record], tracker, first_step=step)
        self._after_prune()

    def _after_prune(self) -> None:
        """Everything a prune leaves stale: tied weights, attention sizes, the config."""
        hf.retie(self._tied)
        sync_attention(self.model, self.blocks)
        self._sizes.sync()



class ChannelPruner(Restructurer):
    """A dependency graph over ``model``, built once, and the means to prune it to absolute ratios.

    At set-up it also finds the model's attention blocks (:mod:`.attention`), registers layers torch-pruning
    does not know (transformers' Conv1D, :mod:`.hf`), and checks every group torch-pruning formed: a group
    that maps channel indices past a layer's width (a mis-grouped layer) has those layers left out
    (:attr:`left_out`) and the graph is built again without them.

    Args:
        model: the network to prune in place.
        example_inputs: inputs for tracing (one sample is enough).
        importance: a criterion name (see :mod:`lightning_prune.engine.criteria`) or an ``Importance``.
        global_pruning: rank channels across layers (True) or prune each layer by the ratio (False).
        ignored_layers: modules (or bare parameters) never pruned (their outputs; inputs follow their
            producers).
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
        ignored_layers: Sequence[nn.Module | nn.Parameter] = (),
        round_to: int | None = None,
        max_layer_ratio: float = 0.9,
        seed: int = 0,
        **pruner_kwargs: object,
    ) -> None:
        self.model = model
        self.importance = get_criterion(importance, seed=seed)
        self._scorer = GroupScorer(self.importance)
        self.max_layer_ratio = max_layer_ratio
        self.round_to = round_to
        self.global_pruning = global_pruning
        started = time.perf_counter()
        kwargs = dict(pruner_kwargs)
        kwargs["customized_pruners"] = {**hf.layer_pruners(model), **dict(kwargs.get("customized_pruners") or {})}
        custom = tuple(k for k in kwargs["customized_pruners"] if isinstance(k, type))
        if custom and "root_module_types" not in kwargs:
            kwargs["root_module_types"] = [*ROOT_TYPES, *custom]
        self._setup_sizes(model, example_inputs, custom)
        self.left_out: list[LeftOut] = []
        skip_layers, skip_params = left_alone(model, self.blocks)
        for block in self.blocks:
            if block.unsupported:
                self.left_out += [LeftOut(n, f"attention {block.owner!r}: {block.unsupported}")
                                  for n in [*block.projections, block.o] if n]  # fmt: skip
        self._whole_heads = (bool(kwargs.get("prune_num_heads")), float(kwargs.get("head_pruning_ratio") or 0.0))
        self._head_fraction = 0.0
        kwargs = attention_kwargs(model, kwargs)
        ignored: list[object] = [*ignored_layers, *(model.get_submodule(n) for n in skip_layers), *skip_params]
        for _ in range(8):  # each round leaves out the mis-grouped layers it found and builds again
            try:
                with hf.no_kv_cache(model):
                    self._pruner = compat.build_base_pruner(
                        model,
                        example_inputs,
                        importance=self._scorer,
                        global_pruning=global_pruning,
                        pruning_ratio=0.0,
                        max_pruning_ratio=max_layer_ratio,
                        iterative_steps=1,
                        ignored_layers=list(ignored),
                        round_to=round_to,
                        **{k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()},
                    )
            except MemoryError as err:
                raise ValueError(
                    "torch-pruning ran out of memory grouping this model's channels (its index mapping through "
                    "the model's reshapes grows without bound); ignore the layers of the offending blocks"
                ) from err
            except Exception as err:
                # tracing may have worked and torch-pruning failed to map some group's channels
                bad = self._unmappable(model, example_inputs, ignored, kwargs, err)
                roots = []
            else:
                bad, roots = self._misgrouped()
            if not bad:
                break
            names = {id(m): n for n, m in model.named_modules()} | {
                id(p): n for n, p in model.named_parameters(remove_duplicate=False)
            }
            for target, reason in bad:
                ignored.append(target)
                self.left_out.append(LeftOut(names.get(id(target), repr(target)), reason))
        else:
            raise ValueError(f"torch-pruning keeps mis-grouping layers of this model: {self.left_out[-8:]}")
        self.graph = self._pruner.DG
        # torch-pruning re-applies head_pruning_ratio at every step; it is re-aimed per step (aim_heads)
        self._head_pruning = compat.head_pruning_settings(self._pruner)
        self.aim_heads(0.0)  # whole heads go only when a caller aims it (PruningCallback)
        compat.release_autograd(self.graph)  # the traced activations are not needed once the graph is built
        self.build_seconds = time.perf_counter() - started
        self._roots = roots  # the groups torch-pruning ranks, found while checking them (one pass: it is slow)
        self._initial_root_channels = sum(self._channels(m, out) for m, out in self._roots) + sum(
            b.query_width for b in self._own
        )
        self._register_original_widths()

    @staticmethod
    def _unmappable(
        model: nn.Module, example_inputs: object, ignored: list[object], kwargs: dict, err: Exception
    ) -> list[tuple[object, str]]:
        """After ``BasePruner`` failed with ``err``: the root layers whose groups torch-pruning cannot map
        (traced on a graph of their own), with the reason; :class:`TracingError` if tracing itself fails, or
        if no single group fails."""
        try:
            with hf.no_kv_cache(model):
                graph = compat.trace_graph(model, example_inputs, kwargs.get("customized_pruners"),
                                           kwargs.get("unwrapped_parameters"))  # fmt: skip
        except Exception as trace_err:
            raise TracingError(f"{type(trace_err).__name__}: {trace_err}") from trace_err
        roots = kwargs.get("root_module_types") or ROOT_TYPES
        failing = compat.failing_roots(graph, [m for m in ignored if isinstance(m, nn.Module)], tuple(roots))
        if not failing:
            raise ValueError(
                f"torch-pruning traced the model but could not group its channels: {type(err).__name__}: {err}"
            ) from err
        return [(module, f"torch-pruning cannot map its channels through the model's reshapes and splits "
                         f"({why})") for module, why in failing]  # fmt: skip

    def _misgrouped(self) -> tuple[list[tuple[object, str]], list[tuple[nn.Module, bool]]]:
        """Targets of groups that map channel indices past a layer's width, or that cannot be scored: the
        layers whose output channels are mis-coupled (else the group's root), with the reason; and every
        group's root and whether it prunes output channels."""
        graph = self._pruner.DG
        found: list[tuple[object, str]] = []
        roots: list[tuple[nn.Module, bool]] = []
        seen: set[int] = set()
        scorer = GroupScorer(tp.importance.GroupMagnitudeImportance(p=1))
        for group in compat.all_groups(self._pruner):
            items = compat.group_items(graph, group)
            roots.append((items[0][0], items[0][1]))
            out_of_range = []
            for target, out, idxs in items:
                n = compat.target_channels(graph, target, out)
                if n is not None and idxs and max(idxs) >= n:
                    out_of_range.append((target, out))
            culprits = [t for t, out in out_of_range if out and isinstance(t, nn.Module | nn.Parameter)]
            if not culprits and out_of_range:
                culprits = [items[0][0]]
            if not out_of_range:
                try:
                    scorer(group)
                except Exception as err:  # noqa: BLE001 - any failure to score leaves the group out
                    culprits = [items[0][0]]
                    found += [(t, f"{MISGROUPED}; scoring failed: {type(err).__name__}: {err}")
                              for t in culprits if id(t) not in seen]  # fmt: skip
                    seen |= {id(t) for t in culprits}
                    continue
            for target in culprits:
                if id(target) not in seen:
                    seen.add(id(target))
                    found.append((target, MISGROUPED))
        return found, roots

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
        self._head_fraction = float(fraction)
        compat.aim_head_pruning(self._pruner, fraction, *self._head_pruning)

    def _set_importance(self, importance: Importance) -> None:
        self.importance = importance
        self._scorer = GroupScorer(importance)
        compat.set_importance(self._pruner, self._scorer)

    @contextmanager
    def magnitude_stand_in(self, always: bool = False):
        """Score channels by L1 magnitude inside the block when the criterion needs gradients that no
        parameter has yet (``taylor`` before the first backward pass), or ``always``.

        For estimates made before training, such as a budget's reachability, where only widths matter.
        """
        importance = self.importance
        missing = needs_gradients(importance) and all(p.grad is None for p in self.model.parameters())
        if always or missing:
            self._set_importance(tp.importance.GroupMagnitudeImportance(p=1))
        try:
            yield
        finally:
            self._set_importance(importance)

    def regularized_items(self) -> list[list[tuple[nn.Module, str, list[int], list[int]]]]:
        """The weight items of every group this pruner ranks, as sparse training pushes them (see
        :func:`.compat.regularized_items`)."""
        return compat.regularized_items(self._pruner)

    def regularizer(self) -> Any:  # the torch-pruning reference (tests)
        """torch-pruning's group-norm regulariser over exactly the groups this pruner ranks, scored by group
        L2 norm (see :mod:`.regularize`); call its ``refresh()`` after every prune."""
        return compat.group_norm_regularizer(self._pruner, GroupScorer(tp.importance.GroupMagnitudeImportance(p=2)))

    # -- channel accounting -------------------------------------------------------------------------
    def _channels(self, module: nn.Module, out: bool) -> int:
        get = self.graph.get_out_channels if out else self.graph.get_in_channels
        return int(get(module) or 0)

    def _initial_channels(self, module: nn.Module, out: bool) -> int:
        return compat.initial_channels(self._pruner, module, out)

    def channel_ratio(self) -> float:
        """Share of the original prunable channels removed so far (one count per coupled group; the query
        width of each attention block pruned by whole heads)."""
        if self._initial_root_channels == 0:
            return 0.0
        now = sum(self._channels(m, out) for m, out in self._roots)
        now += sum(b.query_width for b in self._own)
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
        scores = self._scorer(full_group).cpu()
        plain = torch.tensor([int(getattr(i, "idx", i)) for i in idxs])
        drop = plain[torch.argsort(scores[plain])[:allowed]]
        return self.graph.get_pruning_group(module, dep.handler, drop.tolist())

    def removed_units(self, records: Sequence[Sequence]) -> list[tuple[float, int, list[int]]]:
        """The channels that pruning ``records`` (from :meth:`prune_to` on a copy of this pruner's present
        model) would remove, cut into units of ``round_to`` (1 without), each as (mean score, record index,
        indices), the most important unit of each record first; scores are the criterion's (cost included) on
        the present weights. Records of groups with channel groups or attention, and those the criterion
        does not score, give no units.

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
        >>> pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[1]], round_to=2)
        >>> units = pruner.removed_units([["0", True, [5, 1, 2, 7]]])
        >>> [(i, len(idxs)) for _, i, idxs in units], units[0][0] >= units[1][0]
        ([(0, 2), (0, 2)], True)
        """
        units: list[tuple[float, int, list[int]]] = []
        size = self.round_to or 1
        with torch.no_grad():
            for i, (name, is_out, idxs, *flags) in enumerate(records):
                if flags or not idxs:
                    continue
                module = self.model.get_submodule(name)
                layer_pruner = self.graph.get_pruner_of_module(module)
                handler = layer_pruner.prune_out_channels if is_out else layer_pruner.prune_in_channels
                group = self.graph.get_pruning_group(module, handler, list(range(self._channels(module, is_out))))
                if not compat.plain_channel_group(self._pruner, group):
                    continue
                scores = self._scorer(group)
                if scores is None:
                    continue
                scores = scores.detach().float().cpu()
                ranked = sorted((int(j) for j in idxs), key=lambda j: -float(scores[j]))
                for start in range(0, len(ranked), size):  # a remainder (a width not a multiple) comes last
                    unit = ranked[start:start + size]
                    units.append((float(scores[unit].mean()), i, unit))
        return units

    @staticmethod
    def _owners(group) -> list[object]:  # noqa: ANN001 - torch-pruning Group
        return [dep.target.module for dep, _ in group]

    def _attention_cuts(self, target: float) -> list[AttentionCut]:
        """Heads and head dims to remove from the attention blocks at channel ratio ``target``: whole heads
        where only whole heads can go (grouped-query attention, rotary embeddings) or where asked
        (``prune_num_heads``), then dims in every head of the others."""
        cuts: list[AttentionCut] = []
        prune_heads, head_ratio = self._whole_heads
        plans = [
            ([b for b in self._own if b.mode == HEADS], HEADS, target),
            ([b for b in self._own if b.mode == DIMS and not b.per_head_params] if prune_heads else [], HEADS,
             head_ratio * self._head_fraction),
            ([b for b in self._own if b.mode == DIMS], DIMS, target),
        ]  # fmt: skip
        for blocks, kind, aim in plans:
            if not blocks or aim <= 0:
                continue
            scores = {}
            for i, block in enumerate(blocks):
                items = score_items(self.model, block)
                scores[i] = unit_scores(block, kind, self._scorer(compat.explicit_group(self.graph, items)), items)
            for cut in plan_cuts(blocks, kind, scores, aim, self.max_layer_ratio, self.global_pruning):
                cut.apply(partial(self._prune_layer, self._tracker))
                cuts.append(cut)
        return cuts

    def prune_to(self, target: float, ratio_overrides: dict[nn.Module, float] | None = None) -> PruneStep:
        """Prune until ``target`` of the ORIGINAL prunable channels are removed; never un-prunes.

        ``ratio_overrides`` maps layers to their own target ratio for this step. torch-pruning builds its
        ranking scopes at construction, so only layers that are keys of the ``pruning_ratio_dict`` passed
        then (as in ``PruningCallback(ratio_overrides=...)``) take an override; for others it has no effect.
        A criterion that scores none of the groups raises :class:`NothingToPruneError`.
        """
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target ratio must lie in [0, 1), got {target!r}")
        pruner = self._pruner
        compat.aim_step(pruner, target, ratio_overrides or {})
        tracker = ParameterTracker(self.model)
        history_before = len(self.graph.pruning_history())
        n_groups = 0
        self._scorer.reset()
        with preserved_training_modes(self.model), torch.no_grad(), compat.full_groups_allowed(self.graph):
            for group in pruner.step(interactive=True):
                group = self._capped(group)
                if group is None or not compat.check_group(self.graph, group):
                    continue
                tracker.apply(group.prune, owners=self._owners(group))
                n_groups += 1
            self._tracker = tracker
            try:
                cuts = self._attention_cuts(target) if target > 0 else []
            finally:
                self._tracker = None
            compat.append_history(self.graph, [cut.record() for cut in cuts])
            n_groups += len(cuts)
        if target > 0 and self._scorer.calls and self._scorer.nothing == self._scorer.calls:
            raise NothingToPruneError(
                f"the importance criterion {criterion_name(self.importance)} scored none of the "
                f"{self._scorer.calls} channel groups (it returned None for every one), so nothing can be "
                "pruned; use a criterion that scores this model's layers (e.g. 'l2')"
            )
        self._after_prune()
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
        self.apply_records(history, tracker)
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


def prune_alone(
    graph: tp.DependencyGraph,
    model: nn.Module,
    name: str,
    is_out: bool,
    idxs: list[int],
    tracker: ParameterTracker | None = None,
) -> None:
    """Prune one layer's output (or input) channels ``idxs`` with its torch-pruning pruner, not coupled to
    anything through the graph."""
    module = model.get_submodule(name)
    layer_pruner = graph.get_pruner_of_module(module)
    if layer_pruner is None:
        raise ValueError("it is not a prunable layer of this model")
    fn = layer_pruner.prune_out_channels if is_out else layer_pruner.prune_in_channels
    prune = partial(fn, module, sorted(idxs))
    if tracker is None:
        prune()
    else:
        tracker.apply(prune, owners=[module])


def replay_history(
    graph: tp.DependencyGraph, history: Sequence[Sequence], tracker: ParameterTracker | None = None,
    first_step: int = 0,
) -> None:
    """Apply plain pruning records ``[module name, is_out, indices]`` through ``graph``, in order (attention
    records need the pruner: :meth:`ChannelPruner.apply_records`); errors number records from ``first_step``.

    Unlike torch-pruning's own history replay, this names the record that does not fit the model.
    """
    model = graph.model
    for step, (name, is_out, idxs, *flags) in enumerate(history, start=first_step):
        try:
            if flags:
                raise ValueError(f"an attention record ({flags[0]}) replays through ChannelPruner.apply_records")
            module = model.get_submodule(name)
            layer_pruner = graph.get_pruner_of_module(module)
            if layer_pruner is None or module not in compat.graph_modules(graph):
                raise ValueError(f"it is a {type(module).__name__}, not a prunable layer of this model")
            width_now = graph.get_out_channels(module) if is_out else graph.get_in_channels(module)
            if width_now is None:
                raise ValueError(f"it is a {type(module).__name__}, not a prunable layer of this model")
            bad = [i for i in idxs if not 0 <= i < width_now]
            if bad:
                raise ValueError(f"indices {bad[:8]} lie outside its {width_now} channels (0..{width_now - 1})")
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
