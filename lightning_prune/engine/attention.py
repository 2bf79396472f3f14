"""Attention blocks, found by structure: which projections make queries, keys and values, how many heads
they have, and every attribute the forward pass reads its sizes from.

torch-pruning sees an attention block as a few Linears coupled through matmuls. Left alone it cuts the
projections to widths that are not a whole number of heads, and never updates the sizes the module stores
(``num_heads``, ``head_dim``, ``attention_head_size``, ``all_head_size``, ``attn_dim``, ``split_size``,
``num_key_value_groups``), so the next forward pass fails. :func:`find_attention` runs the model once and
follows the projection outputs to the attention products (``q @ k^T`` then ``softmax(...) @ v``, or
``scaled_dot_product_attention``); the block's head count and head size are read off the query tensor there.
Layouts covered:

- fused ``qkv`` (timm ``Attention``, Swin's ``WindowAttention``) and GPT-2's fused ``c_attn`` Conv1D;
- separate ``q``/``k``/``v`` projections (BERT, ViT, LLaMA/Mistral/Qwen-style decoders), with grouped-query
  attention (fewer key/value heads than query heads).

The blocks are pruned here (:class:`AttentionCut`), not through torch-pruning's graph, which maps GPT-2's
last-dim ``split``, grouped-query attention's repeated keys and values and rotary embeddings wrongly. Each
block is pruned one of two ways (:attr:`AttentionBlock.mode`):

- ``"dims"``: every head loses the same dims (and whole heads go too with ``prune_num_heads=True``);
- ``"heads"``: only whole key/value heads go, each with the query heads grouped over it: grouped-query
  attention, rotary position embeddings (they pair the dims of a head, so no dim can go alone), and
  blocks that normalise each head's dims (timm's ``qk_norm``).

A block whose layout is neither (e.g. LeViT's and EfficientFormer's per-head ``split`` into keys and values
of different sizes) is left unpruned, with the reason (:attr:`AttentionBlock.unsupported`).

>>> import torch
>>> from torch import nn
>>> class Attention(nn.Module):
...     def __init__(self, dim=8, num_heads=2):
...         super().__init__()
...         self.num_heads, self.head_dim = num_heads, dim // num_heads
...         self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
...     def forward(self, x):
...         q, k, v = self.qkv(x).reshape(1, -1, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
...         return self.proj((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2).flatten(2))
>>> [block] = find_attention(Attention(), torch.zeros(1, 5, 8))
>>> block.q, block.o, block.heads, block.head_dim, block.mode, block.attrs
('qkv', 'proj', 2, 4, 'dims', {'heads': ['num_heads'], 'head_dim': ['head_dim']})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .compat import preserved_training_modes
from .hf import conv1d_width, is_conv1d, no_kv_cache

# attribute names per role; an attribute is updated only if its name is listed and its value at set-up was
# the role's value
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "heads": ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_q_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head"),
    "head_dim": ("head_dim", "attention_head_size", "head_size", "d_head", "dim_head"),
    "all_head": ("all_head_size", "attn_dim", "inner_dim", "split_size"),
    "kv_groups": ("num_key_value_groups", "n_rep", "num_queries_per_kv"),
}
# config fields updated where every block reading the config agrees
CONFIG_FIELDS = {"heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "head_dim": "head_dim"}


def width(module: nn.Module, out: bool = True) -> int:
    """Output (or input) features of a projection: Linear, transformers' Conv1D or a 1x1 convolution."""
    if is_conv1d(module):
        n_in, n_out = conv1d_width(module)
        return n_out if out else n_in
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return int(module.out_channels if out else module.in_channels)


@dataclass
class AttentionBlock:
    """One attention block of a model; names are module names relative to that model."""

    owner: str  # the module holding the projections' sizes
    q: str
    k: str
    v: str
    o: str | None
    heads: int  # at set-up
    kv_heads: int
    head_dim: int
    mode: str = "dims"  # "dims" (torch-pruning, told the heads) or "heads" (whole key/value heads, here)
    unsupported: str | None = None  # why it is left unpruned, if it is
    attrs: dict[str, list[str]] = field(default_factory=dict)  # role -> attribute names on the owner
    hidden: int = 0  # the residual width the projections read, at set-up
    per_head_params: bool = False  # bare parameters of the module have a dim per head (relative position bias)
    kv_left: int = 0  # key/value heads left (set-up: kv_heads)
    dim_left: int = 0  # dims per head left (set-up: head_dim)

    def __post_init__(self) -> None:
        self.kv_left = self.kv_left or self.kv_heads
        self.dim_left = self.dim_left or self.head_dim

    @property
    def fused(self) -> bool:
        return self.q == self.k == self.v

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def projections(self) -> list[str]:
        return list(dict.fromkeys([self.q, self.k, self.v]))

    def role_values(self, heads: int, kv_heads: int, head_dim: int) -> dict[str, int]:
        return {
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "all_head": heads * head_dim,
            "kv_groups": heads // max(kv_heads, 1),
        }

    def current(self) -> tuple[int, int, int]:
        """``(heads, kv_heads, head_dim)`` as the model is now."""
        return self.kv_left * self.group_size, self.kv_left, self.dim_left

    @property
    def query_width(self) -> int:
        """Query dims left (heads x dims per head): how the block counts in the channel ratio."""
        return self.kv_left * self.group_size * self.dim_left


# -- finding the blocks -------------------------------------------------------------------------------
_MATMULS = {"matmul", "__matmul__", "bmm", "einsum"}
_LAST_DIM_SPLITS = {"split", "chunk", "split_with_sizes", "tensor_split", "unsafe_split", "unsafe_chunk"}


class _Flow(TorchFunctionMode):
    """Follows every tensor's projection (the last prunable layer it came from) to the attention products."""

    def __init__(self) -> None:
        super().__init__()
        self.source: dict[int, str] = {}
        self.scores: dict[int, tuple[str, str, int, int, int]] = {}  # q @ k^T: q, k, heads, head_dim, k heads
        self.output: dict[int, int] = {}  # attention output -> block index
        self.found: list[dict[str, Any]] = []
        self.mixed: set[str] = set()  # projections whose head dims are sliced or concatenated (RoPE)
        self.split_last: set[str] = set()  # projections split along the last dim of a 4-D tensor
        self.opaque = 0
        self._alive: list[torch.Tensor] = []

    def keep(self, tensor: torch.Tensor) -> None:
        self._alive.append(tensor)

    def _block(self, q: str, k: str, v: str, heads: int, head_dim: int, k_heads: int) -> int:
        self.found.append({"q": q, "k": k, "v": v, "heads": heads, "head_dim": head_dim, "k_heads": k_heads})
        return len(self.found) - 1

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.opaque:
            return out
        tensors = [t for t in tree_leaves((args, kwargs)) if torch.is_tensor(t)]
        outputs = [t for t in tree_leaves(out) if torch.is_tensor(t)]
        if not tensors or not outputs:
            return out
        name = getattr(func, "__name__", "")
        ids = [id(t) for t in tensors]
        if name == "scaled_dot_product_attention" and len(tensors) >= 3:
            q, k, v = (kwargs.get(n, a) for n, a in zip(("query", "key", "value"), (args + (None,) * 3)[:3]))
            srcs = [self.source.get(id(t)) for t in (q, k, v) if torch.is_tensor(t)]
            if len(srcs) == 3 and all(srcs) and q.dim() >= 4:
                index = self._block(*srcs, q.shape[-3], q.shape[-1], k.shape[-3])  # type: ignore[arg-type]
                for t in outputs:
                    self.output[id(t)] = index
                    self.keep(t)
            return out
        if name in _MATMULS and name != "einsum" and len(tensors) == 2:
            a, b = tensors
            if id(a) in self.scores and self.source.get(id(b)):
                q, k, heads, head_dim, k_heads = self.scores[id(a)]
                index = self._block(q, k, self.source[id(b)], heads, head_dim, k_heads)
                for t in outputs:
                    self.output[id(t)] = index
                    self.keep(t)
                return out
            sa, sb = self.source.get(id(a)), self.source.get(id(b))
            if sa and sb and a.dim() >= 4 and b.dim() >= 4 and id(a) not in self.scores:
                for t in outputs:
                    self.scores[id(t)] = (sa, sb, a.shape[-3], a.shape[-1], b.shape[-3])
                    self.keep(t)
                return out
        # everything else carries its inputs' marks along
        scored = next((self.scores[i] for i in ids if i in self.scores), None)
        attended = next((self.output[i] for i in ids if i in self.output), None)
        sources = {self.source[i] for i in ids if i in self.source}
        first = tensors[0]
        if len(sources) == 1 and scored is None:
            (src,) = sources
            if first.dim() >= 4 and self._touches_last_dim(name, first, args, kwargs):
                (self.split_last if name in _LAST_DIM_SPLITS else self.mixed).add(src)
            for t in outputs:
                self.source[id(t)] = src
                self.keep(t)
        for t in outputs:
            if scored is not None:
                self.scores[id(t)] = scored
                self.keep(t)
            if attended is not None:
                self.output[id(t)] = attended
                self.keep(t)
        return out

    @staticmethod
    def _touches_last_dim(name: str, first: torch.Tensor, args: Sequence[Any], kwargs: dict) -> bool:
        last = first.dim() - 1
        if name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if index and index[0] is Ellipsis and len(index) == 2:
                return isinstance(index[1], slice) and index[1] != slice(None)
            if len(index) == first.dim():
                return isinstance(index[-1], slice) and index[-1] != slice(None)
            return False
        if name in _LAST_DIM_SPLITS or name in ("cat", "concat", "concatenate", "narrow"):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else (0 if name in ("cat", "concat") else None))
            if name in ("cat", "concat", "concatenate"):
                dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if name == "narrow":
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return isinstance(dim, int) and dim % first.dim() == last
        return False


def _lowest_common_parent(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _attrs(owner: nn.Module, values: Mapping[str, int]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for role, names in ROLE_NAMES.items():
        hits = [n for n in names if isinstance(vars(owner).get(n), int) and vars(owner)[n] == values[role]]
        if hits:
            found[role] = hits
    return found


def find_attention(
    model: nn.Module, example_inputs: object, layer_types: Sequence[type] = (nn.Linear, nn.Conv2d)
) -> list[AttentionBlock]:
    """The attention blocks of ``model``, found by one eval-mode forward pass (no gradients).

    ``layer_types``: the projection types (Linear, convs; transformers' Conv1D is always included).
    ``nn.MultiheadAttention`` is not reported: torch-pruning prunes it as a whole.
    """
    from .pruner import call_model  # pruner imports this module

    flow = _Flow()
    names = {m: n for n, m in model.named_modules()}
    types = tuple(layer_types)
    o_proj: dict[int, str] = {}

    def enter(module: nn.Module, _inputs: object) -> None:
        flow.opaque += 1

    def leave(module: nn.Module, _inputs: object, _outputs: object) -> None:
        flow.opaque -= 1

    def consume(module: nn.Module, inputs: object) -> None:
        for tensor in tree_leaves(inputs):
            if torch.is_tensor(tensor) and id(tensor) in flow.output:
                o_proj.setdefault(flow.output[id(tensor)], names[module])

    def produce(module: nn.Module, _inputs: object, outputs: object) -> None:
        for tensor in tree_leaves(outputs):
            if torch.is_tensor(tensor):
                flow.source[id(tensor)] = names[module]
                flow.scores.pop(id(tensor), None)
                flow.output.pop(id(tensor), None)
                flow.keep(tensor)

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        elif isinstance(module, types) or is_conv1d(module):
            hooks += [module.register_forward_pre_hook(consume), module.register_forward_hook(produce)]
    try:
        with torch.no_grad(), no_kv_cache(model), preserved_training_modes(model), flow:
            model.eval()
            call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    blocks: dict[tuple[str, str, str], AttentionBlock] = {}
    for index, found in enumerate(flow.found):
        key = (found["q"], found["k"], found["v"])
        if key in blocks:
            continue  # a block called twice (shared weights) is one block
        blocks[key] = _make_block(model, found, o_proj.get(index), flow)
    return list(blocks.values())


def _make_block(model: nn.Module, found: dict[str, Any], o: str | None, flow: _Flow) -> AttentionBlock:
    q, k, v = found["q"], found["k"], found["v"]
    heads, head_dim = int(found["heads"]), int(found["head_dim"])
    fused = q == k == v
    owner = q.rsplit(".", 1)[0] if fused and "." in q else ("" if fused else _lowest_common_parent([q, k, v]))
    qm, km, vm = (model.get_submodule(n) for n in (q, k, v))
    kv_heads = heads if fused else width(km) // max(head_dim, 1)
    block = AttentionBlock(owner, q, k, v, o, heads, kv_heads, head_dim, hidden=width(qm, out=False))
    problem = None
    if fused and (flow.split_last & {q}):
        problem = "its qkv projection is split per head into keys and values of different sizes"
    elif fused and width(qm) != 3 * heads * head_dim:
        problem = f"its qkv width {width(qm)} is not 3 x {heads} heads x {head_dim} dims"
    elif fused and (flow.mixed & {q}):
        problem = "its fused qkv is sliced along the head dims (rotary embedding)"
    elif not fused and (width(qm) != heads * head_dim or width(vm) != width(km) or kv_heads < 1
                        or heads % kv_heads or width(km) != kv_heads * head_dim):
        problem = (f"its q/k/v widths {width(qm)}/{width(km)}/{width(vm)} do not match {heads} heads of "
                   f"{head_dim} dims")  # fmt: skip
    if problem is not None:
        block.unsupported = problem
        block.mode = "none"
        return block
    if not fused and (kv_heads != heads or flow.mixed & {q, k}):
        block.mode = "heads"
    block.attrs = _attrs(model.get_submodule(owner), block.role_values(heads, kv_heads, head_dim))
    block.per_head_params = any(heads in p.shape for p in _bare_parameters(model, block))
    inner = [p for p in _inner_parameters(model, block) if p.dim() == 1]  # norms inside the block
    if any(p.numel() == heads * head_dim for p in inner) and heads > 1:
        block.unsupported = "it normalises all its heads' dims together (scale norm)"
    elif any(p.numel() == head_dim for p in inner):
        block.mode = "heads"  # q/k norms over each head's dims: no dim can go
    if block.mode == "heads" and block.per_head_params and not block.unsupported:
        block.unsupported = "it has parameters per head and its heads can only go whole"
    if block.unsupported:
        block.mode = "none"
    return block


def _inner_parameters(model: nn.Module, block: AttentionBlock) -> list[nn.Parameter]:
    """The parameters of the block's module other than its projections'."""
    owner = model.get_submodule(block.owner)
    projections = {id(p) for n in [*block.projections, block.o] if n for p in model.get_submodule(n).parameters()}
    return [p for p in owner.parameters() if id(p) not in projections]


# -- what torch-pruning is told -----------------------------------------------------------------------
def attention_kwargs(model: nn.Module, pruner_kwargs: Mapping[str, object]) -> dict[str, object]:
    """``pruner_kwargs`` for ``BasePruner`` with ``nn.MultiheadAttention`` filled in; what the user set wins.

    ``in_channel_groups``/``out_channel_groups``: ``num_heads`` for every ``nn.MultiheadAttention``.
    torch-pruning's pruner for it asserts that the pruned ``embed_dim`` still divides by ``num_heads`` but
    does not tell the ranking, so a 50% step on the residual stream fails; as channel groups, every head
    loses the same number of dims. (Other attention blocks are pruned here, see :class:`AttentionCut`.)

    >>> mha = nn.MultiheadAttention(8, 2)
    >>> attention_kwargs(mha, {})["out_channel_groups"] == {mha: 2}
    True
    """
    kwargs = dict(pruner_kwargs)
    groups = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for key in ("in_channel_groups", "out_channel_groups"):
        kwargs[key] = {**groups, **dict(kwargs.get(key) or {})}  # type: ignore[arg-type]
    return kwargs


def _bare_parameters(model: nn.Module, block: AttentionBlock) -> list[nn.Parameter]:
    owner = model.get_submodule(block.owner)
    layers = {model.get_submodule(n) for n in [*block.projections, block.o] if n}
    wrapped = {id(p) for m in owner.modules() if m in layers or _is_standard(m) for p in m.parameters()}
    return [p for p in owner.parameters() if id(p) not in wrapped]


def left_alone(model: nn.Module, blocks: Sequence[AttentionBlock]) -> tuple[list[str], list[nn.Parameter]]:
    """What torch-pruning must not prune: every block's projections (pruned here, or left unpruned when the
    layout is unsupported, with its output projection), and the bare parameters of every block's module
    (relative position biases and attention biases are per head or per position, never per channel)."""
    layers: list[str] = []
    params: list[nn.Parameter] = []
    for block in blocks:
        layers += block.projections
        if block.unsupported and block.o:
            layers.append(block.o)
        params += _bare_parameters(model, block)
    return list(dict.fromkeys(layers)), params


def _is_standard(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.modules.conv._ConvNd | nn.LayerNorm | nn.modules.batchnorm._BatchNorm
                      | nn.GroupNorm | nn.Embedding) or is_conv1d(module)  # fmt: skip


# -- keeping the stored sizes right ---------------------------------------------------------------------
def sync_attention(model: nn.Module, blocks: Sequence[AttentionBlock]) -> None:
    """Set every attribute each block's forward reads its sizes from (see :data:`ROLE_NAMES`), and the
    Hugging Face config's head counts, head size and ``hidden_size`` where every block reading it agrees."""
    configs: dict[int, tuple[Any, list[tuple[AttentionBlock, dict[str, int]]]]] = {}
    for block in blocks:
        if block.unsupported:
            continue
        owner = model.get_submodule(block.owner)
        values = block.role_values(*block.current())
        for role, attrs in block.attrs.items():
            for attr in attrs:
                setattr(owner, attr, values[role])
        values["hidden"] = width(model.get_submodule(block.q), out=False)
        config = getattr(owner, "config", None)
        if config is not None:
            configs.setdefault(id(config), (config, []))[1].append((block, values))
    for config, users in configs.values():
        _sync_config(config, users)


def _sync_config(config: Any, users: list[tuple[AttentionBlock, dict[str, int]]]) -> None:
    first = users[0][0]
    original = {**first.role_values(first.heads, first.kv_heads, first.head_dim), "hidden": first.hidden}
    fields = {**CONFIG_FIELDS, "hidden": "hidden_size"}
    for role, name in fields.items():
        if not isinstance(getattr(config, name, None), int):
            continue
        wanted = {values[role] for _, values in users}
        was = {
            (block.role_values(block.heads, block.kv_heads, block.head_dim) | {"hidden": block.hidden})[role]
            for block, _ in users
        }
        if len(wanted) == 1 and was == {original[role]}:
            setattr(config, name, wanted.pop())


# -- heads and head dims, pruned here ------------------------------------------------------------------
HEADS, DIMS = "heads", "dims"


@dataclass
class AttentionCut:
    """Whole key/value heads (each with its query heads) or head dims (the same in every head) to remove from
    one block; ``positions`` among those left. Replayed from its record ``[owner, True, positions, kind]``."""

    block: AttentionBlock
    kind: str  # HEADS or DIMS
    positions: list[int]

    def record(self) -> list:
        return [self.block.owner, True, sorted(self.positions), self.kind]

    def layer_records(self) -> list[tuple[str, bool, list[int]]]:
        """``(layer, is_out, indices)``: each projection pruned on its own (no coupling through the graph)."""
        b = self.block
        g, d, heads = b.group_size, b.dim_left, b.kv_left * b.group_size
        pos = sorted(self.positions)
        if self.kind == HEADS:
            kv_idxs = [p * d + i for p in pos for i in range(d)]
            q_idxs = [(p * g + j) * d + i for p in pos for j in range(g) for i in range(d)]
        else:
            kv_idxs = [h * d + i for h in range(b.kv_left) for i in pos]
            q_idxs = [h * d + i for h in range(heads) for i in pos]
        if b.fused:  # [q | k | v], each heads x dims
            records = [(b.q, True, [part * heads * d + i for part in range(3) for i in q_idxs])]
        else:
            records = [(b.q, True, q_idxs), (b.k, True, kv_idxs), (b.v, True, kv_idxs)]
        if b.o:
            records.append((b.o, False, q_idxs))
        return records

    def apply(self, prune_layer: Callable[[str, bool, list[int]], None]) -> None:
        """Prune the projections (``prune_layer(name, is_out, indices)``) and update the block's sizes."""
        for name, is_out, idxs in self.layer_records():
            prune_layer(name, is_out, idxs)
        if self.kind == HEADS:
            self.block.kv_left -= len(self.positions)
        else:
            self.block.dim_left -= len(self.positions)


def score_items(model: nn.Module, block: AttentionBlock) -> list[tuple[nn.Module, bool, list[int], list[int]]]:
    """A group ``[(layer, is_out, indices, root indices)]`` of the block's projections for a criterion, rooted
    at the query dims: a key/value dim scores with the first query head over it, a fused qkv's q, k and v
    parts with their query dim."""
    g, d = block.group_size, block.dim_left
    n_root = block.query_width
    identity = list(range(n_root))
    if block.fused:
        items = [(model.get_submodule(block.q), True, list(range(3 * n_root)), [i % n_root for i in range(3 * n_root)])]
    else:
        kv_root = [(i // d) * g * d + i % d for i in range(block.kv_left * d)]
        kv_all = list(range(block.kv_left * d))
        items = [(model.get_submodule(block.q), True, identity, identity)]
        items += [(model.get_submodule(block.k), True, kv_all, kv_root)]
        items += [(model.get_submodule(block.v), True, kv_all, kv_root)]
    if block.o:
        items.append((model.get_submodule(block.o), False, identity, identity))
    return items


def unit_scores(block: AttentionBlock, kind: str, scores: Any, items: Sequence[tuple]) -> torch.Tensor | None:
    """Scores per query dim (or per entry of the first item, as the ``random`` criterion gives them) reduced
    to one per key/value head (``kind=HEADS``) or per head dim (``DIMS``)."""
    if scores is None:
        return None
    scores = torch.as_tensor(scores, dtype=torch.float32).detach().cpu().reshape(-1)
    n_root = block.query_width
    if scores.numel() != n_root:
        roots = torch.tensor(items[0][3])
        if scores.numel() != roots.numel():
            return None
        scores = torch.zeros(n_root).scatter_add_(0, roots, scores)
    per_head = scores.reshape(block.kv_left, block.group_size, block.dim_left)
    return per_head.mean((1, 2)) if kind == HEADS else per_head.mean((0, 1))


def plan_cuts(
    blocks: Sequence[AttentionBlock],
    kind: str,
    scores: Mapping[int, torch.Tensor | None],
    target: float,
    max_layer_ratio: float,
    global_ranking: bool,
) -> list[AttentionCut]:
    """Which heads (or head dims) go so that ``target`` of each block's ORIGINAL ones are removed (local), or
    of all blocks' together, least important first (global); none keeps fewer than ``1 - max_layer_ratio`` of
    its original ones, and each keeps one. ``scores`` by block index; a block without scores is skipped."""

    def units(block: AttentionBlock) -> tuple[int, int]:  # (original, left)
        return (block.kv_heads, block.kv_left) if kind == HEADS else (block.head_dim, block.dim_left)

    def floor_keep(block: AttentionBlock) -> int:
        return max(1, math.ceil(units(block)[0] * (1.0 - max_layer_ratio) - 1e-9))

    scored = [i for i in range(len(blocks)) if scores.get(i) is not None]
    cuts: dict[int, list[int]] = {}
    if not global_ranking:
        for i in scored:
            original, left = units(blocks[i])
            keep = max(floor_keep(blocks[i]), original - math.floor(target * original + 1e-9))
            if left > keep:
                cuts[i] = torch.argsort(scores[i])[: left - keep].tolist()  # type: ignore[index]
    else:
        total = sum(units(blocks[i])[0] for i in scored)
        to_remove = sum(units(blocks[i])[1] for i in scored) - (total - math.floor(target * total + 1e-9))
        ranked = sorted((float(v), i, p) for i in scored for p, v in enumerate(scores[i].tolist()))  # type: ignore[union-attr]
        left = {i: units(blocks[i])[1] for i in scored}
        for _, i, p in ranked:
            if to_remove <= 0:
                break
            if left[i] - 1 >= floor_keep(blocks[i]):
                cuts.setdefault(i, []).append(p)
                left[i] -= 1
                to_remove -= 1
    return [AttentionCut(blocks[i], kind, positions) for i, positions in sorted(cuts.items())]
