"""Every use of torch-pruning's internals, and every workaround for its behaviour, in one place (and the
engine's few uses of ``torch.nn.Module``'s and ``torch.sparse``'s private API, which ``lightning_compat``
cannot hold: the engine never imports it).

An upgrade of torch-pruning edits this file only; ``tests/engine/test_compat.py`` checks against the
installed torch-pruning that each trap worked around here still exists (so a fixed trap is noticed).
Each function names the torch-pruning behaviour it works around or the private attribute it touches.

Traps of torch-pruning 1.6 handled elsewhere, through the functions here:

- tracing calls ``model.eval()`` and leaves it there: :func:`preserved_training_modes`;
- pruned layers get NEW ``nn.Parameter`` objects: ``surgery.ParameterTracker`` rebinds the old ones;
- ``RandomImportance`` draws from the global RNG: ``criteria.SeededRandomImportance``;
- attribute-held sizes (``num_heads``, ``head_dim``) are not updated: ``attention.sync_attention``.
- ``GroupHessianImportance.accumulate_grad`` keys its sums by parameter but tests for them by name, so it keeps
  only the last squared gradient: ``session.ScheduledPruning.add_gradients`` sums them itself and hands the
  mean to ``.grad``, which the criterion reads as the Hessian diagonal when it accumulated nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

# BasePruner's keyword arguments with a mutable ``dict()`` default that it MUTATES: the default object is
# shared by every pruner built without them, so one pruner's layers leak into the next.
SHARED_DEFAULT_DICTS = ("in_channel_groups", "out_channel_groups", "num_heads")


@contextmanager
def preserved_training_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval mode on exit: torch-pruning's tracing calls ``model.eval()``
    and does not restore it. A module with its own ``train()`` gets it called (it may drop what it cached in
    eval mode, e.g. timm LeViT's attention-bias cache, a non-leaf tensor that cannot be deep-copied).

    >>> net = torch.nn.Sequential(torch.nn.Dropout()); _ = net.train()
    >>> with preserved_training_modes(net):
    ...     _ = net.eval()
    >>> net[0].training
    True
    """
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            if type(module).train is not nn.Module.train:
                module.train(training)  # its own train() may clear caches (timm LeViT's attention biases)
        for module, training in modes.items():
            module.training = training


@contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Make every parameter require grad while tracing, then restore the flags and modes.

    torch-pruning traces the autograd graph; a frozen first layer has no ``grad_fn`` and would silently
    fall out of the graph (its BatchNorm then no longer follows its pruned channels).
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(True)
        with preserved_training_modes(model), torch.enable_grad():
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def tolerant_reshape_mapping() -> None:
    """Make torch-pruning skip (leave unmapped) a reshape whose channel count it infers as 0, and a concat
    of parts whose channel counts it cannot infer, instead of failing the whole graph build with
    ``ZeroDivisionError`` (torchvision's ShuffleNetV2: the channel shuffle's views) or ``TypeError``
    (torchvision's Swin: the patch merging's concatenated slices). The safety check leaves those layers
    unpruned anyway. ``update_index_mapping`` looks the functions up by their module globals at every call,
    so they are wrapped there, once."""
    mapping = tp.dependency.index_mapping
    for name, errors in (("update_reshape_index_mapping", ZeroDivisionError),
                         ("update_concat_index_mapping", TypeError)):  # fmt: skip
        original = getattr(mapping, name)
        if getattr(original, "_lightning_prune", False):
            continue

        def tolerant(graph: Any, node: Any, original: Any = original, errors: Any = errors) -> None:
            try:
                original(graph, node)
            except errors:
                return

        functools.update_wrapper(tolerant, original)
        tolerant._lightning_prune = True  # type: ignore[attr-defined]
        setattr(mapping, name, tolerant)


def build_base_pruner(model: nn.Module, example_inputs: object, **kwargs: Any) -> tp.pruner.BasePruner:
    """``BasePruner(model, example_inputs, **kwargs)`` with fresh dicts for its shared mutable defaults
    (:data:`SHARED_DEFAULT_DICTS`, plus ``channel_groups``), traced with frozen layers included."""
    tolerant_reshape_mapping()
    for key in (*SHARED_DEFAULT_DICTS, "channel_groups"):
        kwargs[key] = dict(kwargs.get(key) or {})
    with traceable(model):
        return tp.pruner.BasePruner(model, example_inputs, **kwargs)


def trace_graph(model: nn.Module, example_inputs: object, customized_pruners: Any, unwrapped_parameters: Any) -> Any:
    """torch-pruning's dependency graph alone (what ``BasePruner`` builds first), traced as it traces."""
    tolerant_reshape_mapping()
    with traceable(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, customized_pruners=customized_pruners,
            unwrapped_parameters=unwrapped_parameters, verbose=False,
        )  # fmt: skip


def failing_roots(graph: tp.DependencyGraph, ignored: Sequence[nn.Module], root_types: tuple) -> list[tuple[Any, str]]:
    """The root layers whose full group ``get_pruning_group`` cannot build (an index mapping fails), with the
    error; what ``get_all_groups`` would stop at, one root at a time."""
    ignored_ids = {id(m) for layer in ignored for m in layer.modules()}
    failing = []
    for module in list(graph.module2node):
        if not isinstance(module, root_types) or id(module) in ignored_ids:
            continue
        layer_pruner = graph.get_pruner_of_module(module)
        if layer_pruner is None or layer_pruner.get_out_channels(module) is None:
            continue
        try:
            graph.get_pruning_group(module, layer_pruner.prune_out_channels,
                                    list(range(layer_pruner.get_out_channels(module))))  # fmt: skip
        except Exception as err:  # noqa: BLE001 - any failure names the root
            failing.append((module, f"{type(err).__name__}: {err}"))
    return failing


# -- re-aiming a BasePruner per step ------------------------------------------------------------------
def aim_step(base: tp.pruner.BasePruner, target: float, overrides: Mapping[nn.Module, float]) -> None:
    """Make the next ``base.step()`` prune to ABSOLUTE ratio ``target`` (and ``overrides`` per scope).

    BasePruner follows a fixed ``per_step_pruning_ratio`` list indexed by ``current_step``; it is rewritten
    to ``[0, target]`` and the step counter reset, so every call aims at a ratio of the original widths.
    """
    base.per_step_pruning_ratio = [0.0, float(target)]
    for module, ratio in overrides.items():
        base.pruning_ratio_dict[module] = [0.0, float(ratio)]
    base.current_step = 0


def ratio_scopes(base: tp.pruner.BasePruner) -> list[Any]:
    """The keys of ``pruning_ratio_dict`` (layers or tuples of layers with their own ratio)."""
    return list(base.pruning_ratio_dict)


def set_importance(base: tp.pruner.BasePruner, importance: Any) -> None:
    base.importance = importance


def plain_channel_group(base: tp.pruner.BasePruner, group: Any) -> bool:
    """Whether BasePruner ranks ``group``'s channels one by one: not repeated across channel groups (grouped
    convolutions, GroupNorm: ``_get_channel_groups``), not an attention layer's (``_is_atten_group``), and not
    in a scope of its own (``pruning_ratio_dict``)."""
    scoped = set()
    for scope in base.pruning_ratio_dict:
        scoped |= set(scope) if isinstance(scope, tuple | list) else {scope}
    return (base._get_channel_groups(group) == 1 and not base._is_atten_group(group)[0]
            and group[0][0].target.module not in scoped)


def initial_channels(base: tp.pruner.BasePruner, module: nn.Module, out: bool) -> int:
    """A layer's channel count as BasePruner recorded it at its first step (``layer_init_*_ch``)."""
    table = base.layer_init_out_ch if out else base.layer_init_in_ch
    return int(table[module])


@contextmanager
def full_groups_allowed(graph: tp.DependencyGraph) -> Iterator[None]:
    """Let ``BasePruner.step`` yield groups whose every channel is selected.

    ``DependencyGraph.check_pruning_group`` rejects them, so at high ratios a layer would silently escape
    pruning; the caller trims such groups to its per-layer cap and runs :func:`check_group` itself.
    """
    graph.check_pruning_group = lambda group: True
    try:
        yield
    finally:
        del graph.check_pruning_group


def check_group(graph: tp.DependencyGraph, group: Any) -> bool:
    """The class's own ``check_pruning_group``, whatever :func:`full_groups_allowed` put on the instance."""
    return bool(type(graph).check_pruning_group(graph, group))


def set_history(graph: tp.DependencyGraph, history: Sequence[Any]) -> None:
    """Replace the graph's pruning history; torch-pruning has no setter, its history is ``_pruning_history``."""
    graph._pruning_history = list(history)


# -- attention heads ----------------------------------------------------------------------------------
def head_counts(base: tp.pruner.BasePruner) -> dict[nn.Module, int]:
    """BasePruner's current head count per attention layer (the live ``num_heads`` dict)."""
    return base.num_heads


def set_head_counts(base: tp.pruner.BasePruner, counts: Mapping[nn.Module, int]) -> None:
    base.num_heads.clear()
    base.num_heads.update(counts)


def head_pruning_settings(base: tp.pruner.BasePruner) -> tuple[bool, float]:
    """``(prune_num_heads, head_pruning_ratio)`` as BasePruner was built."""
    return bool(base.prune_num_heads), float(base.head_pruning_ratio)


def aim_head_pruning(base: tp.pruner.BasePruner, fraction: float, enabled: bool, final_ratio: float) -> None:
    """Aim whole-head pruning so that the next step leaves ``final_ratio * fraction`` of the ORIGINAL heads
    removed (``enabled``, ``final_ratio``: see :func:`head_pruning_settings`).

    torch-pruning 1.6 applies ``head_pruning_ratio`` at every step: in local scope to the heads left (so
    repeated steps compound: 4 heads -> 2 -> 1), and in global scope it fails with ``UnboundLocalError:
    head_thres`` on a step that has no head to remove. Here the ratio handed to it is re-aimed per step, and
    head pruning is switched off for a step with nothing to remove. ``fraction=0`` switches it off.
    """
    wanted = final_ratio * fraction
    layers = [m for m in base.init_num_heads if m in base.num_heads]
    if not enabled or not layers or wanted <= 0:
        base.prune_num_heads, base.per_step_head_pruning_ratio = False, [0.0, 0.0]
        return
    if base.global_pruning:
        removing = sum(base.num_heads[m] for m in layers) - int(base.initial_total_heads * (1 - wanted))
        step_ratio = wanted
    else:  # torch-pruning removes ceil(ratio * heads left) per layer; all layers are aimed alike
        m = layers[0]
        keep = math.ceil(base.init_num_heads[m] * (1 - wanted) - 1e-9)
        removing = base.num_heads[m] - keep
        step_ratio = (removing - 0.5) / base.num_heads[m]  # ceil() of it times the heads left is ``removing``
    base.prune_num_heads = removing > 0
    base.per_step_head_pruning_ratio = [0.0, step_ratio if removing > 0 else 0.0]


# -- the graph's nodes --------------------------------------------------------------------------------
class _Traced:
    """Stands in for a released ``grad_fn`` where torch-pruning only tests ``grad_fn is None``."""

    def __repr__(self) -> str:
        return "<released grad_fn>"


RELEASED = _Traced()


def release_autograd(graph: tp.DependencyGraph) -> int:
    """Drop every ``grad_fn`` the graph kept from tracing; returns how many were dropped.

    ``DependencyGraph`` keeps the ``grad_fn`` of every traced operation on its nodes (``Node.grad_fn`` and
    ``_SliceOp.grad_fn``), and through them the activations of the example forward pass, as long as the
    pruner lives. It only reads them while building; for slices pruning needs just "was traced".
    """
    dropped = 0
    for module, node in graph.module2node.items():
        if getattr(node, "grad_fn", None) is not None:
            node.grad_fn = None
            dropped += 1
        if getattr(module, "grad_fn", None) is not None and module.grad_fn is not RELEASED:
            module.grad_fn = RELEASED  # ops._SliceOp: SlicePruner skips slices whose grad_fn is None
            dropped += 1
    return dropped


def graph_modules(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Every module object of the graph, the operator nodes torch-pruning creates (``module2node`` keys,
    whose index bookkeeping pruning changes) included."""
    return [m for m in graph.module2node if isinstance(m, nn.Module)]


def graph_has_autograd(graph: tp.DependencyGraph) -> bool:
    """Whether any node still holds a traced ``grad_fn``."""
    return any(getattr(node, "grad_fn", None) is not None for node in graph.module2node.values())


def deepcopy_shared(graph: tp.DependencyGraph) -> tuple[list[object], int]:
    """What a deep copy of a pruner must share instead of copying, and the recursion depth it needs.

    torch-pruning compares its pruning functions by identity (``REGISTERED_PRUNERS``,
    ``CUSTOMIZED_PRUNERS``, the ``ops`` module), and deepcopy follows the graph's linked nodes recursively,
    a few dozen frames per layer.
    """
    shared: list[object] = [graph.ops, *graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()]
    shared += [node.grad_fn for node in graph.module2node.values() if getattr(node, "grad_fn", None) is not None]
    return shared, 1000 + 50 * len(graph.module2node)


# -- the graph's operator nodes, for compaction --------------------------------------------------------
_PASSTHROUGH_OPS = tuple(
    getattr(tp.ops, name)
    for name in ("_ElementWiseOp", "_ReshapeOp", "_ConcatOp", "_SplitOp", "_SliceOp", "_UnbindOp", "_ExpandOp")
    if hasattr(tp.ops, name)
)


def channel_op_kind(module: object) -> str | None:
    """``"passthrough"`` for torch-pruning's operator nodes that carry a channel along unchanged in index
    terms (element-wise ops, reshapes, concatenations, splits, slices), ``"output"`` for the model's output
    node, None for anything else (layers, custom operators)."""
    if isinstance(module, tp.ops._OutputOp):
        return "output"
    if isinstance(module, _PASSTHROUGH_OPS):
        return "passthrough"
    return None


# -- torch.nn.Module and torch.sparse -----------------------------------------------------------------
def register_state_dict_post_hook(module: nn.Module, hook: Any) -> Any:
    """``module.register_state_dict_post_hook`` (public from torch 2.3), else the private
    ``_register_state_dict_hook`` of older torch; returns the removable handle."""
    register = getattr(module, "register_state_dict_post_hook", None)
    return (register or module._register_state_dict_hook)(hook)


def semi_structured_constraints() -> tuple[str, dict[torch.dtype, tuple[int, int]]]:
    """The backend ``torch.sparse.to_sparse_semi_structured`` uses (CUTLASS when ``_FORCE_CUTLASS`` is set, else
    cuSPARSELt) and its minimum sparse shape ``(rows, columns)`` per dtype (``_DTYPE_SHAPE_CONSTRAINTS``): a
    weight's dimensions must be multiples of them. torch has no public accessor for either."""
    from torch.sparse import semi_structured as ss

    cls = ss.SparseSemiStructuredTensorCUTLASS if ss.SparseSemiStructuredTensor._FORCE_CUTLASS else (
        ss.SparseSemiStructuredTensorCUSPARSELT
    )
    table = cls._DTYPE_SHAPE_CONSTRAINTS
    return cls.BACKEND, {dtype: (c.sparse_min_rows, c.sparse_min_cols) for dtype, c in table.items()}


# -- MACs of layers torch-pruning does not know ------------------------------------------------------
def register_macs_counter(layer_type: type, hook: Any) -> None:
    """Count ``layer_type`` in ``tp.utils.count_ops_and_params``: its counter treats unknown layers as free
    and offers no public registration (``op_counter.MODULES_MAPPING``; ``CUSTOM_MODULES_MAPPING`` is reset
    after every count)."""
    tp.utils.op_counter.MODULES_MAPPING.setdefault(layer_type, hook)


# -- groups crafted by hand ---------------------------------------------------------------------------
def explicit_group(graph: tp.DependencyGraph, items: Sequence[tuple[Any, bool, Sequence[int], Sequence[int]]]) -> Any:
    """A torch-pruning ``Group`` of exactly ``items`` ``(layer, is_out, indices, root indices)``, not traced
    through the graph, for scoring layers that the graph couples wrongly (grouped-query attention)."""
    from torch_pruning.dependency.dependency import Dependency

    group = tp.dependency.Group()
    for module, is_out, idxs, roots in items:
        node = graph.module2node[module]
        layer_pruner = graph.get_pruner_of_module(module)
        fn = layer_pruner.prune_out_channels if is_out else layer_pruner.prune_in_channels
        group.add_dep(Dependency(fn, fn, source=node, target=node), list(idxs))
        group[len(group) - 1].root_idxs = list(roots)
    group._DG = graph
    return group


def plain_group(group: Any, replace: Any) -> Any:
    """A copy of ``group`` with each item's dependency passed through ``replace(dep)`` (root indices kept)."""
    copy = tp.dependency.Group()
    for i, (dep, idxs) in enumerate(group):
        copy.add_dep(replace(dep), idxs)
        copy[i].root_idxs = group[i].root_idxs
    copy._DG = group._DG
    return copy


def group_items(graph: tp.DependencyGraph, group: Any) -> list[tuple[Any, bool, list[int]]]:
    """``(target, is_out, indices)`` of every item of a group (targets: modules, operator nodes, parameters)."""
    return [(dep.target.module, graph.is_out_channel_pruning_fn(dep.handler), list(idxs)) for dep, idxs in group]


def target_channels(graph: tp.DependencyGraph, target: Any, out: bool) -> int | None:
    """A group target's channel count along the dim torch-pruning prunes (None for operator nodes)."""
    try:
        return graph.get_out_channels(target) if out else graph.get_in_channels(target)
    except Exception:  # noqa: BLE001 - operators without a pruner
        return None


def all_groups(base: tp.pruner.BasePruner) -> Iterator[Any]:
    """Every group BasePruner ranks (its ignored layers and root types)."""
    return base.DG.get_all_groups(ignored_layers=base.ignored_layers, root_module_types=base.root_module_types)


def append_history(graph: tp.DependencyGraph, records: Sequence[Any]) -> None:
    """Add records to the graph's pruning history (pruning done outside ``Group.prune``)."""
    graph._pruning_history.extend(records)


# -- bare parameters in the graph's bookkeeping ---------------------------------------------------------
def parameter_bookkeeping(graph: tp.DependencyGraph) -> tuple[dict, dict, dict]:
    """What ``Group.prune`` re-keys when it prunes a bare parameter: ``module2node`` and ``_param_to_name``
    are keyed by the parameter object, and its node's ``module`` is the parameter; pruning puts the NEW
    parameter in all three. :func:`restore_parameter_bookkeeping` puts the recorded ones back."""
    nodes = {node: node.module for node in graph.module2node.values() if isinstance(node.module, nn.Parameter)}
    return dict(graph.module2node), dict(graph._param_to_name), nodes


def restore_parameter_bookkeeping(graph: tp.DependencyGraph, saved: tuple[dict, dict, dict]) -> None:
    module2node, param_to_name, nodes = saved
    graph.module2node.clear()
    graph.module2node.update(module2node)
    graph._param_to_name.clear()
    graph._param_to_name.update(param_to_name)
    for node, module in nodes.items():
        node.module = module


def group_graph(group: Any) -> tp.DependencyGraph | None:
    """The graph a group was made from (``Group._DG``)."""
    return getattr(group, "_DG", None)


# -- sparse training: torch-pruning's own group-norm regulariser -------------------------------------------
class _GroupNormView:
    """What ``GroupNormPruner.regularize`` reads from its pruner (``_groups``, ``reg``, ``cnt``,
    ``_get_channel_groups``, ``estimate_importance``), over a ``BasePruner`` built without it: torch-pruning
    only offers the regulariser as a method of a pruner class of its own, and ours is a ``BasePruner``."""

    def __init__(self, base: tp.pruner.BasePruner, importance: Any) -> None:
        self._base, self._importance = base, importance
        self._groups: list[Any] = []
        self.reg, self.cnt = 0.0, 0
        self.refresh()

    def refresh(self) -> None:
        """Re-collect the groups (after a prune: their channel indices changed)."""
        self._groups = list(all_groups(self._base))

    def _get_channel_groups(self, group: Any) -> int:
        return self._base._get_channel_groups(group)

    def estimate_importance(self, group: Any) -> Any:
        return self._importance(group)


_REG_KINDS = {
    tp.pruner.function.prune_conv_out_channels: "out",
    tp.pruner.function.prune_linear_out_channels: "out",
    tp.pruner.function.prune_conv_in_channels: "in",
    tp.pruner.function.prune_linear_in_channels: "in",
    tp.pruner.function.prune_batchnorm_out_channels: "bn",
}


def regularized_items(base: tp.pruner.BasePruner) -> list[list[tuple[nn.Module, str, list[int], list[int]]]]:
    """Per group ``base`` ranks: ``(layer, kind, indices, root indices)`` of the items torch-pruning's
    ``GroupNormPruner.regularize`` reads and pushes: conv/linear output rows (``"out"``), input columns
    (``"in"``, ungrouped layers only) and affine BatchNorm weights (``"bn"``); ``Group`` items carry their
    channels' positions in the group's root as ``root_idxs``."""
    groups = []
    for group in all_groups(base):
        items = []
        for i, (dep, idxs) in enumerate(group):
            kind, layer = _REG_KINDS.get(dep.handler), dep.target.module
            if kind is None or (kind == "in" and getattr(layer, "groups", 1) > 1):
                continue
            if kind == "bn" and not layer.affine:
                continue
            roots = group[i].root_idxs
            if any(r is None for r in roots):
                continue
            items.append((layer, kind, [int(k) for k in idxs], [int(r) for r in roots]))
        if items:
            groups.append(items)
    return groups


def group_norm_regularizer(base: tp.pruner.BasePruner, importance: Any) -> _GroupNormView:
    """torch-pruning's own regulariser over the groups ``base`` ranks, scoring them with ``importance``: the
    reference :mod:`..regularize` is tested against (it is too slow to run every step: fancy indexing of
    every weight, about 1 s per step for a ResNet-18 on a CPU)."""
    return _GroupNormView(base, importance)


def regularize_groups(view: _GroupNormView, model: nn.Module, strength: float, alpha: float) -> None:
    """Add torch-pruning's group-norm sparsity gradient (``GroupNormPruner.regularize``: ``strength * w *
    gamma``, ``gamma`` from 1 for the group's largest channel norm to ``alpha`` for its smallest) to the
    ``.grad`` of every conv, linear and BatchNorm weight in ``view``'s groups."""
    view.reg = float(strength)
    tp.pruner.GroupNormPruner.regularize(view, model, alpha=alpha)
