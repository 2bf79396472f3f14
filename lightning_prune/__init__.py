"""lightning-prune: scheduled structured pruning for PyTorch Lightning.

>>> from lightning_prune import PruningCallback
>>> callback = PruningCallback(ratio=0.5, schedule="agp", criterion="l2")
"""

from .callback import PruningCallback
from .checkpoint import PrunedCheckpointMixin, restore_pruned
from .criteria import CRITERIA, get_criterion
from .export import load_model, save_model
from .module import ClassifierModule
from .pruner import ChannelPruner, find_output_layers
from .report import LayerRow, count_macs_params, layer_report, render_layer_report
from .schedules import SCHEDULES, get_schedule
from .surgery import ParameterChange, ParameterTracker, remap_optimizer

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "ChannelPruner",
    "ClassifierModule",
    "LayerRow",
    "ParameterChange",
    "ParameterTracker",
    "PrunedCheckpointMixin",
    "PruningCallback",
    "count_macs_params",
    "find_output_layers",
    "get_criterion",
    "get_schedule",
    "layer_report",
    "load_model",
    "remap_optimizer",
    "render_layer_report",
    "restore_pruned",
    "save_model",
]
__version__ = "0.1.0"
