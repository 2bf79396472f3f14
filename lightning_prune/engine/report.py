"""Reports: parameter and MAC counts, and the per-layer table of a pruned model.

MACs and parameters are counted by torch-pruning's ``count_ops_and_params`` (it works on a copy, so the
model's train/eval mode is untouched); this module only arranges them per layer and against a baseline.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(72, 2))
>>> rows = layer_report(net, torch.zeros(1, 3, 5, 5))
>>> [(r.layer, r.channels, r.macs) for r in rows]
[('0', 8, 2016), ('2', 2, 146), ('TOTAL', 10, 2162)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .hf import conv1d_width, is_conv1d, no_kv_cache, register_macs

TOTAL = "TOTAL"


@dataclass(frozen=True)
class LayerRow:
    """One row of :func:`layer_report`. ``original_*`` come from the baseline (equal to now without one)."""

    layer: str
    type: str
    original_channels: int
    channels: int
    original_params: int
    params: int
    original_macs: int
    macs: int

    @property
    def params_ratio(self) -> float:
        return self.params / self.original_params if self.original_params else 1.0

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.original_macs if self.original_macs else 1.0


def count_macs_params(model: nn.Module, example_inputs: object) -> tuple[int, int]:
    """MACs of one forward pass on ``example_inputs`` and the number of parameters.

    >>> count_macs_params(torch.nn.Linear(4, 2), torch.zeros(1, 4))
    (10, 10)
    """
    register_macs(model)  # transformers' Conv1D
    with no_kv_cache(model):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def prune_metrics(model: nn.Module, example_inputs: object, dense: LayerRow, channel_ratio: float) -> dict[str, float]:
    """The metrics a pruning epoch logs: ``prune/ratio`` (channels removed, as achieved), ``prune/params``,
    ``prune/macs``, and both as ratios of the dense model's (``dense``: the TOTAL row of its layer report).

    >>> net = nn.Sequential(nn.Linear(4, 2))
    >>> dense = layer_report(net, torch.zeros(1, 4))[-1]
    >>> prune_metrics(net, torch.zeros(1, 4), dense, 0.0)["prune/macs_ratio"]
    1.0
    """
    macs, params = count_macs_params(model, example_inputs)
    return {
        "prune/ratio": float(channel_ratio),
        "prune/params": float(params),
        "prune/macs": float(macs),
        "prune/params_ratio": params / dense.params,
        "prune/macs_ratio": macs / dense.macs,
    }


def output_channels(module: nn.Module) -> int | None:
    """Output channels/features of a layer, or None for layers without them.

    >>> output_channels(torch.nn.Conv2d(3, 5, 1)), output_channels(torch.nn.ReLU())
    (5, None)
    """
    if is_conv1d(module):  # transformers' Conv1D
        return conv1d_width(module)[1]
    for attr in ("out_channels", "out_features", "embed_dim", "hidden_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def layer_report(
    model: nn.Module, example_inputs: object, baseline: Sequence[LayerRow] | None = None
) -> list[LayerRow]:
    """Per-layer channels, parameters and MACs of ``model``, plus a ``TOTAL`` row for the whole model.

    Layers are the leaf modules with output channels (convolutions, linear layers, attention). With a
    ``baseline`` (the rows of the unpruned model) each row also carries the original values.
    """
    register_macs(model)
    with torch.no_grad(), no_kv_cache(model):
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            model, example_inputs, layer_wise=True
        )
    before = {row.layer: row for row in baseline or ()}
    rows = []
    for name, module in model.named_modules():
        channels = output_channels(module)
        if channels is None or not name:
            continue
        layer_p = int(layer_params.get(module) or 0)
        layer_m = int(layer_macs.get(module) or 0)
        old = before.get(name)
        rows.append(
            LayerRow(
                layer=name,
                type=type(module).__name__,
                original_channels=old.channels if old else channels,
                channels=channels,
                original_params=old.params if old else layer_p,
                params=layer_p,
                original_macs=old.macs if old else layer_m,
                macs=layer_m,
            )
        )
    old_total = before.get(TOTAL)
    channels = sum(r.channels for r in rows)
    rows.append(
        LayerRow(
            layer=TOTAL,
            type="",
            original_channels=old_total.channels if old_total else channels,
            channels=channels,
            original_params=old_total.params if old_total else int(params),
            params=int(params),
            original_macs=old_total.macs if old_total else int(macs),
            macs=int(macs),
        )
    )
    return rows


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], rule_before_last: bool = False) -> str:
    """Fixed-width text table: ``header``, a rule, ``rows`` (another rule before the last one if asked).

    >>> print(render_table(("a", "bb"), [("1", "2"), ("30", "4")], rule_before_last=True))
    a   bb
    --  --
    1   2
    --  --
    30  4
    """
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    rule = "  ".join("-" * w for w in widths)
    lines.insert(1, rule)
    if rule_before_last and len(rows) > 1:
        lines.insert(len(lines) - 1, rule)
    return "\n".join(lines)


def render_layer_report(rows: Sequence[LayerRow]) -> str:
    """The rows of :func:`layer_report` as a fixed-width text table.

    >>> print(render_layer_report([LayerRow("fc", "Linear", 4, 2, 20, 10, 20, 10)]).splitlines()[2])
    fc     Linear  4 -> 2    10 (50.0%)  10 (50.0%)
    """
    cells = [
        (
            r.layer,
            r.type,
            f"{r.original_channels} -> {r.channels}",
            f"{_human(r.params)} ({100 * r.params_ratio:.1f}%)",
            f"{_human(r.macs)} ({100 * r.macs_ratio:.1f}%)",
        )
        for r in rows
    ]
    return render_table(("layer", "type", "channels", "params", "MACs"), cells)
