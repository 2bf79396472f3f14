"""lightning-prune: scheduled structured pruning (and sparsity) for PyTorch Lightning.

The package has three layers, each importing only the ones above it:

- :mod:`lightning_prune.engine`: the pruning engine, on torch and torch-pruning only (no Lightning);
- the Lightning layer: :mod:`~lightning_prune.callback`, :mod:`~lightning_prune.sparsify`,
  :mod:`~lightning_prune.distill`, :mod:`~lightning_prune.checkpoint`, :mod:`~lightning_prune.distributed`;
- :mod:`lightning_prune.app`: the example Hydra app (``pip install "lightning-prune[app]"``), never imported here.

>>> from lightning_prune import PruningCallback
>>> callback = PruningCallback(ratio=0.5, schedule="agp", criterion="l2")
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports resolve on first use (PEP 562), so ``import lightning_prune.engine`` never loads Lightning.
_EXPORTS = {
    "PruningCallback": ".callback",
    "SparsifyCallback": ".sparsify",
    "DistillationCallback": ".distill",
    "PrunedCheckpointMixin": ".checkpoint",
    "restore_pruned": ".checkpoint",
    "CRITERIA": ".engine.criteria",
    "get_criterion": ".engine.criteria",
    "ChannelPruner": ".engine.pruner",
    "find_output_layers": ".engine.pruner",
    "LayerRow": ".engine.report",
    "count_macs_params": ".engine.report",
    "layer_report": ".engine.report",
    "render_layer_report": ".engine.report",
    "SCHEDULES": ".engine.schedules",
    "get_schedule": ".engine.schedules",
    "PruningSpec": ".engine.spec",
    "SparsifySpec": ".engine.spec",
    "DistillSpec": ".engine.spec",
    "compute_masks": ".engine.sparsity",
    "render_sparsity_report": ".engine.sparsity",
    "compact": ".engine.compact",
    "zero_channels": ".engine.compact",
    "to_semi_structured": ".engine.semi_structured",
    "ParameterChange": ".engine.surgery",
    "ParameterTracker": ".engine.surgery",
    "remap_optimizer": ".engine.surgery",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lightning_prune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "ChannelPruner",
    "DistillSpec",
    "DistillationCallback",
    "LayerRow",
    "ParameterChange",
    "ParameterTracker",
    "PrunedCheckpointMixin",
    "PruningCallback",
    "PruningSpec",
    "SparsifyCallback",
    "SparsifySpec",
    "compact",
    "compute_masks",
    "count_macs_params",
    "find_output_layers",
    "get_criterion",
    "get_schedule",
    "layer_report",
    "remap_optimizer",
    "render_layer_report",
    "render_sparsity_report",
    "restore_pruned",
    "to_semi_structured",
    "zero_channels",
]
__version__ = "0.1.0"
